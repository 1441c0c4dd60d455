"""Finding MoE layers in a torch model and reading the routing each one used.

Each layer is read where its routing decision becomes visible, without
changing anything the model computes:

* `RouteFnLayer`: an MoE block that selects experts in its own
  `route_tokens_to_experts` method (transformers DBRX, Jamba, MiniMax-M2, and
  DeepSeek-V3 / GLM4-MoE in early transformers v5, whose gate returns raw
  logits). The bound method is wrapped by an instance attribute; the wrapper
  returns the original result object untouched, and `remove()` deletes the
  attribute again.
* `RouterOutputLayer`: everything else. A forward hook on the router module
  (found inside an MoE block by structure, or declared by transformers) reads
  the router's output, whose items are told apart by dtype and shape, never
  by position alone:
    - an integer [N, k] tensor: the expert ids (Mixtral, Qwen2/3-MoE, OLMoE,
      DeepSeek-V3 in transformers >= 5.x where the router selects, GPT-OSS,
      Granite-MoE, PhiMoE, ...); a float [N, k] tensor beside it: the weights;
    - an integer [N, E] one-hot dispatch mask (Switch Transformers, top-1 with
      expert capacity): ids = its argmax, `dropped` = rows with no expert;
      a dropped token's id is the expert it chose (argmax of the logits), so
      counts show demand, and `dropped` says it was not served;
    - only float [N, E] tensors (Llama4's (scores, logits), a plain nn.Linear
      gate in a user-written block): ids = top-k of the logits (the last such
      item unless transformers declares which), which is what a block does
      when it picks the k largest logits, or the k largest softmax
      probabilities (softmax is monotonic). Blocks that select by anything
      else (biases added for selection only, groups, sampling) must expose it
      through a router output or `route_tokens_to_experts` to be read exactly.
      When a second float [N, E] item is present (Llama4's sigmoid scores, zero
      off the top-k), the weights are gathered from it.

Layers are recognised by structure (an `experts` child plus a router child
whose weight is [num_experts, hidden]) and by what transformers declares on
the model class (`_can_record_outputs["router_logits"]`, an OutputRecorder of
(target_class, index)), not by class names, so an unfamiliar architecture
built the same way mostly just works. A block-level match claims the block, so
its router child is never counted twice.

Hooks never return a value (outputs are never replaced), never modify a
tensor in place, and never synchronise with the device (no .item(), .cpu(),
.tolist(), nonzero or boolean indexing): reading costs a few views, and at
most a top-k/argmax over [N, E] for routers that do not return their ids.
"""

import functools
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn


class Routing(NamedTuple):
    """What one MoE layer decided for the N tokens of one call."""

    ids: torch.Tensor  # [N, k] integer expert ids actually used
    weights: Optional[torch.Tensor] = None  # [N, k] mixing weights, if known
    logits: Optional[torch.Tensor] = None  # [N, E] raw router logits, if known
    dropped: Optional[torch.Tensor] = None  # [N] bool, tokens no expert processed (capacity)


OnRouting = Callable[["MoELayer", Routing], None]

# Attribute names under which modules and configs keep the expert count and top-k.
EXPERT_COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K_ATTRS = ("top_k", "num_experts_per_tok", "moe_top_k", "router_top_k", "experts_per_token",
               "num_selected_experts")
# Child names that hold a router in the MoE blocks seen so far; structure decides, names only order.
ROUTER_CHILD_NAMES = ("gate", "router", "gating", "classifier", "wg", "switch")


