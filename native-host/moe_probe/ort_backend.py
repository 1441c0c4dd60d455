"""ONNX Runtime backend: the router TopK nodes of live InferenceSessions, read on every run.

Finding: every live `onnxruntime.InferenceSession` whose graph holds a router TopK: a TopK over
the last axis whose input comes, through element-wise ops (Softmax, Sigmoid, a bias Add, Cast,
...), from a projection (MatMul or Gemm with an initializer weight) with E outputs, k < E. That
is an MoE router wherever the model came from (torch.onnx.export, tf2onnx, a hand-built graph);
a TopK over a vocabulary (sampling) has no such projection of E <= 4096 outputs and is left
alone. Layers are named by the TopK node's path ("/model/layers.0/mlp/TopK" ->
"model.layers.0.mlp"), as exporters name nodes after the modules they came from.

Reading: a second session of the same model with the TopK indices and values (and the router
logits, on passes measured for router health) added to its graph outputs (onnx_graph.with_outputs:
the original bytes plus one more field, so every node, weight and setting is the job's own), built
with the job's own SessionOptions and providers. While attached, `session.run` (an attribute set
on that one session object, removed on detach) runs that session, returns exactly the outputs the
caller asked for, and counts the ids it got besides. The ids are what the graph's own TopK
selected, so counts are exact. The first run after attaching also runs the job's own session and
compares: unless every output is bitwise equal, the probe hands back the job's result, stops
reading that session, and says why. Any error of the second session likewise falls back to the
job's own session, so what `run` returns or raises is what it would have been.

Not seen: runs through `run_with_iobinding`, `run_with_ort_values`, `run_async` or a `run` bound
before attaching (`f = session.run`); TopK nodes inside subgraphs (If/Loop); models whose router
is not a TopK (ArgMax, a custom op). The second session holds a second copy of the weights while
attached (freed on detach). Per-layer time is not visible inside one run.
"""

import gc
import os
from time import perf_counter
from typing import List, NamedTuple, Optional

import numpy as np
import onnxruntime as ort

from .frameworks import BackendSurvey, Model
from .host_recorder import HostRecorder, LayerPass
from .onnx_graph import Graph, OnnxFormatError, parse_model, with_outputs
from .structure import LayerSpec

MAX_ROUTER_EXPERTS = 4096
# Ops that may sit between a router's projection and its TopK without changing which column is which.
PASSTHROUGH = {"Softmax", "Sigmoid", "LogSoftmax", "Add", "Sub", "Mul", "Div", "Cast", "Identity", "Clip",
               "Where", "Reshape", "Squeeze", "Unsqueeze", "Exp", "Tanh", "Relu", "Flatten"}
SCORING = {"Softmax": "softmax", "LogSoftmax": "softmax", "Sigmoid": "sigmoid"}
PROJECTIONS = {"MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "MatMulNBits"}
SEARCH_STEPS = 12
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def version() -> str:
    return ort.__version__


def owns(obj) -> bool:
    return isinstance(obj, ort.InferenceSession)


class Router(NamedTuple):
    name: str  # layer name, from the node's path
    experts: int
    top_k: int
    values: str  # the TopK's outputs
    ids: str
    logits: Optional[str]  # what the scoring function was applied to (else the TopK input)
    gating: str


def find_routers(graph: Graph, rejected: Optional[List[str]] = None) -> List[Router]:
    """The router TopK nodes of a graph, in graph order (see the module docstring)."""
    producer = {out: node for node in graph.nodes for out in node.outputs}
    constants = {node.outputs[0]: node.tensors.get("value") for node in graph.nodes
                 if node.op_type == "Constant" and node.outputs}
    routers = []
    for position, node in enumerate(graph.nodes):
        if node.op_type != "TopK" or len(node.outputs) < 2 or node.ints.get("largest", 1) != 1:
            continue
        k = node.ints.get("k")  # opset 1 kept k as an attribute
        if k is None and len(node.inputs) > 1:
            tensor = graph.initializers.get(node.inputs[1]) or constants.get(node.inputs[1])
            k = tensor.values[0] if tensor is not None and tensor.values else None
        shape = graph.shapes.get(node.inputs[0])
        axis = node.ints.get("axis", -1)
        if axis != -1 and not (shape and axis == len(shape) - 1):
            continue
        experts, logits, gating = _trace_projection(node.inputs[0], producer, graph)
        where = node.name or "TopK %d" % position
        if not experts:
            continue  # not fed by a projection: not a router
        if k is None:
            if rejected is not None:
                rejected.append("%s: a router TopK whose k is computed at run time" % where)
            continue
        if not (0 < k < experts <= MAX_ROUTER_EXPERTS) or (shape and shape[-1] not in (None, experts)):
            continue
        routers.append(Router(_layer_name(node.name, position), experts, k, node.outputs[0], node.outputs[1],
                              logits, gating))
    return routers


def _trace_projection(name, producer, graph, steps=SEARCH_STEPS):
    """(E, logits name, scoring function) of the projection feeding `name`, or (None, None, "")."""
    logits, gating = name, ""
    for _ in range(steps):
        node = producer.get(name)
        if node is None:
            return None, None, ""
        if node.op_type in PROJECTIONS:
            experts = _projection_width(node, producer, graph)
            return (experts, logits, gating) if experts else (None, None, "")
        if node.op_type not in PASSTHROUGH:
            return None, None, ""
        if node.op_type in SCORING and not gating:
            gating, logits = SCORING[node.op_type], node.inputs[0]
        # follow the input that is computed (not a weight or a constant)
        computed = [i for i in node.inputs if i and i not in graph.initializers and i in producer
                    and producer[i].op_type != "Constant"]
        if not computed:
            return None, None, ""
        name = computed[0] if node.op_type != "Where" else computed[-1]
    return None, None, ""


def _projection_width(node, producer, graph) -> Optional[int]:
    """Outputs of a MatMul/Gemm whose weight is an initializer (possibly transposed or cast)."""
    if len(node.inputs) < 2:
        return None
    weight, transposed = node.inputs[1], bool(node.ints.get("transB", 0))
    for _ in range(3):
        tensor = graph.initializers.get(weight)
        if tensor is not None:
            if len(tensor.dims) != 2:
                return None
            return tensor.dims[0] if transposed else tensor.dims[1]
        step = producer.get(weight)
        if step is None or step.op_type not in ("Transpose", "Cast", "DequantizeLinear", "Identity"):
            return None
        if step.op_type == "Transpose":
            transposed = not transposed
        weight = step.inputs[0]
    return None


def _layer_name(node_name: str, position: int) -> str:
    """"/model/layers.0/mlp/TopK" -> "model.layers.0.mlp" (the module the exporter named it after)."""
    parts = [p for p in node_name.strip("/").split("/") if p]
    if len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts).replace("..", ".") if parts else "topk_%d" % position


