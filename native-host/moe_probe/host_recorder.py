"""Counts routing that a framework hands to the host, for the JAX, Keras and ONNX Runtime backends.

The torch backend (recorder.py) counts on the model's device with forward hooks. These
frameworks run compiled graphs that Python does not step through, so their backends put the
reading into the graph itself: each pass, the framework computes on its own device, per MoE
layer, the tokens each expert received (a bincount of the top-k ids), the router's health sums
and the top-k of the first sampled tokens, and delivers those few numbers to the host once
(jax.debug.callback, tf.numpy_function, or the extra outputs of an ONNX Runtime run).
`record_pass` adds them here under a lock (callbacks may come from the framework's threads);
snapshots are taken at pass boundaries at most once per flush interval and handed to the
probe's sender thread through the same bounded queue as the torch recorder's, in the same shape
(`Snapshot.to_host`, `TokenRecord`), so the server sends identical frames for every framework.

numpy is imported here: every framework served here depends on it and has loaded it already.
"""

import queue
import threading
import time
from time import perf_counter
from typing import Dict, List, Optional

import numpy as np

from .structure import LayerSpec

# Columns of the per-layer health accumulator, as in recorder.py and src/protocol/probe.ts.
HEALTH_COLUMNS = ("logit_tokens", "entropy_sum", "zloss_sum", "nan", "inf", "dropped")


class LayerPass:
    """What one layer routed in one pass, as the framework computed it (host numpy values)."""

    __slots__ = ("counts", "tokens", "health", "max_logit", "ids", "weights")

    def __init__(self, counts, tokens, health=None, max_logit=None, ids=None, weights=None):
        self.counts = counts  # [E] integer: assignments per expert in this pass
        self.tokens = tokens  # tokens through the layer in this pass
        self.health = health  # [5]: logit_tokens, entropy_sum, zloss_sum, nan, inf (or None)
        self.max_logit = max_logit  # largest finite logit of the pass (or None)
        self.ids = ids  # [n, k] top-k ids of the first sampled tokens (or None)
        self.weights = weights  # [n, k] their weights (or None)


class HostSnapshot:
    """Cumulative counters as of the end of one pass, already on the host (see recorder.Snapshot)."""

    __slots__ = ("passes", "tensors", "wall_time", "host")

    def __init__(self, passes, tensors, wall_time, host):
        self.passes = passes
        self.tensors = tensors
        self.wall_time = wall_time
        self.host = host

    def to_host(self) -> Dict[str, "np.ndarray"]:
        return self.tensors


class HostTokenRecord:
    """Top-k choices of the sampled tokens of one pass, per layer (see recorder.TokenRecord)."""

    __slots__ = ("pass_id", "phase", "token_ids", "layers")

    def __init__(self, pass_id, phase, token_ids):
        self.pass_id = pass_id
        self.phase = phase
        self.token_ids = token_ids
        self.layers = {}


