"""Hooks that keep working inside torch.compile'd code.

torch.compile (dynamo) traces a forward pass, hooks included, into a graph, then runs the
compiled code without looking at hooks again: it does not guard on hook dicts that were
empty when it compiled (`torch._dynamo.config.skip_nnmodule_hook_guards`), so hooks added
to a compiled model are silently skipped; and Python in a hook that does get traced
(perf_counter, counters kept in Python) either breaks the graph or is baked into it as a
constant that fails its guard at the next pass, recompiling every pass. So the probe:

1. Makes every hook a *tap*. Run eagerly, a tap calls its handler (the probe's reading
   code) at once. Traced by dynamo, it emits one call of the custom op `moe_probe::tap`
   with the tensors the hook received; the op's implementation calls the same handler
   at run time with the real tensors. Compiled passes are therefore read by exactly the
   code that reads eager ones, with no graph break. The op is registered as an ordered
   effect, so the compiler neither drops it (it returns nothing) nor reorders the taps
   of one pass (pass start, each layer, pass end).
2. Makes compiled code traced before the hooks existed notice them. Every hooked module
   gets an instance `forward` that calls the original one (`mark_forward`): dynamo guards
   each module it compiles or inlines on `forward` not being in the instance dict (its
   check for monkey-patched forwards), so the next pass fails that guard and recompiles
   once, tracing the taps. On detach the marks go, the guards of the original compiled
   code pass again, and it runs as before: no recompilation. The with-probe variant
   stays in dynamo's cache, guarded on the marks, so attaching again finds it without
   recompiling: taps and marks are built from the same code with the same keys each
   time (a hook's key is fixed per module and role), which is all dynamo guards on.
3. Watches dynamo while attached (`CompileWatch`): compilations that traced the taps
   and how long they took (the job's pass waits for them), other compilations, and
   graph breaks.

Taps read nothing else while traced, so no guard depends on the probe's state.
"""

import itertools
import sys
import threading
import types
import weakref
from time import perf_counter
from typing import Callable, Dict, List, Optional, Tuple

import torch

# How a traced tap reaches its handler at run time: "op" (the custom op, no graph break; torch
# 2.4+ has custom ops with effects), or "graph-break" (a call dynamo leaves to eager Python,
# splitting the graph around each tap: the benchmark's alternative, never chosen by itself,
# since a graph break fails a job compiled with fullgraph=True). Where the op cannot be defined,
# traced taps emit nothing: compiled passes go unseen rather than the job being put at risk.
TAP_MODE = "op"

# torch.compiler.is_compiling (torch 2.3+): True while dynamo traces the calling code.
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)

# Roles of the hooks on one module.
ROLES = ("router", "dispatch", "route_fn", "rows_start", "rows_end", "expert_input",
         "block_start", "block_end", "pass_start", "pass_end")
_ROLE_INDEX = {role: i for i, role in enumerate(ROLES)}

_module_numbers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_numbers = itertools.count(1)
_lock = threading.Lock()


class _Tap:
    """One tap: its handlers, and how compiled code finds it at run time."""

    __slots__ = ("key", "role", "handlers", "module", "anchor")

    def __init__(self, key, role, module, anchor):
        self.key = key
        self.role = role
        self.handlers: List[Callable] = []
        self.module = weakref.ref(module)
        self.anchor = anchor  # dotted name of the module's first parameter, or None


_taps: Dict[int, _Tap] = {}  # key -> tap
# (data_ptr of a tap's anchor parameter, role) -> key: how a traced tap names its module
# without baking a per-module constant into the graph (see _emit).
_anchored: Dict[Tuple[int, int], int] = {}


def key_for(module, role: str) -> int:
    """A tap's key: the same for a module and role every time the probe attaches."""
    with _lock:
        number = _module_numbers.get(module)
        if number is None:
            number = _module_numbers[module] = next(_numbers)
    return number * len(ROLES) + _ROLE_INDEX[role]


def _anchor_of(module) -> Optional[str]:
    """The name of the module's first parameter, stored at a real address (not on meta)."""
    for name, param in module.named_parameters():
        if param.device.type != "meta" and param.data_ptr():
            return name
        return None
    return None


def _parameter(module, dotted):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


# -- what a hook hands its handler: two lists of values ----------------------------------


def inputs(args, kwargs):
    """A pre-hook's positional and keyword values."""
    return list(args), list(kwargs.values())


