"""Finding the live model roots in a process that did not tell us about them."""

import gc
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from .routers import MoELayer, Rejection, find_moe_layers


class Survey(NamedTuple):
    """What the probe needs to know about the process it is in, from one look at its objects."""

    roots: List[Tuple[nn.Module, List[MoELayer]]]
    module_count: int  # live torch modules, for the "no MoE layer found" message
    tokenizer: Optional[object]  # a live tokenizer, to label token records with text
    cuda_graphs: int  # captured CUDA graphs, whose replays run no hooks
    rejected: List[Rejection]  # modules that looked like MoE routers or experts but could not be read


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
    rejected: List[Rejection] = []
    roots = find_model_roots(modules if explicit_models is None else explicit_models, rejected)
    return Survey(roots, len(modules), tokenizer, graphs, rejected)


def _is_tokenizer(cls) -> bool:
    # Class names vary (transformers 5 calls its fast tokenizer TokenizersBackend);
    # every transformers tokenizer derives from a *Tokenizer* base class.
    return callable(getattr(cls, "convert_ids_to_tokens", None)) and any("Tokenizer" in c.__name__ for c in cls.__mro__)


def find_model_roots(candidates, rejected: Optional[List[Rejection]] = None) -> List[Tuple[nn.Module, List[MoELayer]]]:
    """Top-level modules among candidates (not a submodule of another) that contain MoE layers.
    What looked like an MoE router or experts but could not be read goes to `rejected`."""
    child_ids = set()
    for module in candidates:
        for child in module.children():
            child_ids.add(id(child))
    found = []
    for module in candidates:
        if id(module) in child_ids:
            continue
        layers = find_moe_layers(module, rejected)
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


def no_moe_message(found: Survey, limit: int = 6) -> str:
    """Why attaching found nothing to read, naming what looked like a router and why each
    was rejected, so that a user can tell what to change or report."""
    if found.module_count == 0:
        return "No torch module is alive in this process yet: attach again once the job has built its model."
    message = "No MoE layer the probe understands was found among the %d live torch modules." % found.module_count
    if not found.rejected:
        return message + (" No module looked like a router: the probe looks for a block with an `experts` module "
                          "(or [E, ...] expert weights) beside a projection to one output per expert, and a top-k "
                          "setting on the block, router or config.")
    shown = "; ".join(r.describe() for r in found.rejected[:limit])
    more = len(found.rejected) - limit
    return "%s Looked like MoE but could not be read: %s%s." % (
        message, shown, " (and %d more)" % more if more > 0 else "")
