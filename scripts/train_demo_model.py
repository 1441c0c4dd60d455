#!/usr/bin/env python3
"""Train the small byte-level Mixtral demo model shipped in demo/model/.

Random-weight MoE models route almost uniformly, so the DevTools panel has
nothing interesting to show. This script trains a tiny MixtralForCausalLM
(vocab = the 256 raw UTF-8 byte values, nothing else) on text every machine
has offline: the Python standard library's own top-level source files
(``sysconfig.get_paths()['stdlib']/*.py`` of the running interpreter).

Everything is deterministic: files are read in sorted order, every 10th file
(index % 10 == 9) is held out for evaluation / the routing report, the
training text is cut to a fixed byte budget, batches are drawn from a seeded
generator, and training runs on one CPU thread.

All settings are argparse defaults; they are printed at start and written to
<out>/settings.json together with the exact command line, a description and
SHA-256 of the training data, the final losses, wall time and library
versions. Weights are saved with ``save_pretrained(safe_serialization=True)``
in float16 (``--save-dtype``) to keep the checkpoint a few MB; load them with
``from_pretrained`` and call ``.float()`` before running.

Reproduce the committed weights with:

    .venv/bin/python scripts/train_demo_model.py

(The exact bytes depend on the interpreter's stdlib version; settings.json
records the Python version and the data hash used.)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "demo" / "model"


# --------------------------------------------------------------------------
# Data: the running interpreter's stdlib, read deterministically.
# --------------------------------------------------------------------------
def stdlib_files(stdlib_dir: str | None = None) -> list[Path]:
    """Top-level *.py files of the stdlib, sorted by name."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file())


def split_files(files: list[Path], holdout_every: int = 10) -> tuple[list[Path], list[Path]]:
    """Deterministic split: file index % holdout_every == holdout_every-1 is held out."""
    train = [f for i, f in enumerate(files) if i % holdout_every != holdout_every - 1]
    held = [f for i, f in enumerate(files) if i % holdout_every == holdout_every - 1]
    return train, held


def read_budget(files: list[Path], budget: int) -> tuple[bytes, list[str]]:
    """Concatenate files (separated by a blank line) until `budget` bytes."""
    chunks, used, total = [], [], 0
    for f in files:
        if total >= budget:
            break
        data = f.read_bytes() + b"\n\n"
        chunks.append(data)
        used.append(f.name)
        total += len(data)
    return b"".join(chunks)[:budget], used


# --------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (config.json + model.safetensors + settings.json)")
    ap.add_argument("--stdlib", default=None, help="stdlib folder (default: sysconfig.get_paths()['stdlib'])")
    ap.add_argument("--train-bytes", type=int, default=3_000_000, help="byte budget of training text")
    ap.add_argument("--eval-bytes", type=int, default=200_000, help="byte budget of held-out text for the final eval loss")
    ap.add_argument("--holdout-every", type=int, default=10, help="every Nth sorted file is held out")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    # model
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--intermediate", type=int, default=128, help="per-expert FFN size")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--max-positions", type=int, default=256)
    ap.add_argument("--aux-coef", type=float, default=0.02, help="router_aux_loss_coef (load-balancing loss)")
    ap.add_argument("--aux-per-layer", type=int, default=1, choices=[0, 1],
                    help="1: load-balancing loss computed per layer and averaged; 0: transformers' built-in "
                         "loss, which pools all layers' routing and so lets single layers starve experts")
    # optimisation
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1, help="cosine decays to lr*this")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--save-dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    return ap.parse_args(argv)


def build_model(a):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(
        vocab_size=256,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        num_local_experts=a.experts,
        num_experts_per_tok=a.top_k,
        max_position_embeddings=a.max_positions,
        sliding_window=None,
        output_router_logits=True,
        router_aux_loss_coef=a.aux_coef,
        router_jitter_noise=0.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,  # NUL byte: never occurs in the text
        use_cache=True,
    )
    return MixtralForCausalLM(cfg)