class MoELayer:
    """One MoE layer of a model: where to hook it and how to read its routing."""

    arch = "generic"

    def __init__(self, name: str, module: nn.Module, num_experts: int, top_k: int):
        self.name = name  # dotted path inside the root module
        self.module = module  # the module whose hook reveals the routing
        self.num_experts = int(num_experts)
        self.top_k = int(top_k)
        self.index = -1  # position among the model's MoE layers, set by find_moe_layers
        self.errors = 0  # reads that failed (the job's forward is never interrupted)
        self.on_error = None  # called with the exception of a failed read, if set
        self.last_error: Optional[BaseException] = None

    def describe(self):
        # exactly these keys: they go into the probe's frames (see src/protocol/probe.ts)
        return {
            "index": self.index,
            "name": self.name,
            "arch": self.arch,
            "experts": self.num_experts,
            "top_k": self.top_k,
        }

    def install(self, on_routing: OnRouting) -> list:
        """Add hooks that call on_routing(self, routing) on every call; return their handles."""

        def hook(module, args, output):
            self._deliver(on_routing, args, output)
            # returns None: the output is never replaced

        return [self.module.register_forward_hook(hook)]

    def _deliver(self, on_routing, args, output):
        try:
            routing = self.read(args, output)
        except Exception as exc:  # a probe bug must never break the job's forward
            self.errors += 1
            self.last_error = exc
            if self.on_error is not None:
                self.on_error(exc)  # the recorder disables the probe and reports why
            return
        if routing is not None:
            on_routing(self, routing)

    def read(self, args, output) -> Optional[Routing]:
        raise NotImplementedError

    # -- shared reader ------------------------------------------------------

    def _read_items(self, items) -> Optional[Routing]:
        """Turn a router's (or route function's) tensors into a Routing, by dtype and shape.

        Where several float [N, E] items are present the last one is taken as the logits
        (callers move a declared logits item last).
        """
        E, k = self.num_experts, self.top_k
        ids = weights = dispatch = None
        floats_e: List[torch.Tensor] = []
        float_k: List[torch.Tensor] = []
        for item in items:
            # 1-D items are skipped: flattened [N*k] ids sorted by expert (JetMoE), token
            # permutations or per-expert sizes cannot be told from [N] top-1 ids by shape.
            if not isinstance(item, torch.Tensor) or item.dim() < 2:
                continue
            flat = item.detach()
            width = flat.shape[-1]
            if flat.dim() != 2:
                flat = flat.reshape(-1, width)
            if not item.is_floating_point():
                if width == E and k == 1 and E != 1 and dispatch is None:
                    dispatch = flat  # one-hot dispatch mask, capacity applied
                elif ids is None and width == k:
                    ids = flat
            elif width == k and (k != E or not float_k):
                float_k.append(flat)
            elif width == E:
                floats_e.append(flat)
        logits = floats_e[-1] if floats_e else None
        if float_k:
            weights = float_k[0]
        dropped = None
        if ids is None and dispatch is not None:
            hot = dispatch if dispatch.dtype != torch.bool else dispatch.to(torch.uint8)
            chosen = hot.argmax(dim=-1)
            dropped = hot.sum(dim=-1) == 0
            if logits is not None:
                chosen = torch.where(dropped, logits.argmax(dim=-1), chosen)
            ids = chosen.unsqueeze(-1)
        if ids is None and logits is not None:
            ids = torch.topk(logits, k, dim=-1).indices
            if weights is None and len(floats_e) > 1:
                weights = floats_e[-2].gather(-1, ids)
        if ids is None:
            return None
        if weights is not None and (weights.shape[0] != ids.shape[0] or weights.shape[-1] != ids.shape[-1]):
            weights = None
        if logits is not None and logits.shape[0] != ids.shape[0]:
            logits = None
        return Routing(ids=ids, weights=weights, logits=logits, dropped=dropped)


