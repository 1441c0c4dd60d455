"""Checking the probe's readers against a model's own routing, shared by the architecture tests.

`check_probe` installs the probe's hooks on a model and checks that:
  1. find_moe_layers finds exactly the expected MoE layers;
  2. what the probe reports per call equals the ground truth the test obtained itself
     (per-expert loads always; per-token ids and weights where both sides have them);
  3. the model's outputs are bitwise identical with and without the probe's hooks;
  4. after every handle is removed, every module has exactly the hooks and instance
     attributes it had before (and install did add something);
  5. the probe's reads neither write into a tensor nor synchronise with the device.
`check_recorder` then runs the probe's Recorder and checks its per-layer counters.
"""

import os
import queue
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_HOST = os.path.dirname(HERE)
if NATIVE_HOST not in sys.path:
    sys.path.insert(0, NATIVE_HOST)

from moe_probe.recorder import Recorder, Settings  # noqa: E402
from moe_probe.routers import find_moe_layers  # noqa: E402


class Capture:
    """This test's own pre-hooks on given modules: what each call received."""

    def __init__(self, modules):
        self.calls = []
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in modules]

    def _hook(self, module, args, kwargs):
        def keep(v):
            return v.detach().clone() if isinstance(v, torch.Tensor) else v
        self.calls.append((module, [keep(a) for a in args], {k: keep(v) for k, v in kwargs.items()}))

    def remove(self):
        for handle in self.handles:
            handle.remove()


def loads_of(record, experts):
    """Per-expert assignments of one call: given loads, or counted from its ids (-1 = none)."""
    loads = record.get("loads")
    if loads is not None:
        loads = torch.as_tensor(loads, dtype=torch.int64).reshape(-1)
        return torch.nn.functional.pad(loads, (0, max(0, experts - loads.numel())))
    ids = record["ids"].reshape(-1).to(torch.int64)
    ids = ids[ids >= 0]
    return torch.bincount(ids, minlength=experts)


def by_sorted_ids(ids, weights=None):
    order = ids.argsort(dim=-1)
    return ids.gather(-1, order), (None if weights is None else weights.gather(-1, order))


def assert_routing_equal(probe, truth, what, experts, check_weights=True):
    assert len(probe) == len(truth), f"{what}: {len(probe)} probe records for {len(truth)} MoE calls"
    for call, (got, want) in enumerate(zip(probe, truth)):
        assert torch.equal(loads_of(got, experts), loads_of(want, experts)), \
            f"{what}: per-expert loads differ in call {call}: {loads_of(got, experts)} vs {loads_of(want, experts)}"
        if got.get("ids") is not None and want.get("ids") is not None:
            got_ids, got_w = by_sorted_ids(got["ids"].to(torch.int64), got.get("weights"))
            want_ids, want_w = by_sorted_ids(want["ids"].to(torch.int64).reshape(got_ids.shape[0], -1),
                                             want.get("weights"))
            assert torch.equal(got_ids, want_ids), f"{what}: expert ids differ in call {call}"
            if check_weights and want_w is not None:
                assert got_w is not None, f"{what}: probe reports no weights in call {call}"
                torch.testing.assert_close(got_w.float(), want_w.reshape(got_w.shape).float(), rtol=1e-5,
                                           atol=1e-6, msg=f"{what}: weights differ in call {call}")
        if want.get("dropped") is not None:
            assert got.get("dropped") is not None, f"{what}: probe reports no dropped tokens in call {call}"
            assert torch.equal(torch.as_tensor(got["dropped"]).reshape(-1), torch.as_tensor(want["dropped"]).reshape(-1)), \
                f"{what}: dropped tokens differ in call {call}"


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
              "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
              "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
              "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks", "_global_forward_hooks_always_called")


def hook_state(model):
    """Every module's hook ids and instance attributes (by identity), plus torch's global hooks."""
    state = {}
    for name, module in model.named_modules():
        hooks = tuple((d, tuple(getattr(module, d, {}).keys())) for d in HOOK_DICTS)
        attrs = tuple(sorted((k, id(v)) for k, v in vars(module).items() if k not in HOOK_DICTS))
        state[name] = (type(module), hooks, attrs)
    glob = torch.nn.modules.module
    state[None] = tuple(tuple(getattr(glob, g, {}).keys()) for g in GLOBAL_HOOKS)
    return state


def output_tensor(output):
    """The tensor a forward pass is judged by (logits, hidden states, feature maps)."""
    for key in ("logits", "last_hidden_state", "feature_maps"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (tuple, list)) and value and isinstance(value[-1], torch.Tensor):
            return value[-1]
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


# aten ops that make the host wait for the device (or need data-dependent shapes, which do)
SYNCING_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.equal",
               "aten.is_nonzero", "aten._unique", "aten.unique", "aten.repeat_interleave.Tensor",
               "aten.index.Tensor", "aten.allclose")


