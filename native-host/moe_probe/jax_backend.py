"""JAX backend: MoE layers of Flax models (linen and nnx), read inside jit.

Finding, by structure as for torch: a router is a projection (a module with `features` /
`out_features`, or a kernel whose last axis is E) whose parent block declares E experts
(`num_experts`, ... on the block or its config, or experts stored as [E, ...] parameters or E
submodules) and a top-k (`top_k`, `num_experts_per_tok`, ...), with k < E; the block is the MoE
layer, named by its path in the model ("layers_0.moe", "layers.0.moe").
  * nnx modules are live Python objects: their structure is read at attach (nnx.iter_graph).
  * linen modules create their submodules while they run, so a linen model's layers are found
    while it runs: attaching intercepts every linen method call (Flax's method interception,
    installed for all threads) and waits for the model's next pass (at most DISCOVERY_S).

Reading, at trace time, so that it works inside jit: while a block runs, its router's output
(the logits) is kept and the block's own `jax.lax.top_k` over E columns is caught (the ids the
block selected; without one, top-k of the router's logits is recomputed and the layer says so).
From those the model's own device computes, in the same program, each expert's count (bincount),
the router's health sums and the first sampled tokens' ids and weights; at the end of the pass
one `jax.debug.callback` hands all layers' few numbers to the host at once. No host transfer per
layer, no `.block_until_ready()`; nothing the model computes is changed: the callback has no
outputs and the model's values are only read. A layer traced inside a nested transform
(nn.scan, jax.lax.scan, remat) cannot hand its values out of that trace: it calls back on its
own, from inside (a scanned stack of layers then shows as one layer, counted once per step).

Cost of attaching to compiled functions: jitted functions are traced once and then replayed
without running Python, so nothing can be read from a function compiled before attach. Attaching
clears JAX's compilation caches (jax.clear_caches): every jitted function of the process traces
and compiles again at its next call, with the reading in it; detaching clears them again, so the
functions are compiled once more as they were. The hello says so, with the time the first pass
took. Functions compiled ahead of time (`jit(f).lower(...).compile()`) are never traced again and
are not seen.
"""

import gc
import sys
import threading
import time
from functools import partial
from time import perf_counter
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .frameworks import BackendSurvey, Model
from .host_recorder import HostRecorder, LayerPass
from .retrace import Interception
from .structure import EXPERT_COUNT_ATTRS, TOP_K_ATTRS, LayerSpec, _attr, _int_attr, gating_of, settings_of

try:  # private, so guarded: where they moved, layers are read from the router and called back on their own
    from jax._src import core as _jax_core
    from jax._src.lax.lax import top_k_p as _top_k_p
except Exception:  # pragma: no cover - other jax versions
    _jax_core = None
    _top_k_p = None

DISCOVERY_S = 20.0  # longest wait for a linen model's next pass at attach


def version() -> str:
    flax = sys.modules.get("flax")
    return "%s (flax %s)" % (jax.__version__, getattr(flax, "__version__", "?")) if flax else jax.__version__


def _linen():
    return sys.modules.get("flax.linen")


def _nnx():
    return sys.modules.get("flax.nnx")


def owns(obj) -> bool:
    linen, nnx = _linen(), _nnx()
    return bool((linen and isinstance(obj, linen.Module)) or (nnx and isinstance(obj, nnx.Module)))


# -- structure --------------------------------------------------------------------


def _width(module) -> Optional[int]:
    """Outputs of a projection module (Dense, DenseGeneral with one feature axis, nnx.Linear)."""
    for name in ("features", "out_features"):
        value = _attr(module, name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
            return value[0]
    return None


def _leading_dims(values) -> List[int]:
    """Leading sizes of the [E, ...] arrays (3 or more axes) among a block's own parameters."""
    out = []
    for value in values:
        value = getattr(value, "value", value)  # nnx.Param wraps its array
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) >= 3:
            out.append(int(shape[0]))
    return out


