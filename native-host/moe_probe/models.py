"""Finding the live model roots in a process that did not tell us about them."""

import gc
from typing import List, Tuple

from torch import nn

from .routers import MoELayer, find_moe_layers


def find_model_roots(candidates=None) -> List[Tuple[nn.Module, List[MoELayer]]]:
    """Top-level modules (not a submodule of another live module) that contain MoE layers.

    With no candidates, every live nn.Module is considered (found through the
    garbage collector, as an injected probe has no other handle on the model).
    """
    if candidates is None:
        # type() rather than isinstance(): isinstance consults __class__, which on some
        # deprecated module proxies emits a warning into the job's stderr.
        candidates = [obj for obj in gc.get_objects() if issubclass(type(obj), nn.Module)]
    child_ids = set()
    for module in candidates:
        for child in module.children():
            child_ids.add(id(child))
    found = []
    for module in candidates:
        if id(module) in child_ids:
            continue
        layers = find_moe_layers(module)
        if layers:
            found.append((module, layers))
    return found


def describe_model(model_id: int, root: nn.Module, layers: List[MoELayer]):
    param = next(root.parameters(), None)
    config = getattr(root, "config", None)
    return {
        "id": model_id,
        "class": type(root).__name__,
        "model_type": getattr(config, "model_type", None) or "",
        "device": str(param.device) if param is not None else "cpu",
        "dtype": str(param.dtype).replace("torch.", "") if param is not None else "",
        "layers": [layer.describe() for layer in layers],
    }
