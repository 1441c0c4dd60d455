"""torch.compile: what attaching the probe to a compiled model costs, and what detaching leaves.

One process, one Mixtral compiled with torch.compile (inductor, CPU), one input batch, the
probe started with `moe_probe.attach(model)` and a reader in a separate process playing the
host (scripts/bench_probe_overhead.py's consumer). Measured side by side in this run:

1. The job as it runs: the first compilation, then 100 passes before attaching (per-pass
   milliseconds); attach: the first pass after it (it waits for the recompilation that puts
   the probe's hooks into the compiled code; dynamo's graph count and the probe's own report
   of it); 100 passes attached; detach: the first pass after it and the next 100 passes, to
   compare with the 100 before attaching; no recompilation may happen at detach.
2. Rounds alternating 100 passes without and with the probe (re-attaching each time: no
   recompilation expected), for the steady-state overhead and the machine's noise.
3. The alternatives: the hooks traced as graph breaks (each tap splits the graph and runs in
   Python; never chosen by the probe, since a graph break fails a job compiled with
   fullgraph=True), and the eager model with the probe (what reading would cost if the probe
   could not read compiled code).

Every pass's logits are compared bit for bit with the compiled model's own output without the
probe; every attached session's counts with passes x tokens x top-k x layers.

    .venv/bin/python scripts/bench_compile.py [--quick] [--json OUT]
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

from bench_probe_overhead import Consumer, hook_count, wait_for  # noqa: E402

TARGET_AFTER_RATIO = 0.97  # detached, the job runs at least this fast as before attaching (noise allowance)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller model and fewer passes, for development")
    p.add_argument("--json", help="write the results here as JSON")
    p.add_argument("--passes", type=int, help="passes per measured stretch (default 100)")
    p.add_argument("--rounds", type=int, help="alternating rounds without/with after the first cycle")
    p.add_argument("--threads", type=int, help="torch threads (default: every core this process may use)")
    args = p.parse_args()
    full = dict(hidden=512, layers=4, experts=8, top_k=2, vocab=8192, batch=4, seq=128, passes=100, rounds=4)
    quick = dict(hidden=128, layers=2, experts=8, top_k=2, vocab=1024, batch=2, seq=32, passes=30, rounds=2)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return args


def unique_graphs():
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def graph_breaks():
    from torch._dynamo.utils import counters
    return sum(counters["graph_break"].values())


def stats_ms(times):
    ms = sorted(1000.0 * t for t in times)
    return {"median": statistics.median(ms), "mean": statistics.fmean(ms), "min": ms[0], "max": ms[-1], "n": len(ms)}


def main():
    args = parse_args()
    socket_dir = tempfile.mkdtemp(prefix="moe-bench-compile-")
    os.environ["MOE_DEVTOOLS_SOCKET_DIR"] = socket_dir

    import torch
    import transformers
    from transformers import MixtralConfig, MixtralForCausalLM

    import moe_probe
    from moe_probe import compiled as probe_compiled

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                           num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                           num_key_value_heads=max(1, args.hidden // 128), num_local_experts=args.experts,
                           num_experts_per_tok=args.top_k, max_position_embeddings=max(512, args.seq))
    model = MixtralForCausalLM(config).eval()
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    routed_per_pass = args.batch * args.seq * args.top_k * args.layers
    job = torch.compile(model)  # inductor, as a job would

    print("compile: MixtralForCausalLM hidden %d, %d layers, %d experts top-%d, vocab %d, batch %d x %d, %d threads, "
          "torch %s (inductor, CPU)" % (args.hidden, args.layers, args.experts, args.top_k, args.vocab, args.batch,
                                        args.seq, args.threads, torch.__version__), flush=True)
    identical = {"ok": True}

    cpu = {}  # id(list of wall times) -> CPU times of the same passes

    def run(n, call=None, reference=None):
        """Wall-clock seconds of n passes (their CPU seconds, this process's threads together, in cpu[id])."""
        call = call or job
        times, cpu_times = [], []
        for _ in range(n):
            c0 = time.process_time()
            t0 = time.perf_counter()
            with torch.no_grad():
                logits = call(x).logits
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
            if reference is not None and not torch.equal(logits, reference):
                identical["ok"] = False
        cpu[id(times)] = cpu_times
        return times

    def cpu_ms(times):
        return stats_ms(cpu[id(times)])

    t0 = time.perf_counter()
    with torch.no_grad():
        reference = job(x).logits
    first_compile_s = time.perf_counter() - t0
    print("  first compilation (the job's own, before any attach): %.1f s" % first_compile_s, flush=True)
    run(3, reference=reference)  # warm

    path = moe_probe.attach(model)
    consumer = Consumer()
    bare_hooks = hook_count(model)
    exact = {"ok": True}
    sessions = []

    def attach():
        hello = consumer.connect(path)
        if hello.get("error") or hello.get("layers") != args.layers:
            raise SystemExit("bench_compile: the probe did not find the model's layers: %r" % hello)
        wait_for(lambda: hook_count(model) > bare_hooks, 10, "the probe's hooks")

    def detach(passes):
        session = moe_probe.current_server().session
        watch = session.pass_watch.compile_watch  # torch jobs: pass_visibility.PassWatch
        watch.poll()
        reported = {"tap_compiles": watch.tap_compiles, "tap_compile_s": watch.tap_compile_s,
                    "graph_breaks": watch.graph_breaks, "compiled_passes": session.recorders[0].compiled_passes}
        stats = consumer.detach()
        wait_for(lambda: hook_count(model) == bare_hooks, 10, "the probe to remove its hooks")
        if stats["errors"] or stats["passes"] != passes or stats["routed"] != passes * routed_per_pass:
            exact["ok"] = False
            print("  !! the reader saw: %s" % {k: v for k, v in stats.items() if k != "latency_ms"})
        sessions.append(reported)
        return reported

    try:
        # 1. before, attach (recompiles), attached, detach, after
        before = run(args.passes, reference=reference)
        graphs = unique_graphs()
        attach()
        first_attached = run(1, reference=reference)[0]
        attach_graphs = unique_graphs() - graphs
        attached = run(args.passes, reference=reference)
        reported = detach(1 + args.passes)
        graphs = unique_graphs()
        first = run(1, reference=reference)
        rest = run(args.passes - 1, reference=reference)
        first_after = first[0]
        after = first + rest
        cpu[id(after)] = cpu[id(first)] + cpu[id(rest)]
        detach_graphs = unique_graphs() - graphs
        print("  before attach:   %d passes, median %.2f ms/pass (CPU %.2f ms)" % (len(before), stats_ms(before)["median"],
                                                                              cpu_ms(before)["median"]))
        print("  attach: first pass %.2f s; graphs compiled %d (probe says %d compilation(s), %.2f s), graph breaks %d"
              % (first_attached, attach_graphs, reported["tap_compiles"], reported["tap_compile_s"], reported["graph_breaks"]))
        print("  attached:        %d passes, median %.2f ms/pass (CPU %.2f ms)" % (len(attached), stats_ms(attached)["median"],
                                                                              cpu_ms(attached)["median"]))
        print("  after detach:    %d passes, median %.2f ms/pass (CPU %.2f ms; first pass %.2f ms); graphs compiled at "
              "detach: %d" % (len(after), stats_ms(after)["median"], cpu_ms(after)["median"], 1000 * first_after,
                              detach_graphs), flush=True)

        # 2. alternating rounds, re-attaching each time
        rounds = []
        reattach_graphs = 0
        for r in range(args.rounds):
            result = {}
            for side in (("without", "with") if r % 2 == 0 else ("with", "without")):
                if side == "with":
                    graphs = unique_graphs()
                    attach()
                    times = run(args.passes, reference=reference)
                    reattach_graphs += unique_graphs() - graphs
                    detach(args.passes)
                else:
                    times = run(args.passes, reference=reference)
                result[side] = stats_ms(times)["median"]
                result[side + "_cpu"] = cpu_ms(times)["median"]
            result["ratio"] = result["without"] / result["with"]  # speed with / speed without
            result["cpu_ratio"] = result["without_cpu"] / result["with_cpu"]
            rounds.append(result)
            print("  round %d: without %.2f ms/pass, with %.2f ms/pass, speed ratio %.4f (CPU time: %.2f vs %.2f ms, %.4f)"
                  % (r + 1, result["without"], result["with"], result["ratio"], result["without_cpu"], result["with_cpu"],
                     result["cpu_ratio"]), flush=True)

        # 3. alternatives: taps as graph breaks, and the eager model
        probe_compiled.TAP_MODE = "graph-break"
        graphs, breaks = unique_graphs(), graph_breaks()
        attach()
        gb_first = run(1, reference=reference)[0]
        gb_graphs, gb_breaks = unique_graphs() - graphs, graph_breaks() - breaks
        gb_with = run(args.passes, reference=reference)
        detach(1 + args.passes)
        graphs = unique_graphs()
        gb_without = run(args.passes, reference=reference)
        gb_detach_graphs = unique_graphs() - graphs
        probe_compiled.TAP_MODE = "op"
        print("  alternative, hooks as graph breaks: first pass %.2f s, graphs compiled %d, graph breaks %d; "
              "%.2f ms/pass attached vs %.2f without; graphs compiled at detach %d"
              % (gb_first, gb_graphs, gb_breaks, stats_ms(gb_with)["median"], stats_ms(gb_without)["median"],
                 gb_detach_graphs), flush=True)
        with torch.no_grad():
            eager_reference = model(x).logits
        eager_without = run(args.passes, call=model, reference=eager_reference)
        attach()
        eager_with = run(args.passes, call=model, reference=eager_reference)
        detach(args.passes)
        print("  alternative, the eager model: %.2f ms/pass with the probe, %.2f without"
              % (stats_ms(eager_with)["median"], stats_ms(eager_without)["median"]), flush=True)
    finally:
        consumer.close()
        moe_probe.detach()

    before_s, attached_s, after_s = stats_ms(before), stats_ms(attached), stats_ms(after)
    after_ratio = before_s["median"] / after_s["median"]  # speed after / speed before
    after_cpu_ratio = cpu_ms(before)["median"] / cpu_ms(after)["median"]
    cpu_ratio = statistics.median(r["cpu_ratio"] for r in rounds)
    ratio = {"median": statistics.median(r["ratio"] for r in rounds), "min": min(r["ratio"] for r in rounds),
             "max": max(r["ratio"] for r in rounds)}
    without_rounds = [r["without"] for r in rounds]
    noise = (max(without_rounds) - min(without_rounds)) / statistics.median(without_rounds)
    conclusive = noise <= 2 * (1 - TARGET_AFTER_RATIO)
    slowdown = (1 - ratio["median"]) * 100
    no_recompile = detach_graphs == 0 and reattach_graphs == 0
    bitwise = identical["ok"]
    verdict = ("pass" if after_ratio >= TARGET_AFTER_RATIO else "FAIL") if conclusive else "inconclusive (noisy machine)"
    print("  after detach vs before attach: speed ratio %.4f (target >= %.2f: %s; rounds without the probe spread %.1f %%); "
          "CPU-time ratio %.4f" % (after_ratio, TARGET_AFTER_RATIO, verdict, 100 * noise, after_cpu_ratio))
    print("  steady state attached: speed ratio with/without median %.4f (min %.4f, max %.4f) -> slowdown %.2f %%; "
          "CPU-time ratio %.4f" % (ratio["median"], ratio["min"], ratio["max"], slowdown, cpu_ratio))
    print("  recompilations: %d at the first attach, %d at detach, %d at %d re-attaches; logits bitwise identical: %s; "
          "counts exact: %s" % (attach_graphs, detach_graphs, reattach_graphs, args.rounds, "yes" if bitwise else "NO",
                                "yes" if exact["ok"] else "NO"))

    metrics = [
        {"metric": "first compilation (the job's own)", "value": first_compile_s, "unit": "s", "digits": 1,
         "note": "torch.compile(model), inductor, before any attach"},
        {"metric": "attach: recompilations", "value": attach_graphs, "unit": "", "target": "1",
         "pass": attach_graphs == 1, "note": "graphs dynamo compiled at the first attach; the probe reported %d, "
                                             "graph breaks %d" % (reported["tap_compiles"], reported["graph_breaks"])},
        {"metric": "attach: first pass (waits for the recompilation)", "value": first_attached, "unit": "s", "digits": 2,
         "note": "probe's own measure of the recompilation: %.2f s" % reported["tap_compile_s"]},
        {"metric": "per pass before attach", "value": before_s["median"], "unit": "ms", "digits": 2,
         "note": "median of %d passes (mean %.2f)" % (before_s["n"], before_s["mean"])},
        {"metric": "per pass attached", "value": attached_s["median"], "unit": "ms", "digits": 2,
         "note": "median of %d passes (mean %.2f)" % (attached_s["n"], attached_s["mean"])},
        {"metric": "per pass, the next passes after detach", "value": after_s["median"], "unit": "ms", "digits": 2,
         "note": "median of %d passes (mean %.2f, first %.2f ms)" % (after_s["n"], after_s["mean"], 1000 * first_after)},
        {"metric": "speed after detach / before attach", "value": after_ratio, "unit": "", "digits": 4,
         "target": ">= %.2f" % TARGET_AFTER_RATIO, "pass": (after_ratio >= TARGET_AFTER_RATIO) if conclusive else None,
         "inconclusive": not conclusive,
         "note": "medians of %d passes each; rounds without the probe spread %.1f %%; CPU-time ratio %.4f"
                 % (args.passes, 100 * noise, after_cpu_ratio)},
        {"metric": "recompilations at detach and re-attach", "value": detach_graphs + reattach_graphs, "unit": "",
         "target": "0", "pass": no_recompile, "note": "detach %d, %d re-attaches %d" % (detach_graphs, args.rounds, reattach_graphs)},
        {"metric": "steady-state speed with/without", "value": ratio["median"], "unit": "", "digits": 4,
         "note": "median of %d alternating rounds (min %.4f, max %.4f): slowdown %.2f %%; CPU-time ratio %.4f"
                 % (args.rounds, ratio["min"], ratio["max"], slowdown, cpu_ratio)},
        {"metric": "alternative: taps as graph breaks", "value": stats_ms(gb_with)["median"], "unit": "ms", "digits": 2,
         "note": "per pass attached (%.2f without); attach compiled %d graphs with %d breaks, first pass %.1f s"
                 % (stats_ms(gb_without)["median"], gb_graphs, gb_breaks, gb_first)},
        {"metric": "alternative: the eager model with the probe", "value": stats_ms(eager_with)["median"], "unit": "ms",
         "digits": 2, "note": "per pass (%.2f without the probe)" % stats_ms(eager_without)["median"]},
        {"metric": "logits bitwise identical", "value": "yes" if bitwise else "no", "unit": "", "target": "yes",
         "pass": bitwise, "note": "every pass vs the compiled model's own output without the probe"},
        {"metric": "routing counted exactly", "value": "yes" if exact["ok"] else "no", "unit": "", "target": "yes",
         "pass": exact["ok"], "note": "%d sessions, %d assignments per pass" % (len(sessions), routed_per_pass)},
    ]
    result = {
        "benchmark": "compile",
        "title": "torch.compile (CPU, inductor)",
        "description": ("A random-weight MixtralForCausalLM (hidden %d, %d layers, %d experts top-%d, batch %d x %d) "
                        "under torch.compile (inductor) in one process; %d passes before attaching, attached, and "
                        "after detaching, then %d rounds alternating without/with (re-attaching each time), then "
                        "the hooks as graph breaks and the eager model; medians of per-pass times, logits compared "
                        "bit for bit." % (args.hidden, args.layers, args.experts, args.top_k, args.batch, args.seq,
                                          args.passes, args.rounds)),
        "quick": args.quick,
        "config": {"hidden": args.hidden, "layers": args.layers, "experts": args.experts, "top_k": args.top_k,
                   "vocab": args.vocab, "batch": args.batch, "seq": args.seq, "passes": args.passes,
                   "rounds": args.rounds, "threads": args.threads, "torch": torch.__version__,
                   "transformers": transformers.__version__, "python": platform.python_version()},
        "before_ms": before_s, "attached_ms": attached_s, "after_ms": after_s, "rounds": rounds,
        "sessions": sessions, "metrics": metrics,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        import json
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    try:
        os.rmdir(socket_dir)
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
