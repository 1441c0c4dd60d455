"""Where this process sits in a distributed job, and which experts it holds.

Two things a probe in one rank of a distributed MoE job reports, so that the host can
show the job's logical model from all its ranks:

* its place in the job (`dist_info`): rank and world size from torch.distributed when it
  is initialized (the truth, whatever launched the job), else from the environment the
  launcher set (torchrun, Slurm/MPI wrappers: RANK, WORLD_SIZE, LOCAL_RANK), and what
  names the job across machines (TORCHELASTIC_RUN_ID, MASTER_ADDR:MASTER_PORT);
* for expert-parallel layers, the global ids of the experts this rank holds
  (`held_experts`): given by the user (`moe_probe.attach(model, expert_map=...)`) or read
  from what the model says (Megatron-Core's `local_expert_indices`, vLLM's `expert_map`,
  an `ep_rank`/`ep_size` pair with contiguous placement).

Nothing here runs in the job's forward pass: it is read once, when a host attaches.
"""

import os
import socket
from typing import Dict, List, Optional, Sequence, Union

ExpertMap = Union[Sequence[int], Dict[Union[str, int], Sequence[int]]]


def _int(value) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def dist_info(environ=None) -> Optional[dict]:
    """This process's place in a distributed job, or None when it is not one rank of several.

    Keys (exactly these: they go into the probe's hello, see src/protocol/probe.ts DistInfo):
    rank, world_size, local_rank (-1 when unknown), node (host name), run_id (torchelastic's
    run id, "" when none), master ("ADDR:PORT" of the rendezvous, "" when none), backend
    ("gloo", "nccl", ... when torch.distributed is initialized, else ""), source
    ("torch.distributed" or "environment").
    """
    env = os.environ if environ is None else environ
    rank = world = None
    backend = ""
    source = "environment"
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world = int(dist.get_rank()), int(dist.get_world_size())
            backend = str(dist.get_backend())
            source = "torch.distributed"
    except Exception:  # an odd build or a half-torn-down process group: fall back on the environment
        rank = world = None
    if rank is None:
        rank, world = _int(env.get("RANK")), _int(env.get("WORLD_SIZE"))
    if rank is None or world is None or world < 2 or not 0 <= rank < world:
        return None
    local_rank = _int(env.get("LOCAL_RANK"))
    addr, port = env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", "")
    return {
        "rank": rank,
        "world_size": world,
        "local_rank": -1 if local_rank is None else local_rank,
        "node": socket.gethostname(),
        "run_id": env.get("TORCHELASTIC_RUN_ID", ""),
        "master": "%s:%s" % (addr, port) if addr and port else "",
        "backend": backend,
        "source": source,
    }


class ExpertMapError(ValueError):
    """A user-given expert map that cannot be right (raised by moe_probe.attach)."""


def check_expert_map(expert_map) -> Optional[Dict[Union[str, int], List[int]]]:
    """The user's expert map as {key: [global ids]} ("*" for a plain list), or an error saying
    what is wrong with it. Keys: a layer's module path ("model.layers.3.mlp"), the model's own
    layer number (3), or "*" for every expert-parallel layer not named otherwise."""
    if expert_map is None:
        return None
    if isinstance(expert_map, dict):
        items = list(expert_map.items())
    elif isinstance(expert_map, (list, tuple, range)):
        items = [("*", expert_map)]
    else:
        raise ExpertMapError("expert_map should be a list of global expert ids (the experts this rank holds, "
                             "in the order of its local experts) or a dict of such lists by layer; got %s"
                             % type(expert_map).__name__)
    out: Dict[Union[str, int], List[int]] = {}
    for key, ids in items:
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise ExpertMapError("expert_map keys should be layer paths (str), model layer numbers (int) or "
                                 "\"*\"; got %r" % (key,))
        if not isinstance(ids, (list, tuple, range)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                                 for i in ids):
            raise ExpertMapError("expert_map[%r] should be a list of global expert ids" % (key,))
        ids = [int(i) for i in ids]
        if not ids:
            raise ExpertMapError("expert_map[%r] is empty: a rank holds at least one expert of a layer" % (key,))
        if min(ids) < 0:
            raise ExpertMapError("expert_map[%r] holds a negative expert id" % (key,))
        if len(set(ids)) != len(ids):
            raise ExpertMapError("expert_map[%r] names an expert twice: %s" % (key, ids))
        out[key] = ids
    return out


def _tensor_values(value) -> Optional[List[int]]:
    """The values of a small integer tensor or sequence, read once at attach (never in a hook)."""
    try:
        import torch

        if isinstance(value, torch.Tensor):
            if value.is_floating_point() or value.dim() != 1 or value.numel() > 1 << 20:
                return None
            return [int(v) for v in value.detach().to("cpu").tolist()]
    except Exception:
        return None
    if isinstance(value, (list, tuple, range)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value]
    return None


def _attr(obj, name):
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def held_from_model(modules, local_count: int, global_count: int) -> Optional[List[int]]:
    """The global ids of the experts a block holds, when the block or its experts say so.

    `modules`: the block and its experts module; `local_count`: experts present in this process;
    `global_count`: experts its router chooses among. Read, in order: Megatron-Core's
    `local_expert_indices` (the global ids), `global_expert_ids`/`local_expert_ids`, vLLM's
    `expert_map` (global -> local index, -1 when not here), and `ep_rank` with `ep_size`
    (contiguous placement, as DeepSpeed-MoE and most EP code place experts).
    """
    for module in modules:
        for name in ("local_expert_indices", "global_expert_ids", "local_expert_ids"):
            ids = _tensor_values(_attr(module, name))
            if ids is not None and len(ids) == local_count:
                return ids
        mapping = _tensor_values(_attr(module, "expert_map"))
        if mapping is not None and len(mapping) == global_count:
            local = sorted((slot, g) for g, slot in enumerate(mapping) if slot >= 0)
            if len(local) == local_count and [slot for slot, _ in local] == list(range(local_count)):
                return [g for _, g in local]
        ep_rank, ep_size = _int(_attr(module, "ep_rank")), _int(_attr(module, "ep_size"))
        if ep_rank is not None and ep_size and 0 <= ep_rank < ep_size and local_count * ep_size == global_count:
            return list(range(ep_rank * local_count, (ep_rank + 1) * local_count))
    return None


def held_from_user(user_map, name: str, model_index: int) -> Optional[List[int]]:
    """The user's ids for the layer at module path `name` (model layer `model_index`), if given."""
    if not user_map:
        return None
    keys = [name] + ([model_index] if model_index >= 0 else []) + ["*"]
    for key in keys:
        if key in user_map:
            return list(user_map[key])
    return None
