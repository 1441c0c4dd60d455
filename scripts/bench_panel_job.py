#!/usr/bin/env python3
"""The job behind the panel frame-time benchmark (scripts/bench_panel.mjs).

A real PyTorch MoE model as a user would write it, large in routing and tiny in
compute: token and position embeddings, then --layers MoE blocks, each with a
router ``nn.Linear(hidden, experts)`` and an ``experts`` module holding stacked
[experts, 2, hidden] weights (each expert a per-channel scale and shift); every
token goes to the top-k experts of its router logits (softmax over the k chosen
logits as mixing weights). With hidden 16 a pass over 64 layers x 512 experts
takes about 10 ms on one CPU core with the probe attached, so the job runs its
passes at a steady --rate (default 45 passes/s) and leaves the rest of the
machine to the browser being measured.

Routing is made roughly balanced, as in a trained model, so the Overview shows
what it would for a healthy job rather than hundreds of findings: router rows of
norm 3 (router entropy ~0.94 of the maximum), and router biases set at start-up
by a few seconds of auxiliary-loss-free balancing (DeepSeek-V3 style: raise the
bias of under-loaded experts, lower it for over-loaded ones), then frozen. The
bias lives in the router Linear, so the top-k of the router's output, which is
what the probe reads, is exactly the routing the job uses.

The probe recognises the blocks by structure (an ``experts`` child and a router
child with ``experts`` output rows, ``top_k`` on the block; see
native-host/moe_probe/routers.py). The job makes itself attachable with
``moe_probe.attach(model, flush_interval_s=...)``: the injected probe's default
flush interval (50 ms) caps snapshots at 20/s, and the benchmark needs the host
to have a fresh snapshot at each of its 30 Hz ticks; router health (entropy,
NaN/Inf) is computed on 10 passes/s instead of 50 to keep the job's own cost down
on a small machine (--health-hz). The panel's own Attach button attaches to it
(method "socket").

Input is a tokenizer-free stream of token ids (seeded uniform random ids from a
vocabulary of 4096), --tokens per pass as one sequence, so the Tokens view has
data (shown as #id).

Runs until killed (or --seconds). With --status FILE it rewrites FILE about once
a second with {"pid", "time", "passes", "passes_per_s", "ms_per_pass", ...}.

    .venv/bin/python scripts/bench_panel_job.py [--layers 64] [--experts 512] [--top-k 8]
        [--hidden 16] [--tokens 32] [--rate 60] [--flush-ms 10] [--status FILE]
"""

import argparse
import json
import os
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StackedExperts(nn.Module):
    """`experts` of one block, stacked [experts, 2, hidden]: each expert is a diagonal
    affine map (a scale and a shift per channel), so combining k experts per token is
    one gather and a few elementwise ops."""

    def __init__(self, experts, hidden):
        super().__init__()
        self.weight = nn.Parameter(torch.cat([1.0 + 0.1 * torch.randn(experts, 1, hidden),
                                              0.1 * torch.randn(experts, 1, hidden)], dim=1))


class MoEBlock(nn.Module):
    def __init__(self, hidden, experts, top_k):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(hidden, experts)
        with torch.no_grad():
            w = self.router.weight
            w.mul_(3.0 / w.norm(dim=1, keepdim=True))
            self.router.bias.zero_()
        self.experts = StackedExperts(experts, hidden)

    def forward(self, x):  # x: [tokens, hidden]
        logits = self.router(x)
        top, ids = torch.topk(logits, self.top_k, dim=-1)
        mix = torch.softmax(top, dim=-1)  # [tokens, k]
        e = self.experts.weight
        picked = F.embedding(ids, e.reshape(e.shape[0], -1)).unflatten(-1, e.shape[1:])  # [tokens, k, 2, hidden]
        affine = (mix[..., None, None] * picked).sum(dim=1)  # [tokens, 2, hidden]
        return torch.tanh(x * affine[:, 0] + affine[:, 1])


