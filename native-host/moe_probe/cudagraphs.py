"""Passes that run as CUDA graph replays: which ones the probe sees, and which it cannot.

A captured CUDA graph replays its kernels without running any Python, so a forward hook
sees nothing of a pass replayed from a graph captured before the hook existed (serving
engines capture their decode steps at startup). While attached, the probe wraps
`torch.cuda.CUDAGraph`'s capture_begin, capture_end and replay (class attributes, put back
on detach; each wrapper calls the original first):

* A pass the probe's hooks see while a graph is being captured is recorded into it: its
  counting (`scatter_add_` into the probe's counters on the device) becomes part of the
  graph and runs again at every replay, while the Python-side tallies of that pass (passes,
  tokens per layer) are kept with the graph (`pass_captured`) and added at each replay
  (`Recorder.replayed`). Health statistics and token records are left out of captured
  passes (they could only be taken once).
* Any other replay is a pass the probe cannot look into: counted (`unseen_replays`) so
  the panel can say what it did not see, never added to the counts.

Captured graphs keep pointers to the probe's device counters, so those counters are kept
alive after detach (`keep_alive`): replays go on adding to them, and nothing else reads them.
"""

import threading
import weakref
from typing import Dict, List

import torch


class GraphWatch:
    def __init__(self):
        self.unseen_replays = 0  # replays of graphs holding no pass the probe saw captured
        self.captured_graphs = 0  # graphs captured while attached that hold passes the probe saw
        self._graphs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # graph -> [(recorder, record)]
        self._pending = threading.local()  # the graph being captured on this thread, and its passes
        self._originals: Dict[str, object] = {}
        self._wrappers: Dict[str, object] = {}
        self._users = 0
        self._lock = threading.Lock()

    def start(self):
        """Wrap CUDAGraph's methods (only in a process that uses CUDA)."""
        with self._lock:
            self._users += 1
            if self._originals or not _cuda_in_use():
                return
            cls = torch.cuda.CUDAGraph
            for name, make in (("capture_begin", self._capture_begin), ("capture_end", self._capture_end),
                               ("replay", self._replay)):
                original = cls.__dict__.get(name)
                if original is None:
                    continue
                wrapper = make(original)
                self._originals[name] = original
                self._wrappers[name] = wrapper
                setattr(cls, name, wrapper)

    def stop(self):
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users:
                return
            cls = torch.cuda.CUDAGraph if self._originals else None
            for name, original in self._originals.items():
                if cls.__dict__.get(name) is self._wrappers[name]:
                    setattr(cls, name, original)
                # else: someone wrapped ours since; ours stays in their chain as a pass-through
            self._originals.clear()
            self._wrappers.clear()
            self._graphs = weakref.WeakKeyDictionary()

    def pass_captured(self, recorder, record):
        """Called by a recorder at the end of a pass it saw while a graph was being captured."""
        pending = getattr(self._pending, "passes", None)
        if pending is not None:
            pending.append((recorder, record))
        # else: the capture began before attach; its replays are counted as unseen

    # -- wrappers (run on the job's threads) --

    def _capture_begin(self, original):
        watch = self

        def capture_begin(graph, *args, **kwargs):
            watch._pending.passes = []
            return original(graph, *args, **kwargs)

        return capture_begin

    def _capture_end(self, original):
        watch = self

        def capture_end(graph, *args, **kwargs):
            result = original(graph, *args, **kwargs)
            passes, watch._pending.passes = getattr(watch._pending, "passes", None), None
            if passes:
                try:
                    watch._graphs[graph] = passes
                    watch.captured_graphs += 1
                except TypeError:
                    pass  # a graph object that takes no weak reference: its replays count as unseen
            return result

        return capture_end

    def _replay(self, original):
        watch = self

        def replay(graph, *args, **kwargs):
            result = original(graph, *args, **kwargs)
            try:
                passes = watch._graphs.get(graph)
            except TypeError:
                passes = None
            if passes:
                for recorder, record in passes:
                    recorder.replayed(record)
            else:
                watch.unseen_replays += 1
            return result

        return replay


def _cuda_in_use() -> bool:
    try:
        return torch.cuda.is_available() and torch.cuda.is_initialized()
    except Exception:
        return False


watch = GraphWatch()

# Device counters captured into CUDA graphs, kept for as long as the process lives.
_kept: List[object] = []


def keep_alive(states):
    _kept.extend(states)