def outputs(args, output):
    """A forward hook's output items (a router's tuple, or one tensor)."""
    return [], list(output) if isinstance(output, (tuple, list)) else [output]


def nothing(_a, _b):
    return [], []


# -- the custom op ------------------------------------------------------------------------


class _Tracing:
    """Counts calls of the op's fake implementation, which runs only while a tap is traced."""

    traced = 0


class _RunState(threading.local):
    from_compiled = False


_run_state = _RunState()


def from_compiled() -> bool:
    """True inside a handler called by a tap that ran from compiled code."""
    return _run_state.from_compiled


def _encode(first, second):
    """Values as the op's arguments: the tensors, the ints of any int lists (per-expert
    sizes), and a layout saying where each value went (0: left out, 1: tensor, 2 n: n ints)."""
    tensors: List[torch.Tensor] = []
    ints: List[int] = []
    layout = [len(first)]
    for value in list(first) + list(second):
        if isinstance(value, torch.Tensor):
            layout.append(1)
            tensors.append(value.detach())
        elif isinstance(value, (list, tuple)) and value and all(type(x) is int for x in value):
            layout.append(2)
            layout.append(len(value))
            ints.extend(value)
        else:
            layout.append(0)
    return tensors, ints, layout


def _decode(tensors, ints, layout):
    values = []
    t = i = 0
    pos = 1
    while pos < len(layout):
        code = layout[pos]
        if code == 1:
            values.append(tensors[t])
            t += 1
        elif code == 2:
            n = layout[pos + 1]
            values.append(list(ints[i:i + n]))
            i += n
            pos += 1
        else:
            values.append(None)
        pos += 1
    return values[: layout[0]], values[layout[0]:]


# (data_ptr, role) slots that were still unknown right after a refresh: a module whose compiled
# code has taps but that is not attached. Remembered so that such a module costs one refresh, not
# one per call; forgotten whenever the taps change.
_unknown: set = set()


def _find_tap(anchor, role, key) -> Optional[_Tap]:
    if anchor is None:
        return _taps.get(key)
    slot = (anchor.data_ptr(), role)
    key = _anchored.get(slot)
    if key is None and _taps and slot not in _unknown:
        # The parameters moved since attach (model.to(...), or storage re-allocated per pass):
        # look again at once, so that no pass after a move is lost.
        _refresh_anchors()
        key = _anchored.get(slot)
        if key is None:
            if len(_unknown) > 4096:
                _unknown.clear()
            _unknown.add(slot)
    return None if key is None else _taps.get(key)


def _refresh_anchors():
    with _lock:
        _unknown.clear()
        _anchored.clear()
        for tap in _taps.values():
            module = tap.module()
            if module is not None and tap.anchor is not None:
                try:
                    _anchored.setdefault((_parameter(module, tap.anchor).data_ptr(), _ROLE_INDEX[tap.role]), tap.key)
                except Exception:
                    pass


def _run_handlers(anchor, role, key, first, second):
    tap = _find_tap(anchor, role, key)
    if tap is None or not tap.handlers:
        return  # detached: compiled code traced with taps still holds the call until it goes
    _run_state.from_compiled = True
    try:
        for handler in list(tap.handlers):
            handler(first, second)
    except Exception:
        pass  # handlers report their own errors; the job's compiled code must never see one
    finally:
        _run_state.from_compiled = False


def _define_op():
    """`moe_probe::tap(anchor, role, key, tensors, ints, layout) -> ()`, or None where torch
    has no custom ops."""
    custom_op = getattr(getattr(torch, "library", None), "custom_op", None)
    if custom_op is None:
        return None

    def tap(anchor: Optional[torch.Tensor], role: int, key: int, tensors: List[torch.Tensor],
            ints: List[int], layout: List[int]) -> None:
        first, second = _decode(tensors, ints, layout)
        _run_handlers(anchor, role, key, first, second)

    name = "moe_probe::tap"
    if hasattr(torch.ops, "moe_probe") and hasattr(torch.ops.moe_probe, "tap"):
        # another copy of the probe (a second import path) defined it: ours gets its own name
        name = "moe_probe::tap_%x" % id(_taps)
    try:
        op = custom_op(name, mutates_args=())(tap)

        @op.register_fake
        def _fake(anchor, role, key, tensors, ints, layout):
            _Tracing.traced += 1
            return None

        overload = getattr(torch.ops.moe_probe, name.split("::")[1]).default
        if not _register_effect(overload):
            return None
        return overload
    except Exception:
        return None