class RouterOutputLayer(MoELayer):
    """Reads the routing from a router module's output (see the module docstring)."""

    arch = "router-output"

    def __init__(self, name, module, num_experts, top_k, router: nn.Module, router_name: str,
                 logits_index: Optional[int] = None, arch: Optional[str] = None):
        super().__init__(name, module, num_experts, top_k)
        self.router = router
        self.router_name = router_name
        self.logits_index = logits_index
        if arch:
            self.arch = arch

    def install(self, on_routing: OnRouting) -> list:
        def hook(module, args, output):
            self._deliver(on_routing, args, output)

        return [self.router.register_forward_hook(hook)]

    def read(self, args, output):
        items = output if isinstance(output, (tuple, list)) else (output,)
        if self.logits_index is not None and isinstance(output, (tuple, list)):
            # transformers says which item holds the logits: move it last so it wins
            idx = self.logits_index if self.logits_index >= 0 else len(items) + self.logits_index
            if 0 <= idx < len(items):
                items = [item for pos, item in enumerate(items) if pos != idx] + [items[idx]]
        return self._read_items(items)


class _AttributePatch:
    """Handle for a method wrapped by an instance attribute; remove() puts things back exactly."""

    def __init__(self, obj, attr: str, make_wrapper):
        self.obj = obj
        self.attr = attr
        self.active = True
        self._had = attr in obj.__dict__
        self._previous = obj.__dict__.get(attr)
        self.wrapper = make_wrapper(getattr(obj, attr), self)
        obj.__dict__[attr] = self.wrapper

    def remove(self):
        if not self.active:
            return
        self.active = False  # the wrapper becomes a pass-through even if we cannot unhook it
        if self.obj.__dict__.get(self.attr) is self.wrapper:
            if self._had:
                self.obj.__dict__[self.attr] = self._previous
            else:
                del self.obj.__dict__[self.attr]
        # else: someone wrapped our wrapper since; deleting it would drop theirs, so it stays
        # in their chain as an inactive pass-through.


class RouteFnLayer(MoELayer):
    """An MoE block that chooses experts in its `route_tokens_to_experts` method.

    The method's result ((ids, weights) or (weights, ids)) is what the block hands
    to its experts; the float [N, E] argument, if any, is kept as the logits.
    """

    arch = "route-fn"
    method = "route_tokens_to_experts"

    def __init__(self, name, module, num_experts, top_k, router_name: str = ""):
        super().__init__(name, module, num_experts, top_k)
        self.router_name = router_name

    def install(self, on_routing: OnRouting) -> list:
        layer = self

        def make_wrapper(original, patch):
            @functools.wraps(original)
            def route_tokens_to_experts(*args, **kwargs):
                result = original(*args, **kwargs)
                if patch.active:
                    layer._deliver(on_routing, tuple(args) + tuple(kwargs.values()), result)
                return result

            return route_tokens_to_experts

        return [_AttributePatch(self.module, self.method, make_wrapper)]

    def read(self, args, output):
        items = list(output) if isinstance(output, (tuple, list)) else [output]
        # the raw logits the method was given, if any: a float [.., E] argument
        logits = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()
                  and a.dim() >= 1 and a.shape[-1] == self.num_experts]
        routing = self._read_items(items)
        if routing is None:
            return None
        if routing.logits is None and logits:
            flat = logits[-1].detach()
            flat = flat.reshape(-1, flat.shape[-1])
            if flat.shape[0] == routing.ids.shape[0]:
                routing = routing._replace(logits=flat)
        return routing


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


def _linear_rows(module: nn.Module) -> Optional[Tuple[int, int]]:
    """[out, in] of the projection a router module computes its logits with, if it has one."""
    weight = _attr(module, "weight")
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return tuple(weight.shape)
    # routers that wrap a Linear: DBRX `router.layer`, Switch `router.classifier`, ...
    for child_name, child in module.named_children():
        weight = _attr(child, "weight")
        if isinstance(child, nn.Linear) and isinstance(weight, torch.Tensor) and weight.dim() == 2:
            return tuple(weight.shape)
    return None


def _expert_count(experts) -> Optional[int]:
    if isinstance(experts, (nn.ModuleList, nn.ModuleDict)):
        return len(experts) or None
    if isinstance(experts, nn.Module):
        count = _int_attr(experts, EXPERT_COUNT_ATTRS)
        if count:
            return count
        # stacked expert weights: [E, ...] 3-D parameters
        sizes = {p.shape[0] for p in experts.parameters(recurse=False) if p.dim() == 3}
        if len(sizes) == 1:
            return sizes.pop()
    if isinstance(experts, torch.Tensor) and experts.dim() == 3:
        return experts.shape[0]
    return None