def _block_settings(block, width, children=(), params=()):
    """(E, k) when `block`, holding a projection of `width` outputs, is an MoE block."""
    experts = settings_of([block], EXPERT_COUNT_ATTRS)
    if experts is None and (width in _leading_dims(params) or sum(1 for c in children) == width):
        experts = width
    top_k = settings_of([block], TOP_K_ATTRS)
    if experts is None or experts != width or not top_k or not 0 < top_k < experts:
        return None
    return experts, top_k


def _nnx_layers(root):
    """[(path, block, router attribute name, E, k)] of an nnx model, from its live structure."""
    nnx = _nnx()
    found = []
    claimed = []
    for path, node in nnx.iter_graph(root):
        if not isinstance(node, nnx.Module) or any(path[:len(c)] == c for c in claimed):
            continue
        children = [(name, value) for name, value in vars(node).items() if isinstance(value, nnx.Module)]
        params = [value for value in vars(node).values() if isinstance(value, nnx.Variable)]
        lists = [value for value in vars(node).values() if isinstance(value, (list, tuple)) or type(value).__name__ == "List"]
        for name, child in children:
            width = _width(child)
            if not width:
                continue
            expert_lists = [v for v in lists if len(v) == width]
            settings = _block_settings(node, width, expert_lists[0] if expert_lists else (), params)
            if settings:
                found.append((path, node, name, settings[0], settings[1]))
                claimed.append(path)
                break
    return found


def _nnx_paths(root):
    """id(module) -> path name of every module of an nnx model."""
    nnx = _nnx()
    return {id(node): _path_name(path) for path, node in nnx.iter_graph(root) if isinstance(node, nnx.Module)}


def _path_name(path) -> str:
    return ".".join(str(p) for p in path)


# -- interception: one for the whole process, shared by every JAX model watched ---


class _Layer:
    """What the reading knows about one layer of one model while it traces."""

    def __init__(self, spec: LayerSpec, router_attr=None):
        self.spec = spec
        self.router_attr = router_attr  # nnx: the block's attribute holding the router


class _Watched:
    """One model: its layers by path, and where its passes' numbers go."""

    def __init__(self, key, name, flavour, layers: Dict[str, _Layer]):
        self.key = key  # the root's class
        self.name = name
        self.flavour = flavour  # "linen" or "nnx"
        self.layers = layers  # path name -> layer
        self.recorder: Optional["JaxRecorder"] = None
        self.discovering = flavour == "linen" and not layers


class _PassState:
    """One pass being traced (or run eagerly) on one thread."""

    def __init__(self, watched: "_Watched", root, trace, token_ids, paths):
        self.watched = watched
        self.root = root
        self.trace = trace
        self.token_ids = token_ids
        self.paths = paths  # nnx: id(module) -> path name of this (possibly rebuilt) model
        self.stack = []  # modules whose calls are open, innermost last
        self.blocks = {}  # id(block) -> [layer, logits, ids, weights]
        self.stash = {}  # layer index -> device values handed out at the end of the pass
        self.in_top_k = False


