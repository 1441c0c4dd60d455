"""Probe overhead for each backend beside torch: ONNX Runtime, JAX/Flax (linen, jit), Keras 3 on
TensorFlow (tf.function), and a torch training step (forward, backward, optimizer step: the
training reader's gradient hooks and per-layer losses).

Like scripts/bench_probe_overhead.py, and with its consumer: one process per framework (so no
framework is loaded beside another), one model, one input batch, the probe started with
`moe_probe.attach(model)` and listening throughout; rounds alternate (without, with) and (with,
without); for each "with" side a consumer in a separate process connects to the probe's socket
and reads every frame, and detaches at the end of the side. The models are the test jobs' tiny
MoE language models (test/jobs/*_moe_job.py) made bigger: hidden 256, 4 layers, 8 experts top-2,
batch 8 x 128 tokens (the experts computed densely, as the jobs write them).

Attaching re-traces JAX and TensorFlow functions (and detaching re-traces them back): a "with"
side starts by running the model until the probe has read a pass, and that time from attach is
reported on its own ("attach to first pass read"), as is the first pass after a detach; the
sides' timed passes come after them. The torch training step uses SGD with a
learning rate of 0, so that the weights, and so the step's loss, stay the same from step to step
and can be compared bit for bit.

Reported per framework: throughput with and without (median over rounds), the ratio per round,
whether every output was bitwise the reference, and whether the probe counted exactly tokens x
top_k x layers routing decisions per pass.

    .venv/bin/python scripts/bench_framework_overhead.py [--quick] [--json OUT] [--only onnxruntime,jax,...]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "test", "jobs"))

from bench_probe_overhead import PROBE_DIR, TARGET_RATIO, Consumer, summary, wait_for  # noqa: E402

FRAMEWORKS = ("onnxruntime", "jax", "tensorflow", "torch-training")
TITLES = {"onnxruntime": "ONNX Runtime session.run", "jax": "JAX/Flax linen under jit",
          "tensorflow": "Keras 3 in a tf.function", "torch-training": "torch training step (Mixtral)"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller model and fewer rounds, for development")
    p.add_argument("--json", help="write the results here as JSON")
    p.add_argument("--only", help="comma-separated frameworks (default: all of %s)" % ", ".join(FRAMEWORKS))
    p.add_argument("--framework", help=argparse.SUPPRESS)  # child mode: measure one framework, print JSON
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    size = dict(hidden=128, layers=4, batch=4, seq=64, rounds=4, passes=4) if args.quick else \
        dict(hidden=256, layers=4, batch=8, seq=128, rounds=6, passes=6)
    for key, value in size.items():
        setattr(args, key, value)
    args.experts, args.top_k, args.vocab = 8, 2, 4096
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return args


def build(framework, args):
    """(forward() -> bytes of the output, the object to attach to, versions)."""
    import numpy as np
    rng = np.random.default_rng(1)
    ids = rng.integers(0, args.vocab, size=(args.batch, args.seq))
    if framework == "onnxruntime":
        import onnxruntime as ort
        from onnx_moe_job import build_model
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(build_model(args.layers, args.experts, args.top_k, args.hidden, args.vocab, 0),
                                       sess_options=options, providers=["CPUExecutionProvider"])
        feed = {"input_ids": ids.astype(np.int64)}
        return (lambda: session.run(["flat_logits"], feed)[0].tobytes()), session, "onnxruntime %s" % ort.__version__
    if framework == "jax":
        import jax
        import jax.numpy as jnp
        from jax_moe_job import linen_model
        model, forward = linen_model(args.layers, args.experts, args.top_k, args.hidden, args.vocab)
        step = jax.jit(forward)
        x = jnp.asarray(ids, dtype=jnp.int32)
        import flax
        return (lambda: np.asarray(step(x)[0]).tobytes()), model, "jax %s, flax %s" % (jax.__version__, flax.__version__)
    if framework == "tensorflow":
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras
        import tensorflow as tf
        from keras_moe_job import MoELM
        keras.utils.set_random_seed(0)
        model = MoELM(args.layers, args.experts, args.top_k, args.hidden, args.vocab)
        x = tf.constant(ids, dtype=tf.int32)
        model(x)
        step = tf.function(lambda t: model(t)[0])
        return (lambda: step(x).numpy().tobytes()), model, "tensorflow %s, keras %s" % (tf.__version__, keras.__version__)
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                           num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                           num_key_value_heads=max(1, args.hidden // 128), num_local_experts=args.experts,
                           num_experts_per_tok=args.top_k, output_router_logits=True, max_position_embeddings=512)
    model = MixtralForCausalLM(config).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.from_numpy(ids)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        optimizer.step()
        return out.loss.detach().numpy().tobytes() + model.lm_head.weight.grad.numpy().tobytes()

    import transformers
    return train_step, model, "torch %s, transformers %s" % (torch.__version__, transformers.__version__)


def rss_mb():
    """This process's resident memory (Linux), to show what a backend keeps beside the model."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def measure(framework, args):
    """Child process: alternate rounds without / with the probe on one framework's model."""
    socket_dir = tempfile.mkdtemp(prefix="moe-bench-fw-")
    os.environ["MOE_DEVTOOLS_SOCKET_DIR"] = socket_dir
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, PROBE_DIR)
    import moe_probe

    forward, target, versions = build(framework, args)
    t0 = time.perf_counter()
    reference = forward()
    first_s = time.perf_counter() - t0
    for _ in range(2):  # warm: the first passes after building are slower (allocations, caches)
        forward()
    tokens = args.batch * args.seq
    routed_per_pass = tokens * args.top_k * args.layers
    rss_before = rss_mb()
    rss_with = []
    path = moe_probe.attach(target)
    consumer = Consumer()
    rounds, retrace_with, retrace_without = [], [], []
    identical, exact = {"with": True, "without": True}, True

    def recorders():
        server = moe_probe.current_server()
        session = server.session if server is not None else None
        return session.recorders if session is not None else []

    def connect():
        """Connect the consumer while the model keeps running (a linen model's layers are found in a pass)."""
        got = {}
        thread = threading.Thread(target=lambda: got.update(hello=consumer.connect(path)), daemon=True)
        thread.start()
        while thread.is_alive():
            forward()
            thread.join(timeout=0.01)
        hello = got.get("hello") or {}
        if hello.get("error") or hello.get("layers") != args.layers:
            raise SystemExit("bench_framework_overhead: %s: the probe did not find the model's layers: %r" % (framework, hello))
        wait_for(lambda: recorders() and all(r.active for r in recorders()), 30, "the probe's reading")
        # Run on until a pass has been read: a trace already running when attaching cleared the
        # caches is cached without the reading, and the probe clears them again 1 s later (retrace.py).
        deadline = time.monotonic() + 60
        while not all(r.passes > 0 for r in recorders()):
            if time.monotonic() > deadline:
                raise SystemExit("bench_framework_overhead: %s: no pass was read within 60 s of attaching" % framework)
            forward()

    def side(which):
        nonlocal exact
        t0 = time.perf_counter()
        if which == "with":
            connect()  # until the first pass is read: re-traced after the attach (JAX, TF)
            retrace_with.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if forward() != reference:  # an untimed pass; after a detach, re-traced back (JAX, TF)
            identical[which] = False
        if which == "without":
            retrace_without.append(time.perf_counter() - t0)
        if which == "with":
            rss_with.append(rss_mb())
        times = []
        for _ in range(args.passes):
            t0 = time.perf_counter()
            out = forward()
            times.append(time.perf_counter() - t0)
            if out != reference:
                identical[which] = False
        if which == "with":
            stats = consumer.detach()
            wait_for(lambda: not recorders(), 30, "the probe to detach")
            # Every pass since the reading went in, the side's own passes at least, each counted whole.
            if (not stats["bye"] or stats["errors"] or stats["passes"] < args.passes + 1
                    or stats["routed"] != stats["passes"] * routed_per_pass):
                exact = False
                print("  !! %s: consumer saw %s" % (framework, {k: v for k, v in stats.items() if k != "latency_ms"}),
                      file=sys.stderr)
        return sum(times)

    try:
        for r in range(args.rounds):
            order = ("without", "with") if r % 2 == 0 else ("with", "without")
            result = {"order": "/".join(order)}
            for which in order:
                result[which + "_tok_s"] = args.passes * tokens / side(which)
            result["ratio"] = result["with_tok_s"] / result["without_tok_s"]
            rounds.append(result)
            print("  %-15s round %d (%-11s): without %8.0f tok/s   with %8.0f tok/s   ratio %.4f" % (
                framework, r + 1, result["order"], result["without_tok_s"], result["with_tok_s"], result["ratio"]),
                file=sys.stderr, flush=True)
    finally:
        consumer.close()
        moe_probe.detach()
    return {"framework": framework, "versions": versions, "first_pass_s": first_s, "rounds": rounds,
            "identical": identical, "exact": exact, "retrace_with_s": retrace_with, "retrace_without_s": retrace_without,
            "rss_before_mb": rss_before, "rss_with_mb": max(rss_with) if rss_with and None not in rss_with else None,
            "steady_pass_s": tokens / statistics.median(r["without_tok_s"] for r in rounds)}


