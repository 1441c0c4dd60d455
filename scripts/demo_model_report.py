#!/usr/bin/env python3
"""Measure the routing structure of the demo model on held-out text.

Runs demo/model over held-out stdlib files (the files that
scripts/train_demo_model.py leaves out of training: sorted top-level
``*.py``, index % 10 == 9), with forward hooks on every layer's ``mlp.gate``,
and prints per layer:

* per-expert token share (share of top-k slots, and share of first choices)
* balancedness = mean/max of the per-expert top-k counts (1.0 = perfectly even)
* normalised entropy of the top-k share (1.0 = uniform)
* how much the first-choice expert tells about the byte class
  (I(class; expert) / H(class))
* per expert: which byte classes it takes the largest share of, e.g.
  "expert 5: 61% of whitespace" = expert 5 is the first choice for 61% of
  the whitespace bytes of the text.

Byte classes (of the byte at that position, i.e. the input token):
newline, indent (spaces/tabs at the start of a line), space (other
whitespace), lower, upper (ASCII letters), digit, underscore, quote (' " `),
bracket ( ()[]{} ), punct (other ASCII punctuation), nonascii.

--faults plants the same faults as scripts/demo_job.py --faults, to verify
them (dead expert: 0 tokens; collapsed layer: one expert >= 95% of first
choices).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_demo_model import read_budget, split_files, stdlib_files  # noqa: E402

CLASSES = ["newline", "indent", "space", "lower", "upper", "digit", "underscore", "quote", "bracket", "punct",
           "nonascii"]


def classify(text: bytes) -> list[int]:
    """Byte class of every position; 'indent' = whitespace before the first
    non-blank byte of a line, 'space' = any other space/tab."""
    out, at_line_start = [], True
    for b in text:
        c = chr(b) if b < 128 else ""
        if b == 10:
            k, at_line_start = 0, True
        elif b < 128 and c.isspace():
            k = 1 if at_line_start else 2
        else:
            at_line_start = False
            if b >= 128:
                k = 10
            elif c.islower():
                k = 3
            elif c.isupper():
                k = 4
            elif c.isdigit():
                k = 5
            elif c == "_":
                k = 6
            elif c in "'\"`":
                k = 7
            elif c in "()[]{}":
                k = 8
            else:
                k = 9
        out.append(k)
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Routing structure report for demo/model.")
    ap.add_argument("--model", default=str(HERE.parent / "demo" / "model"))
    ap.add_argument("--bytes", type=int, default=131_072, help="held-out bytes to run")
    ap.add_argument("--skip-bytes", type=int, default=0, help="skip this many held-out bytes first")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--faults", action="store_true", help="plant demo_job.py's faults first and verify them")
    ap.add_argument("--dead-layer", type=int, default=1)
    ap.add_argument("--dead-expert", type=int, default=5)
    ap.add_argument("--collapse-layer", type=int, default=3)
    ap.add_argument("--collapse-expert", type=int, default=2)
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(a.model, local_files_only=True).float().eval()
    model.config.output_router_logits = False
    L, E, K = len(model.model.layers), model.config.num_local_experts, model.config.num_experts_per_tok

    if a.faults:
        import demo_job
        ids = demo_job.calibration_ids()
        for layer, expert, kind in sorted([(a.dead_layer, a.dead_expert, "dead"),
                                           (a.collapse_layer, a.collapse_expert, "collapse")]):
            info = demo_job.plant_fault(model, layer, expert, kind, ids)
            print(f"planted fault: {info}")

    _, held = split_files(stdlib_files())
    text, used = read_budget(held, a.skip_bytes + a.bytes)
    text = text[a.skip_bytes:]
    n = len(text) // a.window
    ids = torch.tensor(list(text[: n * a.window]), dtype=torch.long).view(n, a.window)
    print(f"held-out text: {n * a.window:,} bytes ({n} windows of {a.window}) from {len(used)} files: "
          f"{', '.join(used)}")

    idx = [[] for _ in range(L)]
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, args, out, li=li: idx[li].append(out[2].clone()))
             for li, layer in enumerate(model.model.layers)]
    loss_sum = 0.0
    with torch.no_grad():
        for i in range(0, n, 16):
            x = ids[i:i + 16]
            out = model(input_ids=x, labels=x, use_cache=False)
            loss_sum += float(out.loss) * x.shape[0]
    for h in hooks:
        h.remove()
    ce = loss_sum / n
    print(f"held-out loss {ce:.3f} nats/byte = {ce / math.log(2):.3f} bits/byte")

    cls = torch.tensor(classify(text[: n * a.window]), dtype=torch.long)
    T = cls.numel()
    cls_tot = torch.bincount(cls, minlength=len(CLASSES)).float()
    print("byte classes in the text: " + ", ".join(f"{c} {100 * v / T:.1f}%" for c, v in zip(CLASSES, cls_tot.tolist())))
    p_cls = cls_tot / T
    H_cls = -(p_cls[p_cls > 0] * p_cls[p_cls > 0].log()).sum()

    headlines = []
    for li in range(L):
        ind = torch.cat(idx[li])  # (T, K)
        topk = torch.bincount(ind.reshape(-1), minlength=E).float()
        first = torch.bincount(ind[:, 0], minlength=E).float()
        share = topk / topk.sum()
        fshare = first / T
        bal = float(topk.mean() / topk.max())
        nz = share[share > 0]
        ent = float(-(nz * nz.log()).sum() / math.log(E))
        # joint (class, first-choice expert)
        joint = torch.zeros(len(CLASSES), E)
        joint.index_put_((cls, ind[:, 0]), torch.ones(T), accumulate=True)
        pj = joint / T
        pe = pj.sum(0, keepdim=True)
        pc = pj.sum(1, keepdim=True)
        m = pj > 0
        mi = float((pj[m] * (pj[m] / (pc @ pe)[m]).log()).sum())
        print(f"\nlayer {li}: balancedness (mean/max) {bal:.2f}, normalised entropy {ent:.3f}, "
              f"I(class;first expert)/H(class) {mi / float(H_cls):.2f}")
        print("  expert  top-k%  first%  largest shares of byte classes (expert is first choice for X% of that class)")
        frac_of_class = joint / cls_tot[:, None].clamp_min(1)  # P(expert first | class)
        for e in range(E):
            order = sorted(range(len(CLASSES)), key=lambda c: -float(frac_of_class[c, e]))
            picks = [c for c in order if cls_tot[c] >= 200][:3]
            desc = ", ".join(f"{100 * float(frac_of_class[c, e]):.0f}% of {CLASSES[c]}" for c in picks)
            print(f"  {e:6d}  {100 * float(share[e]):5.1f}  {100 * float(fshare[e]):5.1f}   {desc}")
            for c in picks[:1]:
                headlines.append((float(frac_of_class[c, e]), li, e, CLASSES[c], float(fshare[e])))
        if a.faults and li == a.dead_layer:
            print(f"  FAULT CHECK dead: layer {li} expert {a.dead_expert} got {int(topk[a.dead_expert])} top-k slots "
                  f"of {T * K} ({T} tokens)")
        if a.faults and li == a.collapse_layer:
            print(f"  FAULT CHECK collapse: layer {li} expert {a.collapse_expert} is first choice for "
                  f"{100 * float(fshare[a.collapse_expert]):.2f}% of {T} tokens")

    print("\nstrongest specialisations (expert is first choice for X% of a byte class, class >= 0.5% of text):")
    for frac, li, e, c, fs in sorted(headlines, reverse=True):
        if cls_tot[CLASSES.index(c)] / T >= 0.005 and frac >= 0.5 and fs < 0.5:
            print(f"  layer {li} expert {e} takes {100 * frac:.0f}% of {c} bytes (but only {100 * fs:.0f}% of all bytes)")


if __name__ == "__main__":
    main()
