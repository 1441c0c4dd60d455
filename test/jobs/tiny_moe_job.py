"""A real PyTorch MoE job for the end-to-end tests: a tiny random-weight
transformers model running forward passes in a loop. It never imports the probe.

Every pass it appends one JSON line to --log with what the model really routed,
obtained from transformers' own router outputs (output_router_logits=True ->
softmax -> top-k, exactly as the router selects), plus a hash of the model's
outputs and how many forward hooks the model carries, so a test can check both
what the panel shows and that the job is unchanged after detach.

Inputs cycle through --cycle fixed batches, so pass i and pass i + cycle must
produce identical outputs. With --log-tokens each line also holds the input token ids
("input", the batch flattened row by row, as the router sees its tokens) and every token's
top-k experts per layer ("ids": [layer][token][k], best first), so a test can recompute any
per-token statistic. With --switch-file PATH the job changes its input distribution once PATH
exists: from then on its batches hold only token ids 0..3 ("phase": 1 in the log).
Each line also says how many parameters carry a .grad (grads), so a test can check that
nothing the probe computed on the side reached the job.

--duplicate LAYER:A:B makes expert B of LAYER a copy of expert A (its weights), and
--zero-router LAYER:E sets expert E's router row to zero, for the expert-weight tests.

--compile runs the model under torch.compile (inductor, or aot_eager for dynamo alone), as
jobs really run: every pass goes through the compiled model, router outputs included, and
the log also says how many graphs dynamo has compiled so far and how long the pass took.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time

import torch


def build_model(arch, layers, experts, top_k, hidden, seed):
    torch.manual_seed(seed)
    common = dict(vocab_size=256, hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, num_experts_per_tok=top_k)
    if arch == "mixtral":
        from transformers import MixtralConfig, MixtralForCausalLM
        return MixtralForCausalLM(MixtralConfig(num_local_experts=experts, **common))
    if arch == "qwen3_moe":
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
        return Qwen3MoeForCausalLM(Qwen3MoeConfig(num_experts=experts, moe_intermediate_size=hidden,
                                                  decoder_sparse_step=1, head_dim=hidden // 4, **common))
    if arch == "olmoe":
        from transformers import OlmoeConfig, OlmoeForCausalLM
        return OlmoeForCausalLM(OlmoeConfig(num_experts=experts, **common))
    raise SystemExit("unknown --arch %s" % arch)


def gate_inputs(model, layer, batches):
    """The router's inputs in one layer over the fixed input batches ([tokens, hidden])."""
    seen = []
    gate = model.model.layers[layer].mlp.gate
    handle = gate.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        handle.remove()
    return torch.cat(seen)


def plant_fault(model, layer, kind, expert, top_k, batches):
    """Edit one layer's router weights (Mixtral: mlp.gate.weight [E, hidden], no bias) so that
    `expert` never wins (kind "dead") or experts 0..top_k-1 win every token (kind "collapse").
    The job's inputs cycle through fixed batches, so the router's inputs in this layer are a
    fixed finite set (edits here only change later layers): fit the rows on exactly those
    inputs, a perceptron on the violated tokens, and check the result."""
    x = gate_inputs(model, layer, batches)
    weight = model.model.layers[layer].mlp.gate.weight
    scale = float(x.norm(dim=-1).mean())
    with torch.no_grad():
        rows = [expert] if kind == "dead" else list(range(top_k))
        sign = -1.0 if kind == "dead" else 1.0
        for row in rows:
            weight[row] = sign * 10.0 * x.mean(0) / scale
        for _ in range(5000):
            ids = torch.topk(x @ weight.T, top_k, dim=-1).indices
            if kind == "dead":
                bad = (ids == expert).any(-1)
            else:
                bad = ~torch.stack([(ids == r).any(-1) for r in rows]).all(0)
            if not bad.any():
                return
            step = x[bad].mean(0) / scale
            for row in rows:
                weight[row] += sign * step
    raise SystemExit("could not plant %s in layer %d" % (kind, layer))


def copy_expert(model, layer, source, target):
    """Expert `target` of `layer` becomes a copy of `source`: every stacked [E, ...] weight of the experts."""
    experts = model.model.layers[layer].mlp.experts
    with torch.no_grad():
        for p in experts.parameters():
            p[target].copy_(p[source])


