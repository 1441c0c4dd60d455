"""Finding the live model roots in a process that did not tell us about them."""

import gc
import itertools
import sys
import types
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
    wrapped: frozenset = frozenset()  # ids of models found inside torch.compile's wrapper (OptimizedModule)


def survey(explicit_models=None, expert_map=None) -> Survey:
    """The models (and tokenizer) of this process: found from its own names when possible,
    else from every object the garbage collector tracks.

    Looking from the names first (survey_from_names) touches a few thousand objects instead
    of every object of the process, so attaching pauses a big job for milliseconds, not for
    a walk over millions of objects. The full walk remains the answer whenever that finds no
    MoE model, and for CUDA jobs, whose captured graphs are only found that way.
    """
    if explicit_models is None and not torch.cuda.is_initialized():
        found = survey_from_names(expert_map)
        if found is not None:
            return found
    return survey_all_objects(explicit_models, expert_map)


# How far survey_from_names looks: attribute/item hops from a name, and objects visited.
NAME_DEPTH = 4
NAME_BUDGET = 50000


def survey_from_names(expert_map=None) -> Optional[Survey]:
    """Models reachable from the program's names: __main__'s globals and the locals of every
    thread's frames, through containers and plain objects' attributes (a trainer's .model, an
    engine's .model_runner.model), up to NAME_DEPTH hops. None when no MoE model is reached."""
    roots_of_search = []
    main = sys.modules.get("__main__")
    if main is not None:
        roots_of_search.append(vars(main))
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code.co_filename != __file__:
                try:
                    roots_of_search.append(frame.f_locals)
                except Exception:
                    pass
            frame = frame.f_back
    modules = []
    tokenizer = None
    seen = set()
    level = roots_of_search
    for _depth in range(NAME_DEPTH + 1):
        following = []
        for obj in level:
            if id(obj) in seen or len(seen) >= NAME_BUDGET:
                continue
            seen.add(id(obj))
            cls = type(obj)  # never isinstance(): it may consult a proxy's __class__ (user code)
            try:
                if issubclass(cls, nn.Module):
                    modules.append(obj)
                    continue  # its submodules are find_moe_layers' business
                if issubclass(cls, _LEAVES):
                    continue
                if tokenizer is None and _is_tokenizer(cls):
                    tokenizer = obj
                    continue
                # What the object holds, as the garbage collector sees it: container items,
                # an instance's attribute values. Read in C, so no property or __getattr__ runs.
                following.extend(gc.get_referents(obj)[:_REFERENTS])
            except Exception:
                continue  # an object with odd hooks: not where a model lives
        level = following
    if not modules:
        return None
    descendants = set()
    for module in modules:
        for child in module.modules():
            if child is not module:
                descendants.add(id(child))
    roots = find_model_roots([m for m in modules if id(m) not in descendants], expert_map=expert_map)
    if not roots:
        return None
    return Survey(roots, len(modules), tokenizer, 0, [], _wrapped(modules))


# Objects whose referents never lead to a model a program holds: values, tensors, code,
# and module namespaces and classes (which lead everywhere: all of sys.modules).
_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), type, torch.Tensor,
           types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType,
           types.FrameType, types.GeneratorType, types.CoroutineType, types.CellType)
_REFERENTS = 1000


def survey_all_objects(explicit_models=None, expert_map=None) -> Survey:
    """One pass over every object the garbage collector tracks.

    An injected probe has no other handle on the model. The scan holds the GIL, so it
    pauses the job for its duration: everything is gathered in this single pass, and the
    per-object work (a process with torch and transformers tracks hundreds of thousands of
    objects) runs in C: each object's type is read once, the few thousand distinct types are
    classified in Python, and the objects of the wanted types are picked with compress().
    """
    count_graphs = torch.cuda.is_initialized()
    objects = gc.get_objects()
    kinds = list(map(type, objects))
    module_types, tokenizer_types, graph_types = set(), set(), set()
    for cls in set(kinds):
        try:
            if issubclass(cls, nn.Module):
                module_types.add(cls)
            elif _is_tokenizer(cls):
                tokenizer_types.add(cls)
            elif count_graphs and cls.__name__ == "CUDAGraph":
                graph_types.add(cls)
        except Exception:
            continue  # a type with a broken __mro__ or attribute hook is none of these
    wanted = module_types | tokenizer_types | graph_types
    picked = list(itertools.compress(objects, map(wanted.__contains__, kinds)))
    del objects, kinds
    modules = [obj for obj in picked if type(obj) in module_types]
    tokenizer = next((obj for obj in picked if type(obj) in tokenizer_types), None)
    graphs = sum(1 for obj in picked if type(obj) in graph_types)
    rejected: List[Rejection] = []
    candidates = modules if explicit_models is None else explicit_models
    roots = find_model_roots(candidates, rejected, expert_map)
    return Survey(roots, len(modules), tokenizer, graphs, rejected, _wrapped(candidates))


def _wrapped(modules) -> frozenset:
    return frozenset(id(unwrap_compiled(m)) for m in modules if unwrap_compiled(m) is not m)


def _is_tokenizer(cls) -> bool:
    # Class names vary (transformers 5 calls its fast tokenizer TokenizersBackend);
    # every transformers tokenizer derives from a *Tokenizer* base class.
    return callable(getattr(cls, "convert_ids_to_tokens", None)) and any("Tokenizer" in c.__name__ for c in cls.__mro__)


def find_model_roots(candidates, rejected: Optional[List[Rejection]] = None,
                     expert_map=None) -> List[Tuple[nn.Module, List[MoELayer]]]:
    """Top-level modules among candidates (not a submodule of another) that contain MoE layers.
    What looked like an MoE router or experts but could not be read goes to `rejected`."""
    candidates = [unwrap_compiled(module) for module in candidates]
    child_ids = set()
    for module in candidates:
        for child in module.children():
            child_ids.add(id(child))
    found = []
    seen = set()
    for module in candidates:
        if id(module) in child_ids or id(module) in seen:
            continue
        seen.add(id(module))
        layers = find_moe_layers(module, rejected, expert_map)
        if layers:
            found.append((module, layers))
    return found


def unwrap_compiled(module):
    """The model inside torch.compile(model)'s wrapper (an OptimizedModule holding it as
    `_orig_mod`): layers are named by the model's own paths, and its hooks run inside the
    compiled code, where the probe's taps read them (see compiled.py)."""
    inner = getattr(module, "_orig_mod", None) if type(module).__name__ == "OptimizedModule" else None
    return inner if isinstance(inner, nn.Module) else module


def compiled_parts(root: nn.Module, wrapped: bool = False) -> List[str]:
    """What of a model runs under torch.compile, as far as the modules show it: the whole model
    (wrapped by torch.compile, or model.compile()), or the submodules compiled one by one.
    (Compiling a function that calls the model leaves no trace on it.)"""
    if wrapped or getattr(root, "_compiled_call_impl", None) is not None:
        return [""]
    return [name for name, module in root.named_modules()
            if name and getattr(module, "_compiled_call_impl", None) is not None]


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
