"""The job for the host relay benchmark (scripts/bench_host_relay.mjs).

A real torch MoE model, cheap per token, run in a loop of forward passes paced
to route about --rate token-expert assignments per second (tokens x top_k x
MoE layers per pass). It makes itself attachable with `moe_probe.attach(model)`
and otherwise knows nothing of the probe.

Models (--model):
  block    (default) a user-written MoE stack: L blocks, each an nn.Linear gate,
           softmax + top-k, and 8 small nn.Linear experts run on their tokens. The
           probe recognises it by structure (an `experts` child, a gate whose weight
           is [experts, hidden], a `top_k` attribute) and takes the top-k of the gate's
           logits itself. Cheap enough to reach 1M assignments/s on one CPU thread
           with room to spare.
  mixtral  transformers MixtralForCausalLM with tiny hidden size (its router
           returns the expert ids). About 1M assignments/s flat out on one thread
           of a 2-core CPU, so --rate 1e6 may not be reached with it.

Prints JSON lines on stdout: {"ready": ...} once listening, then every
--report-interval seconds {"t", "passes", "assignments", "hooks"}, and at exit
(SIGTERM, SIGINT or --duration) {"done": true, "rate": achieved assignments/s}.
"""

import argparse
import json
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_DEBT_S = 0.1


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("block", "mixtral"), default="block")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per forward pass")
    p.add_argument("--seq", type=int, default=32, help="sequence length (mixtral: batch = tokens / seq)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--rate", type=float, default=1e6, help="target assignments/s; 0 runs flat out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--duration", type=float, default=0, help="seconds to run; 0 until signalled")
    p.add_argument("--report-interval", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build(args):
    import torch
    from torch import nn

    torch.manual_seed(args.seed)
    if args.model == "mixtral":
        from transformers import MixtralConfig, MixtralForCausalLM
        config = MixtralConfig(
            vocab_size=256, hidden_size=args.hidden, intermediate_size=args.hidden * 2,
            num_hidden_layers=args.layers, num_attention_heads=2, num_key_value_heads=1,
            num_local_experts=args.experts, num_experts_per_tok=args.top_k,
            max_position_embeddings=max(args.seq, 64))
        model = MixtralForCausalLM(config).eval()
        batch = max(1, args.tokens // args.seq)
        generator = torch.Generator().manual_seed(args.seed + 1)
        inputs = [torch.randint(0, 256, (batch, args.seq), generator=generator) for _ in range(4)]
        return model, inputs, batch * args.seq, lambda x: model(x, logits_to_keep=1)

    class MoEBlock(nn.Module):
        """Top-k MoE block as people write it: gate -> softmax -> top-k -> experts -> weighted sum."""

        def __init__(self, hidden, experts, top_k):
            super().__init__()
            self.top_k = top_k
            self.gate = nn.Linear(hidden, experts, bias=False)
            self.experts = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(experts))

        def forward(self, x):
            weights, ids = torch.topk(self.gate(x).softmax(dim=-1), self.top_k, dim=-1)
            # sorted dispatch: group the (token, slot) pairs by expert, run each expert once
            flat = ids.reshape(-1)
            order = flat.argsort()
            sizes = torch.bincount(flat, minlength=len(self.experts)).tolist()
            token = order // self.top_k
            grouped = x[token].split(sizes)
            y = torch.cat([expert(part) for expert, part in zip(self.experts, grouped)])
            y = y * weights.reshape(-1)[order, None]
            return x + torch.zeros_like(x).index_add_(0, token, y)

    class MoEStack(nn.Module):
        def __init__(self, hidden, experts, top_k, layers):
            super().__init__()
            self.layers = nn.ModuleList(MoEBlock(hidden, experts, top_k) for _ in range(layers))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model = MoEStack(args.hidden, args.experts, args.top_k, args.layers).eval()
    generator = torch.Generator().manual_seed(args.seed + 1)
    inputs = [torch.randn(args.tokens, args.hidden, generator=generator) for _ in range(4)]
    return model, inputs, args.tokens, model


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def main():
    args = parse_args()
    sys.path.insert(0, os.path.join(ROOT, "native-host"))
    import torch
    import moe_probe

    torch.set_num_threads(args.threads)
    model, inputs, tokens, forward = build(args)
    per_pass = tokens * args.top_k * args.layers

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))

    def emit(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    with torch.no_grad():
        forward(inputs[0])  # warm-up, before anyone can attach
    path = moe_probe.attach(model)
    emit({"ready": True, "pid": os.getpid(), "socket": path, "model": args.model, "tokens": tokens,
          "layers": args.layers, "experts": args.experts, "top_k": args.top_k, "hidden": args.hidden,
          "assignments_per_pass": per_pass, "target_rate": args.rate, "threads": args.threads,
          "torch": torch.__version__})

    start = time.time()
    deadline = start
    next_report = start
    passes = 0
    busy = 0.0
    while not stopping and (args.duration <= 0 or time.time() - start < args.duration):
        t0 = time.perf_counter()
        with torch.no_grad():
            forward(inputs[passes % len(inputs)])
        busy += time.perf_counter() - t0
        passes += 1
        now = time.time()
        if now >= next_report:
            emit({"t": now, "passes": passes, "assignments": passes * per_pass, "hooks": hook_count(model)})
            next_report = now + args.report_interval
        if args.rate > 0:
            # pace to the target rate: each pass earns per_pass / rate seconds; a job that fell
            # behind (attach, a busy machine) catches up on at most MAX_DEBT_S, never in a burst
            deadline += per_pass / args.rate
            now = time.time()
            if deadline > now:
                time.sleep(deadline - now)
            elif now - deadline > MAX_DEBT_S:
                deadline = now - MAX_DEBT_S
    elapsed = time.time() - start
    emit({"t": time.time(), "passes": passes, "assignments": passes * per_pass, "hooks": hook_count(model)})
    emit({"done": True, "passes": passes, "assignments": passes * per_pass, "seconds": elapsed,
          "rate": passes * per_pass / elapsed if elapsed else 0.0,
          "busy_fraction": busy / elapsed if elapsed else 0.0})
    moe_probe.detach()
    return 0


if __name__ == "__main__":
    sys.exit(main())
