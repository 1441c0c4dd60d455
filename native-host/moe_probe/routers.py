"""Finding MoE layers in a torch model and reading the routing each one really used.

A layer is read as close to its experts as the model allows, without changing
anything it computes. In order of preference:

* `dispatched`: a forward pre-hook on the experts module reads what the block
  hands to it (transformers v5: `experts(hidden, top_k_index, top_k_weights)`;
  Switch/NLLB: a dispatch mask; JetMoE: per-expert sizes; an `nn.Embedding` of
  expert rows: the ids looked up). These are the ids the experts received,
  whatever the router did on the way (selection-only biases, groups, capacity,
  NaN logits), so nothing is recomputed.
* `expert-inputs`: when the experts are separate modules called one by one
  (an `nn.ModuleList`/`ModuleDict` of experts, as in hand-written blocks and
  NLLB-MoE), pre-hooks on each expert count the rows each one received: exact
  loads, but no per-token ids. A block that runs every expert on every token
  (dense compute weighted by a mask) is read from its dispatch or its router
  instead.
* `router`: the router's (or the block's `route_tokens_to_experts`) output, when
  it holds the ids (an integer [N, k] tensor, or a one-hot dispatch mask).
* `recomputed`: only float [N, E] logits exist (Llama4's experts get every token
  pre-scaled; a plain `nn.Linear` gate in a block that computes experts densely):
  ids = top-k of the logits, which is what such a block does. Marked as such.

Router outputs and dispatch arguments are told apart by dtype and shape, never
by position alone. The router's float [N, E] output, when there is one, is kept
as the logits for router health (NaN/Inf, entropy, z-loss) whichever way the ids
were read.

Layers are recognised by structure: a module with an `experts` child (or a child
holding [E, ...] expert weights) and a router child whose projection has E output
rows, or one that looks up expert rows in an `nn.Embedding(E, ...)`; and by what
transformers declares (`_can_record_outputs["router_logits"]`), not by class names.
A block-level match claims the block, so its router is never counted twice.

Hooks never return a value (outputs are never replaced), never modify a tensor in
place, and never synchronise with the device (no .item(), .cpu(), .tolist(),
nonzero or boolean indexing): reading costs a few views, and at most a top-k or
argmax over [N, E].
"""

import functools
import inspect
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from . import compiled, side


class Routing(NamedTuple):
    """What one MoE layer decided for the N tokens of one call."""

    ids: Optional[torch.Tensor] = None  # [N, k] integer expert ids; -1 marks an empty slot
    weights: Optional[torch.Tensor] = None  # [N, k] mixing weights, if known
    logits: Optional[torch.Tensor] = None  # [N, E] router logits (or probabilities), if known
    # Tokens no expert processed (capacity): [N] bool, or a Python int of assignments not served.
    dropped: Optional[object] = None
    # Per-expert assignments when per-token ids are not visible: a list of E Python ints
    # (rows each expert received) or a device tensor [E]. Counts come from here when set.
    loads: Optional[object] = None
    tokens: Optional[int] = None  # tokens in this call, when not ids.shape[0]
    # Per-token ids for token records only, when the counts come from `loads` (JetMoE).
    token_ids: Optional[torch.Tensor] = None
    padded: bool = False  # ids may hold -1 (a variable number of experts per token)


OnRouting = Callable[["MoELayer", Routing], None]

# Attribute names under which modules and configs keep the expert count and top-k.
EXPERT_COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K_ATTRS = ("top_k", "num_experts_per_tok", "moe_top_k", "router_top_k", "experts_per_token",
               "num_selected_experts", "top_k_experts", "moe_k", "moe_topk")
SHARED_COUNT_ATTRS = ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts", "shared_expert_count")
SCORING_ATTRS = ("scoring_func", "score_func", "scoring_function", "gating_func", "router_activation",
                 "router_score_function", "moe_router_score_function")
# Child names that hold a router in the MoE blocks seen so far; structure decides, names only order.
ROUTER_CHILD_NAMES = ("gate", "router", "gating", "classifier", "wg", "switch", "router_gate")
# Children of an attention module: routed experts inside one are mixture-of-attention experts.
ATTENTION_CHILD_NAMES = ("q_proj", "k_proj", "v_proj", "kv_proj", "qkv_proj", "query", "key", "value")


