"""How a torch job's passes ran, as far as forward hooks can tell: torch.compile and CUDA graphs.

Torch-only (imported by the session only when a torch model is read, and by torch_backend.py):
what hooks cannot see, or see only at a cost, is said up front in the hello's warnings
(`visibility_warnings`), and what was then seen goes with each counts frame (`PassWatch`).
"""

import torch

from . import compiled, cudagraphs
from .models import compiled_parts


class PassWatch:
    """Compilations (torch.compile) and CUDA graph captures and replays, watched from before the
    first hook goes in until the session ends."""

    def __init__(self):
        self.compile_watch = compiled.CompileWatch()
        self.compile_watch.start()
        cudagraphs.watch.start()
        self.unseen_replays_at_start = cudagraphs.watch.unseen_replays

    def visibility(self, host):
        """How the passes counted so far ran, and what the probe could not see (cumulative)."""
        watch = self.compile_watch
        watch.poll()
        return {
            "compiled_passes": host["compiled_passes"],
            "tap_compiles": watch.tap_compiles,
            "tap_compile_s": round(watch.tap_compile_s, 6),
            "other_compiles": watch.other_compiles,
            "graph_breaks": watch.graph_breaks,
            "captured_passes": host["captured_passes"],
            "replayed_passes": host["replayed_passes"],
            "unseen_replays": cudagraphs.watch.unseen_replays - self.unseen_replays_at_start,
        }

    def stop(self):
        self.compile_watch.stop()
        cudagraphs.watch.stop()


def visibility_warnings(roots, cuda_graphs=0, wrapped=frozenset()):
    """What forward hooks cannot see in this process, or see only at a cost, said up front
    rather than discovered as missing data. What was then seen is in each counts frame's
    `visibility`."""
    warnings = []
    if cuda_graphs:
        warnings.append({"code": "cuda_graphs", "message": (
            "This process holds %d captured CUDA graph%s. A pass replayed from a graph captured before "
            "attach runs no Python, so the probe cannot see it (in serving engines: the decode steps); "
            "such replays are counted apart, never as routing. To see them: attach before the engine "
            "captures its graphs (a graph captured while attached carries the probe's counting), or run "
            "the engine eagerly (vLLM: enforce_eager=True; SGLang: --disable-cuda-graph; torch.compile: "
            "a mode other than reduce-overhead)." % (cuda_graphs, "" if cuda_graphs == 1 else "s"))})
    for root in roots:
        parts = compiled_parts(root, wrapped=id(root) in wrapped)
        if not parts:
            continue
        what = type(root).__name__ if parts == [""] else "%s (%s)" % (
            type(root).__name__, ", ".join(parts[:3]) + (" and %d more" % (len(parts) - 3) if len(parts) > 3 else ""))
        if compiled.reads_compiled_code():
            message = ("%s runs under torch.compile: the probe's hooks go into its compiled code at its next pass, "
                       "which waits for one recompilation; routing is then read from inside the compiled code, with no "
                       "graph break. Detaching returns to the original compiled code without recompiling." % what)
        else:
            message = ("%s runs under torch.compile, and this torch (%s) has no custom operators for the probe's hooks "
                       "to go into compiled code with: passes that run compiled are not seen (torch 2.4 or newer reads "
                       "them)." % (what, torch.__version__))
        warnings.append({"code": "compiled", "message": message})
    return warnings
