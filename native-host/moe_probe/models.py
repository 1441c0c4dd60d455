"""Finding the live model roots in a process that did not tell us about them."""

import gc
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from .routers import MoELayer, find_moe_layers


class Survey(NamedTuple):
    """What the probe needs to know about the process it is in, from one look at its objects."""

    roots: List[Tuple[nn.Module, List[MoELayer]]]
    module_count: int  # live torch modules, for the "no MoE layer found" message
    tokenizer: Optional[object]  # a live tokenizer, to label token records with text
    cuda_graphs: int  # captured CUDA graphs, whose replays run no hooks


def survey(explicit_models=None) -> Survey:
    """One pass over every object the garbage collector tracks.

    An injected probe has no other handle on the model. The scan holds the GIL, so it
    pauses the job for its duration: everything is gathered in this single pass.
    """
    modules = []
    tokenizer = None
    graphs = 0
    count_graphs = torch.cuda.is_initialized()
    for obj in gc.get_objects():
        # type() rather than isinstance(): isinstance consults __class__, which on some
        # deprecated module proxies emits a warning into the job's stderr.
        cls = type(obj)
        if issubclass(cls, nn.Module):
            modules.append(obj)
        elif tokenizer is None and _is_tokenizer(cls):
            tokenizer = obj
        elif count_graphs and cls.__name__ == "CUDAGraph":
            graphs += 1
    roots = find_model_roots(modules if explicit_models is None else explicit_models)
    return Survey(roots, len(modules), tokenizer, graphs)


def _is_tokenizer(cls) -> bool:
    # Class names vary (transformers 5 calls its fast tokenizer TokenizersBackend);
    # every transformers tokenizer derives from a *Tokenizer* base class.
    return callable(getattr(cls, "convert_ids_to_tokens", None)) and any("Tokenizer" in c.__name__ for c in cls.__mro__)


def find_model_roots(candidates) -> List[Tuple[nn.Module, List[MoELayer]]]:
    """Top-level modules among candidates (not a submodule of another) that contain MoE layers."""
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
