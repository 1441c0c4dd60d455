"""What the experts themselves look like: norms and pairwise similarity of their weights.

Per MoE layer, on request:

* the router's row for each expert (the projection to that expert's score): its norm, and
  the cosine similarity of every pair of rows (two experts with alike rows are scored alike,
  token after token); a router bias of one value per expert, when there is one;
* each expert's own weights, seen as one vector per expert (every parameter of that expert,
  flattened and concatenated, in a fixed order): per-parameter and total norms, and the
  cosine similarity of every pair. Works for experts held as separate modules (a ModuleList
  or ModuleDict: the same parameter of each expert), for stacked parameters whose leading
  dimension is the expert ([E, ...], as transformers v5 keeps them, or [E * rows, ...] as
  DBRX does), and for experts stored as rows of embedding tables (each row an expert).

Cosine of flattened weights is what detects experts that are copies of each other (the
usual way upcycled or badly initialised experts go wrong); it does not see two experts that
compute the same function with their hidden units permuted.

How it reads the weights: on the probe's request thread, with no autograd, in chunks of
rows: for each parameter, `rows` of every expert at once ([experts, rows x cols], float32),
so at most `chunk_bytes` of extra memory at a time besides the [E, E] sums, on the weights'
own device. Nothing is written to the model.
"""

import time
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .routers import MoELayer, _experts_child, _expert_children

DEFAULT_CHUNK_BYTES = 64 * 2**20


