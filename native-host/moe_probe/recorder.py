"""Accumulates routing on the model's own device, without stalling its forward.

Hooks run on the job's thread, inside its forward pass. They only queue device
work and bump Python numbers; no `.item()`, `.cpu()` or other host sync
happens there. What is kept:

* counts: `scatter_add_` of the chosen expert ids into an int64 counter of
  sum(experts of each layer) slots (layers may differ in width), cumulative
  since attach; layers read from the rows each expert received add Python ints
  on the host instead (no device work at all);
* tokens through each layer (Python ints: shapes are known on the host);
* router health, from the logits when the router exposes them: sums of the
  per-token entropy (of the softmax, or of the row itself when the router hands
  out probabilities) and of logsumexp^2 (z-loss), the largest logit, NaN/Inf
  counts, and assignments dropped by expert capacity, cumulative too;
* time inside each MoE block (perf counters on CPU; on GPU, CUDA events read
  by the sender thread) and the probe's own time in its hooks; for expert-parallel
  layers also the time inside this process's own experts (its compute, without the
  all-to-all waits that the block's time includes);
* for sampled passes, every sampled token's top-k ids and weights per layer,
  with its input token id.

At the end of a pass, at most once per flush interval, the counters are cloned
on the device and handed to the sender thread, which copies them to host
memory. Cumulative counters mean a dropped snapshot loses nothing: the next
one still carries it.
"""

import queue
import threading
import time
from time import perf_counter
from typing import Dict, List, Optional

import torch
from torch import nn

from . import compiled, cudagraphs, side
from .contexts import InputKeeper
from .routers import MoELayer, Routing

# Columns of the per-layer health accumulator (float64, cumulative).
HEALTH_COLUMNS = ("logit_tokens", "entropy_sum", "zloss_sum", "nan", "inf", "dropped")


class Settings:
    """Probe settings; the defaults are what the overhead benchmark measures."""

    def __init__(self, flush_interval_s=0.03, token_sample=128, token_passes_per_s=50.0,
                 token_bytes_per_s=2_000_000, health_passes_per_s=50.0):
        self.flush_interval_s = flush_interval_s
        self.token_sample = token_sample  # tokens per sampled pass (the first ones of the batch)
        self.token_passes_per_s = token_passes_per_s  # most sampled passes per second
        self.token_bytes_per_s = token_bytes_per_s  # byte budget for token records
        # Router health costs ~15 small kernels per layer: on fast GPU decode loops it is
        # computed on at most this many passes per second (entropy and z-loss are means
        # over the passes measured; NaN/Inf counts cover those passes).
        self.health_passes_per_s = health_passes_per_s

    def describe(self):
        return dict(vars(self))


class Snapshot:
    """Everything cumulative as of the end of one pass, still on the device until `to_host`."""

    __slots__ = ("passes", "tensors", "event", "wall_time", "host")

    def __init__(self, passes, tensors, event, wall_time, host):
        self.passes = passes
        self.tensors = tensors  # {"counts": [per-device tensors], "health": [...], "max_logit": [...]}
        self.event = event
        self.wall_time = wall_time
        self.host = host  # plain Python values taken at the same moment (times, phases)

    def to_host(self) -> Dict[str, torch.Tensor]:
        """Host copies; "counts" holds every layer's experts (device counters plus the rows
        counted on the host), "tokens" the tokens through each layer."""
        if self.event is not None:
            self.event.synchronize()
        out = {}
        for name, parts in self.tensors.items():
            total = None
            for tensor in parts:
                host = tensor.to("cpu")
                if total is None:
                    total = host
                elif name == "max_logit":
                    total = torch.maximum(total, host)
                else:
                    total = total + host
            out[name] = total
        counts = out["counts"][: self.host["total_experts"]]
        if self.host["host_loads"] is not None:
            counts = counts + torch.tensor(self.host["host_loads"], dtype=torch.int64)
        out["counts"] = counts
        out["tokens"] = torch.tensor(self.host["layer_tokens"], dtype=torch.int64)
        return out