class _Interception(Interception):
    """Flax method interception (linen), method wrapping (nnx) and top_k catching, installed for
    the whole process while any JAX model is watched (see retrace.py)."""

    def __init__(self):
        super().__init__(jax.clear_caches)
        self.models: Dict[object, _Watched] = {}
        self.local = threading.local()
        self._linen_stack = None
        self._patched = []  # (class, name, original)
        self.installed_at = 0.0
        self.first_pass_s: Optional[float] = None  # from attach to the first pass's numbers on the host

    def patch(self):
        linen = _linen()
        if linen is not None:
            module = sys.modules["flax.linen.module"]
            self._linen_stack = module._global_interceptor_stack
            module._global_interceptor_stack = _StackWithProbe(self._linen_stack, self._linen_interceptor)
        if _top_k_p is not None:
            original = _top_k_p.bind
            _top_k_p.bind = partial(self._top_k, original)
        self.installed_at = perf_counter()
        self.first_pass_s = None

    def unpatch(self):
        if self._linen_stack is not None:
            sys.modules["flax.linen.module"]._global_interceptor_stack = self._linen_stack
            self._linen_stack = None
        if _top_k_p is not None and "bind" in vars(_top_k_p):
            del _top_k_p.bind
        for cls, name, original in reversed(self._patched):
            _restore(cls, name, original)
        self._patched = []
        self.models = {}

    def watch_nnx(self, root, layers):
        """Wrap __call__ of an nnx model's class, its blocks' classes and their routers' classes."""
        key = type(root)
        watched = self.models.get(key)
        if watched is None:
            specs = {}
            for index, (path, block, router_attr, experts, top_k) in enumerate(layers):
                name = _path_name(path)
                router = getattr(block, router_attr)
                spec = LayerSpec(index, name, experts, top_k, source="router",
                                 gating=gating_of([block, router]))
                specs[name] = _Layer(spec, router_attr)
            watched = self.models[key] = _Watched(key, key.__name__, "nnx", specs)
            # The live model's paths, for its eager calls; a jitted call runs on a rebuilt copy.
            watched.live = (root, _nnx_paths(root))
            for cls in {key} | {type(b) for _, b, _, _, _ in layers} | {type(getattr(b, a)) for _, b, a, _, _ in layers}:
                self._wrap(cls)
        return watched

    def _wrap(self, cls):
        if any(c is cls for c, _, _ in self._patched):
            return
        original = cls.__dict__.get("__call__")
        inherited = original is None
        original = original or cls.__call__
        interception = self

        def __call__(self, *args, **kwargs):
            return interception._nnx_call(original, self, args, kwargs)

        __call__.__wrapped__ = original
        __call__.__moe_probe__ = True
        setattr(cls, "__call__", __call__)
        # Put back exactly what was there: the class's own method, or nothing (it was inherited).
        self._patched.append((cls, "__call__", original) if not inherited else (cls, "__call__", _Inherited(cls)))

    # reading (job's threads, at trace time)

    def _state(self) -> Optional[_PassState]:
        return getattr(self.local, "state", None)

    def _linen_interceptor(self, next_fun, args, kwargs, context):
        module = context.module
        state = self._state()
        if state is None:
            watched = self.models.get(type(module))
            if watched is None:
                return next_fun(*args, **kwargs)  # not a model being watched (or a module applied on its own)
            return self._pass(watched, module, args, kwargs, next_fun, None)
        return self._inner_call(state, module, args, kwargs, next_fun, linen=True,
                                is_call=context.method_name == "__call__")

    def _nnx_call(self, original, module, args, kwargs):
        state = self._state()
        if state is None:
            watched = self.models.get(type(module))
            if watched is None or not self.installed:
                return original(module, *args, **kwargs)
            live = getattr(watched, "live", None)
            paths = live[1] if live is not None and live[0] is module else _nnx_paths(module)
            return self._pass(watched, module, args, kwargs, lambda *a, **k: original(module, *a, **k), paths)
        return self._inner_call(state, module, args, kwargs, lambda *a, **k: original(module, *a, **k), linen=False,
                                is_call=True)

    def _pass(self, watched, root, args, kwargs, call, paths):
        self.note_pass()
        trace = _jax_core.trace_ctx.trace if _jax_core is not None else None
        ids = _token_ids(args, kwargs)
        state = self.local.state = _PassState(watched, root, trace, ids, paths)
        state.stack.append(root)
        try:
            out = call(*args, **kwargs)
        finally:
            self.local.state = None
        try:
            self._end_pass(state)
        except Exception as exc:  # a probe bug must never reach the model
            self._fail(watched, exc)
        return out

    def _inner_call(self, state, module, args, kwargs, call, linen, is_call):
        parent = state.stack[-1]
        state.stack.append(module)
        try:
            out = call(*args, **kwargs)
        finally:
            state.stack.pop()
        if not is_call:
            return out
        try:
            entry = state.blocks.pop(id(module), None)
            if entry is not None:
                self._end_block(state, entry)
            else:
                layer = self._router_layer(state, parent, module, linen)
                if layer is not None:
                    state.blocks[id(parent)] = [layer, out, None, None]
        except Exception as exc:
            self._fail(state.watched, exc)
        return out

    def _router_layer(self, state, block, module, linen) -> Optional[_Layer]:
        """The layer whose router `module` is (its parent block being `block`), or None."""
        watched = state.watched
        if linen:
            width = _width(module)
            if not width or _attr(module, "parent") is not block:
                return None
            name = _path_name(block.path)
            layer = watched.layers.get(name)
            if layer is None and watched.discovering:
                params = block.variables.get("params", {}) if block.scope is not None else {}
                settings = _block_settings(block, width, (), list(_flat_values(params)))
                if settings is None:
                    return None
                spec = LayerSpec(len(watched.layers), name, settings[0], settings[1], source="router",
                                 gating=gating_of([block, module]))
                layer = watched.layers[name] = _Layer(spec)
            return layer
        name = state.paths.get(id(block)) if state.paths else None
        layer = watched.layers.get(name) if name is not None else None
        if layer is None or getattr(block, layer.router_attr, None) is not module:
            return None
        return layer

    def _top_k(self, original, operand, **params):
        state = self._state()
        if state is None or not state.blocks or state.in_top_k:
            # Eagerly, binding top_k compiles it, which binds it again inside that compilation:
            # only the outer call's values belong to the model.
            return original(operand, **params)
        state.in_top_k = True
        try:
            out = original(operand, **params)
        finally:
            state.in_top_k = False
        try:
            entry = state.blocks.get(id(state.stack[-1]))
            if entry is not None and entry[2] is None:
                shape = getattr(operand, "shape", ())
                axis = params.get("axis", len(shape) - 1)
                if shape and axis == len(shape) - 1 and shape[-1] == entry[0].spec.num_experts:
                    entry[2], entry[3] = out[1], out[0]
        except Exception as exc:
            self._fail(state.watched, exc)
        return out

    def _end_block(self, state, entry):
        layer, logits, ids, weights = entry
        spec = layer.spec
        if ids is None:  # the block chose without lax.top_k: top-k of its router's logits
            weights, ids = jax.lax.top_k(logits, spec.top_k)
            spec.learn_source("recomputed")
        values = _device_summary(logits, ids, weights, spec.num_experts, _sample_of(state.watched))
        tokens = int(np.prod(ids.shape[:-1])) if ids.ndim > 1 else 1
        same_trace = _jax_core is not None and _jax_core.trace_ctx.trace is state.trace
        if same_trace:
            state.stash[spec.index] = (tokens, values)
        else:  # inside a nested transform: its values cannot leave that trace, so it calls back itself
            self.read_anything = True
            jax.debug.callback(partial(_deliver, state.watched, ((spec.index, tokens),), None), [values], None)

    def _end_pass(self, state):
        watched = state.watched
        if watched.discovering and watched.layers:
            watched.discovering = False
        if not state.stash:
            return
        self.read_anything = True
        order = sorted(state.stash)
        meta = tuple((index, state.stash[index][0]) for index in order)
        ids = state.token_ids
        sample = None
        shape = None
        if ids is not None:
            shape = tuple(int(s) for s in ids.shape)
            sample = ids.reshape(-1)[: _sample_of(watched)]
        jax.debug.callback(partial(_deliver, watched, meta, shape), [state.stash[i][1] for i in order], sample)

    def _fail(self, watched, exc):
        recorder = watched.recorder
        if recorder is not None:
            recorder.on_error(exc)