def main(argv=None):
    a = parse_args(argv)
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)

    print("train_demo_model settings:")
    for k, v in vars(a).items():
        print(f"  {k} = {v}")

    files = stdlib_files(a.stdlib)
    train_files, held_files = split_files(files, a.holdout_every)
    train_bytes, train_used = read_budget(train_files, a.train_bytes)
    eval_bytes, eval_used = read_budget(held_files, a.eval_bytes)
    stdlib_dir = str(Path(a.stdlib or sysconfig.get_paths()["stdlib"]))
    print(f"data: {stdlib_dir}/*.py: {len(files)} files; train {len(train_bytes):,} bytes from "
          f"{len(train_used)} files ({train_used[0]} .. {train_used[-1]}); held-out {len(eval_bytes):,} bytes "
          f"from {len(eval_used)} files")

    data = torch.frombuffer(bytearray(train_bytes), dtype=torch.uint8).long()
    edata = torch.frombuffer(bytearray(eval_bytes), dtype=torch.uint8).long()

    model = build_model(a)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model: {nparams:,} parameters")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        t = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))

    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    if a.aux_per_layer:
        model.router_aux_loss_coef = 0.0  # out.loss = pure CE; the per-layer aux loss is added below

    def aux_loss(out):
        if not a.aux_per_layer:
            return out.aux_loss
        per = [load_balancing_loss_func((lg,), a.experts, a.top_k) for lg in out.router_logits]
        return torch.stack(per).mean()

    gen = torch.Generator().manual_seed(a.seed)
    L = a.seq_len

    def batch():
        starts = torch.randint(0, len(data) - L - 1, (a.batch,), generator=gen)
        return torch.stack([data[s:s + L] for s in starts.tolist()])

    model.train()
    t0 = time.time()
    hist = []
    ce_ema = None
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = batch()
        out = model(input_ids=x, labels=x, output_router_logits=True, use_cache=False)
        aux_t = aux_loss(out)
        loss = out.loss + a.aux_coef * aux_t if a.aux_per_layer else out.loss
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        aux = float(aux_t.detach())
        ce = float(out.loss.detach()) - (0.0 if a.aux_per_layer else a.aux_coef * aux)
        ce_ema = ce if ce_ema is None else 0.9 * ce_ema + 0.1 * ce
        if step % a.log_every == 0 or step == a.steps - 1:
            el = time.time() - t0
            print(f"step {step:5d}  loss {float(loss):.4f}  ce {ce:.4f} ({ce / math.log(2):.3f} bits/byte)  "
                  f"aux {aux:.4f}  lr {lr_at(step):.2e}  {el:6.1f}s", flush=True)
            hist.append({"step": step, "loss": float(loss), "ce": ce, "aux": aux, "t": round(el, 1)})
    wall = time.time() - t0

    # held-out eval (non-overlapping windows)
    model.eval()
    with torch.no_grad():
        n = (len(edata) - 1) // L
        tot, cnt = 0.0, 0
        for i in range(0, n, a.batch):
            xs = torch.stack([edata[j * L:(j + 1) * L] for j in range(i, min(n, i + a.batch))])
            o = model(input_ids=xs, labels=xs, output_router_logits=False, use_cache=False)
            tot += float(o.loss) * xs.numel()
            cnt += xs.numel()
        eval_ce = tot / cnt
    print(f"done: {a.steps} steps in {wall:.1f}s; final train ce (EMA) {ce_ema:.4f} "
          f"({ce_ema / math.log(2):.3f} bits/byte); held-out ce {eval_ce:.4f} ({eval_ce / math.log(2):.3f} bits/byte)")

    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, a.save_dtype)
    model.router_aux_loss_coef = a.aux_coef
    model.to(dtype)
    model.config.output_router_logits = False  # consumers opt in themselves
    model.save_pretrained(out_dir, safe_serialization=True)

    settings = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "argv": sys.argv,
        "args": vars(a),
        "data": {
            "description": (f"top-level stdlib *.py files of Python {platform.python_version()}, sorted by name; "
                            f"files with index % {a.holdout_every} == {a.holdout_every - 1} held out; each file "
                            f"followed by a blank line; concatenation cut to the byte budget"),
            "stdlib_dir": stdlib_dir,
            "n_files_total": len(files),
            "train_files": train_used,
            "train_bytes": len(train_bytes),
            "train_sha256": hashlib.sha256(train_bytes).hexdigest(),
            "heldout_files": eval_used,
            "heldout_bytes": len(eval_bytes),
            "heldout_sha256": hashlib.sha256(eval_bytes).hexdigest(),
        },
        "seed": a.seed,
        "parameters": nparams,
        "saved_dtype": a.save_dtype,
        "final_loss": float(loss),
        "final_train_ce_ema": ce_ema,
        "final_train_bits_per_byte": ce_ema / math.log(2),
        "heldout_ce": eval_ce,
        "heldout_bits_per_byte": eval_ce / math.log(2),
        "final_aux_loss": aux,
        "loss_history": hist,
        "wall_time_s": round(wall, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__},
        "threads": a.threads,
        "machine": platform.machine(),
    }
    (out_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir())}
    print(f"saved to {out_dir}: " + ", ".join(f"{k} {v:,} B" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