class MoELayer:
    """One MoE layer of a model: where to hook it and how to read its routing.

    `module` is the MoE block (timing, names). Routing is read at `dispatch`
    (the experts module, or the expert-row embedding) when there is one, else
    from each of `expert_modules`, else from `router`'s output or `route_fn`.
    """

    def __init__(self, name: str, module: nn.Module, num_experts: int, top_k: int, *,
                 router: Optional[nn.Module] = None, router_name: str = "",
                 dispatch: Optional[nn.Module] = None, expert_modules: Optional[List[nn.Module]] = None,
                 route_fn: bool = False, logits_index: Optional[int] = None, arch: str = "moe-block",
                 kind: str = "mlp", design: str = "top-k", identity_experts: int = 0,
                 shared_experts: int = 0, gating: str = "", k_known: bool = True):
        self.name = name  # dotted path inside the root module
        self.module = module
        self.num_experts = int(num_experts)
        self.top_k = int(top_k)
        self.router = router
        self.router_name = router_name
        self.dispatch = dispatch
        self.expert_modules = expert_modules or []
        self.route_fn = route_fn
        self.logits_index = logits_index
        self.arch = arch
        self.kind = kind
        self.design = design
        self.identity_experts = int(identity_experts)
        self.shared_experts = int(shared_experts)
        self.gating = gating
        # False when no top-k setting was found: the first call's dispatch tells the design
        # (and top_k is the most experts a token could take until then).
        self.k_known = k_known
        self.index = -1  # position among the model's MoE layers, set by find_moe_layers
        self.model_index, self.stack = layer_position(name)
        # How counts and token ids are read: a first guess from structure, confirmed by
        # the first call (a router may or may not return its ids).
        if self.expert_modules:
            self.source = "expert-inputs"
        elif dispatch is not None:
            self.source = "dispatched"
        else:
            self.source = "router"
        self.token_source = "none" if self.source == "expert-inputs" else self.source
        self.changed = False  # set when a call revealed something describe() says differently
        self.errors = 0  # reads that failed (the job's forward is never interrupted)
        self.on_error = None  # called with the exception of a failed read, if set
        self.last_error: Optional[BaseException] = None
        # per-call state (Python references only; cleared after each delivery)
        self._router_out = None
        self._rows: Optional[List[int]] = None
        self._call_tokens: Optional[int] = None
        self._dispatch_values = None

    def describe(self):
        # exactly these keys: they go into the probe's frames (see src/protocol/probe.ts)
        return {
            "index": self.index,
            "name": self.name,
            "arch": self.arch,
            "experts": self.num_experts,
            "top_k": self.top_k,
            "model_index": self.model_index,
            "stack": self.stack,
            "kind": self.kind,
            "design": self.design,
            "source": self.source,
            "token_source": self.token_source,
            "identity_experts": self.identity_experts,
            "shared_experts": self.shared_experts,
            "gating": self.gating,
        }

    # -- hooks -----------------------------------------------------------------

    def install(self, on_routing: OnRouting) -> list:
        """Add hooks that call on_routing(self, routing) once per routed call; return their handles.

        The hooks are taps (see compiled.py): they read the same way whether the module runs
        eagerly or inside torch.compile'd code, and every hooked module's forward is marked so
        that code compiled before they existed recompiles once to include them."""
        handles = []
        deliver = functools.partial(self._guarded, on_routing)
        hooked = []
        if self.router is not None:
            handles.append(compiled.post_hook(self.router, "router", functools.partial(deliver, self._on_router)))
            hooked.append(self.router)
        if self.route_fn:
            handles.append(_patch_route_fn(self, functools.partial(deliver, _read_route_fn(self))))
            hooked.append(self.module)
        if self.dispatch is not None:
            handles.append(compiled.pre_hook(self.dispatch, "dispatch", functools.partial(deliver, self._on_dispatch)))
            hooked.append(self.dispatch)
        if self.expert_modules:
            for position, expert in enumerate(self.expert_modules):
                handles.append(compiled.pre_hook(expert, "expert_input",
                                                 functools.partial(self._on_expert_input, position)))
                hooked.append(expert)
            # The rows are tallied over one call of whatever runs the experts: the dispatching
            # container when it has a forward of its own, else the block.
            outer = self.dispatch if self.dispatch is not None else self.module
            handles.append(compiled.pre_hook(outer, "rows_start", self._start_rows))
            handles.append(compiled.post_hook(outer, "rows_end", functools.partial(deliver, self._end_rows),
                                              always_call=True))
            hooked.append(outer)
        if not compiled.reads_compiled_code():
            return handles  # (torch without custom ops) a recompilation would gain nothing
        marks = [compiled.mark_forward(module) for module in dict.fromkeys([self.module] + hooked)]
        return handles + [mark for mark in marks if mark is not None]

    def _guarded(self, on_routing, reader, args, other):
        if side.state.active:
            return  # the probe's own side computation (an explanation): not the job's routing
        try:
            routing = reader(args, other)
        except Exception as exc:  # a probe bug must never break the job's forward
            self.errors += 1
            self.last_error = exc
            if self.on_error is not None:
                self.on_error(exc)  # the recorder disables the probe and reports why
            return
        if routing is not None:
            on_routing(self, routing)

    def _learn(self, source: Optional[str] = None, token_source: Optional[str] = None,
               design: Optional[str] = None, top_k: Optional[int] = None):
        """Record how this layer turned out to be readable (sent to the host once, when it changes)."""
        if source is not None:
            token_source = source if token_source is None else token_source
            if (source, token_source) != (self.source, self.token_source):
                self.source, self.token_source = source, token_source
                self.changed = True
        if design is not None and design != self.design:
            self.design = design
            self.changed = True
        if top_k is not None and top_k != self.top_k and 0 < top_k <= self.num_experts:
            self.top_k = top_k
            self.changed = True

    def _on_router(self, _args, items):
        items = list(items)  # the router's output items (compiled.outputs)
        if self.logits_index is not None:
            # transformers says which item holds the logits: move it last so it wins
            idx = self.logits_index if self.logits_index >= 0 else len(items) + self.logits_index
            if 0 <= idx < len(items):
                items = [item for pos, item in enumerate(items) if pos != idx] + [items[idx]]
        if self.dispatch is not None or self.expert_modules or self.route_fn:
            self._router_out = items  # read where the block hands the ids to its experts
            return None
        return self._from_router_items(items)

    def _from_router_items(self, items) -> Optional[Routing]:
        routing = self._read_items(items)
        if routing is not None:
            self._learn("recomputed" if _recomputed(items) else "router")
        return routing

    def _router_logits(self) -> Optional[torch.Tensor]:
        items, self._router_out = self._router_out, None
        if items is None:
            return None
        floats = [_flat(t) for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()
                  and t.dim() >= 2 and t.shape[-1] >= self.num_experts - self.identity_experts]
        wide = [t for t in floats if t.shape[-1] in (self.num_experts, self.num_experts - self.identity_experts)]
        return wide[-1] if wide else None

    def _on_dispatch(self, args, kwargs):
        values = list(args) + list(kwargs)
        if self.expert_modules:
            # The rows each expert receives decide; the arguments matter only if every
            # expert turns out to run on every token (read then, in _end_rows).
            self._dispatch_values = values
            return None
        routing = read_dispatch(self, values)
        if routing is None:
            # nothing readable was handed to the experts: fall back on the router's output
            items, self._router_out = self._router_out, None
            return None if items is None else self._from_router_items(items)
        self._learn("dispatched", token_source=_token_source(routing, "dispatched"))
        logits = self._router_logits()
        if routing.logits is None and logits is not None and logits.shape[0] == _rows_of(routing):
            routing = routing._replace(logits=logits)
        return routing

    def _start_rows(self, args, kwargs):
        if side.state.active:
            return
        self._rows = [0] * len(self.expert_modules)
        hidden = _first_float(list(args) + list(kwargs))
        self._call_tokens = None if hidden is None else _leading(hidden)

    def _on_expert_input(self, position, args, kwargs):
        # Python ints only: the shape is known on the host without touching the data.
        if self._rows is None or side.state.active:
            return
        hidden = _first_float(list(args) + list(kwargs))
        if hidden is not None:
            self._rows[position] += _leading(hidden)

    def _end_rows(self, args, output):
        rows, self._rows = self._rows, None
        values, self._dispatch_values = self._dispatch_values, None
        tokens = self._call_tokens
        logits = self._router_logits()
        if rows is None:
            return None
        if tokens and all(r == tokens for r in rows):
            # Every expert ran on every token: a dense block weighting by a mask. The rows say
            # nothing about routing; the dispatch arguments (or the router) do.
            routing = None if values is None else read_dispatch(self, values)
            if routing is not None:
                self._learn("dispatched", token_source=_token_source(routing, "dispatched"))
            elif logits is not None and not self.k_known:
                # every expert on every token, weighted by the router: soft routing, counted by
                # each token's largest-logit expert
                self._learn("recomputed", design="soft", top_k=1)
                ids = _scores(logits).argmax(dim=-1, keepdim=True)
                routing = Routing(ids=ids)
            elif logits is not None:
                routing = self._read_items([logits])
                self._learn("recomputed")
            if routing is not None and routing.logits is None and logits is not None \
                    and logits.shape[0] == _rows_of(routing):
                routing = routing._replace(logits=logits)
            return routing
        self._learn("expert-inputs", token_source="none")
        served = sum(rows)
        if not self.k_known and tokens and served % tokens == 0 and 0 < served // tokens <= self.num_experts:
            # no top-k setting, but every token reached the same number of experts
            self.k_known = True
            self._learn(design="top-k", top_k=served // tokens)
        dropped = None
        if tokens and self.design == "top-k" and served < tokens * self.top_k:
            dropped = tokens * self.top_k - served  # assignments no expert served (capacity)
        if logits is not None and (tokens is None or logits.shape[0] != tokens):
            logits = None
        # identity experts are not separate modules: their columns stay at zero rows
        loads = rows + [0] * (self.num_experts - len(rows))
        return Routing(loads=loads, tokens=tokens, logits=logits, dropped=dropped)

    # -- reading items by dtype and shape -------------------------------------------------

    def _read_items(self, items) -> Optional[Routing]:
        """A router's (or route function's) tensors as a Routing, by dtype and shape.

        Where several float [N, E] items are present the last one is taken as the logits
        (callers move a declared logits item last).
        """
        E, k = self.num_experts, self.top_k
        ids = dispatch = None
        floats_e: List[torch.Tensor] = []
        float_k: List[torch.Tensor] = []
        for item in items:
            # 1-D items are skipped: flattened [N*k] ids sorted by expert (JetMoE), token
            # permutations or per-expert sizes cannot be told from [N] top-1 ids by shape.
            if not isinstance(item, torch.Tensor) or item.dim() < 2:
                continue
            flat = _flat(item)
            width = flat.shape[-1]
            if not item.is_floating_point():
                if width == E and k == 1 and E != 1 and dispatch is None:
                    dispatch = flat  # one-hot dispatch mask, capacity applied
                elif ids is None and width == k:
                    ids = flat
            elif width == k and (k != E or not float_k):
                float_k.append(flat)
            elif width in (E, E - self.identity_experts):
                floats_e.append(flat)
        logits = floats_e[-1] if floats_e else None
        weights = float_k[0] if float_k else None
        dropped = None
        if ids is None and dispatch is not None:
            ids, dropped = _from_one_hot(dispatch, logits)
        if ids is None and logits is not None:
            ids = torch.topk(_scores(logits), k, dim=-1).indices
            if weights is None and len(floats_e) > 1:
                weights = floats_e[-2].gather(-1, ids)
        if ids is None:
            return None
        if weights is not None and weights.shape != ids.shape:
            weights = None
        if logits is not None and logits.shape[0] != ids.shape[0]:
            logits = None
        return Routing(ids=ids, weights=weights, logits=logits, dropped=dropped)


def _token_source(routing: Routing, source: str) -> str:
    """Where a call's per-token ids came from: with the counts, recomputed, or nowhere."""
    if routing.ids is not None:
        return source
    return "recomputed" if routing.token_ids is not None else "none"


def _recomputed(items) -> bool:
    """True when the ids above came from top-k of float logits, not from the router's own output."""
    return not any(isinstance(t, torch.Tensor) and not t.is_floating_point() and t.dim() >= 2 for t in items)


def read_dispatch(layer: MoELayer, values) -> Optional[Routing]:
    """The routing in what a block hands to its experts, by dtype and shape.

    `values`: the experts call's arguments. The first float tensor is the hidden states
    (its leading dimensions are the N tokens, or N*k rows already grouped by expert).
    """
    E, k = layer.num_experts, layer.top_k
    hidden = _first_float(values)
    n = None if hidden is None else _leading(hidden)
    ints = [v for v in values if isinstance(v, torch.Tensor) and not v.is_floating_point() and v.dim() >= 1]
    floats = [v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point() and v is not hidden]
    sizes = [v for v in values if isinstance(v, (list, tuple)) and len(v) == E and all(isinstance(x, int) for x in v)]
    for item in ints:
        flat = item.detach()
        is_mask = flat.dtype == torch.bool or E > k or layer.design == "variable-k"
        if flat.dim() >= 2 and flat.shape[-1] == E and is_mask and (n is None or _leading(flat) == n):
            # a dispatch mask [N, E]: one-hot after capacity (Switch), or multi-hot for
            # routers that pick several or a variable number of experts
            mask = flat.reshape(-1, E)
            if k == 1:
                ids, dropped = _from_one_hot(mask, None)
                return Routing(ids=ids, weights=_weights_like(floats, ids), dropped=dropped)
            return _from_multi_hot(layer, mask)
        if flat.dim() >= 2 and flat.shape[-1] <= E and (n is None or _leading(flat) == n):
            ids = flat.reshape(-1, flat.shape[-1])
            weights = _weights_like(floats, ids)
            if layer.identity_experts == 1 and weights is not None:
                # A router with one skip class may hand a skip choice to the experts as expert 0
                # with weight 0 (Zaya): a zero-weight assignment is the skip class.
                ids = torch.where(_scores(weights) == 0, torch.full_like(ids, E - 1), ids)
            if not layer.k_known:
                layer.k_known = True
                layer._learn(design="top-k")
            if ids.shape[-1] != layer.top_k:
                layer._learn(top_k=ids.shape[-1])
            return Routing(ids=ids, weights=weights)
        if hidden is not None and hidden.dim() == 3 and flat.numel() == hidden.shape[0]:
            # one expert per sample, chosen outside the block (ViTPose++: the dataset index)
            per_sample = flat.reshape(-1, 1).expand(hidden.shape[0], hidden.shape[1]).reshape(-1, 1)
            return Routing(ids=per_sample)
        if flat.dim() == 2 and flat.shape[0] == E and n is not None and n != E:
            # expert choice: row e holds the tokens expert e picked
            return _from_expert_choice(layer, flat, n)
    if sizes:
        # per-expert group sizes of rows sorted by expert (JetMoE): exact loads; per-token
        # ids only from the router's logits (the gate's own top-k on the same tensor)
        loads = [int(x) for x in sizes[0]]
        logits = layer._router_logits()
        token_ids = None if logits is None else torch.topk(_scores(logits), k, dim=-1).indices
        tokens = logits.shape[0] if logits is not None else sum(loads) // max(1, k)
        return Routing(loads=loads, tokens=tokens, logits=logits, token_ids=token_ids)
    for item in floats:
        flat = _flat(item)
        if flat.shape[-1] == E and (n is None or flat.shape[0] == n):
            # dense weights over all experts and no ids: soft routing. Counted by each
            # token's largest-weight expert; the panel says so.
            layer._learn(design="soft", top_k=1)
            ids = _scores(flat).argmax(dim=-1, keepdim=True)
            return Routing(ids=ids, weights=flat.gather(-1, ids))
    return None


def _weights_like(floats, ids) -> Optional[torch.Tensor]:
    for item in floats:
        if item.shape == ids.shape:
            return item.detach()
        if item.numel() == ids.numel() and item.dim() >= 1:
            return item.detach().reshape(ids.shape)
    return None


def _from_one_hot(mask: torch.Tensor, logits: Optional[torch.Tensor]):
    """Top-1 ids and dropped tokens from a one-hot dispatch mask [N, E] (all zero = dropped).
    A dropped token's id is the expert it chose (argmax of the logits) when they are known,
    so counts show demand and `dropped` says it was not served."""
    hot = mask if mask.dtype != torch.bool else mask.to(torch.uint8)
    chosen = hot.argmax(dim=-1)
    dropped = hot.sum(dim=-1) == 0
    if logits is not None and logits.shape[0] == chosen.shape[0]:
        chosen = torch.where(dropped, _scores(logits).argmax(dim=-1), chosen)
    return chosen.unsqueeze(-1), dropped


def _from_multi_hot(layer: MoELayer, mask: torch.Tensor) -> Routing:
    """A variable number of experts per token, as a multi-hot mask [N, E]."""
    hot = (mask != 0).to(torch.int64)
    width = min(layer.top_k, layer.num_experts) if layer.design != "variable-k" else layer.num_experts
    # ids padded with -1: the chosen experts first (top-k of the mask, ties by index)
    values, ids = torch.topk(hot, width, dim=-1)
    ids = torch.where(values > 0, ids, torch.full_like(ids, -1))
    return Routing(ids=ids, dropped=hot.sum(dim=-1) == 0, padded=True)


def _from_expert_choice(layer: MoELayer, chosen: torch.Tensor, n: int) -> Routing:
    """Expert choice: `chosen` [E, C] token indices. Every expert takes C tokens by design;
    a token may get 0..E experts. Counts: the rows each expert took; tokens no expert
    took are reported as dropped."""
    layer._learn(design="expert-choice")
    per_token = torch.zeros(n, dtype=torch.int64, device=chosen.device)
    per_token = per_token.scatter_add(0, chosen.reshape(-1).to(torch.int64),
                                      torch.ones(chosen.numel(), dtype=torch.int64, device=chosen.device))
    loads = [int(chosen.shape[1])] * chosen.shape[0]
    return Routing(loads=loads, tokens=n, dropped=per_token == 0)


def _scores(t: torch.Tensor) -> torch.Tensor:
    """A float tensor to rank or compare: itself, or float32 for 8-bit floats (fp8 logits or
    weights), which CPU kernels cannot rank. Converting them to float32 is exact, so the order
    (and ties) stay those of the values the model computed."""
    return t.float() if t.is_floating_point() and t.element_size() == 1 else t


def _flat(item: torch.Tensor) -> torch.Tensor:
    flat = item.detach()
    return flat if flat.dim() == 2 else flat.reshape(-1, flat.shape[-1])


def _leading(t: torch.Tensor) -> int:
    """Rows of a tensor seen as [..., features]: the product of its leading dimensions."""
    n = 1
    for size in t.shape[:-1]:
        n *= int(size)
    return n if t.dim() > 1 else int(t.shape[0])


def _first_float(values) -> Optional[torch.Tensor]:
    for v in values:
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 2:
            return v
    return None


def _rows_of(routing: Routing) -> Optional[int]:
    if routing.ids is not None:
        return routing.ids.shape[0]
    return routing.tokens


ROUTE_FN = "route_tokens_to_experts"


def _read_route_fn(layer: MoELayer):
    """Reads the block's `route_tokens_to_experts`: its result ((ids, weights) or (weights, ids))
    is what the block hands to its experts; a float [.., E] argument is kept as the logits."""

    def read(args, result):
        routing = layer._read_items(result)
        if routing is None:
            return None
        layer._router_out = None
        layer._learn("router")
        logits = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()
                  and a.dim() >= 1 and a.shape[-1] == layer.num_experts]
        if routing.logits is None and logits:
            flat = _flat(logits[-1]) if logits[-1].dim() >= 2 else logits[-1].detach().reshape(1, -1)
            if flat.shape[0] == routing.ids.shape[0]:
                routing = routing._replace(logits=flat)
        return routing

    return read


