"""TensorFlow/Keras backend: MoE layers of live Keras 3 models (TensorFlow backend), eager or
inside tf.function.

Finding, by structure as for torch: a block is a Keras layer holding a projection (a layer with
`units`, a Dense) of E outputs, and declaring E experts (`num_experts`, ... on the layer or its
config, or experts as E sublayers or [E, ...] weights) and a top-k (`top_k`,
`num_experts_per_tok`, ...) with k < E. Layers are named by the attribute path from the model
("blocks.0", "decoder.layers.3.moe"). Models are found among the live `keras.Model` objects.

Reading: `call` of the model's class, of each block's class and of each router's class is
wrapped (functools.wraps, so Keras still sees the original signature; the wrapper does nothing
for other instances). While a block runs, its router's output (the logits) is kept and the
block's own top-k (tf.math.top_k / keras.ops.top_k, caught at gen_nn_ops.top_kv2) over E columns
gives the ids; without one, top-k of the logits is recomputed and the layer says so. TensorFlow
computes each expert's count (bincount), the router's health sums and the sampled tokens' ids in
the same graph, and at the end of the pass one `tf.numpy_function` (stateful, no outputs, so
tf.function keeps it and nothing depends on it) hands all layers' numbers to the host. Eagerly,
the same function runs at once.

Cost of tf.function: a traced function runs its graph without Python, so attaching clears the
trace cache of every live tf.function (Keras's predict/train functions included): each traces
again at its next call, with the reading in it, and once more after Detach, when the wrappers
are gone. Functions saved and reloaded as SavedModels, and XLA-compiled executables held outside
a tf.function, are not traced again and are not seen. Per-layer time is not measured.
"""

import functools
import gc
import sys
import threading
from functools import partial
from typing import Dict, List, Optional

import numpy as np

from .frameworks import BackendSurvey, Model
from .host_recorder import HostRecorder, LayerPass
from .retrace import Interception
from .structure import EXPERT_COUNT_ATTRS, TOP_K_ATTRS, LayerSpec, _attr, gating_of, settings_of

import keras  # noqa: E402  (imported only when the job has)


def _tf():
    return sys.modules.get("tensorflow")


def version() -> str:
    tf = _tf()
    return "%s (keras %s)" % (tf.__version__, keras.__version__) if tf is not None else "keras %s" % keras.__version__


def owns(obj) -> bool:
    return isinstance(obj, keras.Layer)


# -- structure --------------------------------------------------------------------


def _children(layer):
    """(attribute path, sublayer) of a layer's own attributes, lists included ("blocks.0")."""
    for name, value in vars(layer).items():
        if name.startswith("_"):
            continue
        if isinstance(value, keras.Layer):
            yield name, value
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, keras.Layer):
                    yield "%s.%d" % (name, i), item


def _walk(layer, prefix="", seen=None):
    seen = set() if seen is None else seen
    for name, child in _children(layer):
        if id(child) in seen:
            continue
        seen.add(id(child))
        path = prefix + name
        yield path, child
        yield from _walk(child, path + ".", seen)


def _find_layers(root):
    """[(path, block, router)] of a model, blocks in the order the model holds them."""
    found = []
    claimed = []
    for path, layer in _walk(root):
        if any(path == c or path.startswith(c + ".") for c in claimed):
            continue
        children = list(_children(layer))
        for name, child in children:
            width = _attr(child, "units")
            if not isinstance(width, int) or isinstance(width, bool):
                continue
            experts = settings_of([layer], EXPERT_COUNT_ATTRS)
            if experts is None:
                lists = [v for v in vars(layer).values() if isinstance(v, (list, tuple)) and len(v) == width
                         and all(isinstance(x, keras.Layer) for x in v)]
                stacked = [w for w in layer.weights if len(w.shape) >= 3 and w.shape[0] == width]
                experts = width if lists or stacked else None
            top_k = settings_of([layer], TOP_K_ATTRS)
            if experts == width and top_k and 0 < top_k < experts:
                found.append((path, layer, child, experts, top_k))
                claimed.append(path)
                break
    return found