class TokenRecord:
    """Top-k choices of the sampled tokens of one pass, per layer (device tensors until sent)."""

    __slots__ = ("pass_id", "phase", "token_ids", "layers", "event")

    def __init__(self, pass_id, phase, token_ids):
        self.pass_id = pass_id
        self.phase = phase
        self.token_ids = token_ids
        self.layers = {}  # layer index -> (ids [n, k] int32, weights [n, k] float32 or None)
        self.event = None


class CaptureRecord:
    """The Python-side tallies of one pass recorded into a CUDA graph, added at each replay."""

    __slots__ = ("passes", "phase", "layer_tokens", "host_loads")

    def __init__(self, num_layers, phase):
        self.passes = 1
        self.phase = phase
        self.layer_tokens = [0] * num_layers
        self.host_loads: Optional[List[int]] = None


class _DeviceState:
    def __init__(self, num_layers, total_experts, device):
        # One slot past the end takes the -1 "no expert" entries of variable-k routing.
        self.counts = torch.zeros(total_experts + 1, dtype=torch.int64, device=device)
        self.health = torch.zeros(num_layers, len(HEALTH_COLUMNS), dtype=torch.float64, device=device)
        self.max_logit = torch.full((num_layers,), float("-inf"), dtype=torch.float64, device=device)
        self.ones = torch.ones(4096, dtype=torch.int64, device=device)


def _block_of(root: nn.Module, layer: MoELayer) -> nn.Module:
    """The module whose forward is the whole MoE block (router + experts), for timing."""
    if hasattr(layer.module, "experts"):
        return layer.module
    if "." in layer.name:
        try:
            parent = root.get_submodule(layer.name.rsplit(".", 1)[0])
            if hasattr(parent, "experts"):
                return parent
        except AttributeError:
            pass
    return layer.module


def _input_ids_of(args, kwargs):
    """The root pre-hook's tap: the input ids, if the pass was given any (traced by dynamo), and
    its attention mask (kept with sampled passes so their routing can be explained later)."""
    mask = kwargs.get("attention_mask") if kwargs else None
    return [_input_ids(args, kwargs)], [mask if isinstance(mask, torch.Tensor) else None]


def _input_ids(args, kwargs):
    ids = kwargs.get("input_ids") if kwargs else None
    if ids is None:
        ids = kwargs.get("decoder_input_ids") if kwargs else None
    if ids is None and args and isinstance(args[0], torch.Tensor):
        ids = args[0]
    if isinstance(ids, torch.Tensor) and not ids.is_floating_point() and ids.dim() in (1, 2):
        return ids
    return None