class HostRecorder:
    """Cumulative routing of one model's MoE layers, fed once per pass by a framework backend.

    Subclasses install and remove the framework's interception (install/uninstall); the server
    drives this class exactly as it drives the torch Recorder.
    """

    def __init__(self, model_id: int, layers: List[LayerSpec], out: "queue.Queue", settings, on_error):
        self.model_id = model_id
        self.layers = layers
        self.out = out
        self.settings = settings
        self.on_error = on_error
        self.num_layers = len(layers)
        self.widths = [layer.num_experts for layer in layers]
        self.offsets = [sum(self.widths[:i]) for i in range(self.num_layers)]
        self.total_experts = sum(self.widths)
        self.active = False
        self.passes = 0
        self.dropped_snapshots = 0
        self.dropped_token_records = 0
        self.gpu_time_s = [0.0] * self.num_layers  # read by the server; nothing fills it here
        self.probe_time_s = 0.0
        self.layer_time_s: Optional[List[float]] = None  # per-layer time, where a backend can measure it
        self.phase_passes = {"prefill": 0, "decode": 0}
        self.last_shape: List[int] = []
        self._counts = np.zeros(self.total_experts, dtype=np.int64)
        self._tokens = np.zeros(self.num_layers, dtype=np.int64)
        self._health = np.zeros((self.num_layers, len(HEALTH_COLUMNS)), dtype=np.float64)
        self._max_logit = np.full(self.num_layers, -np.inf, dtype=np.float64)
        self._calls = [0] * self.num_layers  # passes each layer has reported (they may arrive apart)
        self._lock = threading.Lock()
        self._last_flush = 0.0
        self._force_flush = False
        self._token_budget_t = 0.0
        self._token_bytes_spent = 0.0
        self._token_records: Dict[int, HostTokenRecord] = {}  # pass -> record being filled
        self.max_top_k = max(layer.top_k for layer in layers)

    # -- lifecycle (probe thread) --

    def start(self):
        self.install()
        self.active = True  # after install: whatever the framework delivers from now on is whole

    def stop(self):
        self.active = False
        try:
            self.uninstall()
        except Exception as exc:  # removal must go on whatever happened; the session reports it
            self.on_error(exc)

    def install(self):  # pragma: no cover - each backend's own
        raise NotImplementedError

    def uninstall(self):  # pragma: no cover - each backend's own
        raise NotImplementedError

    # -- from the framework (job's threads) --

    def record_pass(self, layers: Dict[int, LayerPass], token_ids=None, shape=None):
        """Add what some layers routed in one pass; a pass ends when every layer has reported it."""
        if not self.active:
            return
        t0 = perf_counter()
        try:
            with self._lock:
                self._add(layers, token_ids, shape)
        except Exception as exc:  # never let the probe break the job
            self.on_error(exc)
        finally:
            self.probe_time_s += perf_counter() - t0

    def _add(self, layers, token_ids, shape):
        if shape is not None:
            self.last_shape = [int(s) for s in shape]
        first_of_pass = None
        for index, data in layers.items():
            offset, width = self.offsets[index], self.widths[index]
            counts = np.asarray(data.counts, dtype=np.int64).reshape(-1)[:width]
            self._counts[offset:offset + counts.shape[0]] += counts
            self._tokens[index] += int(data.tokens)
            if data.health is not None:
                self._health[index, :5] += np.asarray(data.health, dtype=np.float64).reshape(-1)[:5]
            if data.max_logit is not None and np.isfinite(data.max_logit):
                self._max_logit[index] = max(self._max_logit[index], float(data.max_logit))
            self._calls[index] += 1
            pass_id = self._calls[index]
            if first_of_pass is None:
                first_of_pass = pass_id
            if data.ids is not None:
                record = self._token_records.get(pass_id)
                if record is None and pass_id > self.passes and self._want_token_record(perf_counter()):
                    record = self._token_records[pass_id] = HostTokenRecord(pass_id, self._phase_of(shape), None)
                if record is not None:
                    # Copies (np.array): a framework may free or reuse the buffers it handed over.
                    ids = np.array(data.ids, dtype=np.int32).reshape(data.ids.shape[0], -1)
                    weights = None if data.weights is None else np.array(
                        data.weights, dtype=np.float32).reshape(ids.shape[0], -1)
                    record.layers[index] = (ids, weights)
        if token_ids is not None and first_of_pass is not None:
            record = self._token_records.get(first_of_pass)
            if record is not None:
                record.token_ids = np.array(np.asarray(token_ids).reshape(-1)[: self.settings.token_sample],
                                            dtype=np.int32)
        done = min(self._calls)
        while self.passes < done:
            self.passes += 1
            self.phase_passes[self._phase_of(shape)] += 1
            self._end_pass(self.passes)

    def _phase_of(self, shape):
        seq = shape[-1] if shape else None
        return "decode" if seq == 1 and self.passes > 0 else "prefill"

    def _want_token_record(self, now):
        """Sample a pass when the rate and byte budgets allow (as recorder.Recorder does)."""
        s = self.settings
        if s.token_sample <= 0 or s.token_passes_per_s <= 0:
            return False
        if now - self._token_budget_t < 1.0 / s.token_passes_per_s:
            return False
        bytes_per_pass = s.token_sample * (4 + self.num_layers * self.max_top_k * 8)
        elapsed = now - self._token_budget_t if self._token_budget_t else 1.0
        self._token_bytes_spent = max(0.0, self._token_bytes_spent - elapsed * s.token_bytes_per_s)
        if self._token_bytes_spent + bytes_per_pass > s.token_bytes_per_s:
            return False
        self._token_bytes_spent += bytes_per_pass
        self._token_budget_t = now
        return True

    def _end_pass(self, pass_id):
        record = self._token_records.pop(pass_id, None)
        for stale in [p for p in self._token_records if p < pass_id]:
            del self._token_records[stale]
        if any(layer.changed for layer in self.layers):
            try:
                self.out.put_nowait(("layers", self, [layer.describe() for layer in self.layers]))
                for layer in self.layers:
                    layer.changed = False
            except queue.Full:
                pass
        if record is not None and record.layers:
            self._enqueue(("tokens", self, record), is_snapshot=False)
        now = time.monotonic()
        if now - self._last_flush < self.settings.flush_interval_s and not self._force_flush:
            return
        self._force_flush = False
        self._last_flush = now
        self._enqueue(("counts", self, self._snapshot()), is_snapshot=True)

    def _snapshot(self) -> HostSnapshot:
        tensors = {
            "counts": self._counts.copy(),
            "tokens": self._tokens.copy(),
            "health": self._health.copy(),
            "max_logit": self._max_logit.copy(),
        }
        host = {
            "time_s": None if self.layer_time_s is None else list(self.layer_time_s),
            "probe_s": self.probe_time_s,
            "prefill": self.phase_passes["prefill"],
            "decode": self.phase_passes["decode"],
            "shape": list(self.last_shape),
            "gpu_events": [],
            "dropped_tokens_records": self.dropped_token_records,
        }
        return HostSnapshot(self.passes, tensors, time.time(), host)

    def _enqueue(self, item, is_snapshot):
        try:
            self.out.put_nowait(item)
        except queue.Full:
            if is_snapshot:
                self.dropped_snapshots += 1
            else:
                self.dropped_token_records += 1

    # -- from the session (probe thread) --

    def request_flush(self):
        self._force_flush = True

    @property
    def flush_pending(self) -> bool:
        return self._force_flush

    def flush_now(self) -> Optional[HostSnapshot]:
        with self._lock:
            return self._snapshot()
