#!/usr/bin/env python3
"""A plain PyTorch MoE job for MoE DevTools to attach to.

Loads the committed byte-level Mixtral demo model (demo/model, see
scripts/train_demo_model.py) with transformers ``from_pretrained`` from the
local folder only, converts it to float32 and generates text in a loop:
pick a Python-code-like prompt, ``model.generate`` ~64 new bytes with
``use_cache=True`` (one prefill pass, then one decode pass per byte), print
the text, sleep a little, repeat.

This script does not import the probe; it is the kind of process the probe
attaches to.

Options:
  --seconds N   stop after N seconds (0 = run forever)
  --faults      plant two routing faults so the panel has findings to show:
                * a dead expert: one expert of one layer never wins a top-k slot
                * a collapsed layer: one expert wins first choice for every token
                Mixtral's router (``mlp.gate``, MixtralTopKRouter) is a bias-free
                linear layer, so the faults are made by rewriting router rows
                along a direction ``d`` that every gate input of that layer has a
                positive component on (found on calibration text and checked):
                dead row = -C*d (its logit is far below every other), collapsed
                row = +C*d (its logit is far above every other).
  --log FILE    append one JSON line per forward pass (prefill or decode) with
                the per-layer per-expert routed counts, taken by this script's own
                forward hooks on every layer's ``mlp.gate`` during generation.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "demo" / "model"

class ByteTokenizer:
    """The demo model's tokenizer: token id i is the byte i."""

    def convert_ids_to_tokens(self, ids):
        return [_byte_text(i) for i in ids]


def _byte_text(i):
    if i == 10:
        return "\u23ce"  # a visible newline
    if 32 <= i < 127:
        return chr(i)
    return "<0x%02X>" % i


PROMPTS = [
    "def __init__(self, ",
    "import os\nimport sys\n\n",
    "class ",
    "    def ",
    "        if ",
    "        return self.",
    "for i in range(",
    "    raise ValueError(",
    "    \"\"\"Return the ",
    "        except ",
    "from collections import ",
    "if __name__ == '__main__':\n    ",
    "    @property\n    def ",
    "        self._",
    "# Copyright ",
    "def _",
]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Generate text forever with the MoE demo model.")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="local model folder")
    ap.add_argument("--seconds", type=float, default=0, help="stop after N seconds (0 = forever)")
    ap.add_argument("--max-new", type=int, default=64, help="new bytes per generation")
    ap.add_argument("--sleep", type=float, default=0.2, help="pause between generations (s)")
    ap.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--faults", action="store_true", help="plant a dead expert and a collapsed layer")
    ap.add_argument("--dead-layer", type=int, default=1)
    ap.add_argument("--dead-expert", type=int, default=5)
    ap.add_argument("--collapse-layer", type=int, default=3)
    ap.add_argument("--collapse-expert", type=int, default=2)
    ap.add_argument("--log", default=None, help="append per-pass routing counts (JSON lines) to FILE")
    ap.add_argument("--quiet", action="store_true", help="do not print generated text")
    return ap.parse_args(argv)


def gates(model):
    return [layer.mlp.gate for layer in model.model.layers]


# --------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------
def calibration_ids(max_bytes: int = 24_576, window: int = 256) -> torch.Tensor:
    """Prompts plus a slice of stdlib text, as (n, window) byte windows."""
    text = "".join(p * 4 for p in PROMPTS).encode()
    root = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(root.glob("*.py"))[::7]:
        if len(text) >= max_bytes:
            break
        text += f.read_bytes()[:4096]
    text = text[:max_bytes]
    n = len(text) // window
    return torch.tensor(list(text[: n * window]), dtype=torch.long).view(n, window)


@torch.no_grad()
def gate_inputs(model, layer: int, ids: torch.Tensor) -> torch.Tensor:
    grabbed = []
    h = gates(model)[layer].register_forward_pre_hook(lambda m, args: grabbed.append(args[0].reshape(-1, args[0].shape[-1]).clone()))
    try:
        for i in range(0, len(ids), 16):
            model(input_ids=ids[i:i + 16], use_cache=False)
    finally:
        h.remove()
    return torch.cat(grabbed)


