"""The ONNX Runtime backend on a real job: test/jobs/onnx_moe_job.py, a tiny MoE language model
written as an ONNX graph and run by an InferenceSession in a loop, watched by a real probe."""

import os
import sys

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "test", "jobs"))

from job_check import Job, check_counts_match_the_job, detach_and_check_unchanged, hello_of, outputs_by_input  # noqa: E402
from moe_probe import onnx_graph, ort_backend  # noqa: E402

import onnx_moe_job  # noqa: E402


@pytest.mark.parametrize("from_file", [False, True])
def test_counts_equal_the_jobs_own_top_k_and_detach_leaves_it_as_it_was(from_file):
    job = Job.start("onnx_moe_job.py", ["--layers", "3"] + (["--from-file"] if from_file else []))
    try:
        reference = outputs_by_input(job.passes())
        client = job.attach()
        hello = hello_of(client)
        assert hello["framework"] == "onnxruntime" and hello["framework_version"] == ort.__version__
        assert {"name": "onnxruntime", "version": ort.__version__} in hello["frameworks"]
        (model,) = hello["models"]
        assert model["framework"] == "onnxruntime" and model["class"] == "InferenceSession"
        assert [(l["name"], l["experts"], l["top_k"], l["gating"]) for l in model["layers"]] == [
            ("model.layers.%d.mlp" % i, 8, 2, "softmax") for i in range(3)]
        frame = check_counts_match_the_job(job, client, min_passes=8)
        assert frame["passes"] >= 8 and "time_s" not in frame
        assert job.passes()[-1]["hooks"] == 1
        detach_and_check_unchanged(job, client, reference)
    finally:
        job.stop()


def test_router_topk_nodes_are_found_by_structure():
    model = onnx_moe_job.build_model(layers=2, experts=8, top_k=2, hidden=16, vocab=64, seed=0)
    graph = onnx_graph.parse_model(model)
    routers = ort_backend.find_routers(graph)
    assert [(r.name, r.experts, r.top_k, r.ids, r.logits, r.gating) for r in routers] == [
        ("model.layers.0.mlp", 8, 2, "topi_0", "router_logits_0", "softmax"),
        ("model.layers.1.mlp", 8, 2, "topi_1", "router_logits_1", "softmax")]
    # The graph as parsed here agrees with the onnx package's own reading.
    proto = onnx.load_from_string(model)
    assert [n.op_type for n in proto.graph.node] == [n.op_type for n in graph.nodes]
    assert {i.name: tuple(i.dims) for i in proto.graph.initializer} == {k: v.dims for k, v in graph.initializers.items()}


def test_a_topk_over_a_vocabulary_or_without_a_projection_is_not_a_router():
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([5], dtype=np.int64), "k"),
             numpy_helper.from_array(rng.standard_normal((16, 32000)).astype(np.float32), "lm_head")]
    nodes = [helper.make_node("MatMul", ["x", "lm_head"], ["logits"]),
             helper.make_node("TopK", ["logits", "k"], ["v", "i"], axis=-1),  # sampling over a vocabulary
             helper.make_node("TopK", ["x", "k"], ["v2", "i2"], axis=-1)]  # over the input: no projection
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("i", TensorProto.INT64, None),
                               helper.make_tensor_value_info("i2", TensorProto.INT64, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert ort_backend.find_routers(onnx_graph.parse_model(model.SerializeToString())) == []


def test_added_outputs_leave_every_original_byte_and_output_as_it_was():
    model = onnx_moe_job.build_model(layers=2, experts=8, top_k=2, hidden=16, vocab=64, seed=1)
    augmented = onnx_graph.with_outputs(model, ["topi_0", "topv_1"])
    assert augmented[: len(model)] == model
    proto = onnx.load_from_string(augmented)
    assert [o.name for o in proto.graph.output][-2:] == ["topi_0", "topv_1"]
    assert len(proto.graph.node) == len(onnx.load_from_string(model).graph.node)
    x = np.random.default_rng(2).integers(0, 64, size=(2, 8), dtype=np.int64)
    plain = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input_ids": x})
    more = ort.InferenceSession(augmented, providers=["CPUExecutionProvider"]).run(None, {"input_ids": x})
    for a, b in zip(plain, more):
        assert a.tobytes() == b.tobytes()
    assert more[-2].shape == (16, 2) and more[-2].dtype == np.int64


def test_a_process_with_models_of_two_frameworks_shows_both_each_read_by_its_own_backend():
    """A torch Mixtral and an ONNX Runtime session in one process: one hello, two models, each
    counted exactly as its own framework routed, and both left as they were after detach."""
    from job_check import find_window, last_counts, layer_counts
    import time
    import torch
    job = Job.start("multi_framework_job.py", min_passes=6)
    try:
        before = job.passes()
        reference = outputs_by_input(before)
        hooks = before[-1]["hooks"]
        client = job.attach()
        hello = hello_of(client)
        assert hello["framework"] == "torch+onnxruntime"
        assert hello["framework_version"] == "%s, %s" % (torch.__version__, ort.__version__)
        assert [(m["id"], m["class"], m["framework"], len(m["layers"])) for m in hello["models"]] == [
            (0, "MixtralForCausalLM", "torch", 2), (1, "InferenceSession", "onnxruntime", 2)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
                (last_counts(client, m) or {}).get("passes", 0) >= 8 for m in (0, 1)):
            time.sleep(0.05)
        job.wait_passes(len(job.passes()) + 2)
        passes = job.passes()
        for model, key in ((0, "counts_torch"), (1, "counts")):
            frame = last_counts(client, model)
            assert frame["passes"] >= 8, "model %d: %s passes" % (model, frame and frame["passes"])
            records = [dict(r, counts=r[key]) for r in passes]
            for layer in range(2):
                shown = layer_counts(frame, layer)
                assert find_window(records, layer, frame["passes"], shown) >= 0, (model, layer, shown)
        client.detach()
        client.wait(lambda f: f["t"] == "bye", timeout=30)
        detached_at = len(job.passes())
        job.wait_passes(detached_at + 8)
        for record in job.passes()[detached_at + 2:]:
            assert record["hooks"] == hooks
        for record in job.passes():
            assert record["out"] == reference[record["pass"] % 4]
    finally:
        job.stop()
