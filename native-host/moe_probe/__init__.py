"""moe_probe: watch the routing of a running PyTorch Mixture-of-Experts model.

Usually injected into a running job by the MoE DevTools host. Scripts and
notebooks can also make themselves attachable:

    import moe_probe
    moe_probe.attach(model)   # or attach() to find models by itself

The probe then listens on a private Unix socket; hooks are installed only while
the DevTools panel is attached, so an idle probe costs nothing in the forward.
"""

from .recorder import Settings
from .routers import MoELayer, Routing, find_moe_layers
from .server import PROTOCOL_VERSION, current_server, start_server

__all__ = ["attach", "detach", "find_moe_layers", "MoELayer", "Routing", "PROTOCOL_VERSION"]


def attach(model=None, tcp_port=None, **settings):
    """Make this process attachable from the MoE panel; returns the socket path.

    model: a module (or list of modules) to watch; None finds MoE models by itself
    each time the panel attaches. settings: see recorder.Settings (flush_interval_s,
    token_sample, token_passes_per_s, token_bytes_per_s, health_passes_per_s).
    tcp_port: also listen on 127.0.0.1:tcp_port (0 picks a free port) for a host that
    reaches this machine through an SSH tunnel; clients must present the random token
    written, with the address, to probe-PID.tcp.json in the private socket folder.
    """
    models = None
    if model is not None:
        models = list(model) if isinstance(model, (list, tuple)) else [model]
    server = start_server(mode="library", once=False, models=models, settings=Settings(**settings),
                          tcp_port=tcp_port)
    return server.path


def detach():
    """Stop listening and remove every hook, thread and file the probe made."""
    server = current_server()
    if server is not None:
        server.stop()