def zero_router_row(model, layer, expert):
    with torch.no_grad():
        model.model.layers[layer].mlp.gate.weight[expert].zero_()


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="mixtral")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--cycle", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--passes", type=int, default=0, help="0: run until killed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", required=True)
    parser.add_argument("--dead", action="append", default=[], metavar="LAYER:EXPERT",
                        help="plant a dead expert: its router row is set so it never wins (mixtral)")
    parser.add_argument("--collapse", action="append", type=int, default=[], metavar="LAYER",
                        help="plant router collapse: experts 0..top_k-1 win every token of LAYER (mixtral)")
    parser.add_argument("--duplicate", action="append", default=[], metavar="LAYER:A:B",
                        help="make expert B of LAYER a copy of expert A")
    parser.add_argument("--zero-router", action="append", default=[], metavar="LAYER:E",
                        help="set expert E's router row in LAYER to zero")
    parser.add_argument("--log-tokens", action="store_true", help="log every token's input id and top-k experts per layer")
    parser.add_argument("--switch-file", help="switch to inputs of token ids 0..3 once this file exists")
    parser.add_argument("--compile", choices=["inductor", "aot_eager"],
                        help="run every pass through torch.compile(model, backend=...)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    model = build_model(args.arch, args.layers, args.experts, args.top_k, args.hidden, args.seed).eval()
    generator = torch.Generator().manual_seed(args.seed + 1)
    batches = [torch.randint(0, 256, (args.batch, args.seq), generator=generator) for _ in range(args.cycle)]
    narrow = [torch.randint(0, 4, (args.batch, args.seq), generator=generator) for _ in range(args.cycle)]
    faults = [(int(l), "dead", int(e)) for l, e in (d.split(":") for d in args.dead)]
    faults += [(l, "collapse", 0) for l in args.collapse]
    for layer, kind, expert in sorted(faults):  # lower layers first: their edits change later layers' inputs
        plant_fault(model, layer, kind, expert, args.top_k, batches)
    for spec in args.duplicate:
        layer, source, target = (int(x) for x in spec.split(":"))
        copy_expert(model, layer, source, target)
    for spec in args.zero_router:
        layer, expert = (int(x) for x in spec.split(":"))
        zero_router_row(model, layer, expert)

    forward = model
    if args.compile:
        from torch._dynamo.utils import counters
        forward = torch.compile(model, backend=args.compile)

    with open(args.log, "a", buffering=1) as log:
        log.write(json.dumps({"ready": True, "pid": os.getpid(), "arch": args.arch,
                              "layers": args.layers, "experts": args.experts, "top_k": args.top_k}) + "\n")
        i = 0
        phase = 0
        while args.passes == 0 or i < args.passes:
            if not phase and args.switch_file and os.path.exists(args.switch_file):
                phase = 1
            batch = (narrow if phase else batches)[i % args.cycle]
            started = time.perf_counter()
            with torch.no_grad():
                out = forward(batch, output_router_logits=True)
            seconds = time.perf_counter() - started
            counts = []
            top = []
            for logits in out.router_logits:
                probs = torch.softmax(logits.float(), dim=-1)
                ids = torch.topk(probs, args.top_k, dim=-1).indices
                counts.append(torch.bincount(ids.reshape(-1), minlength=args.experts).tolist())
                top.append(ids.tolist())
            digest = hashlib.sha256(out.logits.contiguous().numpy().tobytes()).hexdigest()[:16]
            record = {
                "pass": i, "counts": counts, "out": digest, "hooks": hook_count(model),
                "threads": sorted(t.name for t in threading.enumerate()), "phase": phase, "time": time.time(),
                "grads": sum(p.grad is not None for p in model.parameters()),
            }
            if args.log_tokens:
                record["input"] = batch.reshape(-1).tolist()
                record["ids"] = top
            if args.compile:
                record.update(graphs=counters["stats"]["unique_graphs"], seconds=seconds)
            log.write(json.dumps(record) + "\n")
            i += 1
            if args.sleep:
                time.sleep(args.sleep)


if __name__ == "__main__":
    sys.exit(main())
