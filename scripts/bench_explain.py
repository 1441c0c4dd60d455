"""Cost of the probe's on-request analyses: one explanation and one expert-weight analysis.

For each model (the demo model, demo/model, in float32 as the demo job runs it; and a
Mixtral-shaped random model with hidden 1024, 8 layers, 8 experts top-2, as the probe-overhead
benchmark builds it), in one process:

  1. the probe is attached in library mode (moe_probe.attach) and a reader thread connects to its
     socket, as the host would; one forward pass of a [1, seq] prompt is sampled;
  2. expert-params: every MoE layer's weights, timed and measured as below (first, so that its
     figure is not helped by memory an explanation left in the allocator);
  3. explain: the request for the prompt's last token in the deepest MoE layer (the longest
     recomputation), its first expert, 32 integrated-gradient steps from a zero embedding, is sent
     and timed until the answer arrives; the process's peak resident memory is reset just before
     (/proc/self/clear_refs) and read after (VmHWM), so "peak extra memory" is what the request
     added at its highest; the probe's own figure (bytes saved for the backward at once) beside it;
  4. a forward pass after both must give bitwise the logits it gave before.

On a GPU the peak is torch.cuda.max_memory_allocated over the request instead (not measured
on this project's machines, which have none).

    .venv/bin/python scripts/bench_explain.py [--quick] [--json OUT]
"""

import argparse
import json
import os
import socket
import struct
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "native-host"))


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak():
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Reader:
    """The host's stand-in: reads the probe's frames on a thread of this process."""

    def __init__(self, path):
        from moe_probe import msgpack
        self.msgpack = msgpack
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.frames = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            buf += data
            while len(buf) >= 4:
                (n,) = struct.unpack("<I", buf[:4])
                if len(buf) < 4 + n:
                    break
                frame = self.msgpack.unpackb(buf[4:4 + n])
                buf = buf[4 + n:]
                with self.cond:
                    self.frames.append(frame)
                    self.cond.notify_all()

    def send(self, message):
        body = self.msgpack.packb(message)
        self.sock.sendall(struct.pack("<I", len(body)) + body)

    def wait(self, predicate, timeout=1800):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for frame in self.frames:
                    if predicate(frame):
                        return frame
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit("bench_explain: no answer in %d s" % timeout)
                self.cond.wait(left)


def measure(request, reader, done, cuda):
    """Send a request; seconds until `done` says the answer is complete, and the peak memory it added."""
    import torch
    before = rss_bytes()
    exact = reset_peak()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    reader.send(request)
    answer = reader.wait(done)
    seconds = time.perf_counter() - started
    extra = (peak_bytes() - before) if exact else None
    gpu_extra = (torch.cuda.max_memory_allocated() - gpu_before) if cuda else None
    return answer, seconds, extra, gpu_extra


