"""The probe's overhead on a GPU: realistic MoE shapes in bf16, eager and CUDA-graph captured.

Runs only where torch sees a CUDA device; elsewhere it writes one row saying the GPU figures are
not measured (and why), and exits 0. `--smoke` runs the same code on the CPU with tiny models and
no CUDA graphs, to check the script itself; its timings mean nothing.

For each model shape (random weights, bf16, a few layers, use_cache off):
  * mixtral: MixtralForCausalLM, hidden 4096, 32 experts (intermediate 4096), top-2;
  * deepseek-v3: DeepseekV3ForCausalLM, hidden 4096, 64 routed experts (intermediate 1408), top-8,
    1 shared expert, 8 groups (top 4 groups);
and each workload: decode (batch 1, 8, 64; one token each) and prefill (2,048 and 8,192 tokens):
  * eager: alternating rounds of N passes without and with the probe attached
    (moe_probe.attach(model) and a reader in another process, as the CPU benchmark), timed with
    CUDA events; the ratio with/without per round, median over rounds;
  * CUDA graph (decode only): one graph captured before attaching (its replays are what the probe
    cannot see) and one captured while attached (its replays carry the probe's counting), replays
    of each timed in alternating rounds;
  * host syncs in the forward: syncing aten ops (item, nonzero, copies to the CPU, ...) on the
    job's thread during one pass, with and without the probe (the probe must add none);
  * the sender thread's effect on the job's stream: attached passes with snapshots every 30 ms
    (the default) against snapshots never taken (flush interval 1 hour).
Target: slowdown under 1 %.

    .venv/bin/python scripts/bench_gpu.py [--json OUT] [--smoke] [--rounds R] [--passes N]
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "native-host"))
sys.path.insert(0, HERE)

TARGET_RATIO = 0.99  # slowdown under 1 %

# aten ops that make the host wait for the device (tests/probe_check.py holds the same list)
SYNCING_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.equal", "aten.is_nonzero",
               "aten._unique", "aten.unique", "aten.repeat_interleave.Tensor", "aten.allclose")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the results here as JSON")
    p.add_argument("--quick", action="store_true", help="fewer rounds and passes")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU, to check this script (no figures)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--passes", type=int)
    p.add_argument("--layers", type=int, help="decoder layers per model (default 4; 2 with --smoke)")
    args = p.parse_args()
    args.rounds = args.rounds or (2 if args.quick or args.smoke else 6)
    args.passes = args.passes or (3 if args.smoke else 10 if args.quick else 30)
    args.layers = args.layers or (2 if args.smoke else 4)
    return args


def model_shapes(args):
    """(name, build(dtype, device)) for each model shape."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, MixtralConfig, MixtralForCausalLM

    tiny = args.smoke
    hidden = 64 if tiny else 4096

    def mixtral(dtype, device):
        config = MixtralConfig(vocab_size=512 if tiny else 32000, hidden_size=hidden,
                               intermediate_size=64 if tiny else 4096, num_hidden_layers=args.layers,
                               num_attention_heads=4 if tiny else 32, num_key_value_heads=2 if tiny else 8,
                               num_local_experts=8 if tiny else 32, num_experts_per_tok=2,
                               max_position_embeddings=512 if tiny else 8192, use_cache=False)
        return MixtralForCausalLM(config).to(device=device, dtype=dtype).eval()

    def deepseek_v3(dtype, device):
        config = DeepseekV3Config(vocab_size=512 if tiny else 32000, hidden_size=hidden,
                                  intermediate_size=128 if tiny else 11264, moe_intermediate_size=32 if tiny else 1408,
                                  num_hidden_layers=args.layers, num_attention_heads=4 if tiny else 32,
                                  num_key_value_heads=4 if tiny else 32, n_routed_experts=16 if tiny else 64,
                                  num_experts_per_tok=4 if tiny else 8, n_shared_experts=1, first_k_dense_replace=0,
                                  n_group=4 if tiny else 8, topk_group=2 if tiny else 4,
                                  kv_lora_rank=32 if tiny else 512, q_lora_rank=48 if tiny else 1536,
                                  qk_rope_head_dim=8 if tiny else 64, qk_nope_head_dim=8 if tiny else 128,
                                  v_head_dim=8 if tiny else 128, max_position_embeddings=512 if tiny else 8192,
                                  use_cache=False)
        return DeepseekV3ForCausalLM(config).to(device=device, dtype=dtype).eval()

    del torch
    return [("mixtral", mixtral), ("deepseek-v3", deepseek_v3)]


def workloads(args):
    """(name, batch, seq, capture in a CUDA graph too)."""
    if args.smoke:
        return [("decode b1", 1, 1, False), ("decode b4", 4, 1, False), ("prefill 64", 1, 64, False)]
    return [("decode b1", 1, 1, True), ("decode b8", 8, 1, True), ("decode b64", 64, 1, True),
            ("prefill 2k", 1, 2048, False), ("prefill 8k", 1, 8192, False)]


