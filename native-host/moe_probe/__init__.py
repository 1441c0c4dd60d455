"""moe_probe: watch the routing of a running PyTorch Mixture-of-Experts model.

Usually injected into a running job by the MoE DevTools host. Scripts and
notebooks can also make themselves attachable:

    import moe_probe
    moe_probe.attach(model)   # or attach() to find models by itself

or start a script under the probe without changing it:

    python -m moe_probe run train.py --your-args

The probe then listens on a private Unix socket; hooks are installed only while
the DevTools panel (or the `moe-devtools` command line) is attached, so an idle
probe costs nothing in the forward pass.

Importing this package needs only the standard library (so `moe_probe.__version__`
works anywhere); attaching and the names re-exported from `moe_probe.routers` need
torch, which the job already has.
"""

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

__version__ = "0.1.0"

__all__ = ["attach", "detach", "find_moe_layers", "MoELayer", "Routing", "PROTOCOL_VERSION", "__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers only; at run time these load on first use
    from torch import nn

    from .routers import MoELayer, Routing, find_moe_layers
    from .server import PROTOCOL_VERSION, current_server


def attach(
    model: "Union[nn.Module, Sequence[nn.Module], None]" = None,
    tcp_port: Optional[int] = None,
    expert_map: "Union[Sequence[int], Dict[Union[str, int], Sequence[int]], None]" = None,
    **settings: float,
) -> str:
    """Make this process attachable from the MoE panel and the command line.

    Args:
        model: the model (or models) to watch: a torch module, a Flax linen or nnx
            module, a Keras model or an onnxruntime InferenceSession (docs/frameworks.md).
            None finds MoE models by itself each time a host attaches (every live model
            with MoE layers, in every framework the job has loaded).
        tcp_port: also listen on 127.0.0.1:tcp_port (0 picks a free port), for a
            host that reaches this machine through an SSH tunnel. Clients must
            present the random token written, with the address, to
            probe-PID.tcp.json (mode 0600) in the private socket folder.
        expert_map: for an expert-parallel model, the global ids of the experts this
            process (rank) holds, in the order of its local experts: a list for every
            expert-parallel layer (e.g. rank 1 of 4 with 8 experts: [2, 3]), or a dict of
            lists by layer, keyed by module path ("model.layers.3.mlp"), the model's layer
            number (3) or "*" (every other layer). Needed only where the model does not say
            (Megatron-Core's local_expert_indices, vLLM's expert_map and an ep_rank/ep_size
            pair are read by themselves). Each rank's counts are then the work its own
            experts did, at their global ids, and the panel adds the ranks up.
        **settings: sampling settings (see moe_probe.recorder.Settings):
            flush_interval_s (0.03), token_sample (128), token_passes_per_s (50),
            token_bytes_per_s (2_000_000), health_passes_per_s (50).

    Returns:
        The path of the probe's Unix socket. Calling attach again returns the
        running probe's path. In a process that has loaded no framework (yet), the
        probe still listens; a host that connects is told there is no model to watch.

    Raises:
        TypeError: an unknown setting was given.
        ValueError: the expert map cannot be right (empty, negative or repeated ids).
    """
    from .distributed import check_expert_map
    from .settings import Settings
    from .server import start_server

    models: Optional[List[Any]] = None
    if model is not None:
        models = list(model) if isinstance(model, (list, tuple)) else [model]
    server = start_server(mode="library", once=False, models=models, settings=Settings(**settings),
                          tcp_port=tcp_port, expert_map=check_expert_map(expert_map))
    return server.path


def detach() -> None:
    """Stop listening and remove every hook, thread and file the probe made. Safe to call twice."""
    import sys

    server_module = sys.modules.get(__name__ + ".server")
    if server_module is None:
        return  # never attached: nothing to undo (and no reason to import torch)
    server = server_module.current_server()
    if server is not None:
        server.stop()


def __getattr__(name: str) -> Any:
    """Names that need torch (find_moe_layers, MoELayer, Routing, ...), imported on first use."""
    if name in ("find_moe_layers", "MoELayer", "Routing"):
        from . import routers

        return getattr(routers, name)
    if name in ("PROTOCOL_VERSION", "current_server"):  # current_server(): the running probe, or None
        from . import server

        return getattr(server, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
