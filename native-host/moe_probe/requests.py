"""Requests the panel makes of the probe (explain a routing decision, analyse the experts'
weights), answered on a thread of the probe's own, one at a time.

Neither runs in the job's forward: the session thread hands each request to this worker
(started at the first request, ended at detach: any request still running is cancelled at
its next step), which runs it and queues the answer for the session thread to send. On a
GPU the work goes on a CUDA stream of its own, so the job's stream never waits behind it
(the GPU is shared, so the job may still run slower meanwhile).
"""

import contextlib
import math
import queue
import struct
import threading
import traceback
from typing import Callable, List, Optional

import torch

from .attribution import BASELINES, DEFAULT_STEPS, MAX_STEPS, Limits, Refusal, attribute
from .expert_weights import DEFAULT_CHUNK_BYTES, analyze_layer
from .refusal import refusal

QUEUED_MAX = 4
PUT_TIMEOUT_S = 1.0


def f64_bytes(values) -> bytes:
    values = [float(v) for v in values]
    return struct.pack("<%dd" % len(values), *values)


def f32_bytes(values) -> bytes:
    values = [float(v) for v in values]
    return struct.pack("<%df" % len(values), *values)


def i32_bytes(values) -> bytes:
    values = [int(v) for v in values]
    return struct.pack("<%di" % len(values), *values)


def _int(message, key, default=None, low=None, high=None):
    value = message.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Refusal("bad_request", "%s should be a whole number" % key)
    if (low is not None and value < low) or (high is not None and value > high):
        raise Refusal("bad_request", "%s should be between %s and %s" % (key, low, high))
    return value


def _number(message, key, default, low, high):
    value = message.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise Refusal("bad_request", "%s should be a number between %s and %s" % (key, low, high))
    return float(value)


@contextlib.contextmanager
def side_stream(device: torch.device):
    """Run the enclosed work on a CUDA stream of the probe's own (after what the job had queued
    on the current stream, e.g. the copies of the kept input ids); nothing to do on CPU."""
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield
    stream.synchronize()