def _model_bytes(session):
    data = getattr(session, "_model_bytes", None)
    if data:
        return bytes(data), None
    path = getattr(session, "_model_path", None)
    if not path:
        raise OnnxFormatError("the session keeps neither its model's bytes nor its path")
    with open(path, "rb") as f:
        return f.read(), path


def live_sessions() -> list:
    """Every live InferenceSession (one pass over the objects the garbage collector tracks)."""
    wanted = ort.InferenceSession
    kinds = set()
    objects = gc.get_objects()
    for cls in set(map(type, objects)):
        try:
            if issubclass(cls, wanted):
                kinds.add(cls)
        except Exception:
            continue
    return [obj for obj in objects if type(obj) in kinds]


def survey(explicit=None) -> BackendSurvey:
    sessions = explicit if explicit is not None else live_sessions()
    models, rejected = [], []
    for session in sessions:
        try:
            data, path = _model_bytes(session)
            graph = parse_model(data)
        except (OSError, OnnxFormatError) as exc:
            rejected.append("a session could not be read (%s)" % exc)
            continue
        routers = find_routers(graph, rejected)
        if routers:
            models.append(_model(session, data, path, graph, routers))
    if models:
        return BackendSurvey(models, [], "")
    if not sessions:
        message = "No ONNX Runtime InferenceSession is alive in this process."
    else:
        message = ("None of the %d live ONNX Runtime session%s has a router TopK (a TopK over the last axis of a "
                   "projection to E <= %d outputs)." % (len(sessions), "" if len(sessions) == 1 else "s",
                                                         MAX_ROUTER_EXPERTS))
    if rejected:
        message += " " + "; ".join(rejected[:4]) + "."
    return BackendSurvey([], [], message)


def _model(session, data, path, graph, routers) -> Model:
    layers = [LayerSpec(i, r.name, r.experts, r.top_k, arch="topk-node", source="router", gating=r.gating)
              for i, r in enumerate(routers)]

    def describe(model_id):
        providers = session.get_providers()
        return {"id": model_id, "class": type(session).__name__, "model_type": graph.producer or "onnx",
                "device": providers[0] if providers else "", "dtype": "", "framework": "onnxruntime",
                "layers": [layer.describe() for layer in layers]}

    def recorder(model_id, out, settings, on_error):
        return OrtRecorder(model_id, layers, out, settings, on_error, session, data, path, graph, routers)

    return Model("onnxruntime", describe, recorder)


class _WithSession:
    """The job's session seen through another C session: the class's own `run` (its input checks,
    its provider fallback) then runs the session with the router outputs added."""

    def __init__(self, session, sess):
        self.__dict__["_session"] = session
        self.__dict__["_sess"] = sess

    def __getattr__(self, name):
        return getattr(self.__dict__["_session"], name)

    def __setattr__(self, name, value):
        setattr(self.__dict__["_session"], name, value)