def run_model(name, model, seq, steps, vocab):
    import torch
    import moe_probe
    cuda = next(model.parameters()).is_cuda
    ids = torch.randint(3, vocab, (1, seq), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference = model(ids).logits.clone()
    moe_probe.detach()
    reader = Reader(moe_probe.attach(model, token_passes_per_s=1000, flush_interval_s=0))
    hello = reader.wait(lambda f: f.get("t") == "hello")
    layers = hello["models"][0]["layers"]
    time.sleep(0.5)  # the probe's hooks go in right after its hello
    with torch.no_grad():
        model(ids)
    record = reader.wait(lambda f: f.get("t") == "tokens")
    last = len(layers) - 1
    k = record["layers"][last]["k"]
    chosen = struct.unpack("<%di" % (record["layers"][last]["n"] * k), record["layers"][last]["ids"])
    index = min(seq, record["n"]) - 1
    expert = chosen[index * k]
    n_layers = len(layers)
    params, params_s, params_extra, params_gpu = measure(
        {"t": "expert-params", "id": 2, "model": 0}, reader,
        lambda f: f.get("id") == 2 and (f.get("t") == "refused" or (f.get("t") == "expert-params" and f["part"] == n_layers - 1)),
        cuda)
    if params["t"] != "expert-params":
        raise SystemExit("bench_explain: the probe refused the expert analysis: %s" % params["message"])
    answer, explain_s, explain_extra, explain_gpu = measure(
        {"t": "explain", "id": 1, "model": 0, "pass": record["pass"], "index": index, "layer": last,
         "expert": expert, "steps": steps, "baseline": "zero", "max_seconds": 1800},
        reader, lambda f: f.get("id") == 1 and f.get("t") in ("explanation", "refused"), cuda)
    if answer["t"] != "explanation":
        raise SystemExit("bench_explain: the probe refused the explanation: %s" % answer["message"])
    frames = [f for f in reader.frames if f.get("t") == "expert-params" and f.get("id") == 2]
    read_params = sum(f["params"] for f in frames)
    reader.send({"t": "detach"})
    reader.wait(lambda f: f.get("t") == "bye")
    moe_probe.detach()
    with torch.no_grad():
        identical = torch.equal(model(ids).logits, reference)
    grads = sum(p.grad is not None for p in model.parameters())
    return {
        "model": name, "seq": seq, "layer": layers[last]["name"], "steps": steps,
        "explain_s": explain_s, "explain_extra_bytes": explain_extra, "explain_gpu_bytes": explain_gpu,
        "explain_probe_seconds": answer["seconds"], "explain_grad_bytes": answer["peak_bytes"], "batch": answer["batch"],
        "params_s": params_s, "params_extra_bytes": params_extra, "params_gpu_bytes": params_gpu,
        "params_read": read_params, "params_chunk_peak_bytes": max(f["peak_bytes"] for f in frames),
        "identical": identical, "grads": grads, "device": answer["device"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short sequences, 8 steps, a smaller Mixtral")
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ.setdefault("MOE_DEVTOOLS_SOCKET_DIR", tempfile.mkdtemp(prefix="moe-bench-explain-"))
    import torch
    from transformers import AutoModelForCausalLM, MixtralConfig, MixtralForCausalLM
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seq, steps = (32, 8) if args.quick else (128, 32)
    results = []

    demo = AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "demo", "model"), local_files_only=True)
    demo = demo.float().eval().to(device)
    results.append(run_model("demo model (4 layers, hidden 128, 8 experts top-2)", demo, seq, steps, 256))
    del demo

    hidden = 256 if args.quick else 1024
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=8,
                           num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 128),
                           num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=512)
    mixtral = MixtralForCausalLM(config).eval().to(device)
    params = sum(p.numel() for p in mixtral.parameters())
    results.append(run_model("Mixtral-shaped (8 layers, hidden %d, 8 experts top-2, %.0fM params)" % (hidden, params / 1e6),
                             mixtral, seq, steps, 32000))

    mib = lambda b: None if b is None else b / 2**20  # noqa: E731
    metrics = []
    for r in results:
        short = r["model"].split(" (")[0]
        note = "last of %d tokens, %s, %d steps from a zero embedding, batches of %d; probe's own time %.2f s" % (
            r["seq"], r["layer"], r["steps"], r["batch"], r["explain_probe_seconds"])
        metrics += [
            {"metric": "%s: one explanation, time" % short, "value": r["explain_s"], "unit": "s", "note": note, "digits": 2},
            {"metric": "%s: one explanation, peak extra memory" % short,
             "value": mib(r["explain_gpu_bytes"] if r["explain_gpu_bytes"] is not None else r["explain_extra_bytes"]),
             "unit": "MiB", "digits": 1,
             "note": "%s; the probe held %.1f MiB for gradients at most" % (
                 "GPU, max_memory_allocated" if r["explain_gpu_bytes"] is not None else "process RSS high-water mark over the request",
                 r["explain_grad_bytes"] / 2**20)},
            {"metric": "%s: one expert-weight analysis, time" % short, "value": r["params_s"], "unit": "s", "digits": 2,
             "note": "every MoE layer, %.1fM expert weights read" % (r["params_read"] / 1e6)},
            {"metric": "%s: one expert-weight analysis, peak extra memory" % short,
             "value": mib(r["params_gpu_bytes"] if r["params_gpu_bytes"] is not None else r["params_extra_bytes"]),
             "unit": "MiB", "digits": 1, "note": "the probe's own bound on what it held at once: %.1f MiB (a chunk and its stacked copy, counted twice)" % (r["params_chunk_peak_bytes"] / 2**20)},
            {"metric": "%s: outputs bitwise identical after, no .grad" % short, "value": "yes" if r["identical"] and not r["grads"] else "NO",
             "target": "yes", "pass": bool(r["identical"] and not r["grads"])},
        ]
    for m in metrics:
        value = m["value"] if isinstance(m["value"], str) else ("%.2f" % m["value"] if m["value"] is not None else "-")
        print("  %-62s %10s %s  %s" % (m["metric"], value, m.get("unit", ""), m.get("note", "")))
    out = {
        "benchmark": "explain", "title": "Explanations and expert-weight analysis (on request)",
        "description": ("One explanation (the last token of a %d-token prompt, deepest MoE layer, %d integrated-gradient steps) "
                        "and one expert-weight analysis (every MoE layer), requested over the probe's socket from a reader "
                        "thread of the same process, on %s; peak extra memory is the process's resident high-water mark "
                        "over the request minus its resident size before." % (seq, steps, device)),
        "metrics": metrics, "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
