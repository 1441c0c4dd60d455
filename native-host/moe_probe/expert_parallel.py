"""Expert-parallel MoE layers: each rank holds a slice of a layer's experts.

In an expert-parallel (EP) job the router of every rank chooses among all E experts of a
layer (global ids), tokens are sent to the ranks holding the chosen experts (all-to-all),
and each rank's experts process what they received. Such a block has fewer experts than
its router has outputs, so the plain matcher in routers.py cannot read it.

An EP layer is read on the experts' side: the rows each local expert receives, put at that
expert's global id. So a rank's counts are the work its own experts did, and the counts of
the job's logical layer are exactly the sum over ranks, whether tokens are dispatched
all-to-all or replicated (data-parallel replicas of the same experts add up too). The
rank's own tokens' choices (top-k of its router's logits) label its token records.

Which global experts a rank holds comes from the user (`moe_probe.attach(model,
expert_map=...)`) or from the model (see distributed.held_from_model). Without either, a
block with fewer experts than router outputs is left to routers.py, which says why it could
not be read.
"""

from typing import List, Optional

import torch
from torch import nn

from .distributed import held_from_model, held_from_user
from .routers import (
    ROUTER_CHILD_NAMES, MoELayer, Rejection, Routing, _experts_child, _expert_children, _expert_counts,
    _find_top_k, _gating, _is_attention, _join, _projection_rows, _shared_count,
)


class ExpertParallelLayer(MoELayer):
    """An MoE layer of which this process holds the experts `held` (global ids, in local order)."""

    def __init__(self, *args, held: List[int], held_from: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.held = list(held)
        self.held_from = held_from  # "user" or "model": where the expert map came from
        self.source = "expert-inputs"
        self.token_source = "recomputed" if self.router is not None else "none"

    def describe(self):
        info = super().describe()
        info["held"] = list(self.held)
        return info

    def _end_rows(self, args, output):
        rows, self._rows = self._rows, None
        self._dispatch_values = None
        tokens = self._call_tokens
        logits = self._router_logits()
        if rows is None:
            return None
        # The rows the local experts received (this rank's and other ranks' tokens), at their
        # global ids. No dense-block or capacity check: the rows need not relate to this
        # rank's own tokens, which went to other ranks' experts.
        loads = [0] * self.num_experts
        for position, served in enumerate(rows):
            loads[self.held[position]] += served
        token_ids = None
        if logits is not None and tokens is not None and logits.shape[0] == tokens:
            # this rank's own tokens' choices, for token records (top-k of the router's logits)
            token_ids = torch.topk(logits, self.top_k, dim=-1).indices
        else:
            logits = None
        return Routing(loads=loads, tokens=tokens, logits=logits, token_ids=token_ids)


def match_expert_parallel(name, module, declared, parent, rejected, user_map) -> Optional[MoELayer]:
    """An expert-parallel block: a router with more outputs than the experts present, and an
    expert map (the user's or the model's) saying which global experts those are."""
    experts, _experts_name = _experts_child(module)
    if not isinstance(experts, nn.Module):
        return None
    local = _expert_children(experts)
    counts = _expert_counts(experts)
    if not counts:
        return None
    local_count = len(local) if local else counts[-1]
    children = [(n, c) for n, c in module.named_children() if c is not experts and "shared" not in n.lower()]
    children.sort(key=lambda nc: (declared.index_for(_join(name, nc[0]), nc[1]) is None,
                                  nc[0] not in ROUTER_CHILD_NAMES))
    router = router_name = None
    global_count = 0
    for child_name, child in children:
        rows = _projection_rows(child)
        if rows is not None and rows[0] > local_count:
            router, router_name, global_count = child, _join(name, child_name), rows[0]
            break
    if router is None:
        return None
    from .routers import layer_position

    model_index, _stack = layer_position(name)
    held = held_from_user(user_map, name, model_index)
    held_from = "user"
    if held is None:
        held, held_from = held_from_model([module, experts], local_count, global_count), "model"
    if held is None:
        return None  # not known to be expert-parallel: routers.py judges the block
    where = "the expert map given to moe_probe.attach" if held_from == "user" else "the model's own expert map"
    if len(held) != local_count:
        rejected.append(Rejection(name, type(module).__name__, "%s names %d experts for this layer, but this process "
                                  "holds %d of its experts" % (where, len(held), local_count)))
        return None
    if max(held) >= global_count:
        rejected.append(Rejection(name, type(module).__name__, "%s names expert %d, but the router (%s) chooses "
                                  "among %d" % (where, max(held), router_name, global_count)))
        return None
    if not local:
        rejected.append(Rejection(name, type(module).__name__, "holds %d of %d experts (expert parallel) as one "
                                  "module; the probe reads expert-parallel layers from the rows each local expert "
                                  "module receives" % (local_count, global_count)))
        return None
    top_k = _find_top_k([module, router, experts])
    if not top_k or top_k > global_count:
        rejected.append(Rejection(name, type(module).__name__, "expert parallel with %d experts, but no top-k "
                                  "setting was found on the block, the router or the config" % global_count))
        return None
    modules = [module, router, experts]
    return ExpertParallelLayer(
        name, module, global_count, top_k, router=router, router_name=router_name, expert_modules=local,
        logits_index=declared.index_for(router_name, router), arch="moe-block",
        kind="attention" if _is_attention(name, module, parent) else "mlp", shared_experts=_shared_count(module),
        gating=_gating(modules), held=held, held_from=held_from)