class _Inherited:
    """Marks a wrapped method the class did not define itself: removed (not set) on restore."""

    def __init__(self, cls):
        self.cls = cls


def _restore(cls, name, original):
    if isinstance(original, _Inherited):
        if name in vars(cls):
            delattr(cls, name)
    else:
        setattr(cls, name, original)


def _flat_values(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        for value in tree.values():
            if not hasattr(value, "items"):
                yield value


def _token_ids(args, kwargs):
    value = kwargs.get("input_ids") if kwargs else None
    if value is None and args:
        value = args[0]
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.integer) and getattr(value, "ndim", 0) in (1, 2):
        return value
    return None


def _sample_of(watched) -> int:
    recorder = watched.recorder
    return recorder.settings.token_sample if recorder is not None else 128


def _device_summary(logits, ids, weights, experts, sample):
    """What the host needs of one layer's pass, computed by the model's device in the same program."""
    ids = ids.astype(jnp.int32)
    k = ids.shape[-1]
    flat = ids.reshape(-1)
    counts = jnp.bincount(flat, length=experts)
    x = logits.reshape(-1, logits.shape[-1]).astype(jnp.float32)
    nan, inf = jnp.isnan(x), jnp.isinf(x)
    finite = jnp.where(nan | inf, 0.0, x)
    lse = jax.nn.logsumexp(finite, axis=-1)
    # Rows that are already probabilities (>= 0, summing to 1) are their own distribution.
    is_prob = jnp.all(finite >= 0, axis=-1) & (jnp.abs(finite.sum(-1) - 1.0) < 1e-3)
    p = jnp.where(is_prob[:, None], finite, jnp.exp(finite - lse[:, None]))
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    health = jnp.stack([jnp.float32(x.shape[0]), entropy.sum(), jnp.where(is_prob, 0.0, lse * lse).sum(),
                        nan.sum().astype(jnp.float32), inf.sum().astype(jnp.float32)])
    top = jnp.max(jnp.where(nan | inf, -jnp.inf, x))
    rows = flat.reshape(-1, k)[:sample]
    w = None if weights is None else weights.reshape(-1, k)[:sample].astype(jnp.float32)
    return counts, health, top, rows, w