class Recorder:
    """Hooks one model root and its MoE layers; produces snapshots into a bounded queue."""

    def __init__(self, model_id: int, root: nn.Module, layers: List[MoELayer],
                 out: "queue.Queue", settings: Settings, on_error):
        self.model_id = model_id
        self.root = root
        self.layers = layers
        self.out = out
        self.settings = settings
        self.on_error = on_error
        self.num_layers = len(layers)
        # Each layer keeps its own width: layer l's experts are slots offsets[l] .. offsets[l] + widths[l].
        self.widths = [layer.num_experts for layer in layers]
        self.offsets = [sum(self.widths[:i]) for i in range(self.num_layers)]
        self.total_experts = sum(self.widths)
        self.max_top_k = max(layer.top_k for layer in layers)
        self.blocks = [_block_of(root, layer) for layer in layers]
        self.passes = 0
        self.dropped_snapshots = 0
        self.dropped_token_records = 0
        self.active = False
        self._handles = []
        self._state: Dict[torch.device, _DeviceState] = {}
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
        # Plain Python accumulators (host side, no device work).
        self.layer_tokens = [0] * self.num_layers
        self.host_loads: Optional[List[int]] = None  # rows per expert, for layers read that way
        self.layer_time_s = [0.0] * self.num_layers
        # Expert-parallel layers (expert_parallel.py): time inside this process's own experts.
        self.ep_layers = [index for index, layer in enumerate(layers) if getattr(layer, "held", None) is not None]
        self.expert_time_s = [0.0] * self.num_layers
        self._expert_start = [0.0] * self.num_layers
        # filled by the sender thread from CUDA events: blocks at [layer], experts at [num_layers + layer]
        self.gpu_time_s = [0.0] * (2 * self.num_layers)
        self.probe_time_s = 0.0
        self.phase_passes = {"prefill": 0, "decode": 0}
        self.last_shape: List[int] = []
        self._phase = "prefill"
        self._block_start = [0.0] * self.num_layers
        self._gpu_events = []  # (layer, start, end) of the current pass, on CUDA
        self._token_record: Optional[TokenRecord] = None
        self._token_budget_t = 0.0
        self._token_bytes_spent = 0.0
        self._health_pass = False
        self._health_t = 0.0
        self._block_on_gpu = [False] * self.num_layers
        self.inputs = InputKeeper(settings.token_sample)
        # What the probe could see of how passes ran (see visibility()).
        self._on_cuda = False
        self._pass_compiled = False
        # Whether any MoE layer was read in the current pass: a pass whose layers all ran where
        # the hooks could not reach (compiled code without the probe's op) is not counted.
        self._pass_routed = False
        self.unseen_passes = 0  # passes whose start and end were seen but none of their layers
        self.compiled_passes = 0  # passes read (partly) from compiled code, through the taps
        self._capture: Optional[CaptureRecord] = None  # the pass being recorded into a CUDA graph
        self.captured_passes = 0  # passes recorded into CUDA graphs while attached
        self.replayed_passes = 0  # passes counted from replays of those graphs

    # -- lifecycle (called from the probe's own thread) --

    def start(self):
        self._block_on_gpu = [any(p.is_cuda for p in block.parameters()) for block in self.blocks]
        # Counters on the model's device from the start: snapshots flow even for layers
        # read on the host alone (rows per expert) or before any routing is seen.
        param = next(self.root.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self._on_cuda = device.type == "cuda"
        self._device_state(device)
        compiled.prepare()
        with self._lock:
            for layer, block in zip(self.layers, self.blocks):
                layer.on_error = self.on_error
                self._handles += layer.install(self._on_routing)
                # Block times are not measured inside compiled code (traced=False): the compiler
                # fuses across block boundaries, so there is no such time to take.
                self._handles.append(compiled.pre_hook(block, "block_start", self._timer_start(layer.index),
                                                       pack=compiled.nothing, traced=False))
                self._handles.append(compiled.post_hook(block, "block_end", self._timer_end(layer.index),
                                                        pack=compiled.nothing, traced=False, always_call=True))
            for index in self.ep_layers:
                for expert in self.layers[index].expert_modules:
                    self._handles.append(compiled.pre_hook(expert, "block_start", self._timer_start(self.num_layers + index),
                                                           pack=compiled.nothing, traced=False))
                    self._handles.append(compiled.post_hook(expert, "block_end", self._timer_end(self.num_layers + index),
                                                            pack=compiled.nothing, traced=False, always_call=True))
            self._handles.append(compiled.pre_hook(self.root, "pass_start", self._on_pass_start, pack=_input_ids_of))
            # always_call: a forward that raises still ends the pass.
            self._handles.append(compiled.post_hook(self.root, "pass_end", self._on_pass_end, pack=compiled.nothing,
                                                    always_call=True))
            self.active = True

    def stop(self):
        with self._lock:
            self.active = False
            for handle in reversed(self._handles):  # last in, first out: wrappers nest
                handle.remove()
            self._handles = []
            if self.captured_passes:
                cudagraphs.keep_alive(list(self._state.values()))  # graphs still point at them

    # -- hooks (called from the job's thread, inside its forward) --

    def _on_pass_start(self, first, second):
        if not self.active or side.state.active:
            return
        self._pass_depth += 1
        if self._pass_depth != 1:
            return
        t0 = perf_counter()
        try:
            self._in_pass = True
            self._pass_routed = False
            self._pass_compiled = compiled.from_compiled()
            ids = first[0] if first else None
            if ids is not None:
                self.last_shape = list(ids.shape)
                seq = ids.shape[-1]
                self._phase = "decode" if seq == 1 and self.passes > 0 else "prefill"
            # A pass recorded into a CUDA graph runs nothing now: its counting is captured and
            # happens at each replay (see cudagraphs.py); what can only be done once (health,
            # token records) is left out of it.
            self._capture = CaptureRecord(self.num_layers, self._phase) if self._capturing() else None
            rate = self.settings.health_passes_per_s
            self._health_pass = rate > 0 and t0 - self._health_t >= 1.0 / rate and self._capture is None
            if self._health_pass:
                self._health_t = t0
            self._token_record = None
            sampled = self._capture is None and self._want_token_record(t0)
            if sampled:
                sample = None
                if ids is not None:
                    sample = ids.detach().reshape(-1)[: self.settings.token_sample].to(torch.int32, copy=True)
                self._token_record = TokenRecord(self.passes + 1, self._phase, sample)
            # the rows behind sampled tokens, so that their routing can be explained on request
            self.inputs.on_pass(ids, second[0] if second else None, self.passes + 1, self._phase, sampled)
        except Exception as exc:
            self.on_error(exc)
        self.probe_time_s += perf_counter() - t0

    def _want_token_record(self, now):
        """Sample a pass when the rate and byte budgets allow (a token bucket each)."""
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

    def _timer_start(self, index):
        """Timing of block `index`, or (index >= num_layers) of the own experts of layer index - num_layers."""
        layer = index % self.num_layers
        starts = self._block_start if index < self.num_layers else self._expert_start

        def hook(_first, _second):
            if self.active and self._in_pass and self._capture is None and not side.state.active:
                if self._block_on_gpu[layer]:
                    event = torch.cuda.Event(enable_timing=True)
                    event.record()
                    self._gpu_events.append([index, event, None])
                else:
                    starts[layer] = perf_counter()
        return hook

    def _timer_end(self, index):
        layer = index % self.num_layers
        starts, totals = ((self._block_start, self.layer_time_s) if index < self.num_layers
                          else (self._expert_start, self.expert_time_s))

        def hook(_first, _second):
            if self.active and self._in_pass and self._capture is None and not side.state.active:
                if self._block_on_gpu[layer]:
                    # the latest open timing of this index (an expert-parallel block's experts are
                    # timed inside it, so the block's own start may not be the last entry)
                    for entry in reversed(self._gpu_events[-64:]):
                        if entry[0] == index and entry[2] is None:
                            event = torch.cuda.Event(enable_timing=True)
                            event.record()
                            entry[2] = event
                            break
                elif starts[layer]:
                    totals[layer] += perf_counter() - starts[layer]
                    starts[layer] = 0.0
        return hook

    def _device_state(self, device) -> _DeviceState:
        state = self._state.get(device)
        if state is None:
            state = self._state[device] = _DeviceState(self.num_layers, self.total_experts, device)
        return state

    def _on_routing(self, layer: MoELayer, routing: Routing):
        if not self.active:
            return  # a hook snapshot taken by torch just before detach
        if not (self._in_pass or self._ungated):
            self._calls_outside_pass += 1
            if self._calls_outside_pass > 4 * self.num_layers:
                self._ungated = True
            return
        if self._ungated and layer.index == 0 and self._capture is None and self._capturing():
            self._capture = CaptureRecord(self.num_layers, self._phase)
        t0 = perf_counter()
        self._pass_routed = True
        try:
            if compiled.from_compiled():
                self._pass_compiled = True
            index = layer.index
            offset = self.offsets[index]
            ids = None if routing.ids is None else routing.ids.detach()
            per_token = ids if ids is not None else routing.token_ids
            tokens = routing.tokens if routing.tokens is not None else (
                per_token.shape[0] if per_token is not None else 0)
            # Python-side tallies of a pass being captured into a CUDA graph are added at each replay.
            tally = self if self._capture is None else self._capture
            tally.layer_tokens[index] += int(tokens)
            state = None
            if isinstance(routing.loads, list):
                if tally.host_loads is None:
                    tally.host_loads = [0] * self.total_experts
                for e, rows in enumerate(routing.loads[: self.widths[index]]):
                    tally.host_loads[offset + e] += rows
            elif routing.loads is not None:
                state = self._device_state(routing.loads.device)
                state.counts.narrow(0, offset, self.widths[index]).add_(routing.loads.to(torch.int64))
            elif ids is not None:
                state = self._device_state(ids.device)
                flat = ids.reshape(-1).to(torch.int64) + offset
                if routing.padded:  # -1 = no expert in that slot: counted in the spare last slot
                    flat = torch.where(flat >= offset, flat, torch.full_like(flat, self.total_experts))
                if state.ones.numel() < flat.numel():
                    state.ones = torch.ones(flat.numel(), dtype=torch.int64, device=ids.device)
                state.counts.scatter_add_(0, flat, state.ones[: flat.numel()])
            if (self._health_pass or self._ungated) and self._capture is None:
                device = _device_of(routing)
                if device is not None:
                    self._record_health(state or self._device_state(device), index, routing)
            if self._token_record is not None and per_token is not None:
                n = self.settings.token_sample
                weights = routing.weights if ids is not None else None
                self._token_record.layers[index] = (
                    per_token.reshape(per_token.shape[0], -1)[:n].to(torch.int32, copy=True),
                    None if weights is None else weights.detach().reshape(weights.shape[0], -1)[:n].to(torch.float32, copy=True),
                )
        except Exception as exc:  # never let the probe break the job's forward
            self.on_error(exc)
            return
        finally:
            self.probe_time_s += perf_counter() - t0
        if self._ungated and layer.index == self.num_layers - 1:
            self._end_pass()  # no root call to mark passes: the last MoE layer does

    def _record_health(self, state: _DeviceState, index: int, routing: Routing):
        row = state.health[index]
        if routing.logits is not None:
            logits = routing.logits.detach().reshape(-1, routing.logits.shape[-1]).float()
            nan = torch.isnan(logits)
            inf = torch.isinf(logits)
            finite = torch.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0)
            lse = torch.logsumexp(finite, dim=-1)
            # Some routers hand out probabilities (rows >= 0 summing to 1) where others give
            # logits: entropy of the row itself then, of its softmax otherwise; z-loss only
            # means something for logits. Decided per row on the device (no host sync).
            is_prob = (finite >= 0).all(dim=-1) & ((finite.sum(dim=-1) - 1.0).abs() < 1e-3)
            p = torch.where(is_prob.unsqueeze(-1), finite, (finite - lse.unsqueeze(-1)).exp())
            entropy = -torch.special.xlogy(p, p).sum(dim=-1)
            row[0] += logits.shape[0]
            row[1] += entropy.sum()
            row[2] += torch.where(is_prob, torch.zeros_like(lse), lse * lse).sum()
            row[3] += nan.sum()
            row[4] += inf.sum()
            torch.maximum(state.max_logit[index], finite.max().double(), out=state.max_logit[index])
        dropped = routing.dropped
        if isinstance(dropped, torch.Tensor):
            row[5] += dropped.sum()
        elif dropped:
            row[5] += float(dropped)

    def _on_pass_end(self, _first, _second):
        if not self.active or self._pass_depth == 0 or side.state.active:
            return  # the pass began before our hooks went in: it was not counted
        self._pass_depth -= 1
        if self._pass_depth:
            return
        self._in_pass = False
        self._end_pass()

    def _end_pass(self):
        t0 = perf_counter()
        try:
            capture, self._capture = self._capture, None
            if capture is not None:
                # Recorded into a CUDA graph, not run: it counts when (and each time) it is replayed.
                self.captured_passes += 1
                cudagraphs.watch.pass_captured(self, capture)
                return
            routed, self._pass_routed = self._pass_routed, False
            if not routed:
                # Its layers ran where no hook reached them: claiming it as a pass would show
                # routing that was never read (all zeros).
                self.unseen_passes += 1
                self._token_record = None
                self._pass_compiled = False
                return
            self.passes += 1
            self.phase_passes[self._phase] += 1
            if self._pass_compiled:
                self.compiled_passes += 1
                self._pass_compiled = False
            if any(layer.changed for layer in self.layers):
                # What the first calls revealed (how ids are read, the routing design). A full
                # queue leaves the flags set, so the next pass tries again.
                try:
                    self.out.put_nowait(("layers", self, [layer.describe() for layer in self.layers]))
                    for layer in self.layers:
                        layer.changed = False
                except queue.Full:
                    pass
            record, self._token_record = self._token_record, None
            if record is not None and record.layers:
                self._enqueue(("tokens", self, record), is_snapshot=False)
            self._maybe_flush()
        except Exception as exc:
            self.on_error(exc)
        finally:
            self.probe_time_s += perf_counter() - t0

    def _maybe_flush(self):
        """A snapshot at a pass boundary, at most once per flush interval (or when asked for)."""
        now = time.monotonic()
        if not self._state or (now - self._last_flush < self.settings.flush_interval_s and not self._force_flush):
            if not self._gpu_events or len(self._gpu_events) > 4096:
                self._gpu_events = []
            return
        if _capturing_cuda_graph(self._state):
            return  # a clone now would be recorded into the graph, not run
        self._force_flush = False
        self._last_flush = now
        snapshot = self._snapshot(time.time())
        self._enqueue(("counts", self, snapshot), is_snapshot=True)

    def replayed(self, capture: "CaptureRecord"):
        """A CUDA graph holding passes captured while attached was just replayed (on the job's
        thread, right after its kernels were queued): its captured counting runs on the device
        with the replay; the Python-side tallies it recorded are added here."""
        if not self.active:
            return
        t0 = perf_counter()
        try:
            self.passes += capture.passes
            self.replayed_passes += capture.passes
            self.phase_passes[capture.phase] += capture.passes
            for index, tokens in enumerate(capture.layer_tokens):
                self.layer_tokens[index] += tokens
            if capture.host_loads is not None:
                if self.host_loads is None:
                    self.host_loads = [0] * self.total_experts
                for slot, rows in enumerate(capture.host_loads):
                    self.host_loads[slot] += rows
            self._maybe_flush()  # queued after the replay on the same stream: sees its counts
        except Exception as exc:
            self.on_error(exc)
        finally:
            self.probe_time_s += perf_counter() - t0

    def _capturing(self) -> bool:
        return self._on_cuda and torch.cuda.is_current_stream_capturing()

    def _snapshot(self, wall_time) -> Snapshot:
        states = list(self._state.values())
        tensors = {
            "counts": [s.counts.clone() for s in states],
            "health": [s.health.clone() for s in states],
            "max_logit": [s.max_logit.clone() for s in states],
        }
        event = None
        if states[0].counts.is_cuda:
            event = torch.cuda.Event()
            event.record()
        host = {
            "time_s": list(self.layer_time_s),
            "expert_s": list(self.expert_time_s) if self.ep_layers else None,
            "probe_s": self.probe_time_s,
            "prefill": self.phase_passes["prefill"],
            "decode": self.phase_passes["decode"],
            "shape": list(self.last_shape),
            "gpu_events": self._gpu_events,
            "dropped_tokens_records": self.dropped_token_records,
            "layer_tokens": list(self.layer_tokens),
            "total_experts": self.total_experts,
            "host_loads": None if self.host_loads is None else list(self.host_loads),
            "compiled_passes": self.compiled_passes,
            "captured_passes": self.captured_passes,
            "replayed_passes": self.replayed_passes,
        }
        self._gpu_events = []
        return Snapshot(self.passes, tensors, event, wall_time, host)

    def _enqueue(self, item, is_snapshot):
        try:
            self.out.put_nowait(item)
        except queue.Full:
            if is_snapshot:
                self.dropped_snapshots += 1
            else:
                self.dropped_token_records += 1

    def request_flush(self):
        """Ask for a snapshot at the end of the next pass, whatever the interval."""
        self._force_flush = True

    @property
    def flush_pending(self) -> bool:
        return self._force_flush

    def flush_now(self) -> Optional[Snapshot]:
        """A snapshot taken outside any pass; consistent only while the job is between passes."""
        if not self._state:
            return None
        return self._snapshot(time.time())


def _device_of(routing: Routing):
    for tensor in (routing.ids, routing.logits, routing.token_ids, routing.dropped):
        if isinstance(tensor, torch.Tensor):
            return tensor.device
    return None


def _capturing_cuda_graph(states) -> bool:
    for device in states:
        return device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    return False