def shared_direction(x: torch.Tensor, iters: int = 300) -> torch.Tensor:
    """Unit vector d with <d, x> > 0 for every row of x (as far as possible).

    Start from the mean direction and push it towards the rows with the
    smallest normalised projection (a few steps of a max-min-margin ascent).
    """
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)
    d = xn.mean(0)
    d = d / d.norm()
    for _ in range(iters):
        m = xn @ d
        if m.min() > 0.05:
            break
        w = torch.softmax(-m / 0.02, dim=0)
        d = d + 0.1 * (w[:, None] * xn).sum(0)
        d = d / d.norm()
    return d


@torch.no_grad()
def plant_fault(model, layer: int, expert: int, kind: str, ids: torch.Tensor,
                lead: tuple[float, float] = (10.0, 40.0)) -> dict:
    """Rewrite router row `expert` of `layer` so that it is dead / wins every token.

    dead: row = -C*d, with d a direction every calibration gate input has a
    positive component on and C so large that the row's logit lies far below
    every other expert's logit (10x safety factor for unseen tokens).

    collapse: row = r (+ c*d if needed), r fitted so that on every calibration
    token its logit leads the best other expert's by `lead` = [lo, hi] (least
    squares start, then a hinge fit), c*d lifting any token still below lo/2.
    The winner's logit then sits tens of units above the runner-up rather than
    hundreds, so the other experts' softmax does not underflow and the second
    choice keeps its learned ranking: only the first choice collapses.
    """
    gate = gates(model)[layer]
    x = gate_inputs(model, layer, ids)
    d = shared_direction(x)
    proj = x @ d
    pmin = float(proj.min())
    if pmin <= 0:
        raise SystemExit(f"fault injection: no direction shared by all gate inputs of layer {layer} (min proj {pmin:.3g})")
    others = torch.cat([gate.weight[:expert], gate.weight[expert + 1:]])
    other_logits = x @ others.T
    info = {"layer": layer, "expert": expert, "kind": kind, "calib_tokens": int(x.shape[0]),
            "min_cos": float((proj / x.norm(dim=1)).min())}
    if kind == "dead":
        spread = float(other_logits.abs().max())
        C = 10.0 * (spread + 10.0) / pmin
        gate.weight[expert] = -C * d
        info["scale"] = C
    else:
        best_other = other_logits.max(1).values
        r = torch.linalg.lstsq(x, (best_other + lead[0])[:, None]).solution[:, 0]
        with torch.enable_grad():  # keep the lead inside [lo, hi] on every calibration token
            r = r.clone().requires_grad_(True)
            opt = torch.optim.Adam([r], lr=0.05)
            for _ in range(800):
                gap = x @ r - best_other
                loss = torch.relu(lead[0] - gap).pow(2).mean() + torch.relu(gap - lead[1]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        r = r.detach()
        gap = x @ r - best_other
        c = max(0.0, float((lead[0] / 2 - gap.min()) / pmin))  # lift any token still below lo/2
        gate.weight[expert] = r + c * d
        gap = x @ gate.weight[expert] - best_other
        info["scale"] = c
        info["gap_min"], info["gap_median"], info["gap_max"] = float(gap.min()), float(gap.median()), float(gap.max())
    return info


# --------------------------------------------------------------------------
# Per-pass routing log
# --------------------------------------------------------------------------
class RouteLog:
    """Forward hooks on every mlp.gate; one JSON line per model forward."""

    def __init__(self, model, path: str):
        self.f = open(path, "a", buffering=1)
        self.n_layers = len(model.model.layers)
        self.E = model.config.num_local_experts
        self.gen = 0
        self.pass_in_gen = 0
        self.total = torch.zeros(self.n_layers, self.E, dtype=torch.long)
        self.total_first = torch.zeros(self.n_layers, self.E, dtype=torch.long)
        self.total_tokens = 0
        self._reset()
        self.handles = [model.model.register_forward_pre_hook(lambda m, a, k: self._reset(), with_kwargs=True),
                        model.model.register_forward_hook(lambda m, a, o: self._flush())]
        for li, g in enumerate(gates(model)):
            self.handles.append(g.register_forward_hook(self._make_hook(li)))

    def _reset(self):
        self.counts = torch.zeros(self.n_layers, self.E, dtype=torch.long)
        self.first = torch.zeros(self.n_layers, self.E, dtype=torch.long)
        self.tokens = 0

    def _make_hook(self, li):
        def hook(module, args, out):
            _logits, _weights, indices = out
            self.counts[li] += torch.bincount(indices.reshape(-1), minlength=self.E)
            self.first[li] += torch.bincount(indices[:, 0], minlength=self.E)
            if li == 0:
                self.tokens = int(indices.shape[0])
        return hook

    def new_generation(self):
        self.gen += 1
        self.pass_in_gen = 0

    def _flush(self):
        rec = {"t": round(time.time(), 4), "gen": self.gen, "pass": self.pass_in_gen,
               "phase": "prefill" if self.pass_in_gen == 0 else "decode", "tokens": self.tokens,
               "counts": self.counts.tolist(), "first": self.first.tolist()}
        self.f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.pass_in_gen += 1
        self.total += self.counts
        self.total_first += self.first
        self.total_tokens += self.tokens

    def summary(self) -> str:
        lines = [f"routing totals over {self.total_tokens} tokens (top-k counts | first-choice share):"]
        for li in range(self.n_layers):
            c = self.total[li].tolist()
            fs = (self.total_first[li].float() / max(1, self.total_tokens) * 100).tolist()
            lines.append(f"  layer {li}: counts {c} | first % " + " ".join(f"{v:.1f}" for v in fs))
        return "\n".join(lines)


# --------------------------------------------------------------------------
def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)

    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(a.model, local_files_only=True).float().eval()
    model.config.output_router_logits = False
    L, E = len(model.model.layers), model.config.num_local_experts
    print(f"demo_job: loaded {a.model} ({L} layers, {E} experts, top-{model.config.num_experts_per_tok}), "
          f"pid {__import__('os').getpid()}", flush=True)

    if a.faults:
        if a.dead_layer == a.collapse_layer:
            raise SystemExit("--dead-layer and --collapse-layer must differ")
        ids = calibration_ids()
        todo = sorted([(a.dead_layer, a.dead_expert, "dead"), (a.collapse_layer, a.collapse_expert, "collapse")])
        for layer, expert, kind in todo:  # in layer order: earlier faults change later layers' inputs
            info = plant_fault(model, layer, expert, kind, ids)
            print(f"FAULT planted: layer {layer} expert {expert} "
                  f"{'is DEAD (never routed)' if kind == 'dead' else 'takes every token (layer COLLAPSED)'} "
                  f"[calibrated on {info['calib_tokens']} tokens, min cos {info['min_cos']:.3f}, scale {info['scale']:.3g}"
                  + (f", logit lead {info['gap_min']:.1f}..{info['gap_max']:.1f}" if 'gap_min' in info else "") + "]",
                  flush=True)

    # The model reads raw UTF-8 bytes. Keeping a tokenizer object alive lets the probe label
    # each recorded token with its text (it looks for any live *Tokenizer* with convert_ids_to_tokens).
    tokenizer = ByteTokenizer()  # noqa: F841 (found by the probe through the garbage collector)

    log = RouteLog(model, a.log) if a.log else None
    if log:
        print(f"logging per-pass routing counts to {a.log}", flush=True)

    print("demo_job: generating", flush=True)  # scripts/demo.mjs attaches after this line
    t_end = time.time() + a.seconds if a.seconds > 0 else None
    n = 0
    try:
        while t_end is None or time.time() < t_end:
            prompt = rng.choice(PROMPTS)
            ids = torch.tensor([list(prompt.encode())], dtype=torch.long)
            if log:
                log.new_generation()
            with torch.no_grad():
                kw = dict(do_sample=False) if a.greedy else dict(do_sample=True, temperature=a.temperature, top_k=0)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.max_new,
                                     min_new_tokens=a.max_new, use_cache=True, pad_token_id=0, eos_token_id=None, **kw)
            n += 1
            if not a.quiet:
                text = bytes(out[0].tolist()).decode("utf-8", errors="replace")
                print(f"--- [{n}] ---\n{text}", flush=True)
            time.sleep(a.sleep)
    except KeyboardInterrupt:
        pass
    print(f"demo_job: {n} generations done", flush=True)
    if log:
        print(log.summary(), flush=True)


if __name__ == "__main__":
    main()