class TinyWideMoE(nn.Module):
    def __init__(self, vocab, hidden, layers, experts, top_k, max_len):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_len, hidden)
        self.layers = nn.ModuleList(MoEBlock(hidden, experts, top_k) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, input_ids):  # [batch, seq] int64
        x = self.embed(input_ids) + self.pos(torch.arange(input_ids.shape[-1]))
        x = x.reshape(-1, self.embed.embedding_dim)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


@torch.no_grad()
def balance_routers(model, batches, steps, passes_per_step=4, step_size=0.03):
    """Auxiliary-loss-free load balancing, offline: after each few passes move every
    router's bias by +-step_size towards the mean load of its layer."""
    loads = [torch.zeros(layer.router.out_features) for layer in model.layers]

    def counter(load, k):
        def hook(_module, _args, out):
            load.add_(torch.bincount(out.topk(k, dim=-1).indices.reshape(-1), minlength=load.numel()))
        return hook

    hooks = [layer.router.register_forward_hook(counter(load, layer.top_k)) for layer, load in zip(model.layers, loads)]
    try:
        for _ in range(steps):
            for load in loads:
                load.zero_()
            for _ in range(passes_per_step):
                model(next(batches))
            for layer, load in zip(model.layers, loads):
                layer.router.bias.add_(step_size * torch.sign(load.mean() - load))
    finally:
        for hook in hooks:
            hook.remove()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=64)
    p.add_argument("--experts", type=int, default=512)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--tokens", type=int, default=32, help="tokens per pass (one sequence)")
    p.add_argument("--rate", type=float, default=45.0, help="passes per second to aim at (0: as fast as it can)")
    p.add_argument("--flush-ms", type=float, default=10.0, help="probe flush interval (ms)")
    p.add_argument("--health-hz", type=float, default=10.0,
                   help="probe setting health_passes_per_s: passes per second whose router logits feed the entropy/NaN "
                        "figures (the probe's default is 50; each costs ~15 small ops per layer, 64 layers here)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: run until killed)")
    p.add_argument("--status", help="rewrite this JSON file about once a second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--balance-steps", type=int, default=60, help="router bias balancing steps at start-up (0: none)")
    p.add_argument("--no-probe", action="store_true", help="do not make the job attachable (to time the bare model)")
    args = p.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = TinyWideMoE(4096, args.hidden, args.layers, args.experts, args.top_k, args.tokens).eval()
    ids = torch.Generator().manual_seed(args.seed + 1)
    batches = iter(lambda: torch.randint(0, 4096, (1, args.tokens), generator=ids), None)
    balance_routers(model, batches, args.balance_steps)

    if not args.no_probe:
        sys.path.insert(0, os.path.join(ROOT, "native-host"))
        import moe_probe

        moe_probe.attach(model, flush_interval_s=args.flush_ms / 1000.0, health_passes_per_s=args.health_hz)

    n = args.tokens

    period = 1.0 / args.rate if args.rate > 0 else 0.0
    started = time.monotonic()
    next_at = started
    passes = 0
    busy = 0.0
    last_status = started
    last_passes = 0
    last_busy = 0.0
    with torch.no_grad():
        while True:
            now = time.monotonic()
            if args.seconds and now - started >= args.seconds:
                break
            if period and now < next_at:
                time.sleep(next_at - now)
            next_at = max(next_at + period, time.monotonic() - period)  # no catch-up bursts after a stall
            batch = next(batches)
            t0 = time.perf_counter()
            model(batch)
            busy += time.perf_counter() - t0
            passes += 1
            now = time.monotonic()
            if args.status and now - last_status >= 1.0:
                dt = now - last_status
                status = {
                    "pid": os.getpid(), "time": time.time(), "passes": passes,
                    "passes_per_s": (passes - last_passes) / dt,
                    "ms_per_pass": 1000.0 * (busy - last_busy) / max(1, passes - last_passes),
                    "layers": args.layers, "experts": args.experts, "top_k": args.top_k,
                    "hidden": args.hidden, "tokens": n, "rate": args.rate, "flush_ms": args.flush_ms, "health_hz": args.health_hz,
                }
                tmp = args.status + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(status, f)
                os.replace(tmp, args.status)
                last_status, last_passes, last_busy = now, passes, busy


if __name__ == "__main__":
    main()