def _deliver(watched, meta, shape, values, token_ids):
    """The host end of the callback: one pass's numbers of some layers (any thread of XLA's)."""
    if _INTERCEPTION.first_pass_s is None:
        _INTERCEPTION.first_pass_s = perf_counter() - _INTERCEPTION.installed_at
    recorder = watched.recorder
    if recorder is None or not recorder.active:
        return
    layers = {}
    for (index, tokens), (counts, health, top, rows, weights) in zip(meta, values):
        layers[index] = LayerPass(counts, tokens, health, float(top), rows, weights)
    recorder.record_pass(layers, token_ids, shape)


class _StackWithProbe:
    """flax.linen's interceptor stack (thread-local) with the probe's interceptor added for every
    thread: the job's own intercept_methods() still push and pop on its own stack."""

    def __init__(self, inner, interceptor):
        self.inner = inner
        self.interceptor = interceptor

    def push(self, elem):
        self.inner.push(elem)

    def pop(self):
        return self.inner.pop()

    def __iter__(self):
        yield from self.inner
        yield self.interceptor  # outermost: the job's interceptors run inside it, as without the probe

    def __len__(self):
        return len(self.inner) + 1


_INTERCEPTION = _Interception()


# -- survey, models, recorders ----------------------------------------------------


def _live_modules():
    linen, nnx = _linen(), _nnx()
    wanted = tuple(m.Module for m in (linen, nnx) if m is not None)
    if not wanted:
        return [], []
    objects = gc.get_objects()
    kinds = set()
    for cls in set(map(type, objects)):
        try:
            if issubclass(cls, wanted):
                kinds.add(cls)
        except Exception:
            continue
    found = [obj for obj in objects if type(obj) in kinds]
    linen_roots = [m for m in found if linen is not None and isinstance(m, linen.Module) and m.parent is None]
    nnx_all = [m for m in found if nnx is not None and isinstance(m, nnx.Module)]
    inner = set()
    for module in nnx_all:
        for path, node in nnx.iter_graph(module):
            if path and isinstance(node, nnx.Module):
                inner.add(id(node))
    return linen_roots, [m for m in nnx_all if id(m) not in inner]