def live_models():
    objects = gc.get_objects()
    kinds = set()
    for cls in set(map(type, objects)):
        try:
            if issubclass(cls, keras.Model):
                kinds.add(cls)
        except Exception:
            continue
    models = [obj for obj in objects if type(obj) in kinds]
    inner = set()
    for model in models:
        for _path, child in _walk(model):
            inner.add(id(child))
    return [m for m in models if id(m) not in inner]


def _functions():
    """Every live tf.function (their trace caches are what attaching must clear)."""
    module = sys.modules.get("tensorflow.python.eager.polymorphic_function.polymorphic_function")
    if module is None:
        return []
    return [obj for obj in gc.get_objects() if isinstance(obj, module.Function)]


def _clear_traces():
    for function in _functions():
        cache = getattr(function, "_function_cache", None)
        if cache is not None:
            cache.clear()


# -- reading ----------------------------------------------------------------------


class _Watched:
    def __init__(self, root, name, layers):
        self.root = root
        self.name = name
        self.layers = layers
        self.recorder: Optional["KerasRecorder"] = None


class _PassState:
    def __init__(self, watched, graph, token_ids):
        self.watched = watched
        self.graph = graph
        self.token_ids = token_ids
        self.open = []  # blocks whose call is running, innermost last
        self.blocks = {}  # id(block) -> [spec, logits, ids, weights]
        self.stash = {}


class _Interception(Interception):
    """Keras `call` wrapping and top-k catching, installed for the whole process while any Keras
    model is watched (see retrace.py)."""

    def __init__(self):
        super().__init__(_clear_traces)
        self.roots: Dict[int, _Watched] = {}  # id(root model) -> watched
        self.blocks: Dict[int, tuple] = {}  # id(block) -> (watched, spec, router)
        self.routers: Dict[int, int] = {}  # id(router) -> id(block)
        self.local = threading.local()
        self._patched = []
        self._top_k = None

    def watch(self, root, found):
        specs = []
        watched = _Watched(root, type(root).__name__, specs)
        for index, (path, block, router, experts, top_k) in enumerate(found):
            spec = LayerSpec(index, path, experts, top_k, source="router", gating=gating_of([block, router]))
            specs.append(spec)
            self.blocks[id(block)] = (watched, spec, router)
            self.routers[id(router)] = id(block)
        self.roots[id(root)] = watched
        for cls in {type(root)} | {type(b) for _, b, _, _, _ in found} | {type(r) for _, _, r, _, _ in found}:
            self._wrap(cls)
        return watched, specs

    def _wrap(self, cls):
        if any(c is cls for c, _ in self._patched):
            return
        own = cls.__dict__.get("call")
        original = cls.call
        interception = self

        @functools.wraps(original)
        def call(self, *args, **kwargs):
            return interception._call(original, self, args, kwargs)

        call.__moe_probe__ = True
        self._patched.append((cls, own))
        cls.call = call

    def patch(self):
        gen_nn_ops = sys.modules.get("tensorflow.python.ops.gen_nn_ops")
        if gen_nn_ops is not None:
            self._top_k = (gen_nn_ops, gen_nn_ops.top_kv2)
            gen_nn_ops.top_kv2 = partial(self._catch_top_k, gen_nn_ops.top_kv2)

    def unpatch(self):
        for cls, own in reversed(self._patched):
            if own is None:
                del cls.call  # it was inherited
            else:
                cls.call = own
        self._patched = []
        if self._top_k is not None:
            module, original = self._top_k
            module.top_kv2 = original
            self._top_k = None
        self.roots, self.blocks, self.routers = {}, {}, {}

    # job's threads

    def _call(self, original, layer, args, kwargs):
        if not self.installed:
            return original(layer, *args, **kwargs)
        state = getattr(self.local, "state", None)
        key = id(layer)
        if state is None:
            watched = self.roots.get(key)
            if watched is None:
                return original(layer, *args, **kwargs)
            return self._pass(watched, original, layer, args, kwargs)
        block = self.blocks.get(key)
        if block is not None and block[0] is state.watched:
            state.open.append(key)
            state.blocks[key] = [block[1], None, None, None]
            try:
                out = original(layer, *args, **kwargs)
            finally:
                state.open.pop()
            try:
                self._end_block(state, state.blocks.pop(key))
            except Exception as exc:
                self._fail(state.watched, exc)
            return out
        out = original(layer, *args, **kwargs)
        block_key = self.routers.get(key)
        if block_key is not None and block_key in state.blocks and state.blocks[block_key][1] is None:
            state.blocks[block_key][1] = out
        return out

    def _pass(self, watched, original, root, args, kwargs):
        self.note_pass()
        tf = _tf()
        state = self.local.state = _PassState(watched, _graph(tf), _token_ids(tf, args, kwargs))
        try:
            out = original(root, *args, **kwargs)
        finally:
            self.local.state = None
        try:
            self._end_pass(state)
        except Exception as exc:
            self._fail(watched, exc)
        return out

    def _catch_top_k(self, original, input, k=None, *args, **kwargs):
        out = original(input, k, *args, **kwargs)
        state = getattr(self.local, "state", None)
        if state is None or not state.open:
            return out
        try:
            entry = state.blocks.get(state.open[-1])
            if entry is not None and entry[2] is None and input.shape[-1] == entry[0].num_experts:
                entry[3], entry[2] = out[0], out[1]
        except Exception as exc:
            self._fail(state.watched, exc)
        return out

    def _end_block(self, state, entry):
        tf = _tf()
        spec, logits, ids, weights = entry
        if logits is None:
            return  # the router did not run (a block skipping its router this call)
        if ids is None:
            weights, ids = tf.math.top_k(logits, spec.top_k)
            spec.learn_source("recomputed")
        values = _device_summary(tf, logits, ids, weights, spec.num_experts, _sample_of(state.watched))
        if _graph(tf) is state.graph:
            state.stash[spec.index] = values
        else:  # a nested graph (tf.while_loop, an inner tf.function): its tensors stay in it
            self.read_anything = True
            _emit(tf, state.watched, (spec.index,), [values], None)

    def _end_pass(self, state):
        if not state.stash:
            return
        self.read_anything = True
        order = sorted(state.stash)
        _emit(_tf(), state.watched, tuple(order), [state.stash[i] for i in order], state.token_ids)

    def _fail(self, watched, exc):
        if watched.recorder is not None:
            watched.recorder.on_error(exc)