class OpLog(TorchDispatchMode):
    """Every aten op run while active, with whether it writes into one of its arguments."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name.startswith("aten._to_copy") and "device" in kwargs and kwargs["device"] != args[0].device:
            name += " (to %s)" % kwargs["device"]
        self.ops.append((name, func._schema.is_mutable))
        return func(*args, **kwargs)


def trace_reads(layers):
    """Run every reader of each layer under OpLog (attributes on the probe's layer objects, not the model)."""
    log = []

    def traced(method):
        def run(*args, **kwargs):
            with OpLog() as ops:
                result = method(*args, **kwargs)
            log.extend(ops.ops)
            return result
        return run

    for layer in layers:
        for attr in ("_guarded", "_on_expert_input", "_start_rows"):
            setattr(layer, attr, traced(getattr(layer, attr)))
    return log


def bitwise_equal(a, b):
    """Same shape, dtype and bits (NaN included: torch.equal says NaN != NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))
    return torch.equal(a, b)


def as_record(routing):
    return dict(ids=routing.ids, weights=routing.weights, dropped=routing.dropped, loads=routing.loads,
                token_ids=routing.token_ids, tokens=routing.tokens, logits=routing.logits)


def check_probe(model, inputs, truth, expected_names, call=None, check_weights=True):
    """Layers found, routing equal to `truth` ({layer name: [per-call dict]}), outputs bitwise
    identical, hooks restored, and no writes or device syncs in the probe's reads.
    Returns the layers and the probe's records by layer name."""
    call = call or model
    layers = find_moe_layers(model)
    assert [layer.name for layer in layers] == expected_names
    assert [layer.index for layer in layers] == list(range(len(expected_names)))
    keys = {"index", "name", "arch", "experts", "top_k", "model_index", "stack", "kind", "design", "source",
            "token_source", "identity_experts", "shared_experts", "gating"}
    for layer in layers:
        assert set(layer.describe()) == keys
    ops = trace_reads(layers)

    with torch.no_grad():
        plain = output_tensor(call(**inputs))
    before = hook_state(model)

    records = {layer.name: [] for layer in layers}
    handles = []
    for layer in layers:
        handles += layer.install(lambda lay, routing: records[lay.name].append(as_record(routing)))
    during = hook_state(model)
    with torch.no_grad():
        hooked = output_tensor(call(**inputs))
    for handle in handles:
        handle.remove()
    after = hook_state(model)

    assert during != before, "install added no hook"
    assert after == before, "hooks or attributes left behind after remove()"
    assert bitwise_equal(plain, hooked), "outputs changed with the probe's hooks installed"
    assert all(layer.errors == 0 for layer in layers), [layer.last_error for layer in layers]
    assert ops, "the probe's reads were not traced"
    assert not [name for name, _ in ops if name.startswith(SYNCING_OPS) or " (to " in name], ops
    assert not [name for name, mutable in ops if mutable], "the probe wrote into a tensor"

    by_name = {layer.name: layer for layer in layers}
    for name, want in truth.items():
        layer = by_name[name]
        got = records[name]
        for record in got:
            if record["ids"] is not None:
                ids = record["ids"]
                assert ids.dim() == 2 and not ids.is_floating_point() and ids.shape[1] <= layer.num_experts
        assert_routing_equal(got, want, "%s %s" % (type(model).__name__, name), layer.num_experts,
                             check_weights=check_weights)
    for name in set(records) - set(truth):
        assert not records[name], "%s: probe records for a layer the truth says did not run" % name
    return layers, records


def check_recorder(model, inputs, layers, truth, call=None, passes=2):
    """The probe's Recorder over `passes` passes: its per-layer counters (each layer at its own
    offset and width) and token totals equal the truth summed over the passes."""
    call = call or model
    out = queue.Queue()
    errors = []
    # the module each pass goes through marks the passes (Qwen3-Omni's thinker, not the composite)
    root = call if isinstance(call, torch.nn.Module) else model
    recorder = Recorder(0, root, layers, out, Settings(flush_interval_s=0.0, token_sample=0), errors.append)
    recorder.start()
    try:
        with torch.no_grad():
            for _ in range(passes):
                call(**inputs)
    finally:
        recorder.stop()
    assert not errors, errors
    host = recorder.flush_now().to_host()
    counts = host["counts"]
    assert counts.numel() == sum(layer.num_experts for layer in layers)
    for layer in layers:
        offset = sum(other.num_experts for other in layers[: layer.index])
        got = counts[offset: offset + layer.num_experts]
        want = torch.zeros(layer.num_experts, dtype=torch.int64)
        tokens = 0
        for record in truth.get(layer.name, []):
            want += loads_of(record, layer.num_experts)
            tokens += record["tokens"] if record.get("tokens") is not None else record["ids"].reshape(
                -1, record["ids"].shape[-1]).shape[0]
        assert torch.equal(got, want * passes), "%s: recorder counts %s, expected %s" % (layer.name, got, want * passes)
        assert int(host["tokens"][layer.index]) == tokens * passes, layer.name
    return recorder