def _register_effect(overload) -> bool:
    """Keep the op (it returns nothing) and the order of taps through the compiler's passes."""
    try:
        from torch._higher_order_ops.effects import _EffectType, _register_effectful_op

        _register_effectful_op(overload, _EffectType.ORDERED)
        return True
    except Exception:
        pass
    try:
        torch.fx.node.has_side_effect(overload)
        return True
    except Exception:
        return False


_op = None
_op_defined = False


def _tap_op():
    global _op, _op_defined
    if not _op_defined:
        with _lock:
            if not _op_defined:
                _op = _define_op()
                _op_defined = True
    return _op


def prepare():
    """Define the op before any hook is traced (defining it while dynamo traces would be traced),
    and keep dynamo from compiling the probe's own functions as frames of their own."""
    global _break_runner
    _skip_as_frames()
    if _break_runner is None:
        _break_runner = torch.compiler.disable(_run_handlers, recursive=True)
    return _tap_op()


_break_runner = None  # _run_handlers as a call dynamo leaves to eager Python (TAP_MODE "graph-break")


def _emit(module, anchor, role, key, first, second):
    """Traced by dynamo: one call of the op (or an eager call between two graphs).

    The tap is named by its module's first parameter (a graph input, the same name for every
    layer of a kind) and its role, not by its key: a key is a constant, and a constant that
    differs per layer would give each layer of a per-layer compiled model a graph of its own
    (past dynamo's recompile limit for deep models)."""
    anchor_tensor = None if anchor is None else _parameter(module, anchor)
    if TAP_MODE == "graph-break":
        _break_runner(anchor_tensor, role, key, first, second)
    elif _op is not None:
        tensors, ints, layout = _encode(first, second)
        _op(anchor_tensor, role, 0 if anchor is not None else key, tensors, ints, layout)


_frames_skipped = False


def _skip_as_frames():
    """Where a compiled module's own hooks are called from code dynamo does not trace (its
    `_call_impl`), dynamo would start a compilation at each hook, and again at each function
    the hook calls (the probe's handlers, which graph-break on perf_counter and bake Python
    counters into guards): compilations at every pass. Those frames are the probe's own
    Python, with nothing to gain from compiling: they are marked to run eagerly, with what
    they call (a hook calls only the probe's code). A forward mark calls the module's own
    forward, which must stay compiled as before: only the mark's own frame is skipped.
    Taps inside traced code are still traced: these marks only concern frames dynamo
    would start a compilation at."""
    global _frames_skipped
    if _frames_skipped or "torch._dynamo" not in sys.modules:
        return
    try:
        from torch._dynamo.eval_frame import set_code_exec_strategy
        from torch._dynamo.types import FrameAction, FrameExecStrategy
    except Exception:
        return
    only_this = FrameExecStrategy(FrameAction.SKIP, FrameAction.DEFAULT)
    with_callees = FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP)
    for factory in (_make_pre_hook, _make_post_hook):
        for code in factory.__code__.co_consts:
            if isinstance(code, types.CodeType):
                set_code_exec_strategy(code, with_callees)
    for function in (_call_handlers, _run_handlers):
        set_code_exec_strategy(function.__code__, with_callees)
    for function in (_marked_forward, _marked_previous_forward):
        set_code_exec_strategy(function.__code__, only_this)
    for code in wrap_method.__code__.co_consts:
        if isinstance(code, types.CodeType):
            set_code_exec_strategy(code, only_this)
    _frames_skipped = True


# -- hooks ----------------------------------------------------------------------------------


class TapHandle:
    """Removes a tap's hook (or method wrapper) and its handler."""

    def __init__(self, key, handler, hook_handle=None):
        self.key = key
        self.handler = handler
        self.hook_handle = hook_handle

    def remove(self):
        if self.hook_handle is not None:
            self.hook_handle.remove()
        forget(self.key, self.handler)


# Two factories, one per hook signature: the same code for every tap of a kind, reading only
# the module, `anchor`, `role` and `pack` while traced (plus `key` for a module without
# parameters). Dynamo guards a hook on its code and on what it reads, so the hooks of every
# layer, and of every attach, match what was compiled once.
def _make_pre_hook(tap, pack, handler, traced):
    anchor, role, key = tap.anchor, _ROLE_INDEX[tap.role], tap.key

    def tap_pre_hook(module, args, kwargs):
        if _is_compiling():
            if traced:
                first, second = pack(args, kwargs)
                _emit(module, anchor, role, key, first, second)
            return None
        first, second = pack(args, kwargs)
        handler(first, second)
        return None

    return tap_pre_hook


