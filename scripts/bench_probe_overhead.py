"""Probe overhead: forward throughput of a Mixtral model with and without the probe attached.

One process, one model, one input batch. The probe server is started with
`moe_probe.attach(model)` (as a script that made itself attachable would) and
stays listening for the whole run. A consumer in a separate process plays the
host: for each "with" round it connects to the probe's socket, reads and decodes
every frame, and at the end sends {"t": "detach"}, after which the probe removes
its hooks; it reconnects for the next "with" round. So "with probe" includes the
hooks, the device counters and the probe's sender thread, and "without" is the
probe listening with nobody connected (no hooks in the model).

Rounds alternate their order (without/with, then with/without, ...) so slow drift
of the machine's load hits both sides alike. Reported: tokens/s of each side and
the ratio with/without per round (median, min, max over rounds), whether every
pass's logits are bitwise identical to a reference pass, and whether the probe
counted exactly tokens x top_k x layers routing decisions per pass.

    .venv/bin/python scripts/bench_probe_overhead.py [--quick] [--json OUT]
"""

import argparse
import faulthandler
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_DIR = os.path.join(ROOT, "native-host")

TARGET_RATIO = 0.95  # the target: slowdown under 5 % on CPU at default probe settings

# The consumer: a separate process that reads the probe's socket like the host does
# (length-prefixed MessagePack frames, decoded), driven by lines on its stdin.
# It imports only the probe's standard-library MessagePack module, not torch.
CONSUMER = r'''
import faulthandler, importlib.util, json, signal, socket, struct, sys, threading, time
faulthandler.register(signal.SIGUSR1)
spec = importlib.util.spec_from_file_location("probe_msgpack", sys.argv[1])
mp = importlib.util.module_from_spec(spec); spec.loader.exec_module(mp)
LEN = struct.Struct("<I")

def frame(msg):
    body = mp.packb(msg)
    return LEN.pack(len(body)) + body

class Conn:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = bytearray()
        self.stats = {"frames": 0, "bytes": 0, "counts_frames": 0, "passes": 0, "routed": 0,
                      "dropped": 0, "probe_s": None, "bye": False, "latency_ms": [], "errors": []}

    def read_frame(self):
        while True:
            if len(self.buf) >= 4:
                (n,) = LEN.unpack_from(self.buf, 0)
                if len(self.buf) >= 4 + n:
                    body = bytes(self.buf[4:4 + n]); del self.buf[:4 + n]
                    self.stats["frames"] += 1; self.stats["bytes"] += 4 + n
                    return mp.unpackb(body)
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data

    def pump(self):
        try:
            while True:
                msg = self.read_frame()
                if msg is None:
                    return
                t = msg.get("t")
                if t == "counts":
                    s = self.stats
                    s["counts_frames"] += 1
                    s["passes"] = msg["passes"]
                    s["dropped"] = msg["dropped"]
                    raw = msg["counts"]
                    s["routed"] = sum(struct.unpack("<%dq" % (len(raw) // 8), raw))
                    s["latency_ms"].append((time.time() - msg["ts"]) * 1000.0)
                    s["probe_s"] = msg.get("probe_s")  # the probe's own time in hooks, since attach
                elif t == "error":
                    self.stats["errors"].append(msg.get("message"))
                elif t == "bye":
                    self.stats["bye"] = True
                    return
        except OSError as exc:
            self.stats["errors"].append(str(exc))

conn = None
for line in sys.stdin:
    cmd = line.strip().split(" ", 1)
    if cmd[0] == "connect":
        conn = Conn(cmd[1].strip())
        hello = conn.read_frame()
        layers = sum(len(m["layers"]) for m in hello.get("models", []))
        print(json.dumps({"hello": True, "models": len(hello.get("models", [])), "layers": layers,
                          "error": hello.get("error")}), flush=True)
        thread = threading.Thread(target=conn.pump, daemon=True); thread.start()
    elif cmd[0] == "detach":
        conn.sock.sendall(frame({"t": "detach"}))
        thread.join(timeout=15)
        conn.sock.close()
        print(json.dumps(conn.stats), flush=True)
        conn = None
    elif cmd[0] == "quit":
        break
'''


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small model and short rounds, for development")
    p.add_argument("--hidden", type=int)
    p.add_argument("--intermediate", type=int, help="expert FFN size (default 2 x hidden)")
    p.add_argument("--layers", type=int)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--heads", type=int, help="attention heads (default hidden / 64)")
    p.add_argument("--kv-heads", type=int, help="key/value heads (default heads / 2)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default 32000, Mixtral's)")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--rounds", type=int, help="rounds of (without, with) in alternating order")
    p.add_argument("--passes", type=int, help="forward passes per side per round")
    p.add_argument("--threads", type=int, help="torch threads (default: every core this process may use)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here as JSON")
    args = p.parse_args()
    full = dict(hidden=1024, layers=8, vocab=32000, batch=8, seq=256, rounds=6, passes=1)
    quick = dict(hidden=256, layers=4, vocab=4096, batch=4, seq=128, rounds=4, passes=6)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.intermediate is None:
        args.intermediate = 2 * args.hidden
    if args.heads is None:
        args.heads = max(1, args.hidden // 64)
    if args.kv_heads is None:
        args.kv_heads = max(1, args.heads // 2)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return args


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("bench_probe_overhead: timed out waiting for " + what)
        time.sleep(0.005)


class Consumer:
    """The host's stand-in, in its own process."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONSUMER, os.path.join(PROBE_DIR, "moe_probe", "msgpack.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def _ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise SystemExit("bench_probe_overhead: the consumer process died (exit %s)" % self.proc.poll())
        return json.loads(reply)

    def connect(self, path):
        return self._ask("connect " + path)

    def detach(self):
        return self._ask("detach")

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=10)


def probe_settings():
    """The probe's default settings, which are what this benchmark measures."""
    try:
        from moe_probe.recorder import Settings
        return Settings().describe()
    except Exception:  # an older probe without Settings
        return {}


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main():
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid> prints where a stuck run is
    args = parse_args()
    socket_dir = tempfile.mkdtemp(prefix="moe-bench-")
    os.environ["MOE_DEVTOOLS_SOCKET_DIR"] = socket_dir
    sys.path.insert(0, PROBE_DIR)

    import torch
    import transformers
    from transformers import MixtralConfig, MixtralForCausalLM
    import moe_probe

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = MixtralConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        num_local_experts=args.experts, num_experts_per_tok=args.top_k,
        max_position_embeddings=max(args.seq, 512))
    t0 = time.perf_counter()
    model = MixtralForCausalLM(config).eval()
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    tokens = args.batch * args.seq
    routed_per_pass = tokens * args.top_k * args.layers
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(args.seed + 1))

    print("probe overhead: MixtralForCausalLM hidden %d, intermediate %d, %d layers, %d experts top-%d, "
          "%d heads / %d kv heads, vocab %d, %.0fM params (fp32, built in %.1f s)"
          % (args.hidden, args.intermediate, args.layers, args.experts, args.top_k, args.heads,
             args.kv_heads, args.vocab, params / 1e6, build_s))
    print("  batch %d x %d tokens, %d torch threads, %d rounds x %d passes per side, torch %s, transformers %s"
          % (args.batch, args.seq, args.threads, args.rounds, args.passes, torch.__version__,
             transformers.__version__), flush=True)

    def forward():
        with torch.no_grad():
            return model(x).logits

    # Warm-up pass, which is also the reference output every later pass must match bit for bit.
    t0 = time.perf_counter()
    reference = forward()
    print("  warm-up pass: %.2f s" % (time.perf_counter() - t0), flush=True)

    bare_hooks = hook_count(model)
    path = moe_probe.attach(model)
    consumer = Consumer()
    rounds = []
    identical = {"without": True, "with": True}
    exact_counts = True
    frames_total = 0
    latencies = []
    probe_share = []  # the probe's own hook time (it measures it) / the with-round's time
    try:
        def run_side(side):
            nonlocal exact_counts, frames_total
            stats = None
            if side == "with":
                hello = consumer.connect(path)
                if hello.get("error") or hello.get("layers") != args.layers:
                    raise SystemExit("bench_probe_overhead: the probe did not find the model's MoE layers: %r" % hello)
                wait_for(lambda: hook_count(model) > bare_hooks, 10, "the probe's hooks")
            times = []
            cpu = 0.0  # CPU time of every thread of this process during the passes, the probe's included
            for _ in range(args.passes):
                c0 = time.process_time()
                t0 = time.perf_counter()
                logits = forward()
                times.append(time.perf_counter() - t0)
                cpu += time.process_time() - c0
                if not torch.equal(logits, reference):
                    identical[side] = False
                del logits
            if side == "with":
                stats = consumer.detach()
                wait_for(lambda: hook_count(model) == bare_hooks, 10, "the probe to remove its hooks")
                frames_total += stats["frames"]
                if stats.get("probe_s") is not None:
                    probe_share.append(stats["probe_s"] / sum(times))
                latencies.extend(stats["latency_ms"])
                if (not stats["bye"] or stats["errors"] or stats["passes"] != args.passes
                        or stats["routed"] != args.passes * routed_per_pass):
                    exact_counts = False
                    print("  !! consumer saw: %s" % {k: v for k, v in stats.items() if k != "latency_ms"})
            return sum(times), cpu, stats

        for r in range(args.rounds):
            order = ("without", "with") if r % 2 == 0 else ("with", "without")
            result = {"order": "/".join(order)}
            for side in order:
                elapsed, cpu, stats = run_side(side)
                result[side + "_s"] = elapsed
                result[side + "_cpu_s"] = cpu
                result[side + "_tok_s"] = args.passes * tokens / elapsed
                if stats is not None:
                    result["frames"] = stats["frames"]
            result["ratio"] = result["with_tok_s"] / result["without_tok_s"]
            result["cpu_ratio"] = result["without_cpu_s"] / result["with_cpu_s"]  # tokens per CPU-second, with / without
            rounds.append(result)
            print("  round %d (%-11s): without %8.0f tok/s   with %8.0f tok/s   ratio %.4f   (%d frames)"
                  % (r + 1, result["order"], result["without_tok_s"], result["with_tok_s"], result["ratio"],
                     result.get("frames", 0)), flush=True)
    finally:
        consumer.close()
        moe_probe.detach()

    without = summary([r["without_tok_s"] for r in rounds])
    with_ = summary([r["with_tok_s"] for r in rounds])
    ratio = summary([r["ratio"] for r in rounds])
    cpu_ratio = summary([r["cpu_ratio"] for r in rounds])
    # When the rounds disagree by more than twice the 5 % being tested for, the machine is
    # too noisy (other processes on the CPU) for the median to say pass or fail.
    spread = ratio["max"] - ratio["min"]
    conclusive = len(rounds) < 3 or spread <= 2 * (1 - TARGET_RATIO)
    slowdown = (1.0 - ratio["median"]) * 100.0
    bitwise = identical["with"] and identical["without"]
    n_with = args.rounds * args.passes

    print("  tokens/s without probe: median %.0f (min %.0f, max %.0f)" % (without["median"], without["min"], without["max"]))
    print("  tokens/s with probe:    median %.0f (min %.0f, max %.0f)" % (with_["median"], with_["min"], with_["max"]))
    verdict = ("pass" if ratio["median"] >= TARGET_RATIO else "FAIL") if conclusive else \
        "inconclusive: the rounds spread over %.2f, the machine is too noisy" % spread
    print("  ratio with/without:     median %.4f (min %.4f, max %.4f) -> slowdown %.2f %% (target < 5 %%: %s)"
          % (ratio["median"], ratio["min"], ratio["max"], slowdown, verdict))
    print("  CPU-time ratio:         median %.4f (min %.4f, max %.4f) (tokens per CPU-second of this process, with / without)"
          % (cpu_ratio["median"], cpu_ratio["min"], cpu_ratio["max"]))
    print("  logits bitwise identical to the reference pass: with probe %s (%d passes), without %s"
          % ("yes" if identical["with"] else "NO", n_with, "yes" if identical["without"] else "NO"))
    print("  probe counted exactly %d routing decisions per pass: %s" % (routed_per_pass, "yes" if exact_counts else "NO"))
    if probe_share:
        print("  probe's own time in hooks (self-reported): median %.3f %% of the with-probe time"
              % (100 * statistics.median(probe_share)))
    if latencies:
        latencies.sort()
        print("  snapshot -> consumer latency: p50 %.1f ms, max %.1f ms (%d counts frames)"
              % (statistics.median(latencies), latencies[-1], len(latencies)))

    result = {
        "benchmark": "probe_overhead",
        "title": "Probe overhead (CPU forward throughput)",
        "description": ("Forward passes of a random-weight MixtralForCausalLM (hidden %d, %d layers, %d experts "
                        "top-%d, batch %d x %d, %d torch threads) in one process, alternating rounds of %d "
                        "pass(es) without and with the probe attached (moe_probe.attach(model), a reader in a "
                        "separate process connected, default probe settings); tokens/s medians over %d rounds, "
                        "logits compared bit for bit." % (args.hidden, args.layers, args.experts, args.top_k,
                                                          args.batch, args.seq, args.threads, args.passes,
                                                          args.rounds)),
        "quick": args.quick,
        "config": {
            "model": "MixtralForCausalLM (random weights, fp32, eval, no_grad)",
            "hidden": args.hidden, "intermediate": args.intermediate, "layers": args.layers,
            "experts": args.experts, "top_k": args.top_k, "heads": args.heads, "kv_heads": args.kv_heads,
            "vocab": args.vocab, "params": params, "batch": args.batch, "seq": args.seq,
            "rounds": args.rounds, "passes": args.passes, "threads": args.threads,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "probe_settings": probe_settings(),
        },
        "rounds": rounds,
        "without_tok_s": without,
        "with_tok_s": with_,
        "ratio": ratio,
        "ratio_conclusive": conclusive,
        "cpu_ratio": cpu_ratio,
        "slowdown_pct": slowdown,
        "bitwise_identical": {"with": identical["with"], "without": identical["without"], "passes_with": n_with},
        "exact_counts": exact_counts,
        "frames": frames_total,
        "probe_hook_time_share": summary(probe_share) if probe_share else None,
        "snapshot_latency_ms": ({"p50": statistics.median(latencies), "max": max(latencies), "n": len(latencies)}
                                if latencies else None),
        "metrics": [
            {"metric": "tokens/s without probe", "value": without["median"], "unit": "tok/s", "digits": 0,
             "note": "median of %d rounds (min %.0f, max %.0f)" % (args.rounds, without["min"], without["max"])},
            {"metric": "tokens/s with probe attached", "value": with_["median"], "unit": "tok/s", "digits": 0,
             "note": "median of %d rounds (min %.0f, max %.0f)" % (args.rounds, with_["min"], with_["max"])},
            {"metric": "throughput ratio with/without", "value": ratio["median"], "unit": "", "digits": 4,
             "target": ">= 0.95 (slowdown < 5 %)", "pass": (ratio["median"] >= TARGET_RATIO) if conclusive else None,
             "inconclusive": not conclusive,
             "note": "median of per-round ratios (min %.4f, max %.4f); slowdown %.2f %%%s"
                     % (ratio["min"], ratio["max"], slowdown,
                        "" if conclusive else "; rounds too far apart to decide (busy machine)")},
            {"metric": "CPU-time ratio with/without", "value": cpu_ratio["median"], "unit": "", "digits": 4,
             "note": "tokens per CPU-second of the job process (probe thread included); min %.4f, max %.4f"
                     % (cpu_ratio["min"], cpu_ratio["max"])},
            {"metric": "probe's own time in hooks", "value": 100 * statistics.median(probe_share) if probe_share else None,
             "unit": "%", "digits": 2, "note": "self-reported by the probe (probe_s), share of the with-probe time"},
            {"metric": "logits bitwise identical with probe", "value": "yes" if bitwise else "no", "unit": "",
             "target": "yes", "pass": bitwise, "note": "torch.equal vs. a pass without probe, %d passes" % n_with},
            {"metric": "routing counted exactly", "value": "yes" if exact_counts else "no", "unit": "",
             "target": "yes", "pass": exact_counts,
             "note": "%d tokens x top-%d x %d layers per pass" % (tokens, args.top_k, args.layers)},
        ],
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    try:
        os.rmdir(socket_dir)
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