def _find_top_k(modules, default=None) -> Optional[int]:
    for module in modules:
        value = _int_attr(module, TOP_K_ATTRS)
        if value:
            return value
    for module in modules:
        for config in _configs(module):
            value = _int_attr(config, TOP_K_ATTRS)
            if value:
                return value
    return default


def _top_k_from_name(module) -> Optional[int]:
    # Switch's Top1Router, NLLB-MoE's Top2Router carry k only in their name
    lowered = type(module).__name__.lower()
    for k in (1, 2):
        if "top%d" % k in lowered:
            return k
    return None


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


def _match_block(name: str, module: nn.Module, declared: _Declared) -> Optional[MoELayer]:
    """An MoE block: an `experts` child and a router child with num_experts output rows."""
    experts = _attr(module, "experts")
    if not isinstance(experts, (nn.Module, torch.Tensor)) or experts is module:
        return None
    num_experts = _expert_count(experts) or _int_attr(module, EXPERT_COUNT_ATTRS)
    if not num_experts:
        return None
    children = [(n, c) for n, c in module.named_children() if c is not experts]
    # declared routers first, then usual names, then any child shaped like a router
    children.sort(key=lambda nc: (declared.index_for(_join(name, nc[0]), nc[1]) is None,
                                  nc[0] not in ROUTER_CHILD_NAMES))
    router = router_name = None
    for child_name, child in children:
        rows = _linear_rows(child)
        child_experts = _int_attr(child, EXPERT_COUNT_ATTRS)
        if (rows is not None and rows[0] == num_experts) or (
                child_experts == num_experts and declared.index_for(_join(name, child_name), child) is not None):
            router, router_name = child, _join(name, child_name)
            break
    if router is None:
        return None
    top_k = _find_top_k([module, router]) or _top_k_from_name(router) or _top_k_from_name(module)
    if not top_k or top_k > num_experts:
        return None
    route_fn = _attr(type(module), RouteFnLayer.method)
    if callable(route_fn):
        return RouteFnLayer(name, module, num_experts, top_k, router_name=router_name)
    logits_index = declared.index_for(router_name, router)
    return RouterOutputLayer(name, module, num_experts, top_k, router=router, router_name=router_name,
                             logits_index=logits_index, arch="moe-block")


def _match_router(name: str, module: nn.Module, declared: _Declared, parents) -> Optional[MoELayer]:
    """A router outside any recognisable block: declared by transformers, or weight + top_k."""
    rows = _linear_rows(module)
    declared_index = declared.index_for(name, module)
    own_top_k = _int_attr(module, TOP_K_ATTRS)
    if declared_index is None and (own_top_k is None or rows is None):
        return None
    num_experts = _int_attr(module, EXPERT_COUNT_ATTRS) or (rows[0] if rows else None)
    if not num_experts or (rows is not None and rows[0] != num_experts):
        return None
    chain = [module] + parents(name)
    top_k = own_top_k or _find_top_k(chain) or _top_k_from_name(module)
    if not top_k or top_k > num_experts:
        return None
    return RouterOutputLayer(name, module, num_experts, top_k, router=module, router_name=name,
                             logits_index=declared_index, arch="router")


def find_moe_layers(root: nn.Module) -> List[MoELayer]:
    """All MoE layers under root, in module order, with .index set 0..L-1.

    Blocks are tried before routers, and a claimed module's descendants are
    skipped, so a block and its router child count once.
    """
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
        layer = _match_block(name, module, declared) or _match_router(name, module, declared, parents)
        if layer is not None:
            layer.index = len(layers)
            layers.append(layer)
            claimed.append(name)
    return layers
