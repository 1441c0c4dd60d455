"""A real distributed MoE job for the tests: one process per rank, torch.distributed (gloo, CPU).

Started by torchrun (or any launcher that sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). It
never imports the probe unless told to (--expert-map user). Two modes:

* --mode ep (expert parallel): each rank holds E / world of every layer's E experts (rank r the
  experts r*E/world .. (r+1)*E/world - 1, said in the block's `local_expert_indices`, the name
  Megatron-Core uses). Every rank's router chooses among all E experts for its own tokens; the
  rows go to the ranks holding the chosen experts with all_to_all, each rank's experts process
  what they received, and the results come back with all_to_all.
* --mode dp (data-parallel replicas): every rank holds all E experts and routes its own tokens;
  no collective runs in the forward pass, so a rank can die without stopping the others.

Every pass each rank appends one JSON line to --log-dir/rank<R>.jsonl: what its router chose for
its own tokens (`routed`, per layer per global expert), what its own experts received (`received`,
per layer per held expert), the global ids it holds, a hash of its outputs, and how many forward
hooks the model carries and which threads run, so a test can check what the panel shows and that
detaching leaves the job as it was. Inputs cycle through --cycle fixed batches (seeded by rank),
and a token's output depends only on its own hidden state and the experts' weights, so pass i and
pass i + cycle give identical outputs on each rank.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class Expert(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.up = nn.Linear(hidden, 2 * hidden)
        self.down = nn.Linear(2 * hidden, hidden)
        self.delay = 0.0  # seconds of extra time per call: a slow GPU (--slow-rank); outputs unchanged

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)
        return self.down(F.gelu(self.up(x)))


def all_to_all_exchange(rows, per_expert, world):
    """Send each rank the rows for the experts it holds; returns (received rows, rows received
    per (source rank, local expert) as a [world, local] list, and a function sending results back)."""
    local = per_expert.numel() // world
    send_counts = per_expert.reshape(world, local).sum(1)
    recv_per_expert = torch.empty_like(per_expert)
    dist.all_to_all_single(recv_per_expert, per_expert)  # chunk s: rows from rank s for each local expert
    recv_counts = recv_per_expert.reshape(world, local).sum(1)
    send_sizes, recv_sizes = send_counts.tolist(), recv_counts.tolist()
    received = rows.new_empty((sum(recv_sizes), rows.shape[1]))
    dist.all_to_all_single(received, rows, output_split_sizes=recv_sizes, input_split_sizes=send_sizes)

    def send_back(results):
        back = results.new_empty((sum(send_sizes), results.shape[1]))
        dist.all_to_all_single(back, results, output_split_sizes=send_sizes, input_split_sizes=recv_sizes)
        return back

    return received, recv_per_expert.reshape(world, local).tolist(), send_back


class ExpertParallelMoE(nn.Module):
    """An MoE block holding the experts `held` (global ids) of `num_experts`; `world` > 1 dispatches
    rows to the other ranks with all_to_all (held must then be this rank's contiguous slice)."""

    def __init__(self, hidden, num_experts, top_k, held, world, declare_map=True):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.world = world
        self.gate = nn.Linear(hidden, num_experts, bias=False)  # replicated: chooses among all experts
        self.experts = nn.ModuleList(Expert(hidden) for _ in held)
        self.held = list(held)
        if declare_map and len(held) < num_experts:
            self.local_expert_indices = list(held)  # what Megatron-Core calls it; the probe reads it
        self.last = None  # (routed per global expert, received per held expert) of the last call

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = F.softmax(self.gate(flat), dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        token = torch.arange(flat.shape[0]).repeat_interleave(self.top_k)
        expert = ids.reshape(-1)
        order = torch.argsort(expert, stable=True)
        token, expert, weight = token[order], expert[order], weights.reshape(-1)[order]
        rows = flat[token]
        per_expert = torch.bincount(expert, minlength=self.num_experts)
        if self.world > 1:
            received, from_ranks, send_back = all_to_all_exchange(rows, per_expert, self.world)
        else:
            # one process holding every expert (data-parallel replica): nothing to exchange
            received, from_ranks, send_back = rows, [per_expert.tolist()], lambda r: r
        # received rows: from rank 0 (its rows for local expert 0, then 1, ...), then rank 1, ...
        results = torch.empty_like(received)
        starts, at = [], 0
        for counts in from_ranks:
            starts.append([])
            for n in counts:
                starts[-1].append(at)
                at += n
        per_local = []
        for j, module in enumerate(self.experts):
            index = torch.cat([torch.arange(starts[s][j], starts[s][j] + from_ranks[s][j]) for s in range(len(from_ranks))])
            per_local.append(int(index.numel()))
            results[index] = module(received[index])
        back = send_back(results)
        out = torch.zeros_like(flat).index_add_(0, token, back * weight.unsqueeze(-1))
        self.last = (per_expert.tolist(), per_local)
        return out.reshape(shape)


class Block(nn.Module):
    def __init__(self, hidden, moe):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.mlp = moe

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class Model(nn.Module):
    def __init__(self, vocab, hidden, layers, make_moe):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(Block(hidden, make_moe()) for _ in range(layers))
        self.head = nn.Linear(hidden, vocab)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def build(args, rank, world):
    """The same weights on every rank (seeded), each rank keeping the experts it holds."""
    local = args.experts // world if args.mode == "ep" else args.experts
    held = list(range(rank * local, (rank + 1) * local)) if args.mode == "ep" else list(range(args.experts))
    torch.manual_seed(args.seed)
    full = Model(256, args.hidden, args.layers,
                 lambda: ExpertParallelMoE(args.hidden, args.experts, args.top_k, list(range(args.experts)), 1))
    model = Model(256, args.hidden, args.layers,
                  lambda: ExpertParallelMoE(args.hidden, args.experts, args.top_k, held, world if args.mode == "ep" else 1,
                                            declare_map=args.expert_map == "model"))
    with torch.no_grad():
        model.embed.weight.copy_(full.embed.weight)
        model.head.load_state_dict(full.head.state_dict())
        for mine, whole in zip(model.layers, full.layers):
            mine.norm.load_state_dict(whole.norm.state_dict())
            mine.mlp.gate.load_state_dict(whole.mlp.gate.state_dict())
            for j, g in enumerate(held):
                mine.mlp.experts[j].load_state_dict(whole.mlp.experts[g].state_dict())
    return model.eval(), held


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("ep", "dp"), default="ep")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--cycle", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expert-map", choices=("model", "user"), default="model",
                        help="model: the blocks say which experts they hold; user: moe_probe.attach(expert_map=...)")
    parser.add_argument("--log-dir", required=True)
    # For the tests of ranks that do not agree with their job:
    parser.add_argument("--different-model-on-rank", type=int, default=-1, metavar="RANK",
                        help="this rank builds one MoE layer more than the others (dp mode)")
    parser.add_argument("--slow-rank", type=int, default=-1, metavar="RANK",
                        help="this rank's experts take 10 ms more per call (a straggler), computing the same")
    parser.add_argument("--claim", default="", metavar="RANK:IDS",
                        help="with --expert-map user, this rank says it holds these experts (e.g. 1:2,3,4,5) instead of its own")
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.mode == "ep" and args.experts % world:
        raise SystemExit("--experts must be a multiple of the world size")
    if rank == args.different_model_on_rank:
        if args.mode == "ep":
            raise SystemExit("--different-model-on-rank needs --mode dp (the collectives of ep would not match)")
        args.layers += 1
    model, held = build(args, rank, world)
    if rank == args.slow_rank:
        for module in model.modules():
            if isinstance(module, Expert):
                module.delay = 0.01
    if args.expert_map == "user":
        import moe_probe

        claimed = held
        if args.claim and int(args.claim.split(":")[0]) == rank:
            claimed = [int(i) for i in args.claim.split(":")[1].split(",")]
        moe_probe.attach(model, expert_map=claimed)
    generator = torch.Generator().manual_seed(args.seed + 1 + rank)
    batches = [torch.randint(0, 256, (args.batch, args.seq), generator=generator) for _ in range(args.cycle)]
    moes = [layer.mlp for layer in model.layers]

    path = os.path.join(args.log_dir, "rank%d.jsonl" % rank)
    with open(path, "a", buffering=1) as log:
        log.write(json.dumps({"ready": True, "pid": os.getpid(), "rank": rank, "world_size": world, "held": held,
                              "mode": args.mode, "layers": args.layers, "experts": args.experts}) + "\n")
        i = 0
        while True:
            with torch.no_grad():
                out = model(batches[i % args.cycle])
            digest = hashlib.sha256(out.contiguous().numpy().tobytes()).hexdigest()[:16]
            log.write(json.dumps({
                "pass": i, "routed": [m.last[0] for m in moes], "received": [m.last[1] for m in moes],
                "out": digest, "hooks": hook_count(model), "threads": sorted(t.name for t in threading.enumerate()),
            }) + "\n")
            i += 1
            if args.sleep:
                time.sleep(args.sleep)


if __name__ == "__main__":
    sys.exit(main())