class _Gram:
    """Accumulates V V^T of per-expert vectors read in column chunks, and each group's squared norms."""

    def __init__(self, count: int, groups: int, device):
        self.gram = torch.zeros(count, count, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(groups, count, dtype=torch.float64, device=device)
        self.peak_bytes = 0

    def add(self, group: int, chunk: torch.Tensor):
        part = chunk @ chunk.T
        self.gram += part.double()
        self.sumsq[group] += part.diagonal().double()
        self.peak_bytes = max(self.peak_bytes, 2 * chunk.numel() * chunk.element_size())


def _read_groups(groups: List[Tuple[str, List[torch.Tensor]]], chunk_bytes: int, cancelled) -> Optional[_Gram]:
    """Sum V V^T over groups of same-shaped per-expert tensors, `chunk_bytes` of float32 at a time."""
    if not groups:
        return None
    count = len(groups[0][1])
    acc = _Gram(count, len(groups), groups[0][1][0].device)
    for g, (_name, tensors) in enumerate(groups):
        first = tensors[0]
        rows = int(first.shape[0]) if first.dim() else 1
        per_row = max(1, first.numel() // max(1, rows))
        step = max(1, chunk_bytes // (4 * count * per_row))
        for start in range(0, rows, step):
            if cancelled():
                raise InterruptedError("cancelled")
            # slice first, then flatten: only this chunk is ever copied, whatever the layout
            chunk = torch.stack([(t.reshape(1) if t.dim() == 0 else t)[start:start + step].reshape(-1)
                                 for t in tensors]).float()
            acc.add(g, chunk)
            del chunk
    return acc


def _cosine(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal().clamp_min(0).sqrt()
    outer = norms.unsqueeze(0) * norms.unsqueeze(1)
    return torch.where(outer > 0, gram / outer.clamp_min(1e-300), torch.full_like(gram, float("nan")))


def router_weight(layer: MoELayer) -> Tuple[Optional[torch.Tensor], str]:
    """The router's projection to per-expert scores [rows >= E, hidden] and its name: its own
    2-D weight, else the last Linear inside it with one row per expert (as routers project last)."""
    router = layer.router
    if router is None:
        return None, ""
    wanted = {layer.num_experts, layer.num_experts - layer.identity_experts}
    weight = getattr(router, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[0] >= min(wanted):
        return weight, "weight"
    found = (None, "")
    for name, module in router.named_modules():
        w = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and isinstance(w, torch.Tensor) and w.shape[0] in wanted:
            found = (w, name + ".weight")
    return found


def router_bias(layer: MoELayer) -> Tuple[Optional[torch.Tensor], str]:
    """A per-expert bias of the router (a Linear bias, a selection bias such as DeepSeek's
    e_score_correction_bias): a 1-D float tensor of one value per expert."""
    router = layer.router
    if router is None:
        return None, ""
    tensors = list(router.named_parameters(recurse=False)) + list(router.named_buffers(recurse=False))
    for name, value in sorted(tensors, key=lambda nv: "bias" not in nv[0]):
        if value.is_floating_point() and value.dim() == 1 and value.shape[0] == layer.num_experts:
            return value, name
    return None, ""


def expert_groups(layer: MoELayer) -> Tuple[str, List[Tuple[str, List[torch.Tensor]]]]:
    """The experts' own weights as groups (one per parameter name) of per-expert tensors of one
    shape, and how they are held: 'modules', 'stacked', 'embedding-rows', or '' when unreadable."""
    compute = layer.num_experts - layer.identity_experts
    experts, _ = _experts_child(layer.module)
    if experts is None and layer.arch == "embedding-experts":
        experts = layer.module
    children = _expert_children(experts) if isinstance(experts, nn.Module) else []
    if len(children) == compute:
        shapes: Dict[str, List[torch.Tensor]] = {}
        for i, child in enumerate(children):
            for name, p in child.named_parameters():
                if p.is_floating_point():
                    shapes.setdefault(name, [None] * compute)[i] = p
        groups = [(name, ts) for name, ts in shapes.items()
                  if all(t is not None and t.shape == ts[0].shape for t in ts)]
        return ("modules", groups) if groups else ("", [])
    if isinstance(experts, torch.Tensor):
        named = [("experts", experts)]
    elif layer.arch == "embedding-experts":
        named = []
    elif getattr(layer.module, "experts", None) is experts:
        named = list(experts.named_parameters())
    else:
        # no `experts` child: expert weights spread over several children of the block (JetMoE's
        # input_linear and output_linear), everything but the router and shared experts
        skip = {id(p) for p in layer.router.parameters()} if layer.router is not None else set()
        for name, child in layer.module.named_children():
            if "shared" in name.lower():
                skip |= {id(p) for p in child.parameters()}
        named = [(n, p) for n, p in layer.module.named_parameters() if id(p) not in skip]
    # [E, ...]: the expert is the leading dimension (the zero-compute experts' slices, which some
    # models allocate, are left out)
    stacked = [(name, [p[e] for e in range(compute)]) for name, p in named
               if p.is_floating_point() and p.dim() >= 2 and p.shape[0] in (compute, layer.num_experts)]
    if stacked:
        return "stacked", stacked
    # Experts concatenated along the first dimension ([E * rows, ...], DBRX): everything inside
    # the experts module belongs to an expert, so its leading dimension splits in E equal parts.
    split = [(name, list(p.split(p.shape[0] // compute))) for name, p in named
             if p.is_floating_point() and p.dim() >= 2 and p.shape[0] % compute == 0 and p.shape[0] > compute]
    if split:
        return "stacked", split
    if layer.arch == "embedding-experts":
        rows = [(name + ".weight", [m.weight[e] for e in range(compute)]) for name, m in layer.module.named_modules()
                if isinstance(m, nn.Embedding) and m.num_embeddings == compute and m.weight.is_floating_point()]
        if rows:
            return "embedding-rows", rows
    return "", []


def analyze_layer(layer: MoELayer, chunk_bytes: int = DEFAULT_CHUNK_BYTES, cancelled=lambda: False) -> Dict:
    """Norms and similarities of one MoE layer's router rows and experts (CPU tensors)."""
    started = time.perf_counter()
    E = layer.num_experts
    compute = E - layer.identity_experts
    out = {"experts": E, "compute": compute, "notes": []}
    peak = 0
    with torch.no_grad():
        weight, weight_name = router_weight(layer)
        if weight is not None:
            rows = min(E, int(weight.shape[0]))
            acc = _read_groups([("router", [weight[e] for e in range(rows)])], chunk_bytes, cancelled)
            norms = torch.full((E,), float("nan"), dtype=torch.float64)
            cosine = torch.full((E, E), float("nan"), dtype=torch.float64)
            norms[:rows] = acc.gram.diagonal().clamp_min(0).sqrt().cpu()
            cosine[:rows, :rows] = _cosine(acc.gram).cpu()
            out["router_norms"], out["router_cosine"], out["router_name"] = norms, cosine, weight_name
            peak = max(peak, acc.peak_bytes)
        else:
            out["router_norms"] = out["router_cosine"] = None
            out["router_name"] = ""
            out["notes"].append("no router weight with one row per expert was found")
        bias, bias_name = router_bias(layer)
        out["router_bias"] = None if bias is None else bias.detach().double().cpu()
        out["router_bias_name"] = bias_name
        layout, groups = expert_groups(layer)
        out["layout"] = layout
        out["groups"] = [name for name, _ in groups]
        if groups:
            acc = _read_groups(groups, chunk_bytes, cancelled)
            group_norms = torch.full((len(groups), E), float("nan"), dtype=torch.float64)
            group_norms[:, :compute] = acc.sumsq.clamp_min(0).sqrt().cpu()
            norms = torch.full((E,), float("nan"), dtype=torch.float64)
            norms[:compute] = acc.gram.diagonal().clamp_min(0).sqrt().cpu()
            cosine = torch.full((E, E), float("nan"), dtype=torch.float64)
            cosine[:compute, :compute] = _cosine(acc.gram).cpu()
            out["expert_norms"], out["group_norms"], out["weight_cosine"] = norms, group_norms, cosine
            out["params"] = sum(t.numel() for _, ts in groups for t in ts)
            peak = max(peak, acc.peak_bytes)
        else:
            out["expert_norms"] = out["group_norms"] = out["weight_cosine"] = None
            out["params"] = 0
            out["notes"].append("the experts' weights were not found as modules, stacked [E, ...] parameters "
                                "or embedding rows (or they are not floating point, e.g. quantized)")
        if layer.identity_experts:
            out["notes"].append("the last %d experts compute nothing (identity): no weights of their own"
                                % layer.identity_experts)
    out["peak_bytes"] = peak + 2 * E * E * 8
    out["seconds"] = time.perf_counter() - started
    return out
