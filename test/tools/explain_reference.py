"""This test suite's own attribution of a router decision, independent of the probe: the end-to-end
test compares what the panel shows with it.

Builds the tiny job's model (test/jobs/tiny_moe_job.py build_model, same arguments and seed),
runs it on inputs_embeds with a forward hook of its own on the layer's gate, and computes
  - gradient x input: autograd at the input;
  - integrated gradients: a plain loop over the midpoint-rule points from a zero embedding.
Prints JSON: {"logit", "baseline_logit", "gxi_logit": [...], "ig_logit": [...], "batches": the job's
input batches, [[row, ...], ...], so a test can tell which row was explained}.

usage: python explain_reference.py --ids 5,9,2 --position 1 --layer 2 --expert 3 --steps 32 [model args]
"""

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "jobs"))

from tiny_moe_job import build_model, copy_expert, zero_router_row  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ids", required=True)
    ap.add_argument("--position", type=int, required=True)
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--expert", type=int, required=True)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--arch", default="mixtral")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--cycle", type=int, default=4)
    ap.add_argument("--duplicate", action="append", default=[])
    ap.add_argument("--zero-router", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = build_model(args.arch, args.layers, args.experts, args.top_k, args.hidden, args.seed).eval()
    # the job's own edits and inputs, made the job's way
    for spec in args.duplicate:
        copy_expert(model, *(int(x) for x in spec.split(":")))
    for spec in args.zero_router:
        zero_router_row(model, *(int(x) for x in spec.split(":")))
    generator = torch.Generator().manual_seed(args.seed + 1)
    batches = [torch.randint(0, 256, (args.batch, args.seq), generator=generator).tolist() for _ in range(args.cycle)]
    ids = torch.tensor([[int(x) for x in args.ids.split(",")]])
    gate = model.model.layers[args.layer].mlp.gate

    def score(embeds):
        seen = []
        handle = gate.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
        try:
            model(inputs_embeds=embeds, use_cache=False)
        finally:
            handle.remove()
        return seen[0].reshape(embeds.shape[0], embeds.shape[1], -1)[:, args.position, args.expert]

    x = model.get_input_embeddings()(ids).detach()
    with torch.enable_grad():
        point = x.clone().requires_grad_(True)
        f = score(point)
        (grad,) = torch.autograd.grad(f.sum(), point)
    gxi = (grad[0].double() * x[0].double()).sum(-1)
    total = torch.zeros_like(x, dtype=torch.float64)
    for k in range(args.steps):
        alpha = (k + 0.5) / args.steps
        point = (alpha * x).clone().requires_grad_(True)  # zero baseline: b + alpha (x - b) = alpha x
        with torch.enable_grad():
            (g,) = torch.autograd.grad(score(point).sum(), point)
        total += g.double()
    ig = (x[0].double() * total[0] / args.steps).sum(-1)
    with torch.no_grad():
        baseline = float(score(torch.zeros_like(x)))
    print(json.dumps({"logit": float(f.detach()), "baseline_logit": baseline, "gxi_logit": gxi.tolist(),
                      "ig_logit": ig.tolist(), "batches": batches}))


if __name__ == "__main__":
    main()
