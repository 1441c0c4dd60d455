"""The TensorFlow/Keras backend on real jobs: test/jobs/keras_moe_job.py, a tiny MoE language model
written with Keras 3 on TensorFlow, run in a loop inside tf.function and eagerly, watched by a real probe."""

import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from job_check import Job, check_counts_match_the_job, detach_and_check_unchanged, hello_of, outputs_by_input  # noqa: E402


# Eager here, through `python -m moe_probe run`; test/e2e/panel-frameworks.test.ts runs it in a
# tf.function, injected through the panel.
@pytest.mark.parametrize("eager", [True])
def test_counts_equal_the_jobs_own_top_k_and_detach_leaves_it_as_it_was(eager):
    job = Job.start("keras_moe_job.py", ["--layers", "3"] + (["--eager"] if eager else []),
                    env={"KERAS_BACKEND": "tensorflow"})
    try:
        reference = outputs_by_input(job.passes())
        threads = job.passes()[-1]["threads"]
        assert job.passes()[-1]["hooks"] == 0
        client = job.attach()
        hello = hello_of(client)
        # TensorFlow imports jax when it is installed (tf.lite does): both are loaded, only Keras has models.
        assert hello["framework"] == "tensorflow"
        assert hello["framework_version"] == "%s (keras %s)" % (tf.__version__, keras.__version__)
        assert "tensorflow" in [f["name"] for f in hello["frameworks"]]
        (model,) = hello["models"]
        assert model["framework"] == "tensorflow" and model["class"] == "MoELM" and model["model_type"] == "keras"
        assert [(l["name"], l["model_index"], l["stack"], l["experts"], l["top_k"], l["source"]) for l in model["layers"]] == [
            ("blocks.%d" % i, i, "blocks", 8, 2, "router") for i in range(3)]
        (warning,) = hello["warnings"]
        assert warning["code"] == "retrace" and "tf.function" in warning["message"]
        frame = check_counts_match_the_job(job, client, min_passes=8)
        assert "time_s" not in frame
        assert job.passes()[-1]["hooks"] > 0
        after = detach_and_check_unchanged(job, client, reference)
        assert after and all(r["threads"] == threads for r in after)
    finally:
        job.stop()
