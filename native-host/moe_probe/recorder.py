"""Accumulates routing on the model's own device, without stalling its forward.

Hooks run on the job's thread, inside its forward pass. They only queue device
work (`scatter_add_` of the chosen expert ids into a [layers * experts] counter)
and bump Python integers; no `.item()`, `.cpu()` or other host sync happens
there. At the end of a pass, at most once per flush interval, the counters are
cloned on the device and handed to the sender thread, which does the copy to
host memory. Counts are cumulative since attach, so a dropped snapshot loses
no tokens: the next one still carries them.
"""

import queue
import threading
import time
from typing import Dict, List, Optional

import torch
from torch import nn

from .routers import MoELayer, Routing


class Snapshot:
    """Counters as of the end of one pass, still on the device until `to_host`."""

    __slots__ = ("passes", "counts", "event", "wall_time")

    def __init__(self, passes, counts, event, wall_time):
        self.passes = passes
        self.counts = counts  # list of device tensors, one per device holding layers
        self.event = event
        self.wall_time = wall_time

    def to_host(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        total = None
        for tensor in self.counts:
            host = tensor.to("cpu")
            total = host if total is None else total + host
        return total


class Recorder:
    """Hooks one model root and its MoE layers; produces snapshots into a bounded queue."""

    def __init__(self, model_id: int, root: nn.Module, layers: List[MoELayer],
                 out: "queue.Queue", flush_interval_s: float, on_error):
        self.model_id = model_id
        self.root = root
        self.layers = layers
        self.out = out
        self.flush_interval_s = flush_interval_s
        self.on_error = on_error
        self.num_layers = len(layers)
        self.num_experts = max(layer.num_experts for layer in layers)
        self.passes = 0
        self.dropped_snapshots = 0
        self.active = False
        self._handles = []
        self._counts: Dict[torch.device, torch.Tensor] = {}
        self._ones: Dict[torch.device, torch.Tensor] = {}
        self._last_flush = 0.0
        self._lock = threading.Lock()
        # Routing is counted only inside a pass whose start we saw, so the
        # counts always cover whole passes even when hooks go in mid-forward.
        self._pass_depth = 0
        self._in_pass = False
        # A job that calls a submodule instead of the root never runs the root's
        # hooks; after this many routing calls outside a pass, stop gating.
        self._ungated = False
        self._calls_outside_pass = 0
        self._force_flush = False

    # -- lifecycle (called from the probe's own thread) --

    def start(self):
        with self._lock:
            for layer in self.layers:
                self._handles += layer.install(self._on_routing)
            # always_call: a forward that raises still ends the pass.
            self._handles.append(self.root.register_forward_pre_hook(self._on_pass_start))
            self._handles.append(self.root.register_forward_hook(self._on_pass_end, always_call=True))
            self.active = True

    def stop(self):
        with self._lock:
            self.active = False
            for handle in self._handles:
                handle.remove()
            self._handles = []

    # -- hooks (called from the job's thread, inside its forward) --

    def _on_pass_start(self, module, args):
        if self.active:
            self._pass_depth += 1
            if self._pass_depth == 1:
                self._in_pass = True

    def _on_routing(self, layer: MoELayer, routing: Routing):
        if not self.active:
            return  # a hook snapshot taken by torch just before detach
        if not (self._in_pass or self._ungated):
            self._calls_outside_pass += 1
            if self._calls_outside_pass > 4 * self.num_layers:
                self._ungated = True
            return
        try:
            ids = routing.ids.detach().reshape(-1)
            device = ids.device
            counts = self._counts.get(device)
            if counts is None:
                counts = self._counts[device] = torch.zeros(
                    self.num_layers * self.num_experts, dtype=torch.int64, device=device)
            ones = self._ones.get(device)
            if ones is None or ones.numel() < ids.numel():
                ones = self._ones[device] = torch.ones(
                    max(ids.numel(), 4096), dtype=torch.int64, device=device)
            flat = ids.to(torch.int64) + layer.index * self.num_experts
            counts.scatter_add_(0, flat, ones[: flat.numel()])
        except Exception as exc:  # never let the probe break the job's forward
            self.on_error(exc)
            return
        if self._ungated and layer.index == self.num_layers - 1:
            self._end_pass()  # no root call to mark passes: the last MoE layer does

    def _on_pass_end(self, module, args, output):
        if not self.active or self._pass_depth == 0:
            return  # the pass began before our hooks went in: it was not counted
        self._pass_depth -= 1
        if self._pass_depth:
            return
        self._in_pass = False
        self._end_pass()

    def _end_pass(self):
        try:
            self.passes += 1
            now = time.monotonic()
            if not self._counts or (now - self._last_flush < self.flush_interval_s and not self._force_flush):
                return
            self._force_flush = False
            if _capturing_cuda_graph():
                return  # a clone now would be recorded into the graph, not run
            self._last_flush = now
            clones = [tensor.clone() for tensor in self._counts.values()]
            event = None
            if clones[0].is_cuda:
                event = torch.cuda.Event()
                event.record()
            try:
                self.out.put_nowait((self, Snapshot(self.passes, clones, event, time.time())))
            except queue.Full:
                self.dropped_snapshots += 1
        except Exception as exc:
            self.on_error(exc)

    def request_flush(self):
        """Ask for a snapshot at the end of the next pass, whatever the interval."""
        self._force_flush = True

    @property
    def flush_pending(self) -> bool:
        return self._force_flush

    def flush_now(self) -> Optional[Snapshot]:
        """A snapshot taken outside any pass; consistent only while the job is between passes."""
        if not self._counts:
            return None
        clones = [tensor.clone() for tensor in self._counts.values()]
        return Snapshot(self.passes, clones, None, time.time())


def _capturing_cuda_graph() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