class RequestWorker:
    """One thread answering requests in turn; answers go to `out` as ("frame", None, frame)."""

    def __init__(self, recorders, out: "queue.Queue", texts: Callable[[List[int]], Optional[List[str]]]):
        self.recorders = recorders
        self.out = out
        self.texts = texts
        self._requests: "queue.Queue" = queue.Queue(maxsize=QUEUED_MAX)
        self._cancel = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def submit(self, message) -> None:
        """Queue a request (from the session thread); a refusal is queued at once when it cannot be."""
        if self._cancel.is_set():
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="moe_probe-requests", daemon=True)
            self._thread.start()
        try:
            self._requests.put_nowait(message)
        except queue.Full:
            self._emit(refusal(message, "busy", "%d requests are already waiting; try again when one is answered"
                                % QUEUED_MAX))

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what runs (at its next step), drop what waits, and end the thread."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self):
        while not self._cancel.is_set():
            try:
                message = self._requests.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                for frame in self._answer(message):
                    self._emit(frame)
            except Refusal as refused:
                self._emit(refusal(message, refused.code, str(refused)))
            except Exception as exc:  # a probe bug: say so, never take the job down
                self._emit(refusal(message, "failed", "%s: %s (%s)" % (
                    type(exc).__name__, exc, traceback.format_exc(limit=3).strip().splitlines()[-1])))

    def _emit(self, frame):
        while not self._cancel.is_set():
            try:
                self.out.put(("frame", None, frame), timeout=PUT_TIMEOUT_S)
                return
            except queue.Full:
                continue

    def _cancelled(self) -> bool:
        return self._cancel.is_set()

    def _recorder(self, message):
        model = _int(message, "model", 0, 0)
        if model >= len(self.recorders):
            raise Refusal("bad_request", "there is no model %d in this job" % model)
        recorder = self.recorders[model]
        if getattr(recorder, "root", None) is None or not hasattr(recorder, "inputs"):
            raise Refusal("bad_request", "model %d is not a PyTorch model: explanations and expert weights are read "
                                         "from PyTorch models only" % model)
        return recorder

    def _answer(self, message):
        kind = message.get("t") if isinstance(message, dict) else None
        if kind == "explain":
            return [self._explain(message)]
        if kind == "expert-params":
            return self._expert_params(message)
        raise Refusal("bad_request", "unknown request %r" % (kind,))

    def _explain(self, message):
        recorder = self._recorder(message)
        request_id = _int(message, "id", None, 0)
        pass_id = _int(message, "pass", None, 1)
        index = _int(message, "index", None, 0)
        layer_index = _int(message, "layer", None, 0, recorder.num_layers - 1)
        expert = _int(message, "expert", None, 0)
        steps = _int(message, "steps", DEFAULT_STEPS, 1, MAX_STEPS)
        baseline = message.get("baseline", "zero")
        if baseline not in BASELINES:
            raise Refusal("bad_request", "baseline should be one of %s" % ", ".join(BASELINES))
        token = message.get("baseline_token")
        token = None if token is None else _int(message, "baseline_token", None, 0)
        limits = Limits(max_seconds=_number(message, "max_seconds", 60.0, 0.1, 3600.0),
                        max_bytes=int(_number(message, "max_mb", 512.0, 0.001, 1 << 20) * 2**20))
        layer = recorder.layers[layer_index]
        entry = recorder.inputs.lookup(pass_id)
        if isinstance(entry, str):
            raise Refusal("no_context", "The probe cannot recompute pass %d: %s." % (pass_id, entry))
        row, position = entry.locate(index)
        if row >= entry.sequence.rows:
            raise Refusal("no_context", "token %d of pass %d is not among the rows the probe keeps" % (index, pass_id))
        with side_stream(entry.sequence.chunks[0].device):
            ids = entry.row_tokens(row)
            mask = None if entry.mask is None else entry.mask[row]
            result = attribute(recorder.root, layer, ids, position, expert, steps=steps, baseline=baseline,
                               baseline_token=token, attention_mask=mask, limits=limits, cancelled=self._cancelled)
            token_ids = ids.to("cpu").tolist()
        values = [result.logit, result.prob, result.baseline_logit, result.baseline_prob]
        values += result.gxi_logit + result.gxi_prob + result.ig_logit + result.ig_prob
        if not all(math.isfinite(v) for v in values):
            raise Refusal("not_finite", "the router's score at this token, or its gradient, is not finite (NaN or "
                          "Inf) on the way from the baseline to the input, so there is nothing to attribute")
        notes = list(result.notes)
        if entry.sequence.cut:
            notes.append("the prompt was longer than the probe keeps: only its first %d tokens were used" % len(token_ids))
        if entry.phase == "decode":
            notes.append("a generated token: the sequence is the prompt and every token generated since, "
                         "recomputed without the job's KV cache")
        return {
            "t": "explanation", "id": request_id, "model": recorder.model_id, "pass": pass_id, "index": index,
            "layer": layer_index, "expert": expert, "row": row, "position": position,
            "token_ids": i32_bytes(token_ids), "texts": self.texts(token_ids),
            "steps": steps, "baseline": baseline, "baseline_token": result.baseline_token,
            "prob_kind": result.prob_kind, "logit": result.logit, "prob": result.prob,
            "baseline_logit": result.baseline_logit, "baseline_prob": result.baseline_prob,
            "gxi_logit": f64_bytes(result.gxi_logit), "gxi_prob": f64_bytes(result.gxi_prob),
            "ig_logit": f64_bytes(result.ig_logit), "ig_prob": f64_bytes(result.ig_prob),
            "recomputed": i32_bytes(result.recomputed), "seconds": result.seconds,
            "peak_bytes": result.peak_bytes, "batch": result.batch, "device": result.device, "notes": notes,
        }

    def _expert_params(self, message):
        recorder = self._recorder(message)
        request_id = _int(message, "id", None, 0)
        chunk = int(_number(message, "chunk_mb", DEFAULT_CHUNK_BYTES / 2**20, 1.0, 4096.0) * 2**20)
        layers = message.get("layers")
        if layers is None:
            layers = list(range(recorder.num_layers))
        if not isinstance(layers, list) or not all(isinstance(l, int) and 0 <= l < recorder.num_layers for l in layers):
            raise Refusal("bad_request", "layers should list layer indices below %d" % recorder.num_layers)
        frames = []
        for part, index in enumerate(layers):
            layer = recorder.layers[index]
            device = next((p.device for p in layer.module.parameters()), torch.device("cpu"))
            with side_stream(device):
                try:
                    result = analyze_layer(layer, chunk, self._cancelled)
                except InterruptedError:
                    raise Refusal("cancelled", "the analysis was cancelled (the host detached)")
            frames.append(expert_params_frame(request_id, recorder.model_id, index, part, len(layers), result))
        return frames


def _matrix(tensor):
    return None if tensor is None else f32_bytes(tensor.reshape(-1).tolist())


def _vector(tensor):
    return None if tensor is None else f64_bytes(tensor.reshape(-1).tolist())


def expert_params_frame(request_id, model_id, layer, part, parts, r):
    return {
        "t": "expert-params", "id": request_id, "model": model_id, "layer": layer, "part": part, "parts": parts,
        "experts": r["experts"], "compute_experts": r["compute"],
        "router_name": r["router_name"], "router_norms": _vector(r["router_norms"]),
        "router_cosine": _matrix(r["router_cosine"]),
        "router_bias_name": r["router_bias_name"], "router_bias": _vector(r["router_bias"]),
        "layout": r["layout"], "groups": r["groups"], "params": r["params"],
        "expert_norms": _vector(r["expert_norms"]), "group_norms": _vector(r["group_norms"]),
        "weight_cosine": _matrix(r["weight_cosine"]),
        "seconds": r["seconds"], "peak_bytes": r["peak_bytes"], "notes": r["notes"],
    }