def survey(explicit=None) -> BackendSurvey:
    if "flax" not in sys.modules:
        return BackendSurvey([], [], "JAX is loaded but Flax is not: the probe finds MoE layers in Flax modules "
                                     "(linen or nnx).")
    linen_roots, nnx_roots = _live_modules()
    if explicit is not None:
        linen_roots = [m for m in explicit if _linen() and isinstance(m, _linen().Module)]
        nnx_roots = [m for m in explicit if _nnx() and isinstance(m, _nnx().Module)]
    if not linen_roots and not nnx_roots:
        return BackendSurvey([], [], "No Flax module is alive in this process yet: attach again once the job "
                                     "has built its model.")
    interception = _INTERCEPTION
    holder = object()
    watched_list = []
    with interception.lock:
        # Known before the caches are cleared, so that the very next trace already reads them.
        for root in nnx_roots:
            layers = _nnx_layers(root)
            if layers:
                watched_list.append(interception.watch_nnx(root, layers))
        for cls in {type(m) for m in linen_roots}:
            watched_list.append(interception.models.setdefault(cls, _Watched(cls, cls.__name__, "linen", {})))
    if not watched_list:
        return BackendSurvey([], [], _no_moe_message(len(linen_roots) + len(nnx_roots), False))
    interception.acquire(holder)
    try:
        if linen_roots:
            _discover_linen(interception, [w for w in watched_list if w.flavour == "linen"])
    except Exception:
        interception.release(holder)
        raise
    models = []
    seen = set()
    for watched in watched_list:
        if watched.layers and watched.key not in seen:
            seen.add(watched.key)
            models.append(_model(watched, holder))
    if not models:
        interception.release(holder)
        return BackendSurvey([], [], _no_moe_message(len(linen_roots) + len(nnx_roots),
                                                     bool(linen_roots) and interception.first_pass_s is None))
    warning = ("Attaching cleared JAX's compilation caches: every jitted function of this process traces and "
               "compiles again at its next call, with the probe's reading in it, and once more after Detach.")
    if interception.first_pass_s is not None:
        warning += " Here the model's first pass after attaching took %.1f s." % interception.first_pass_s
    return BackendSurvey(models, [{"code": "retrace", "message": warning}], "")


def _no_moe_message(live, linen_idle) -> str:
    message = ("No MoE layer was found in the %d live Flax model%s: the probe looks for a block declaring its "
               "experts (num_experts, ...) and top-k (top_k, num_experts_per_tok, ...) with a router projecting "
               "to one output per expert." % (live, "" if live == 1 else "s"))
    if linen_idle:
        message += (" Linen models are read while they run: none ran within %d s of attaching (functions "
                    "compiled ahead of time, jit(f).lower().compile(), are not traced again)." % DISCOVERY_S)
    return message


def _discover_linen(interception, watched):
    """Wait for a pass of the linen models to reveal their layers."""
    # Until a pass has been traced with its layers found, and has run (its numbers reached the host:
    # the retrace and recompile are then done, and first_pass_s says how long they took).
    deadline = time.monotonic() + DISCOVERY_S
    while time.monotonic() < deadline and (all(w.discovering or not w.layers for w in watched)
                                           or interception.first_pass_s is None):
        time.sleep(0.02)
    for w in watched:
        w.discovering = False


def _model(watched: _Watched, survey_holder) -> Model:
    specs = [layer.spec for layer in sorted(watched.layers.values(), key=lambda l: l.spec.index)]

    def describe(model_id):
        return {"id": model_id, "class": watched.name, "model_type": "flax.%s" % watched.flavour,
                "device": str(jax.devices()[0].platform), "dtype": "", "framework": "jax",
                "layers": [spec.describe() for spec in specs]}

    def recorder(model_id, out, settings, on_error):
        return JaxRecorder(model_id, specs, out, settings, on_error, watched, survey_holder)

    return Model("jax", describe, recorder)


class JaxRecorder(HostRecorder):
    def __init__(self, model_id, layers, out, settings, on_error, watched, survey_holder):
        super().__init__(model_id, layers, out, settings, on_error)
        self.watched = watched
        self._survey_holder = survey_holder

    def install(self):
        _INTERCEPTION.acquire(self)
        _INTERCEPTION.release(self._survey_holder)  # the survey's hold passes to the recorders
        self.watched.recorder = self

    def uninstall(self):
        if self.watched.recorder is self:
            self.watched.recorder = None
        _INTERCEPTION.release(self._survey_holder)
        _INTERCEPTION.release(self)
