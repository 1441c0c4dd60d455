"""A real ONNX Runtime MoE job for the end-to-end tests: a tiny MoE language model written as an
ONNX graph (onnx.helper), run by an onnxruntime.InferenceSession in a loop. It never imports the probe.

Per layer: router MatMul -> Softmax -> TopK(k) -> normalised weights, experts computed as stacked
[E, H, F] weights and mixed by the top-k gates (ScatterElements). Node names follow what
torch.onnx.export writes ("/model/layers.0/mlp/TopK"). Like transformers' output_router_logits,
the graph also returns each layer's router logits; the job computes top-k over them with an ONNX
Runtime TopK of its own (a second, tiny session) and appends one JSON line per pass to --log: the
per-expert counts, a hash of the logits output, whether the session carries an attribute `run` of
its own (the probe's, while attached), and the threads. Inputs cycle through --cycle fixed batches.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def build_model(layers, experts, top_k, hidden, vocab, seed):
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def weight(name, shape, scale=0.2):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    const("k", np.array([top_k], dtype=np.int64))
    const("flat_shape", np.array([-1, hidden], dtype=np.int64))
    const("axes_last", np.array([-1], dtype=np.int64))
    nodes.append(helper.make_node("Gather", [weight("embed", (vocab, hidden), 1.0), "input_ids"], ["emb"], name="/model/embed_tokens/Gather"))
    nodes.append(helper.make_node("Shape", ["input_ids"], ["ids_shape"], name="/model/Shape"))
    nodes.append(helper.make_node("Reshape", ["emb", "flat_shape"], ["x0"], name="/model/Reshape"))
    x = "x0"
    outputs = []
    for l in range(layers):
        p = "/model/layers.%d/mlp/" % l
        logits = "router_logits_%d" % l
        nodes += [
            helper.make_node("MatMul", [x, weight("gate_%d" % l, (hidden, experts))], [logits], name=p + "gate/MatMul"),
            helper.make_node("Softmax", [logits], ["probs_%d" % l], axis=-1, name=p + "Softmax"),
            helper.make_node("TopK", ["probs_%d" % l, "k"], ["topv_%d" % l, "topi_%d" % l], axis=-1, name=p + "TopK"),
            helper.make_node("ReduceSum", ["topv_%d" % l, "axes_last"], ["topsum_%d" % l], keepdims=1, name=p + "ReduceSum"),
            helper.make_node("Div", ["topv_%d" % l, "topsum_%d" % l], ["topw_%d" % l], name=p + "Div"),
            helper.make_node("Sub", ["probs_%d" % l, "probs_%d" % l], ["zeros_%d" % l], name=p + "Sub"),
            helper.make_node("ScatterElements", ["zeros_%d" % l, "topi_%d" % l, "topw_%d" % l], ["gates_%d" % l], axis=1, name=p + "ScatterElements"),
            helper.make_node("Einsum", [x, weight("w1_%d" % l, (experts, hidden, 2 * hidden))], ["h_%d" % l], equation="nd,edf->nef", name=p + "experts/Einsum"),
            helper.make_node("Relu", ["h_%d" % l], ["a_%d" % l], name=p + "experts/Relu"),
            helper.make_node("Einsum", ["a_%d" % l, weight("w2_%d" % l, (experts, 2 * hidden, hidden))], ["y_%d" % l], equation="nef,efd->ned", name=p + "experts/Einsum_1"),
            helper.make_node("Einsum", ["y_%d" % l, "gates_%d" % l], ["moe_%d" % l], equation="ned,ne->nd", name=p + "Einsum"),
            helper.make_node("Add", [x, "moe_%d" % l], ["x%d" % (l + 1)], name="/model/layers.%d/Add" % l),
        ]
        x = "x%d" % (l + 1)
        outputs.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, [None, experts]))
    nodes.append(helper.make_node("MatMul", [x, weight("lm_head", (hidden, vocab))], ["flat_logits"], name="/lm_head/MatMul"))
    graph = helper.make_graph(nodes, "tiny_moe_lm", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None])],
                              [helper.make_tensor_value_info("flat_logits", TensorProto.FLOAT, [None, vocab])] + outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnx_moe_job")
    model.ir_version = 9  # what this onnxruntime reads
    return model.SerializeToString()


def topk_session(top_k):
    """The framework's own top-k, as a session of one TopK node over logits [N, E]."""
    graph = helper.make_graph([helper.make_node("TopK", ["scores", "k"], ["values", "ids"], axis=-1)], "topk",
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, top_k])],
                              [numpy_helper.from_array(np.array([top_k], dtype=np.int64), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--cycle", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--passes", type=int, default=0, help="0: run until killed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-file", action="store_true", help="load the model from a file (else from bytes)")
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    model = build_model(args.layers, args.experts, args.top_k, args.hidden, args.vocab, args.seed)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if args.from_file:
        path = os.path.join(tempfile.mkdtemp(prefix="onnx-moe-job-"), "tiny_moe_lm.onnx")
        with open(path, "wb") as f:
            f.write(model)
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    else:
        session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    topk = topk_session(args.top_k)
    rng = np.random.default_rng(args.seed + 1)
    batches = [rng.integers(0, args.vocab, size=(args.batch, args.seq), dtype=np.int64) for _ in range(args.cycle)]
    with open(args.log, "a", buffering=1) as log:
        log.write(json.dumps({"ready": True, "pid": os.getpid(), "layers": args.layers, "experts": args.experts,
                              "top_k": args.top_k}) + "\n")
        i = 0
        while args.passes == 0 or i < args.passes:
            results = session.run(None, {"input_ids": batches[i % args.cycle]})
            counts = []
            for logits in results[1:]:
                ids = topk.run(["ids"], {"scores": logits})[0]
                counts.append(np.bincount(ids.reshape(-1), minlength=args.experts).tolist())
            log.write(json.dumps({
                "pass": i, "counts": counts, "out": hashlib.sha256(results[0].tobytes()).hexdigest()[:16],
                "hooks": int("run" in vars(session)), "threads": sorted(t.name for t in threading.enumerate()),
            }) + "\n")
            i += 1
            if args.sleep:
                time.sleep(args.sleep)


if __name__ == "__main__":
    sys.exit(main())
