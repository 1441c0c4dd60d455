"""The JAX backend on real jobs: test/jobs/jax_moe_job.py, a tiny MoE language model written with
Flax (linen and nnx), run in a loop under jit and eagerly, watched by a real probe."""

import os
import sys

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

from job_check import Job, check_counts_match_the_job, detach_and_check_unchanged, hello_of, outputs_by_input  # noqa: E402


# Eager here, through `python -m moe_probe run`; test/e2e/panel-frameworks.test.ts runs both APIs under
# jit, injected through the panel.
@pytest.mark.parametrize("api,eager", [("linen", True), ("nnx", True)])
def test_counts_equal_the_jobs_own_top_k_and_detach_leaves_it_as_it_was(api, eager):
    job = Job.start("jax_moe_job.py", ["--api", api, "--layers", "3"] + (["--eager"] if eager else []))
    try:
        reference = outputs_by_input(job.passes())
        threads = job.passes()[-1]["threads"]  # the job's, and the probe's listener (library mode)
        assert job.passes()[-1]["hooks"] == 0
        client = job.attach()
        hello = hello_of(client)
        assert hello["framework"] == "jax" and hello["framework_version"].startswith(jax.__version__ + " (flax ")
        (model,) = hello["models"]
        assert model["framework"] == "jax" and model["class"] == "MoELM" and model["model_type"] == "flax.%s" % api
        names = ["layers_%d" % i for i in range(3)] if api == "linen" else ["layers.%d" % i for i in range(3)]
        assert [(l["name"], l["model_index"], l["experts"], l["top_k"], l["source"]) for l in model["layers"]] == [
            (name, i, 8, 2, "router") for i, name in enumerate(names)]
        # Attaching re-traces jitted functions: the hello says so, with what the first pass cost for linen.
        (warning,) = hello["warnings"]
        assert warning["code"] == "retrace" and "cleared JAX's compilation caches" in warning["message"]
        if api == "linen":
            assert "first pass after attaching took" in warning["message"]
        frame = check_counts_match_the_job(job, client, min_passes=8)
        assert "time_s" not in frame
        assert job.passes()[-1]["hooks"] > 0
        after = detach_and_check_unchanged(job, client, reference)
        assert after and all(r["threads"] == threads for r in after)
    finally:
        job.stop()