def _graph(tf):
    return None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()


def _token_ids(tf, args, kwargs):
    value = kwargs.get("input_ids") if kwargs else None
    if value is None and args:
        value = args[0]
    dtype = getattr(value, "dtype", None)
    try:
        if dtype is not None and tf.as_dtype(dtype).is_integer and len(value.shape) in (1, 2):
            return value
    except Exception:
        return None
    return None


def _sample_of(watched) -> int:
    return watched.recorder.settings.token_sample if watched.recorder is not None else 128


def _device_summary(tf, logits, ids, weights, experts, sample):
    """One layer's pass, reduced by TensorFlow in the model's own graph (see jax_backend)."""
    ids = tf.cast(ids, tf.int32)
    k = ids.shape[-1]
    flat = tf.reshape(ids, [-1])
    counts = tf.math.bincount(flat, minlength=experts, maxlength=experts, dtype=tf.int64)
    x = tf.cast(tf.reshape(logits, [-1, tf.shape(logits)[-1]]), tf.float32)
    nan, inf = tf.math.is_nan(x), tf.math.is_inf(x)
    finite = tf.where(nan | inf, tf.zeros_like(x), x)
    lse = tf.reduce_logsumexp(finite, axis=-1)
    is_prob = tf.reduce_all(finite >= 0, axis=-1) & (tf.abs(tf.reduce_sum(finite, -1) - 1.0) < 1e-3)
    p = tf.where(is_prob[:, None], finite, tf.exp(finite - lse[:, None]))
    entropy = -tf.reduce_sum(tf.math.xlogy(p, p), axis=-1)
    health = tf.stack([tf.cast(tf.shape(x)[0], tf.float32), tf.reduce_sum(entropy),
                       tf.reduce_sum(tf.where(is_prob, tf.zeros_like(lse), lse * lse)),
                       tf.reduce_sum(tf.cast(nan, tf.float32)), tf.reduce_sum(tf.cast(inf, tf.float32))])
    top = tf.reduce_max(tf.where(nan | inf, tf.fill(tf.shape(x), -np.inf), x))
    rows = tf.reshape(flat, [-1, k])[:sample]
    w = tf.cast(tf.reshape(weights, [-1, k])[:sample], tf.float32)
    tokens = tf.cast(tf.size(flat) // k, tf.int64)
    return counts, tokens, health, top, rows, w


def _emit(tf, watched, indices, values, token_ids):
    """Hand one pass's numbers to the host: a stateful tf.numpy_function with no outputs."""
    flat = [t for layer in values for t in layer]
    has_ids = token_ids is not None
    if has_ids:
        flat.append(tf.reshape(token_ids, [-1])[: _sample_of(watched)])
        flat.append(tf.shape(token_ids))
    tf.numpy_function(partial(_deliver, watched, indices, has_ids), flat, Tout=[], stateful=True,
                      name="moe_probe_read")


def _deliver(watched, indices, has_ids, *arrays):
    recorder = watched.recorder
    if recorder is None or not recorder.active:
        return []
    per = 6
    layers = {}
    for n, index in enumerate(indices):
        counts, tokens, health, top, rows, weights = arrays[n * per:(n + 1) * per]
        layers[index] = LayerPass(counts, int(tokens), health, float(top), rows, weights)
    token_ids = shape = None
    if has_ids:
        token_ids, shape = arrays[-2], tuple(int(s) for s in arrays[-1])
    recorder.record_pass(layers, token_ids, shape)
    return []


_INTERCEPTION = _Interception()


# -- survey, models, recorders ----------------------------------------------------


def survey(explicit=None) -> BackendSurvey:
    if keras.backend.backend() != "tensorflow":
        return BackendSurvey([], [], "Keras runs on its %s backend here: the probe reads Keras models on the "
                                     "TensorFlow backend." % keras.backend.backend())
    roots = list(explicit) if explicit is not None else live_models()
    if not roots:
        return BackendSurvey([], [], "No Keras model is alive in this process yet: attach again once the job has "
                                     "built its model.")
    interception = _INTERCEPTION
    holder = object()
    found = []
    with interception.lock:
        for root in roots:
            layers = _find_layers(root)
            if layers:
                found.append(interception.watch(root, layers))
    if not found:
        return BackendSurvey([], [], "No MoE layer was found in the %d live Keras model%s: the probe looks for a layer "
                                     "declaring its experts (num_experts, ...) and top-k (top_k, num_experts_per_tok, "
                                     "...) with a Dense router of one unit per expert." % (
                                         len(roots), "" if len(roots) == 1 else "s"))
    interception.acquire(holder)
    models = [_model(watched, specs, holder) for watched, specs in found]
    warning = ("Attaching cleared the traces of every tf.function in this process (Keras's predict and train "
               "functions included): each traces again at its next call, with the probe's reading in it, and once "
               "more after Detach.")
    return BackendSurvey(models, [{"code": "retrace", "message": warning}], "")


def _model(watched, specs, holder) -> Model:
    def describe(model_id):
        weights = watched.root.weights
        return {"id": model_id, "class": watched.name, "model_type": "keras", "device": _device(),
                "dtype": str(weights[0].dtype) if weights else "", "framework": "tensorflow",
                "layers": [spec.describe() for spec in specs]}

    def recorder(model_id, out, settings, on_error):
        return KerasRecorder(model_id, specs, out, settings, on_error, watched, holder)

    return Model("tensorflow", describe, recorder)


def _device() -> str:
    tf = _tf()
    try:
        return "gpu" if tf is not None and tf.config.list_logical_devices("GPU") else "cpu"
    except Exception:
        return "cpu"


class KerasRecorder(HostRecorder):
    def __init__(self, model_id, layers: List[LayerSpec], out, settings, on_error, watched, survey_holder):
        super().__init__(model_id, layers, out, settings, on_error)
        self.watched = watched
        self._survey_holder = survey_holder

    def install(self):
        _INTERCEPTION.acquire(self)
        _INTERCEPTION.release(self._survey_holder)
        self.watched.recorder = self

    def uninstall(self):
        if self.watched.recorder is self:
            self.watched.recorder = None
        _INTERCEPTION.release(self._survey_holder)
        _INTERCEPTION.release(self)
