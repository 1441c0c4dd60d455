"""A hand-written MoE job whose layers differ, for the end-to-end tests. It never imports the probe.

    model.layers.0.self_attn  mixture-of-attention: 8 query-projection experts, top-2
    model.layers.0.mlp        4 experts, top-2
    model.layers.1.mlp        6 experts + 2 zero-compute (identity) experts, top-2, router applied
                              with F.linear on its classifier's weight (LongCat-Flash style)
    model.layers.2.mlp        4 experts in an nn.ModuleList, each called on its rows; the gate's
                              weights hold a NaN (--nan), so every router logit of expert 0 is NaN

Every pass it appends one JSON line to --log: per MoE layer (in that order) the assignments each
expert received in that pass, as the blocks themselves dispatched them, plus a hash of the outputs
and the hook count and threads, like tiny_moe_job.py. Inputs cycle through --cycle fixed batches.
"""

import argparse
import hashlib
import json
import os
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn

H, VOCAB = 32, 256


class StackedExperts(nn.Module):
    """Experts as stacked weights, called experts(hidden, ids [N, k], weights [N, k]); ids at or
    past `compute` are zero-compute experts that pass the token through."""

    def __init__(self, num_experts, compute):
        super().__init__()
        self.compute = compute
        self.weight = nn.Parameter(torch.randn(compute, H, H) * 0.1)

    def forward(self, hidden, ids, weights):
        out = torch.zeros_like(hidden)
        for slot in range(ids.shape[1]):
            chosen = ids[:, slot]
            y = torch.einsum("nh,nhd->nd", hidden, self.weight[chosen.clamp(max=self.compute - 1)])
            y = torch.where((chosen < self.compute).unsqueeze(-1), y, hidden)
            out = out + weights[:, slot:slot + 1] * y
        return out


def loads(ids, experts):
    return torch.bincount(ids.reshape(-1), minlength=experts).tolist()


class RoutedQueryAttention(nn.Module):
    """Mixture of attention: each token's query projection mixes its top-2 of 8 experts."""

    def __init__(self, log):
        super().__init__()
        self.top_k = 2
        self.router = nn.Linear(H, 8, bias=False)
        self.experts = StackedExperts(8, 8)
        self.k_proj = nn.Linear(H, H)
        self.v_proj = nn.Linear(H, H)
        self.log = log

    def forward(self, x):
        b, s, _ = x.shape
        flat = x.reshape(-1, H)
        weights, ids = torch.topk(torch.softmax(self.router(flat), dim=-1), self.top_k, dim=-1)
        self.log.append(loads(ids, 8))
        q = self.experts(flat, ids, weights).reshape(b, s, H)
        causal = torch.full((s, s), float("-inf")).triu(1)
        att = torch.softmax(q @ self.k_proj(x).transpose(1, 2) / H ** 0.5 + causal, dim=-1)
        return att @ self.v_proj(x)


class Attention(nn.Module):
    """A plain (dense) attention, for the layers whose attention is not routed."""

    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(H, H)
        self.k_proj = nn.Linear(H, H)
        self.v_proj = nn.Linear(H, H)

    def forward(self, x):
        s = x.shape[1]
        causal = torch.full((s, s), float("-inf")).triu(1)
        return torch.softmax(self.q_proj(x) @ self.k_proj(x).transpose(1, 2) / H ** 0.5 + causal, dim=-1) @ self.v_proj(x)


class TopKMLP(nn.Module):
    def __init__(self, log, experts=4):
        super().__init__()
        self.top_k = 2
        self.gate = nn.Linear(H, experts, bias=False)
        self.experts = StackedExperts(experts, experts)
        self.log = log
        self.width = experts

    def forward(self, x):
        flat = x.reshape(-1, H)
        weights, ids = torch.topk(torch.softmax(self.gate(flat), dim=-1), self.top_k, dim=-1)
        self.log.append(loads(ids, self.width))
        return self.experts(flat, ids, weights).reshape(x.shape)


class ZeroComputeRouter(nn.Module):
    def __init__(self, routed, zero):
        super().__init__()
        self.top_k = 2
        self.classifier = nn.Linear(H, routed + zero, bias=False)

    def forward(self, hidden):
        scores = F.linear(hidden.float(), self.classifier.weight.float()).softmax(dim=-1)
        ids = torch.topk(scores, self.top_k, dim=-1).indices
        return scores.gather(1, ids), ids


class ZeroComputeMLP(nn.Module):
    def __init__(self, log):
        super().__init__()
        self.router = ZeroComputeRouter(6, 2)
        self.experts = StackedExperts(8, 6)
        self.log = log

    def forward(self, x):
        flat = x.reshape(-1, H)
        weights, ids = self.router(flat)
        self.log.append(loads(ids, 8))
        return self.experts(flat, ids, weights).reshape(x.shape)


class SubsetMLP(nn.Module):
    """Gate (logits only), top-k inline, experts in an nn.ModuleList each called on its rows."""

    def __init__(self, log):
        super().__init__()
        self.top_k = 2
        self.gate = nn.Linear(H, 4, bias=False)
        self.experts = nn.ModuleList(nn.Linear(H, H) for _ in range(4))
        self.log = log

    def forward(self, x):
        flat = x.reshape(-1, H)
        weights, ids = torch.topk(torch.softmax(self.gate(flat), dim=-1), self.top_k, dim=-1)
        out = torch.zeros_like(flat)
        rows_of = []
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(ids == e)
            rows_of.append(int(rows.numel()))
            if rows.numel():
                out = out.index_add(0, rows, torch.nan_to_num(weights[rows, slot, None]) * expert(flat[rows]))
        self.log.append(rows_of)
        return out.reshape(x.shape)


class Layer(nn.Module):
    def __init__(self, attn, mlp):
        super().__init__()
        self.self_attn = attn
        self.mlp = mlp
        self.norm = nn.LayerNorm(H)

    def forward(self, x):
        x = x + self.self_attn(self.norm(x))
        return x + self.mlp(self.norm(x))


class Inner(nn.Module):
    def __init__(self, log):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, H)
        self.layers = nn.ModuleList([
            Layer(RoutedQueryAttention(log), TopKMLP(log)),
            Layer(Attention(), ZeroComputeMLP(log)),
            Layer(Attention(), SubsetMLP(log)),
        ])

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return x


class MixedMoE(nn.Module):
    def __init__(self, log):
        super().__init__()
        self.model = Inner(log)
        self.lm_head = nn.Linear(H, VOCAB)

    def forward(self, input_ids):
        return self.lm_head(self.model(input_ids))


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--nan", action="store_true", help="a NaN in model.layers.2.mlp's gate weights")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--cycle", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.02)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    routed = []
    model = MixedMoE(routed).eval()
    with torch.no_grad():
        model.model.layers[1].mlp.router.classifier.weight.normal_(0, 0.5)  # zero-compute experts get picked
        if args.nan:
            model.model.layers[2].mlp.gate.weight[0, 0] = float("nan")
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, VOCAB, (args.batch, args.seq), generator=generator) for _ in range(args.cycle)]
    with open(args.log, "a", buffering=1) as log:
        log.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
        i = 0
        while True:
            routed.clear()
            with torch.no_grad():
                out = model(batches[i % args.cycle])
            digest = hashlib.sha256(out.contiguous().numpy().tobytes()).hexdigest()[:16]
            log.write(json.dumps({
                "pass": i, "counts": list(routed), "out": digest, "hooks": hook_count(model),
                "threads": sorted(t.name for t in threading.enumerate()),
            }) + "\n")
            i += 1
            time.sleep(args.sleep)


if __name__ == "__main__":
    main()