class Timer:
    """Milliseconds of a stretch of device work (CUDA events), or wall time on the CPU."""

    def __init__(self, cuda):
        self.cuda = cuda

    def __call__(self, fn, n):
        import torch
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / n
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return 1000.0 * (time.perf_counter() - t0) / n


def count_syncs(fn):
    """Syncing aten ops run on this thread during fn() (a dispatch mode is per thread)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.syncs = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = str(func)
            to_host = name.startswith("aten._to_copy") and str(kwargs.get("device", "")) == "cpu" \
                and args and getattr(args[0], "is_cuda", False)
            if name.startswith(SYNCING_OPS) or to_host:
                self.syncs.append(name)
            return func(*args, **kwargs)

    with Count() as mode:
        fn()
    return mode.syncs


def main():
    args = parse_args()
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        why = "no GPU here: torch.cuda.is_available() is False (torch %s)" % torch.__version__
        print("gpu: not measured, " + why)
        result = {"benchmark": "gpu", "title": "GPU overhead", "measured": False, "reason": why,
                  "metrics": [{"metric": "probe overhead on a GPU", "value": "not measured", "unit": "",
                               "note": why + "; run npm run bench on a machine with one"}]}
        if args.json:
            write_json(args.json, result)
        return 0

    socket_dir = tempfile.mkdtemp(prefix="moe-bench-gpu-")
    os.environ["MOE_DEVTOOLS_SOCKET_DIR"] = socket_dir
    import transformers
    import moe_probe
    from bench_probe_overhead import Consumer, hook_count, wait_for

    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16
    gpu = torch.cuda.get_device_name(0) if cuda else "none (--smoke on the CPU)"
    timer = Timer(cuda)
    print("gpu: %s, torch %s, transformers %s, %d layers per model, %d rounds x %d passes"
          % (gpu, torch.__version__, transformers.__version__, args.layers, args.rounds, args.passes), flush=True)
    rows = []
    consumer = Consumer()
    try:
        for model_name, build in model_shapes(args):
            torch.manual_seed(0)
            model = build(dtype, device)
            bare = hook_count(model)
            path = moe_probe.attach(model)
            layers = moe_probe.find_moe_layers(model)
            routed_per_token = sum(layer.top_k for layer in layers)

            def attached(on, flush_interval_s=None):
                server = moe_probe.current_server()
                if flush_interval_s is not None:
                    server.settings.flush_interval_s = flush_interval_s
                if on:
                    hello = consumer.connect(path)
                    if hello.get("error"):
                        raise SystemExit("bench_gpu: %s: %r" % (model_name, hello["error"]))
                    wait_for(lambda: hook_count(model) > bare, 10, "the probe's hooks")
                else:
                    stats = consumer.detach()
                    wait_for(lambda: hook_count(model) == bare, 10, "the probe to remove its hooks")
                    return stats

            for work, batch, seq, graphs in workloads(args):
                x = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)

                def forward():
                    with torch.no_grad():
                        return model(x).logits

                forward()  # warm (kernels, allocator)
                routed_per_pass = batch * seq * routed_per_token
                row = {"model": model_name, "workload": work, "tokens": batch * seq}
                exact = True
                # eager: alternating rounds
                ratios, without, with_ = [], [], []
                for r in range(args.rounds):
                    result = {}
                    for side in (("without", "with") if r % 2 == 0 else ("with", "without")):
                        if side == "with":
                            attached(True, 0.03)
                        result[side] = timer(forward, args.passes)
                        if side == "with":
                            stats = attached(False)
                            exact = exact and stats["passes"] == args.passes and stats["routed"] == args.passes * routed_per_pass
                    without.append(result["without"])
                    with_.append(result["with"])
                    ratios.append(result["without"] / result["with"])
                row.update(eager_counts_exact=exact, eager_without_ms=statistics.median(without), eager_with_ms=statistics.median(with_),
                           eager_ratio=statistics.median(ratios), eager_ratio_min=min(ratios), eager_ratio_max=max(ratios))
                # host syncs on the job's thread during one pass
                base_syncs = count_syncs(forward)
                attached(True)
                probe_syncs = count_syncs(forward)
                # the sender's effect: snapshots every 30 ms against none
                with_snapshots = timer(forward, args.passes)
                moe_probe.current_server().settings.flush_interval_s = 3600.0
                without_snapshots = timer(forward, args.passes)
                attached(False, 0.03)
                row.update(syncs_without=len(base_syncs), syncs_with=len(probe_syncs),
                           probe_syncs=sorted(set(probe_syncs) - set(base_syncs)),
                           sender_ratio=without_snapshots / with_snapshots)
                if graphs and cuda:
                    row.update(graph_rows(model, x, timer, args, attached, routed_per_pass))
                rows.append(row)
                print("  %-12s %-11s eager %8.3f -> %8.3f ms/pass (ratio %.4f, %.4f..%.4f; counts %s); syncs in the forward "
                      "%d -> %d; sender %.4f%s" % (model_name, work, row["eager_without_ms"], row["eager_with_ms"],
                                                   row["eager_ratio"], row["eager_ratio_min"], row["eager_ratio_max"],
                                                   "exact" if exact else "WRONG", row["syncs_without"],
                                                   row["syncs_with"], row["sender_ratio"],
                                         "" if "graph_ratio" not in row else "; CUDA graph %.3f -> %.3f ms/replay (ratio %.4f)"
                                         % (row["graph_without_ms"], row["graph_with_ms"], row["graph_ratio"])), flush=True)
            moe_probe.detach()
            del model
            if cuda:
                torch.cuda.empty_cache()
    finally:
        consumer.close()
        moe_probe.detach()

    metrics = []
    worst = min(r["eager_ratio"] for r in rows)
    added_syncs = sum(r["syncs_with"] - r["syncs_without"] for r in rows)
    for r in rows:
        metrics.append({"metric": "%s %s eager, speed with/without" % (r["model"], r["workload"]), "value": r["eager_ratio"],
                        "unit": "", "digits": 4, "target": ">= %.2f" % TARGET_RATIO,
                        "pass": (r["eager_ratio"] >= TARGET_RATIO) if cuda else None,
                        "note": "%.3f -> %.3f ms/pass (rounds %.4f..%.4f), counts %s"
                                % (r["eager_without_ms"], r["eager_with_ms"], r["eager_ratio_min"], r["eager_ratio_max"],
                                   "exact" if r["eager_counts_exact"] else "WRONG")})
        if "graph_ratio" in r:
            metrics.append({"metric": "%s %s CUDA graph, speed with/without" % (r["model"], r["workload"]),
                            "value": r["graph_ratio"], "unit": "", "digits": 4, "target": ">= %.2f" % TARGET_RATIO,
                            "pass": r["graph_ratio"] >= TARGET_RATIO,
                            "note": "%.3f -> %.3f ms/replay (%.3f detached); graph captured while attached: counts %s, "
                                    "outputs %s" % (r["graph_without_ms"], r["graph_with_ms"], r["graph_detached_ms"],
                                                    "exact" if r["graph_counts_exact"] else "WRONG",
                                                    "identical" if r["graph_outputs_identical"] else "DIFFERENT")})
        elif "graph_error" in r:
            metrics.append({"metric": "%s %s CUDA graph" % (r["model"], r["workload"]), "value": "not captured",
                            "unit": "", "note": r["graph_error"][:200]})
    metrics.append({"metric": "host syncs the probe adds in the forward", "value": added_syncs, "unit": "", "target": "0",
                    "pass": added_syncs == 0, "note": "syncing aten ops on the job's thread, every model and workload"})
    metrics.append({"metric": "sender thread: speed with snapshots / without", "value": min(r["sender_ratio"] for r in rows),
                    "unit": "", "digits": 4, "note": "worst over models and workloads (snapshots every 30 ms vs never)"})
    result = {"benchmark": "gpu", "title": "GPU overhead" if cuda else "GPU overhead (smoke run on the CPU: no figures)",
              "measured": bool(cuda), "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
              "rows": rows, "worst_eager_ratio": worst, "metrics": metrics if cuda else [
                  {"metric": "smoke run", "value": "ok", "unit": "", "note": "%d rows on the CPU; not GPU figures" % len(rows)}]}
    if args.json:
        write_json(args.json, result)
    try:
        os.rmdir(socket_dir)
    except OSError:
        pass
    return 0


def graph_rows(model, x, timer, args, attached, routed_per_pass):
    """Replays of a graph captured before attaching (the job's baseline, also timed detached) against
    replays of one captured while attached (its captured counting runs at every replay), in
    alternating rounds within one attached session; then whether the probe counted them exactly."""
    import torch

    def capture():
        static = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):  # warm-up, eager: seen by the probe when attached
                model(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            out = model(static).logits
        return graph, out

    try:
        plain, plain_out = capture()
    except Exception as exc:  # the model cannot be captured (data-dependent shapes, host syncs): say so
        return {"graph_error": "%s: %s" % (type(exc).__name__, exc)}
    detached_ms = timer(plain.replay, args.passes)
    attached(True)
    try:
        probed, probed_out = capture()
    except Exception as exc:
        attached(False)
        return {"graph_error": "captured while attached: %s: %s" % (type(exc).__name__, exc)}
    without, with_ = [], []
    for r in range(args.rounds):
        for side in (("without", "with") if r % 2 == 0 else ("with", "without")):
            (without if side == "without" else with_).append(
                timer(plain.replay if side == "without" else probed.replay, args.passes))
    torch.cuda.synchronize()
    stats = attached(False)
    passes = 2 + args.rounds * args.passes  # the eager warm-up passes and the replays (not the capture)
    return {"graph_without_ms": statistics.median(without), "graph_with_ms": statistics.median(with_),
            "graph_detached_ms": detached_ms, "graph_ratio": statistics.median(without) / statistics.median(with_),
            "graph_counts_exact": stats["passes"] == passes and stats["routed"] == passes * routed_per_pass,
            "graph_outputs_identical": bool(torch.equal(plain_out, probed_out))}


def write_json(path, result):
    import json
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
