"""Finding MoE layers in a torch model and reading the routing each one used.

Each architecture family gets an adapter: a `MoELayer` subclass that knows
where the routing decision of one layer becomes visible (usually the router
module's output) and turns it into a `Routing` record. Adapters recognise
layers by structure (a router weight shaped [num_experts, hidden], tuple
outputs checked by shape and dtype) and by what transformers declares, not by
class names alone, so an unfamiliar architecture built the same way just works.

The recorder only ever sees `Routing` records; nothing here keeps state across
calls or touches the model's tensors in place.
"""

from typing import Callable, List, NamedTuple, Optional

import torch
from torch import nn


class Routing(NamedTuple):
    """What one MoE layer decided for the N tokens of one call."""

    ids: torch.Tensor  # [N, k] integer expert ids actually used
    weights: Optional[torch.Tensor] = None  # [N, k] mixing weights, if known
    logits: Optional[torch.Tensor] = None  # [N, E] raw router logits, if known
    dropped: Optional[torch.Tensor] = None  # [N] bool, tokens no expert processed (capacity)


OnRouting = Callable[["MoELayer", Routing], None]


class MoELayer:
    """One MoE layer of a model: where to hook it and how to read its routing."""

    arch = "generic"

    def __init__(self, name: str, module: nn.Module, num_experts: int, top_k: int):
        self.name = name  # dotted path inside the root module
        self.module = module  # the module whose hook reveals the routing
        self.num_experts = int(num_experts)
        self.top_k = int(top_k)
        self.index = -1  # position among the model's MoE layers, set by find_moe_layers

    def describe(self):
        return {
            "index": self.index,
            "name": self.name,
            "arch": self.arch,
            "experts": self.num_experts,
            "top_k": self.top_k,
        }

    def install(self, on_routing: OnRouting) -> List[torch.utils.hooks.RemovableHandle]:
        """Add hooks that call on_routing(self, routing) on every call; return their handles."""

        def hook(module, args, output):
            routing = self.read(args, output)
            if routing is not None:
                on_routing(self, routing)

        return [self.module.register_forward_hook(hook)]

    def read(self, args, output) -> Optional[Routing]:
        raise NotImplementedError


def _router_weight_shape(module: nn.Module):
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return tuple(weight.shape)
    return None


class TopKRouterLayer(MoELayer):
    """A router module that returns its own top-k choice in a tuple.

    transformers v5 Mixtral, Qwen2/3-MoE, OLMoE: (logits [N,E], weights [N,k], ids [N,k]).
    Items are told apart by dtype and shape, not position, so reordered tuples still work.
    """

    arch = "topk-router"

    @classmethod
    def match(cls, name: str, module: nn.Module) -> Optional["TopKRouterLayer"]:
        shape = _router_weight_shape(module)
        top_k = getattr(module, "top_k", None)
        if shape is None or not isinstance(top_k, int):
            return None
        num_experts = getattr(module, "num_experts", shape[0])
        if num_experts != shape[0] or not 1 <= top_k <= num_experts:
            return None
        return cls(name, module, num_experts, top_k)

    def read(self, args, output):
        if not isinstance(output, (tuple, list)):
            return None
        ids = weights = logits = None
        for item in output:
            if not isinstance(item, torch.Tensor) or item.dim() != 2:
                continue
            width = item.shape[-1]
            if not item.is_floating_point() and width == self.top_k:
                ids = item
            elif item.is_floating_point() and width == self.top_k and weights is None:
                weights = item
            elif item.is_floating_point() and width == self.num_experts:
                logits = item
        if ids is None:
            return None
        return Routing(ids=ids, weights=weights, logits=logits)


# Adapters in the order they are tried. A module claimed by one adapter has its
# descendants skipped, so a block-level adapter wins over its router child.
ADAPTERS = [TopKRouterLayer]


def find_moe_layers(root: nn.Module) -> List[MoELayer]:
    """All MoE layers under root, in module order, with .index set 0..L-1."""
    layers: List[MoELayer] = []
    claimed: List[str] = []
    for name, module in root.named_modules():
        if any(name.startswith(prefix + ".") for prefix in claimed):
            continue
        for adapter in ADAPTERS:
            layer = adapter.match(name, module)
            if layer is not None:
                layer.index = len(layers)
                layers.append(layer)
                claimed.append(name)
                break
    return layers
