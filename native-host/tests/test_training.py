"""Hugging Face training: a real transformers Trainer fine-tuning a tiny random Mixtral
(test/jobs/trainer_moe_job.py), watched by a real probe attached in the middle of the run.

What the probe reports must equal what the model computed, step by step (routing counts, each
layer's aux load-balancing loss and router z-loss, the model's aux_loss and loss), backward
passes must be counted apart from forward ones, and the run must be bitwise the same as a run
that was never watched: the same loss and the same gradients at every step."""

import math
import struct
import time

import pytest

pytest.importorskip("accelerate")

from job_check import Job, check_counts_match_the_job, hello_of, last_counts  # noqa: E402

ARGS = ["--steps", "260", "--layers", "2", "--sleep", "0.02"]


def wait_done(job, timeout=300):
    deadline = time.monotonic() + timeout
    while job.process.poll() is None:
        assert time.monotonic() < deadline, "the training run did not finish"
        time.sleep(0.2)
    assert job.process.returncode == 0, job.process.stderr.read().decode()[-3000:]


def floats(data):
    return list(struct.unpack("<%dd" % (len(data) // 8), data))


def test_trainer_run_attached_mid_run_reports_what_the_model_computed_and_trains_bitwise_the_same():
    reference = Job.start("trainer_moe_job.py", ARGS, probe=False, min_passes=1)
    try:
        wait_done(reference)
        unwatched = reference.passes()
    finally:
        reference.stop()
    assert len(unwatched) == 260

    job = Job.start("trainer_moe_job.py", ARGS, min_passes=25)
    try:
        client = job.attach()
        hello = hello_of(client)
        (model,) = hello["models"]
        assert model["class"] == "MixtralForCausalLM" and model["framework"] == "torch"
        frame = check_counts_match_the_job(job, client, min_passes=40)
        # Every pass seen was a training pass, and each had its backward pass.
        assert frame["train"] == frame["passes"]
        assert frame["passes"] - 2 <= frame["backward"] <= frame["passes"]
        assert len(frame["backward_s"]) == 2 and all(s > 0 for s in frame["backward_s"])
        client.detach()
        client.wait(lambda f: f["t"] == "bye", timeout=30)
        wait_done(job)
        watched = job.passes()
    finally:
        job.stop()

    # Per-layer losses, as the model computed them, for every training pass the probe saw.
    rows = []
    for f in client.frames:
        if f["t"] == "losses":
            n = len(f["passes"])
            aux, z = floats(f["aux"]), floats(f["z"])
            for i, p in enumerate(f["passes"]):
                rows.append((p, aux[2 * i:2 * i + 2], z[2 * i:2 * i + 2], floats(f["model_aux"])[i], floats(f["loss"])[i]))
    assert len(rows) >= 40 and [r[0] for r in rows] == list(range(1, len(rows) + 1))
    by_loss = {record["loss"]: i for i, record in enumerate(watched)}
    start = by_loss[rows[0][4]]  # the step the first pass after attach was
    for offset, (pass_id, aux, z, model_aux, loss) in enumerate(rows):
        step = watched[start + offset]
        assert (aux, z, model_aux, loss) == (step["aux"], step["z"], step["model_aux"], step["loss"]), \
            "pass %d (step %d)" % (pass_id, step["pass"])
    assert not any(math.isnan(v) for row in rows for v in row[1] + row[2])

    # Bitwise the same run as the one never watched: losses and gradients at every step.
    assert [(s["loss"], s["grads"]) for s in watched] == [(s["loss"], s["grads"]) for s in unwatched]
    assert watched[-1]["hooks"] == unwatched[-1]["hooks"]


def test_activation_checkpointing_recomputes_are_not_counted_twice():
    job = Job.start("trainer_moe_job.py", ["--steps", "2000", "--layers", "2", "--sleep", "0.02", "--checkpointing"],
                    min_passes=10)
    try:
        client = job.attach()
        frame = check_counts_match_the_job(job, client, min_passes=20)
        assert frame["train"] == frame["passes"] and frame["backward"] >= frame["passes"] - 2
        client.detach()
        client.wait(lambda f: f["t"] == "bye", timeout=30)
    finally:
        job.stop()