def metrics_of(m, args):
    name = TITLES[m["framework"]]
    unit = "tok/s"
    without = summary([r["without_tok_s"] for r in m["rounds"]])
    with_ = summary([r["with_tok_s"] for r in m["rounds"]])
    ratio = summary([r["ratio"] for r in m["rounds"]])
    conclusive = len(m["rounds"]) < 3 or ratio["max"] - ratio["min"] <= 2 * (1 - TARGET_RATIO)
    out = [
        {"metric": "%s: tokens/s without / with probe" % name,
         "value": "%.0f / %.0f %s" % (without["median"], with_["median"], unit),
         "note": "medians of %d rounds of %d passes (%s)" % (len(m["rounds"]), args.passes, m["versions"])},
        {"metric": "%s: throughput ratio with/without" % name, "value": ratio["median"], "digits": 4,
         "target": ">= 0.95 (slowdown < 5 %)", "pass": (ratio["median"] >= TARGET_RATIO) if conclusive else None,
         "inconclusive": not conclusive,
         "note": "median of per-round ratios (min %.4f, max %.4f)%s" % (
             ratio["min"], ratio["max"], "" if conclusive else "; rounds too far apart to decide (busy machine)")},
    ]
    if m["framework"] in ("jax", "tensorflow"):
        out.append({"metric": "%s: attach to first pass read / first pass after detach" % name,
                    "value": "%.2f / %.2f s" % (statistics.median(m["retrace_with_s"]), statistics.median(m["retrace_without_s"])),
                    "note": "medians; both re-trace and re-compile (a steady pass takes %.3f s)" % m["steady_pass_s"]})
    if m.get("rss_before_mb") and m.get("rss_with_mb"):
        out.append({"metric": "%s: process memory before attach / while attached" % name,
                    "value": "%.0f / %.0f MB" % (m["rss_before_mb"], m["rss_with_mb"]),
                    "note": "resident set size; the ONNX Runtime backend holds a second session of the model"
                    if m["framework"] == "onnxruntime" else "resident set size"})
    bitwise = m["identical"]["with"] and m["identical"]["without"]
    out.append({"metric": "%s: outputs bitwise identical with probe" % name, "value": "yes" if bitwise else "no",
                "target": "yes", "pass": bitwise})
    out.append({"metric": "%s: routing counted exactly" % name, "value": "yes" if m["exact"] else "no",
                "target": "yes", "pass": m["exact"],
                "note": "%d tokens x top-%d x %d layers per pass" % (args.batch * args.seq, args.top_k, args.layers)})
    return out