class _RouteFnPatch:
    """The block's `route_tokens_to_experts` wrapped by an instance attribute that taps its
    arguments and result (compiled.wrap_method); remove() puts things back exactly."""

    def __init__(self, layer: MoELayer, handler):
        self.tap = None

        def make_wrapper(original, patch):
            self.tap, call = compiled.wrap_method(layer.module, "route_fn", original, handler)
            return functools.wraps(original)(call)

        self.patch = compiled.InstancePatch(layer.module, ROUTE_FN, make_wrapper)

    def remove(self):
        self.tap.remove()  # a wrapper someone else wrapped since calls no handler any more
        self.patch.remove()


def _patch_route_fn(layer: MoELayer, handler) -> _RouteFnPatch:
    return _RouteFnPatch(layer, handler)


# -- where a layer sits in the model -----------------------------------------------------------


def layer_position(name: str) -> Tuple[int, str]:
    """The model's own layer number and the stack holding it, from the module path:
    "model.layers.2.mlp" -> (2, "model.layers"); "decoder.block.3.layer.2.mlp" ->
    (3, "decoder.block"). The outermost number is the layer (inner ones number sublayers)."""
    parts = name.split(".") if name else []
    for i, part in enumerate(parts):
        if part.isdigit():
            return int(part), ".".join(parts[:i])
    return -1, ""