def _make_post_hook(tap, pack, handler, traced):
    anchor, role, key = tap.anchor, _ROLE_INDEX[tap.role], tap.key

    def tap_post_hook(module, args, output):
        if _is_compiling():
            if traced:
                first, second = pack(args, output)
                _emit(module, anchor, role, key, first, second)
            return None
        first, second = pack(args, output)
        handler(first, second)
        return None

    return tap_post_hook


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")


def _fixed_id(module, handle, role):
    """Give a hook the same id on every module and at every attach: -(1000 + role). Compiled
    code guards on the ids of some hooks (`hook_id in self._forward_hooks_always_called`),
    so torch's fresh ids would recompile at every attach and give each layer its own graph.
    Ids only need to be unique within one module's dicts, and torch's count up from 0."""
    fixed = -(1000 + _ROLE_INDEX[role])
    dicts = [d for d in (getattr(module, name, None) for name in _HOOK_DICTS) if isinstance(d, dict)]
    if any(fixed in d for d in dicts):
        return  # (not expected: one tap per module and role) keep torch's id
    for d in dicts:
        if handle.id in d:
            d[fixed] = d.pop(handle.id)  # re-inserted last, where registration had put it
    handle.id = fixed


def _register(module, role, handler) -> _Tap:
    key = key_for(module, role)
    with _lock:
        tap = _taps.get(key)
        if tap is None:
            tap = _taps[key] = _Tap(key, role, module, _anchor_of(module))
        tap.handlers.append(handler)
        _unknown.clear()
        if tap.anchor is not None:
            slot = (_parameter(module, tap.anchor).data_ptr(), _ROLE_INDEX[role])
            if _anchored.setdefault(slot, key) != key:
                tap.anchor = None  # shares its first parameter with another module: named by key
    return tap


def pre_hook(module, role, handler, pack=inputs, traced=True) -> TapHandle:
    """A forward pre-hook calling handler(*pack(args, kwargs)), eagerly or from compiled code.
    traced=False: does nothing in compiled code (what it measures is not there to measure)."""
    tap = _register(module, role, handler)
    handle = module.register_forward_pre_hook(_make_pre_hook(tap, pack, handler, traced), with_kwargs=True)
    _fixed_id(module, handle, role)
    return TapHandle(tap.key, handler, handle)


def post_hook(module, role, handler, pack=outputs, traced=True, always_call=False) -> TapHandle:
    """A forward hook calling handler(*pack(args, output))."""
    tap = _register(module, role, handler)
    handle = module.register_forward_hook(_make_post_hook(tap, pack, handler, traced), always_call=always_call)
    _fixed_id(module, handle, role)
    return TapHandle(tap.key, handler, handle)


def wrap_method(module, role, original, handler):
    """The body of a method wrapper (route_tokens_to_experts): calls original, then taps
    (args + kwargs values, result items). Returns (TapHandle, wrapper body)."""
    tap = _register(module, role, handler)
    anchor, role_index, key = tap.anchor, _ROLE_INDEX[role], tap.key

    def call(*args, **kwargs):
        result = original(*args, **kwargs)
        first = list(args) + list(kwargs.values())
        second = list(result) if isinstance(result, (tuple, list)) else [result]
        if _is_compiling():
            _emit(module, anchor, role_index, key, first, second)
        else:
            _call_handlers(key, first, second)
        return result

    return TapHandle(key, handler), call


def _call_handlers(key, first, second):
    tap = _taps.get(key)
    for handler in list(tap.handlers) if tap is not None else ():  # none once detached: a pass-through
        handler(first, second)


def forget(key, handler):
    with _lock:
        tap = _taps.get(key)
        if tap is None or handler not in tap.handlers:
            return
        tap.handlers.remove(handler)
        if not tap.handlers:
            _unknown.clear()
            del _taps[key]
            for slot in [slot for slot, k in _anchored.items() if k == key]:
                del _anchored[slot]


# -- making compiled code notice the hooks ----------------------------------------------------


