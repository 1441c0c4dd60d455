"""A real PyTorch MoE job for the end-to-end tests: a tiny random-weight
transformers model running forward passes in a loop. It never imports the probe.

Every pass it appends one JSON line to --log with what the model really routed,
obtained from transformers' own router outputs (output_router_logits=True ->
softmax -> top-k, exactly as the router selects), plus a hash of the model's
outputs and how many forward hooks the model carries, so a test can check both
what the panel shows and that the job is unchanged after detach.

Inputs cycle through --cycle fixed batches, so pass i and pass i + cycle must
produce identical outputs.
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
    args = parser.parse_args()

    torch.set_num_threads(1)
    model = build_model(args.arch, args.layers, args.experts, args.top_k, args.hidden, args.seed).eval()
    generator = torch.Generator().manual_seed(args.seed + 1)
    batches = [torch.randint(0, 256, (args.batch, args.seq), generator=generator) for _ in range(args.cycle)]

    with open(args.log, "a", buffering=1) as log:
        log.write(json.dumps({"ready": True, "pid": os.getpid(), "arch": args.arch,
                              "layers": args.layers, "experts": args.experts, "top_k": args.top_k}) + "\n")
        i = 0
        while args.passes == 0 or i < args.passes:
            with torch.no_grad():
                out = model(batches[i % args.cycle], output_router_logits=True)
            counts = []
            for logits in out.router_logits:
                probs = torch.softmax(logits.float(), dim=-1)
                ids = torch.topk(probs, args.top_k, dim=-1).indices
                counts.append(torch.bincount(ids.reshape(-1), minlength=args.experts).tolist())
            digest = hashlib.sha256(out.logits.contiguous().numpy().tobytes()).hexdigest()[:16]
            log.write(json.dumps({
                "pass": i, "counts": counts, "out": digest, "hooks": hook_count(model),
                "threads": sorted(t.name for t in threading.enumerate()),
            }) + "\n")
            i += 1
            if args.sleep:
                time.sleep(args.sleep)


if __name__ == "__main__":
    sys.exit(main())