# -- structure ---------------------------------------------------------------


def _attr(obj, name):
    try:
        return getattr(obj, name, None)
    except Exception:  # properties that raise, proxies that warn
        return None


def _int_attr(obj, names) -> Optional[int]:
    for name in names:
        value = _attr(obj, name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _configs(obj):
    """The config objects hanging off a module (and the sub-configs MoE settings live in)."""
    config = _attr(obj, "config")
    if config is None:
        return []
    found = [config]
    for sub in ("ffn_config", "moe_config", "text_config"):
        value = _attr(config, sub)
        if value is not None and not isinstance(value, (int, float, str, bool, dict)):
            found.append(value)
    return found


def _projection_rows(module: nn.Module, wanted=None) -> Optional[Tuple[int, int]]:
    """[out, in] of the projection a router computes its logits with, if it has one: its own
    2-D weight, or a Linear child (DBRX `router.layer`, Switch `router.classifier`). With
    `wanted` (the plausible expert counts) also a Linear deeper inside whose output rows are
    one of those (Zaya's router MLP): the last such, as routers project to the experts last."""
    weight = _attr(module, "weight")
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return tuple(weight.shape)
    children = list(module.named_children()) if wanted is None else list(module.named_modules())[1:]
    found = None
    for _name, child in children:
        weight = _attr(child, "weight")
        if isinstance(child, nn.Linear) and isinstance(weight, torch.Tensor) and weight.dim() == 2:
            rows = tuple(weight.shape)
            if wanted is None:
                return rows
            if rows[0] in wanted:
                found = rows
    return found


def _expert_counts(experts) -> List[int]:
    """Plausible expert counts of an experts module: its declared count, its length, the
    leading sizes of its stacked [E, ...] weights (zero-compute experts make these differ)."""
    counts = []
    children = _expert_children(experts)
    if children:
        counts.append(len(children))
    if isinstance(experts, nn.Module):
        declared = _int_attr(experts, EXPERT_COUNT_ATTRS)
        if declared:
            counts.append(declared)
        for p in experts.parameters(recurse=False):
            if p is not None and p.dim() == 3:
                counts.append(int(p.shape[0]))
    if isinstance(experts, torch.Tensor) and experts.dim() == 3:
        counts.append(int(experts.shape[0]))
    return sorted(set(counts))


def _expert_children(experts) -> List[nn.Module]:
    """The individual experts, when the container calls them one by one: its children with
    weights (NLLB-MoE's container also holds a Dropout)."""
    if isinstance(experts, nn.ModuleList):
        children = list(experts)
    elif isinstance(experts, nn.ModuleDict):
        children = list(experts.values())
    else:
        return []
    return [c for c in children if _has_parameters(c)]


def _has_own_forward(module) -> bool:
    forward = _attr(type(module), "forward")
    return callable(forward) and forward is not nn.Module.forward and \
        getattr(forward, "__name__", "") != "_forward_unimplemented"


def _takes_dispatch(module) -> bool:
    """True when a module's forward takes something besides the hidden states (ids, weights,
    sizes): the block hands it the routing."""
    if not _has_own_forward(module):
        return False
    try:
        params = list(inspect.signature(type(module).forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return len(positional) >= 2


def _find_top_k(modules) -> Optional[int]:
    for module in modules:
        value = _int_attr(module, TOP_K_ATTRS)
        if value:
            return value
    for module in modules:
        for config in _configs(module):
            value = _int_attr(config, TOP_K_ATTRS)
            if value:
                return value
    return None


def _top_k_from_name(module) -> Optional[int]:
    # Switch's Top1Router, NLLB-MoE's Top2Router carry k only in their name
    lowered = type(module).__name__.lower()
    for k in (1, 2):
        if "top%d" % k in lowered:
            return k
    return None


def _gating(modules) -> str:
    for module in modules:
        for source in [module] + _configs(module):
            for name in SCORING_ATTRS:
                value = _attr(source, name)
                if isinstance(value, str) and value:
                    return "sigmoid" if "sigmoid" in value.lower() else value.lower()
    return ""


def _shared_count(block: nn.Module) -> int:
    """Always-on experts beside the routed ones (a `shared_expert(s)` child), counted from the
    config when it says, else one per such child. A one-output `shared_expert_gate` is a gate."""
    shared = [c for n, c in block.named_children() if "shared" in n.lower() and _has_parameters(c)
              and not (isinstance(c, nn.Linear) and c.out_features == 1)]
    if not shared:
        return 0
    declared = _int_attr(block, SHARED_COUNT_ATTRS)
    for config in _configs(block):
        declared = declared or _int_attr(config, SHARED_COUNT_ATTRS)
    return declared or len(shared)


def _has_parameters(module) -> bool:
    return next(module.parameters(), None) is not None


def _is_hash(router: Optional[nn.Module], top_k: int) -> bool:
    """A router that looks experts up in an integer table [vocab, k] (hash routing)."""
    if router is None:
        return False
    for buffer in router.buffers(recurse=False):
        if not buffer.is_floating_point() and buffer.dim() == 2 and buffer.shape[-1] == top_k and buffer.shape[0] > 1:
            return True
    return False


def _is_attention(name: str, block: nn.Module, parent: Optional[nn.Module]) -> bool:
    """Mixture-of-attention: the routed experts project queries/outputs inside an attention module."""
    for module in (block, parent):
        if module is None:
            continue
        children = {n for n, _ in module.named_children()}
        if children & set(ATTENTION_CHILD_NAMES):
            return True
    last = name.rsplit(".", 2)[-2:] if name else []
    return any("attn" in part.lower() or "attention" in part.lower() for part in last)


class _Declared:
    """transformers' `_can_record_outputs["router_logits"]` declarations found under a root."""

    def __init__(self, root: nn.Module):
        self.specs = []  # (target_class or None, class_name or None, layer_name or None, index)
        seen = set()
        for module in root.modules():
            table = _attr(type(module), "_can_record_outputs")
            if not isinstance(table, dict):
                continue
            specs = table.get("router_logits")
            if specs is None:
                continue
            for spec in specs if isinstance(specs, (list, tuple)) else [specs]:
                if isinstance(spec, type):
                    entry = (spec, None, None, 1)  # transformers' default index for non-hidden-states keys
                elif isinstance(spec, str):
                    entry = (None, spec, None, 1)
                else:
                    target = _attr(spec, "target_class")
                    index = _attr(spec, "index")
                    entry = (target if isinstance(target, type) else None, _attr(spec, "class_name"),
                             _attr(spec, "layer_name"), index if isinstance(index, int) else 0)
                key = (id(entry[0]), entry[1], entry[2], entry[3])
                if key not in seen:
                    seen.add(key)
                    self.specs.append(entry)

    def index_for(self, name: str, module: nn.Module) -> Optional[int]:
        """The declared output index if this module is a declared router_logits source."""
        dotted = "." + name + "."
        for target, class_name, layer_name, index in self.specs:
            hit = (target is not None and isinstance(module, target)) or (
                class_name is not None and ("." + name).endswith(class_name))
            if not hit:
                continue
            if layer_name is not None and ("." + layer_name.strip(".") + ".") not in dotted:
                continue
            return index
        return None


def _join(prefix: str, name: str) -> str:
    return prefix + "." + name if prefix else name


class Rejection(NamedTuple):
    """A module that looked like part of an MoE layer, and why the probe could not read it."""

    name: str
    what: str
    reason: str

    def describe(self):
        return "%s (%s): %s" % (self.name or "<root>", self.what, self.reason)


def _shape_text(module) -> str:
    rows = _projection_rows(module) if isinstance(module, nn.Module) else None
    kind = type(module).__name__
    return "%s %d->%d" % (kind, rows[1], rows[0]) if rows else kind


def _experts_child(module: nn.Module) -> Tuple[Optional[object], str]:
    """The module (or stacked tensor) holding a block's experts, and its attribute name."""
    experts = _attr(module, "experts")
    if isinstance(experts, (nn.Module, torch.Tensor)) and experts is not module:
        return experts, "experts"
    # JetMoE-style: a child carrying [E, out, in] expert weights and a declared expert count
    for child_name, child in module.named_children():
        if _int_attr(child, EXPERT_COUNT_ATTRS) and any(p.dim() == 3 for p in child.parameters(recurse=False)):
            return child, child_name
    return None, ""


def _match_block(name, module, declared, parent, rejected) -> Optional[MoELayer]:
    """An MoE block: experts plus a router whose projection has one output row per expert."""
    experts, experts_name = _experts_child(module)
    if experts is None:
        return _match_embedding_block(name, module)
    # The experts' own structure says how many there are; a count declared on the block is
    # only a fallback (OpenAI's privacy filter stores its top-k in the block's num_experts).
    counts = _expert_counts(experts)
    own = _int_attr(module, EXPERT_COUNT_ATTRS)
    if not counts and own:
        counts = [own]
    if not counts:
        rejected.append(Rejection(_join(name, experts_name), type(experts).__name__,
                                  "holds experts, but their number could not be told (no num_experts, list "
                                  "or stacked [E, ...] weights)"))
        return None
    children = [(n, c) for n, c in module.named_children() if c is not experts and "shared" not in n.lower()]
    # declared routers first, then usual names, then any child shaped like a router
    children.sort(key=lambda nc: (declared.index_for(_join(name, nc[0]), nc[1]) is None,
                                  nc[0] not in ROUTER_CHILD_NAMES))
    # A router projects to one row per expert; a few rows more score zero-compute ("skip")
    # classes (Zaya) or the shared experts (Inkling).
    wanted = set(counts) | set(range(counts[-1] + 1, counts[-1] + 5))
    router = router_name = None
    rows = None
    for child_name, child in children:
        rows = _projection_rows(child, wanted=wanted)
        if rows is not None and rows[0] in wanted:
            router, router_name = child, _join(name, child_name)
            break
        if _int_attr(child, EXPERT_COUNT_ATTRS) in counts and declared.index_for(_join(name, child_name), child) is not None:
            router, router_name = child, _join(name, child_name)
            rows = (_int_attr(child, EXPERT_COUNT_ATTRS), 0)
            break
    dispatch = experts if isinstance(experts, nn.Module) and _takes_dispatch(experts) else None
    expert_modules = _expert_children(experts) if isinstance(experts, nn.Module) else []
    route_fn = callable(_attr(type(module), ROUTE_FN))
    if router is None and dispatch is None:
        candidates = ", ".join("%s (%s)" % (_join(name, n), _shape_text(c)) for n, c in children[:4]) or "none"
        rejected.append(Rejection(name, type(module).__name__,
                                  "has %d experts but no child projects to %s outputs (children: %s)"
                                  % (counts[-1], " or ".join(map(str, counts)), candidates)))
        return None
    shared = _shared_count(module)
    num_experts = counts[-1]
    if router is not None:
        num_experts = rows[0]
        if rows[0] > counts[-1] and rows[0] - counts[-1] == shared:
            num_experts = counts[-1]  # the extra rows score the shared experts, which are not routed
    compute = min(c for c in counts if c <= num_experts) if any(c <= num_experts for c in counts) else num_experts
    identity = num_experts - compute
    modules = [m for m in (module, router, experts if isinstance(experts, nn.Module) else None) if m is not None]
    top_k = _find_top_k(modules) or (_top_k_from_name(router) if router is not None else None) \
        or _top_k_from_name(module)
    if expert_modules and len(expert_modules) != compute:
        expert_modules = []
    design = "top-k"
    k_known = bool(top_k)
    if router is None:
        design, top_k = "fixed", top_k or 1  # the caller picks the expert (e.g. per sample)
    elif _is_hash(router, top_k or 0) or _is_hash(module, top_k or 0):
        design = "hash"
    elif not top_k and (dispatch is not None or expert_modules):
        # No top-k setting, but what reaches the experts will tell: a threshold router's mask,
        # an expert-choice dispatch, dense weights, or plain [N, k] ids.
        design, top_k = "variable-k", num_experts
    if not top_k or top_k > num_experts:
        rejected.append(Rejection(name, type(module).__name__,
                                  "has %d experts and a router (%s) but no top-k setting (%s) was found on the "
                                  "block, the router or the model config, and its experts are not handed the routing"
                                  % (num_experts, router_name, ", ".join(TOP_K_ATTRS[:4]))))
        return None
    return MoELayer(name, module, num_experts, top_k, router=router, router_name=router_name or "",
                    dispatch=dispatch, expert_modules=expert_modules, route_fn=route_fn and dispatch is None,
                    logits_index=declared.index_for(router_name, router) if router is not None else None,
                    arch="moe-block", kind="attention" if _is_attention(name, module, parent) else "mlp",
                    design=design, identity_experts=identity, shared_experts=shared, k_known=k_known,
                    gating=_gating(modules))


def _match_embedding_block(name, module) -> Optional[MoELayer]:
    """Experts stored as rows of an nn.Embedding(E, ...) looked up by id (Doge's retrieval
    experts, chosen through product keys): the ids reaching the embedding are the routing.
    Its router scores key halves, not experts, so there are no per-expert logits to keep."""
    num_experts = _int_attr(module, EXPERT_COUNT_ATTRS)
    top_k = _int_attr(module, TOP_K_ATTRS)
    if not num_experts or not top_k:
        return None
    for _child_name, child in module.named_children():
        if isinstance(child, nn.Embedding) and child.num_embeddings == num_experts:
            return MoELayer(name, module, num_experts, top_k, dispatch=child, arch="embedding-experts",
                            shared_experts=1 if _has_dense_path(module) else 0, gating=_gating([module]))
    return None


def _has_dense_path(module) -> bool:
    """A dense MLP beside the routed experts in the same block (Doge's shared expert)."""
    names = {n for n, _ in module.named_children()}
    return bool({"gate_proj", "up_proj", "down_proj"} & names)


def _match_router(name, module, declared, parents, rejected) -> Optional[MoELayer]:
    """A router outside any recognisable block: declared by transformers, or weight + top_k."""
    if _attr(module, "experts") is not None or any(_attr(c, "experts") is not None for c in module.children()):
        # a block whose router was not found (_match_block said why), or a module holding
        # MoE blocks (Ernie 4.5 VL: text and vision experts), read block by block below
        return None
    rows = _projection_rows(module)
    declared_index = declared.index_for(name, module)
    own_top_k = _int_attr(module, TOP_K_ATTRS)
    if declared_index is None and (own_top_k is None or rows is None):
        if rows is not None and name.rsplit(".", 1)[-1] in ROUTER_CHILD_NAMES and rows[0] > 1:
            rejected.append(Rejection(name, _shape_text(module),
                                      "named like a router, but no experts beside it and no top-k setting on it"))
        return None
    num_experts = _int_attr(module, EXPERT_COUNT_ATTRS) or (rows[0] if rows else None)
    looks_like_router = isinstance(_attr(module, "weight"), torch.Tensor) or name.rsplit(".", 1)[-1] in ROUTER_CHILD_NAMES
    if not num_experts or (rows is not None and rows[0] != num_experts):
        if looks_like_router:
            rejected.append(Rejection(name, _shape_text(module), "declares %s experts but projects to %s outputs"
                                      % (num_experts, rows and rows[0])))
        return None
    chain = [module] + parents(name)
    top_k = own_top_k or _find_top_k(chain) or _top_k_from_name(module)
    if not top_k or top_k > num_experts:
        if looks_like_router:
            rejected.append(Rejection(name, _shape_text(module), "no usable top-k (found %s for %d experts)"
                                      % (top_k, num_experts)))
        return None
    parent = parents(name)[0] if parents(name) else None
    return MoELayer(name, module, num_experts, top_k, router=module, router_name=name,
                    logits_index=declared_index, arch="router",
                    kind="attention" if _is_attention(name, module, parent) else "mlp",
                    design="hash" if _is_hash(module, top_k) else "top-k", gating=_gating(chain))


def find_moe_layers(root: nn.Module, rejected: Optional[List[Rejection]] = None, expert_map: Optional[Dict[Union[str, int], List[int]]] = None) -> List[MoELayer]:
    """All MoE layers under root, in module order, with .index set 0..L-1.

    Blocks are tried before routers, and a claimed module's descendants are
    skipped, so a block and its router child count once. Modules that looked like
    part of an MoE layer but could not be read are appended to `rejected`.
    `expert_map`: the user's expert-parallel map (distributed.check_expert_map), if any;
    expert-parallel blocks are tried first (expert_parallel.py).
    """
    from .expert_parallel import match_expert_parallel

    rejected = [] if rejected is None else rejected
    declared = _Declared(root)
    named = list(root.named_modules())
    by_name: Dict[str, nn.Module] = dict(named)

    def parents(name: str) -> List[nn.Module]:
        chain = []
        while name:
            name = name.rpartition(".")[0]
            parent = by_name.get(name)
            if parent is not None:
                chain.append(parent)
        return chain

    layers: List[MoELayer] = []
    claimed: List[str] = []
    for name, module in named:
        if any(prefix == "" or name == prefix or name.startswith(prefix + ".") for prefix in claimed):
            continue
        parent = by_name.get(name.rpartition(".")[0]) if name else None
        layer = match_expert_parallel(name, module, declared, parent, rejected, expert_map) or \
            _match_block(name, module, declared, parent, rejected) or \
            _match_router(name, module, declared, parents, rejected)
        if layer is not None:
            layer.index = len(layers)
            layers.append(layer)
            claimed.append(name)
    # a rejection inside or around a layer found after all (a router judged before its block) is moot
    def related(a, b):  # one module path inside (or equal to) the other
        return a == b or a == "" or b == "" or a.startswith(b + ".") or b.startswith(a + ".")

    rejected[:] = [r for r in rejected if not any(related(r.name, p) for p in claimed)]
    return layers
