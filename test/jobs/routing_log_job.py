"""A real transformers MoE job that logs what it routed, token by token, for the comparison and
anomaly-detection end-to-end tests. It never imports the probe.

A tiny random-weight Mixtral (seeded: two jobs with the same --seed hold the same model) runs
forward passes over prompts of --batch x --seq token ids in a loop:

* --prompts N: a fixed cycle of N prompts (seeded), so two jobs see identical inputs; each prompt
  is written to the log once, with its token ids, before the loop.
* --perturb-layer L: add seeded noise of --perturb-scale (relative to the row norms) to the router
  rows of layer L (mlp.gate.weight), so that this job routes differently there (and, through the
  changed hidden states, somewhat differently after it).
* --switch-file PATH: fresh random prompts each pass, token ids drawn from all 256 until PATH
  exists, then from only 4 of them (128..131), as when a job's data source changes to a narrow
  one: the input distribution switches at a moment the test chooses; the log says when (the job's
  own clock) and from which pass.
* --frozen-layer L: zero the router of layer L, so its logits are all equal and its choice never
  depends on the input: a layer whose routing cannot shift.

Log (--log, JSON lines): {"ready": ...}; {"prompt": i, "ids": [...]} per fixed prompt; then per pass
{"pass", "t", "prompt" (or null), "phase": 0 before the switch / 1 after, "counts": [layer][expert],
"top1": [layer][token]} with top1 the argmax of the router's softmax for each token of the
flattened batch, computed here from the model's own router logits.
"""

import argparse
import json
import os
import sys
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--perturb-layer", type=int, default=-1)
    p.add_argument("--perturb-scale", type=float, default=1.0)
    p.add_argument("--frozen-layer", type=int, default=-1)
    p.add_argument("--switch-file", default=None)
    p.add_argument("--sleep", type=float, default=0.05)
    p.add_argument("--log", required=True)
    a = p.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    from transformers import MixtralConfig, MixtralForCausalLM
    cfg = MixtralConfig(vocab_size=256, hidden_size=a.hidden, intermediate_size=a.hidden * 2, num_hidden_layers=a.layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        num_local_experts=a.experts, num_experts_per_tok=a.top_k)
    model = MixtralForCausalLM(cfg).eval()
    with torch.no_grad():
        if a.perturb_layer >= 0:
            w = model.model.layers[a.perturb_layer].mlp.gate.weight
            noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(a.seed + 1000))
            w += a.perturb_scale * noise * w.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)
        if a.frozen_layer >= 0:
            model.model.layers[a.frozen_layer].mlp.gate.weight.zero_()

    gen = torch.Generator().manual_seed(a.seed + 1)
    prompts = [torch.randint(0, 256, (a.batch, a.seq), generator=gen) for _ in range(a.prompts)]
    rng = torch.Generator().manual_seed(a.seed + 2)

    with open(a.log, "a", buffering=1) as log:
        log.write(json.dumps({"ready": True, "pid": os.getpid(), "layers": a.layers, "experts": a.experts, "top_k": a.top_k}) + "\n")
        if not a.switch_file:
            for i, ids in enumerate(prompts):
                log.write(json.dumps({"prompt": i, "ids": ids.reshape(-1).tolist()}) + "\n")
        i = 0
        phase = 0
        while True:
            if a.switch_file:
                if phase == 0 and os.path.exists(a.switch_file):
                    phase = 1
                    log.write(json.dumps({"switch": True, "t": time.time(), "pass": i}) + "\n")
                lo, n = (0, 256) if phase == 0 else (128, 4)
                ids = torch.randint(lo, lo + n, (a.batch, a.seq), generator=rng)
                prompt = None
            else:
                prompt = i % a.prompts
                ids = prompts[prompt]
            with torch.no_grad():
                out = model(ids, output_router_logits=True)
            counts, top1 = [], []
            for logits in out.router_logits:
                probs = torch.softmax(logits.float(), dim=-1)
                chosen = torch.topk(probs, a.top_k, dim=-1).indices
                counts.append(torch.bincount(chosen.reshape(-1), minlength=a.experts).tolist())
                top1.append(chosen[:, 0].tolist())
            log.write(json.dumps({"pass": i, "t": time.time(), "prompt": prompt, "phase": phase, "counts": counts,
                                  "top1": top1 if not a.switch_file else None}) + "\n")
            i += 1
            if a.sleep:
                time.sleep(a.sleep)


if __name__ == "__main__":
    sys.exit(main())