class InstancePatch:
    """A method wrapped by an instance attribute; remove() puts things back exactly."""

    def __init__(self, obj, attr: str, make_wrapper):
        self.obj = obj
        self.attr = attr
        self.active = True
        self._had = attr in obj.__dict__
        self._previous = obj.__dict__.get(attr)
        self.wrapper = make_wrapper(getattr(obj, attr), self)
        obj.__dict__[attr] = self.wrapper

    def remove(self) -> bool:
        """Put the attribute back; False when someone wrapped ours since (deleting it would
        drop theirs, so ours stays in their chain as a pass-through)."""
        if not self.active:
            return True
        self.active = False
        if self.obj.__dict__.get(self.attr) is not self.wrapper:
            return False
        if self._had:
            self.obj.__dict__[self.attr] = self._previous
        else:
            del self.obj.__dict__[self.attr]
        return True


PREVIOUS_FORWARD = "_moe_probe_previous_forward"


def _marked_forward(self, *args, **kwargs):
    return type(self).forward(self, *args, **kwargs)


def _marked_previous_forward(self, *args, **kwargs):
    return getattr(self, PREVIOUS_FORWARD)(*args, **kwargs)


class ForwardMark:
    """An instance `forward` that calls the module's own: it fails the guard compiled code
    holds on `forward` not being in the instance dict, so that code recompiles with the taps;
    removing it brings the original compiled code back without recompiling.

    A method of one shared function bound to the module (dynamo matches a bound forward by
    its function's code, and sees the module it is bound to as the module already traced), so
    every layer and every attach gets the same compiled code. Where the job had set an
    instance forward of its own (accelerate's hooks), that one is called."""

    def __init__(self, module):
        self.module = module
        self.had_previous = "forward" in module.__dict__
        if self.had_previous:
            module.__dict__[PREVIOUS_FORWARD] = module.__dict__["forward"]
        function = _marked_previous_forward if self.had_previous else _marked_forward
        self.patch = InstancePatch(module, "forward", lambda _original, _patch: types.MethodType(function, module))

    def remove(self):
        if self.patch.remove() and self.had_previous:
            self.module.__dict__.pop(PREVIOUS_FORWARD, None)


def mark_forward(module) -> Optional[ForwardMark]:
    """Mark a module's forward, where it can be (a TorchScript module cannot)."""
    try:
        if isinstance(module, torch.jit.ScriptModule):
            return None
        return ForwardMark(module)
    except Exception:
        return None


# -- what dynamo did while attached ----------------------------------------------------------


class CompileWatch:
    """Compilations and graph breaks while the probe is attached, from dynamo's own callbacks
    and counters. Read by the sender thread; written on the job's thread."""

    def __init__(self):
        self.tap_compiles = 0  # compilations that traced the probe's taps
        self.tap_compile_s = 0.0
        self.other_compiles = 0
        self.other_compile_s = 0.0
        self.graph_breaks = 0
        self._breaks_at_start = None
        self._started = None
        self._traced_at_start = 0
        self._handler = None
        self._callbacks = None

    def start(self):
        """Listen to dynamo, if the job has loaded it (it does when it uses torch.compile)."""
        if self._handler is not None or "torch._dynamo" not in sys.modules:
            return
        try:
            from torch._dynamo.callback import callback_handler
            from torch._dynamo.utils import counters
        except Exception:
            return
        self._counters = counters
        self._breaks_at_start = sum(counters["graph_break"].values())
        callbacks = (self._on_start, self._on_end)
        callback_handler.register_start_callback(callbacks[0])
        callback_handler.register_end_callback(callbacks[1])
        self._handler, self._callbacks = callback_handler, callbacks

    def poll(self):
        """Catch up with a job that loaded dynamo after attach; refresh the graph-break count."""
        if self._handler is None:
            self.start()
            _skip_as_frames()
        if self._breaks_at_start is not None:
            self.graph_breaks = sum(self._counters["graph_break"].values()) - self._breaks_at_start

    def stop(self):
        if self._handler is None:
            return
        for remove, callback in zip((self._handler.remove_start_callback, self._handler.remove_end_callback),
                                    self._callbacks):
            try:
                remove(callback)
            except Exception:
                pass
        self._handler = None

    def _on_start(self, *_args):
        self._started = perf_counter()
        self._traced_at_start = _Tracing.traced

    def _on_end(self, *_args):
        if self._started is None:
            return
        seconds = perf_counter() - self._started
        self._started = None
        if _Tracing.traced != self._traced_at_start:
            self.tap_compiles += 1
            self.tap_compile_s += seconds
        else:
            self.other_compiles += 1
            self.other_compile_s += seconds


def reads_compiled_code() -> bool:
    """True when traced taps reach their handlers (the op could be defined, or graph breaks were asked for)."""
    return TAP_MODE == "graph-break" or _tap_op() is not None