def main():
    args = parse_args()
    if args.framework:
        print(json.dumps(measure(args.framework, args)))
        return 0
    chosen = [f for f in FRAMEWORKS if not args.only or f in args.only.split(",")]
    print("framework overhead: hidden %d, %d layers, %d experts top-%d, batch %d x %d, vocab %d, %d threads, %d rounds x %d passes"
          % (args.hidden, args.layers, args.experts, args.top_k, args.batch, args.seq, args.vocab, args.threads,
             args.rounds, args.passes), flush=True)
    results, metrics = [], []
    for framework in chosen:
        command = [sys.executable, os.path.abspath(__file__), "--framework", framework] + (["--quick"] if args.quick else [])
        run = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        if run.returncode != 0:
            raise SystemExit("bench_framework_overhead: %s failed (exit %d)" % (framework, run.returncode))
        m = json.loads(run.stdout.strip().splitlines()[-1])
        results.append(m)
        metrics += metrics_of(m, args)
        for row in metrics_of(m, args):
            print("  %-60s %s" % (row["metric"], row["value"] if isinstance(row["value"], str) else "%.4f" % row["value"]))
    result = {
        "benchmark": "framework_overhead",
        "title": "Probe overhead, other backends (CPU)",
        "description": ("Each backend in a process of its own, on the test jobs' MoE language models made bigger (hidden %d, "
                        "%d layers, %d experts top-%d, batch %d x %d, vocab %d, %d threads): alternating rounds of %d passes "
                        "without and with the probe attached (moe_probe.attach(model), a reader in a separate process "
                        "connected), each side after one untimed pass (re-traced for JAX and TensorFlow); the torch training "
                        "step is forward + backward + SGD step (lr 0)." % (args.hidden, args.layers, args.experts, args.top_k,
                                                                          args.batch, args.seq, args.vocab, args.threads,
                                                                          args.passes)),
        "quick": args.quick,
        "results": results,
        "metrics": metrics,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