class OrtRecorder(HostRecorder):
    def __init__(self, model_id, layers, out, settings, on_error, session, data, path, graph, routers):
        super().__init__(model_id, layers, out, settings, on_error)
        self.session = session
        self._data = data
        self._path = path
        self._graph = graph
        self.routers = routers
        self._augmented = None
        self._checked = False
        self._health_t = 0.0
        # An integer graph input of at most two dimensions is taken as the token ids (for token records).
        self._token_input = next((name for name, shape, elem in graph.inputs if elem in (6, 7)
                                  and (shape is None or len(shape) <= 2)), None)

    def install(self):
        names = []
        for router in self.routers:
            names += [router.values, router.ids]
            if router.logits:
                names.append(router.logits)
        existing = set(self._graph.outputs)
        model = with_outputs(self._data, [n for n in dict.fromkeys(names) if n not in existing])
        options = self.session.get_session_options()
        # The job's own options (threads, optimization level, config entries), so the second session
        # computes what the job's computes; but it must not write the job's optimized-model file or profile.
        saved = (options.optimized_model_filepath, options.enable_profiling)
        try:
            options.optimized_model_filepath = ""
            options.enable_profiling = False
            if self._graph.external_data and self._path:
                options.add_session_config_entry(EXTERNAL_FOLDER_KEY, os.path.dirname(os.path.abspath(self._path)))
            providers = self.session.get_providers()
            given = self.session.get_provider_options()
            self._augmented = ort.InferenceSession(model, sess_options=options, providers=providers,
                                                   provider_options=[given.get(p, {}) for p in providers])
        finally:
            options.optimized_model_filepath, options.enable_profiling = saved
        original = type(self.session).run
        recorder = self
        session = self.session

        def run(output_names, input_feed, run_options=None):
            if not recorder.active:
                return original(session, output_names, input_feed, run_options)
            return recorder._run(original, output_names, input_feed, run_options)

        run.__moe_probe__ = True
        session.run = run  # this session object only; `del` on detach brings the class's method back

    def uninstall(self):
        run = self.session.__dict__.get("run")
        if run is not None and getattr(run, "__moe_probe__", False):
            del self.session.run
        self._augmented = None

    def _run(self, original, output_names, input_feed, run_options):
        session = self.session
        names = list(output_names) if output_names else [o.name for o in session.get_outputs()]
        now = perf_counter()
        health = self._health_due(now)
        extra = []
        for router in self.routers:
            extra += [router.values, router.ids]
            if health and router.logits:
                extra.append(router.logits)
        try:
            results = type(session).run(_WithSession(session, self._augmented._sess), names + extra, input_feed,
                                        run_options)
        except Exception:
            return original(session, output_names, input_feed, run_options)  # exactly what the job would get
        outputs, got = results[: len(names)], results[len(names):]
        if not self._checked:
            self._checked = True
            own = original(session, output_names, input_feed, run_options)
            if not _same(outputs, own):
                self.active = False
                self.on_error(RuntimeError(
                    "ONNX Runtime computed different outputs once the router outputs were exposed (its graph "
                    "optimizations differ); the probe stopped reading this session and left its results as they were."))
                return own
        t0 = perf_counter()
        try:
            self._record(got, health, input_feed)
        finally:
            self.probe_time_s += perf_counter() - t0
        return outputs

    def _health_due(self, now):
        rate = self.settings.health_passes_per_s
        if rate > 0 and now - self._health_t >= 1.0 / rate:
            self._health_t = now
            return True
        return False

    def _record(self, got, health, input_feed):
        layers, pos = {}, 0
        sample = self.settings.token_sample
        for index, router in enumerate(self.routers):
            values, ids = got[pos], got[pos + 1]
            pos += 2
            logits = None
            if health and router.logits:
                logits, pos = got[pos], pos + 1
            k = ids.shape[-1] if ids.ndim else 1
            flat = ids.reshape(-1).astype(np.int64, copy=False)
            counts = np.bincount(flat[(flat >= 0) & (flat < router.experts)], minlength=router.experts)
            rows = ids.reshape(-1, k)
            layers[index] = LayerPass(counts, rows.shape[0], *_health(logits),
                                      ids=rows[:sample], weights=values.reshape(-1, k)[:sample])
        tokens = input_feed.get(self._token_input) if self._token_input else None
        shape = None
        if tokens is not None and hasattr(tokens, "shape"):
            shape = tokens.shape
            tokens = np.asarray(tokens)
        else:
            tokens = None
        self.record_pass(layers, tokens, shape)


def _health(logits):
    """(health sums [logit_tokens, entropy_sum, zloss_sum, nan, inf], max finite logit) of [.., E] logits."""
    if logits is None:
        return None, None
    x = np.asarray(logits, dtype=np.float64).reshape(-1, logits.shape[-1])
    nan, inf = np.isnan(x), np.isinf(x)
    finite = np.where(nan | inf, 0.0, x)
    top = finite.max(axis=-1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(finite - top).sum(axis=-1))
    p = np.exp(finite - lse[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return [x.shape[0], float(entropy.sum()), float((lse * lse).sum()), float(nan.sum()), float(inf.sum())], \
        float(finite.max()) if finite.size else None


def _same(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
                return False
        elif x != y:
            return False
    return True
