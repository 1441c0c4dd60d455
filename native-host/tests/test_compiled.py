"""Jobs as they really run: torch.compile'd models, CUDA graphs, and low-precision logits.

The probe reads a torch.compile'd model from inside its compiled code (compiled.py): its
hooks are compiled in as calls of the probe's op when the model recompiles once at the
first attach; detaching brings back the original compiled code and attaching again finds
the with-probe variant, neither recompiling. Each test runs real compiled code: inductor
for the one that stands for a user's job (slow on this machine, so only one), dynamo with
the aot_eager backend for the ways of compiling a model (same guards and tracing, no code
generation). Outputs are compared bit for bit, counts against what the model computed.
"""

import os
import queue
import struct
import sys

import pytest
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_HOST = os.path.dirname(HERE)
for path in (NATIVE_HOST, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import moe_probe  # noqa: E402
from moe_probe import compiled  # noqa: E402
from moe_probe.recorder import HEALTH_COLUMNS, Recorder, Settings  # noqa: E402
from moe_probe.routers import find_moe_layers  # noqa: E402
from test_probe_safety import Client, hook_count, socket_dir, wait_until  # noqa: E402,F401

torch.set_num_threads(1)

LAYERS, EXPERTS, TOP_K, VOCAB = 2, 4, 2, 64


def tiny_mixtral(seed=0, dtype=torch.float32):
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(seed)
    config = MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                           num_attention_heads=2, num_key_value_heads=2, num_local_experts=EXPERTS,
                           num_experts_per_tok=TOP_K, max_position_embeddings=64)
    return MixtralForCausalLM(config).eval().to(dtype)


def batch(seed=1, shape=(2, 8)):
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def routed_counts(router_logits, top_k=TOP_K, experts=EXPERTS, margin=1e-5):
    """What Mixtral's router chose (softmax in float32, then top-k), per layer, as one count vector.
    With a margin: checks no token sits on a tie within rounding, so a truth recomputed here
    cannot differ from what a compiled kernel (rounding its own way) chose."""
    counts = []
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)
        top = torch.topk(probs, top_k + 1, dim=-1).values
        if margin:
            assert bool((top[:, top_k - 1] - top[:, top_k] > margin).all()), "a near-tie makes the truth ambiguous"
        ids = torch.topk(probs, top_k, dim=-1).indices
        counts.append(torch.bincount(ids.reshape(-1), minlength=experts))
    return torch.cat(counts)


def counts_of(frame):
    raw = frame["counts"]
    return torch.tensor(struct.unpack("<%dq" % (len(raw) // 8), raw))


def unique_graphs():
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def marks_left(model):
    return [name for name, module in model.named_modules() if "forward" in module.__dict__]


def test_a_compiled_model_is_read_exactly_recompiles_once_and_detach_leaves_its_compiled_code(socket_dir):
    """The job's case: model.compile() with inductor, then attach, detach, attach again."""
    model = tiny_mixtral()
    x = batch()
    model.compile()
    with torch.no_grad():
        first = model(x, output_router_logits=True)  # compiles (the job, before anyone attaches)
        reference = first.logits
    truth = routed_counts(first.router_logits)
    hooks_before = hook_count(model)

    def passes(n):
        for _ in range(n):
            with torch.no_grad():
                out = model(x, output_router_logits=True)
            assert torch.equal(out.logits, reference), "the compiled model's outputs changed"

    graphs = unique_graphs()
    path = moe_probe.attach(model, flush_interval_s=0)
    for attach in (1, 2):
        client = Client(path)
        hello = client.wait(lambda f: f["t"] == "hello")
        assert [w["code"] for w in hello["warnings"]] == ["compiled"]
        assert wait_until(lambda: hook_count(model) > hooks_before)
        passes(4)
        counts = client.wait(lambda f: f["t"] == "counts" and f["passes"] == 4)
        assert torch.equal(counts_of(counts), truth * 4), "counts differ from the model's own routing"
        seen = counts["visibility"]
        assert seen["compiled_passes"] == 4 and seen["graph_breaks"] == 0, seen
        # The first attach recompiles once (the taps go in); the second finds that code again.
        assert seen["tap_compiles"] == (1 if attach == 1 else 0), seen
        assert unique_graphs() - graphs == (1 if attach == 1 else 0)
        assert (seen["tap_compile_s"] > 0) == (attach == 1)
        client.detach()
        client.wait(lambda f: f["t"] == "bye")
        client.close()
        assert wait_until(lambda: hook_count(model) == hooks_before) and not marks_left(model)
        graphs = unique_graphs()
        passes(3)  # detached: the original compiled code again, not recompiled
        assert unique_graphs() == graphs, "detaching made the job recompile"


def run_modes():
    """Ways a job compiles its model: (name, compile(model) -> (how the job calls it, what it holds))."""
    def whole(model):
        wrapper = torch.compile(model, backend="aot_eager")  # an OptimizedModule around the model
        return wrapper, wrapper

    def method(model):
        model.compile(backend="aot_eager")
        return model, model

    def function(model):
        return torch.compile(lambda x: model(x), backend="aot_eager"), model

    def per_layer(model):  # as torchtitan compiles each transformer block
        for layer in model.model.layers:
            layer.compile(backend="aot_eager")
        return model, model

    def per_block(model):
        for layer in model.model.layers:
            layer.mlp.compile(backend="aot_eager")
        return model, model

    def experts_only(model):
        for layer in model.model.layers:
            layer.mlp.experts.compile(backend="aot_eager")
        return model, model

    return [("torch.compile(model)", whole), ("model.compile()", method), ("a compiled function", function),
            ("each decoder layer", per_layer), ("each MoE block", per_block), ("each experts module", experts_only)]


@pytest.mark.parametrize("name,compile_model", run_modes(), ids=[name for name, _ in run_modes()])
def test_every_way_of_compiling_is_read_exactly_with_at_most_one_recompilation(name, compile_model):
    from moe_probe.models import find_model_roots
    model = tiny_mixtral()
    x = batch()
    with torch.no_grad():
        truth = routed_counts(model(x, output_router_logits=True).router_logits)
    call, held = compile_model(model)
    with torch.no_grad():
        reference = call(x).logits
    # found as in a user's process: the model itself, also inside torch.compile's wrapper
    [(root, layers)] = find_model_roots([held])
    assert root is model
    assert [layer.name for layer in layers] == ["model.layers.%d.mlp" % i for i in range(LAYERS)]

    for attach in range(2):
        graphs = unique_graphs()
        errors = []
        watch = compiled.CompileWatch()
        watch.start()
        recorder = Recorder(0, root, layers, queue.Queue(), Settings(flush_interval_s=0), errors.append)
        recorder.start()
        with torch.no_grad():
            for _ in range(3):
                assert torch.equal(call(x).logits, reference), name
        recorder.stop()
        watch.poll()
        watch.stop()
        host = recorder.flush_now().to_host()
        assert not errors, errors
        assert recorder.passes == 3
        assert torch.equal(host["counts"], truth * 3), "%s: counts %s, routed %s" % (name, host["counts"], truth * 3)
        assert watch.graph_breaks == 0, name
        # One recompilation for the whole model (every layer shares it) at the first attach, none after.
        assert unique_graphs() - graphs <= (1 if attach == 0 else 0), name
        graphs = unique_graphs()
        with torch.no_grad():
            assert torch.equal(call(x).logits, reference)
        assert unique_graphs() == graphs, "%s: detaching made the job recompile" % name
        assert not marks_left(model)


def test_hooks_that_break_the_graph_are_the_alternative_and_still_exact(monkeypatch):
    """The benchmark's alternative to the op (never chosen by the probe itself, since a graph
    break fails a job compiled with fullgraph=True): a traced tap as a call dynamo leaves to
    Python, splitting the graph around it. Slower (see the benchmark), but read the same."""
    monkeypatch.setattr(compiled, "TAP_MODE", "graph-break")
    model = tiny_mixtral(seed=3)
    x = batch(seed=4)
    with torch.no_grad():
        truth = routed_counts(model(x, output_router_logits=True).router_logits)
    model.compile(backend="aot_eager")
    with torch.no_grad():
        reference = model(x).logits
    layers = find_moe_layers(model)
    recorder = Recorder(0, model, layers, queue.Queue(), Settings(flush_interval_s=0), print)
    recorder.start()
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(model(x).logits, reference)
    recorder.stop()
    assert torch.equal(recorder.flush_now().to_host()["counts"], truth * 2)


def test_without_custom_ops_compiled_passes_go_unseen_and_the_job_is_untouched(monkeypatch):
    """Where the probe's op cannot be defined (torch before 2.4), traced taps emit nothing and
    no forward marks are set: attaching neither recompiles nor breaks the job's graphs, its
    outputs stay bit for bit, the probe claims no compiled pass, and its warning says so."""
    from moe_probe.server import visibility_warnings
    monkeypatch.setattr(compiled, "_op", None)
    monkeypatch.setattr(compiled, "_op_defined", True)
    assert not compiled.reads_compiled_code()
    torch._dynamo.reset()  # code compiled with taps by earlier tests would match this model's guards
    model = tiny_mixtral(seed=11)
    x = batch(seed=12)
    model.compile(backend="aot_eager", fullgraph=True)  # a graph break would fail this job
    with torch.no_grad():
        reference = model(x).logits
    graphs = unique_graphs()
    layers = find_moe_layers(model)
    recorder = Recorder(0, model, layers, queue.Queue(), Settings(flush_interval_s=0), print)
    recorder.start()
    assert not marks_left(model), "no forward marks: a recompilation would gain nothing"
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(model(x).logits, reference)
    recorder.stop()
    assert unique_graphs() == graphs, "attaching made the job recompile"
    assert recorder.passes == 0 and recorder.compiled_passes == 0, "claimed passes it could not see"
    assert recorder.unseen_passes == 3  # the model's own call was seen, its layers were not
    [warning] = visibility_warnings([model])
    assert warning["code"] == "compiled" and "not seen" in warning["message"], warning


def test_parameters_moved_after_attach_are_still_read_from_compiled_code():
    """Compiled code names each tap by its module's first parameter; when the parameters get new
    storage while attached (model.to(...), a loaded checkpoint), the next pass is read all the same."""
    torch._dynamo.reset()  # compiled here with the probe's op, whatever earlier tests compiled
    model = tiny_mixtral(seed=13)
    x = batch(seed=14)
    with torch.no_grad():
        truth = routed_counts(model(x, output_router_logits=True).router_logits)
    model.compile(backend="aot_eager")
    with torch.no_grad():
        reference = model(x).logits
    layers = find_moe_layers(model)
    recorder = Recorder(0, model, layers, queue.Queue(), Settings(flush_interval_s=0), print)
    recorder.start()
    with torch.no_grad():
        assert torch.equal(model(x).logits, reference)
        before = {name: p.data_ptr() for name, p in model.named_parameters()}
        for p in model.parameters():
            p.data = p.data.clone()  # same values, new storage
        assert all(p.data_ptr() != before[name] for name, p in model.named_parameters())
        assert torch.equal(model(x).logits, reference)
    recorder.stop()
    assert recorder.compiled_passes == 2
    assert torch.equal(recorder.flush_now().to_host()["counts"], truth * 2), "a pass after the move was lost"


# -- CUDA graphs ----------------------------------------------------------------------------


class StaticMoE(nn.Module):
    """A decoder-shaped MoE LM whose forward has static shapes and no host syncs, so it can be
    captured in a CUDA graph: every expert runs on every token, weighted by the top-k mask
    (the probe reads the ids handed to the experts)."""

    class Experts(nn.Module):
        def __init__(self, experts, hidden):
            super().__init__()
            self.w = nn.Parameter(torch.randn(experts, hidden, hidden) / hidden ** 0.5)

        def forward(self, hidden, top_k_index, top_k_weights):
            dense = torch.zeros(hidden.shape[0], self.w.shape[0], device=hidden.device, dtype=hidden.dtype)
            dense = dense.scatter(1, top_k_index, top_k_weights)
            per_expert = torch.matmul(hidden.unsqueeze(0), self.w)  # [E, N, H]
            return (dense.t().unsqueeze(-1) * per_expert).sum(0)

    class Block(nn.Module):
        def __init__(self, experts, hidden, top_k):
            super().__init__()
            self.top_k = top_k
            self.gate = nn.Linear(hidden, experts, bias=False)
            self.experts = StaticMoE.Experts(experts, hidden)

        def forward(self, x):
            flat = x.reshape(-1, x.shape[-1])
            probs = torch.softmax(self.gate(flat), dim=-1)
            weights, ids = torch.topk(probs, self.top_k, dim=-1)
            return x + self.experts(flat, ids, weights).reshape(x.shape)

    def __init__(self, vocab=VOCAB, hidden=32, experts=EXPERTS, top_k=TOP_K, layers=LAYERS, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(StaticMoE.Block(experts, hidden, top_k) for _ in range(layers))
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    def routing(self, input_ids):
        """The counts this model routes for input_ids, per layer (computed here, without the probe)."""
        counts = []
        with torch.no_grad():
            x = self.embed(input_ids)
            for layer in self.layers:
                ids = torch.topk(layer.gate(x.reshape(-1, x.shape[-1])), layer.top_k, dim=-1).indices
                counts.append(torch.bincount(ids.reshape(-1).cpu(), minlength=layer.gate.out_features))
                x = layer(x)
        return torch.cat(counts)


NO_GPU = "needs a CUDA GPU (none here: torch.cuda.is_available() is False); not run, so not counted as passing"


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_passes_captured_in_a_cuda_graph_while_attached_are_counted_at_every_replay(socket_dir):
    model = StaticMoE().cuda().eval()
    prompt = batch(shape=(2, 8)).cuda()
    step = batch(seed=2, shape=(4, 1)).cuda()
    truth_prompt, truth_step = model.routing(prompt), model.routing(step)
    with torch.no_grad():
        before = torch.cuda.CUDAGraph()  # captured before attach: its replays cannot be seen
        static_before = step.clone()
        torch.cuda.synchronize()
        with torch.cuda.graph(before):
            model(static_before)
    path = moe_probe.attach(model, flush_interval_s=0)
    client = Client(path)
    client.wait(lambda f: f["t"] == "hello")
    assert wait_until(lambda: hook_count(model) > 0)
    replays = 25
    with torch.no_grad():
        model(prompt)  # an eager prefill pass
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(step)  # warm-up before capture, eager: seen like any pass
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # captured while attached: runs nothing now
            logits = model(step)
        for _ in range(replays):
            graph.replay()
        for _ in range(7):
            before.replay()
        torch.cuda.synchronize()
    assert torch.equal(logits, model(step)), "outputs of the replayed graph changed"
    expected_passes = 2 + replays
    frame = client.wait(lambda f: f["t"] == "counts" and f["passes"] == expected_passes)
    assert torch.equal(counts_of(frame), truth_prompt + truth_step * (1 + replays))
    seen = frame["visibility"]
    assert seen["captured_passes"] == 1 and seen["replayed_passes"] == replays and seen["unseen_replays"] == 7, seen
    client.close()


def test_the_probe_reports_the_passes_it_sees_and_never_claims_the_ones_it_could_not(socket_dir):
    """Decode steps run through a TorchScript trace of the model made before attach: like a CUDA
    graph captured before attach, it runs the model's kernels and none of its Python, so no hook
    sees it (this CPU machine's stand-in for graph-replayed decode)."""
    model = StaticMoE(seed=5).eval()
    prompt = batch(seed=6, shape=(1, 12))
    token = batch(seed=7, shape=(1, 1))
    with torch.no_grad():
        scripted = torch.jit.trace(model, token)  # the job's "captured" decode step, before attach
        reference = scripted(token)
    client = Client(moe_probe.attach(model, flush_interval_s=0))
    client.wait(lambda f: f["t"] == "hello")
    assert wait_until(lambda: hook_count(model) > 0)
    with torch.no_grad():
        model(prompt)  # prefill, eager: seen
        model(token)  # one decode step eagerly (the first token): seen
        for _ in range(30):  # the rest through the trace: not seen
            assert torch.equal(scripted(token), reference)
        model(prompt)
    frame = client.wait(lambda f: f["t"] == "counts" and f["passes"] == 3)
    assert frame["prefill"] == 2 and frame["decode"] == 1, "the probe reports the passes it saw, and only those"
    assert torch.equal(counts_of(frame), model.routing(prompt) * 2 + model.routing(token))
    seen = frame["visibility"]
    assert seen["unseen_replays"] == 0 and seen["replayed_passes"] == 0 and seen["captured_passes"] == 0, seen
    assert seen["compiled_passes"] == 0
    client.detach()
    client.wait(lambda f: f["t"] == "bye")
    # nothing arrived after: the 30 traced steps never became counts
    last = [f for f in client.frames if f["t"] == "counts"][-1]
    assert last["passes"] == 3 and last["decode"] == 1
    client.close()


# -- bf16 / fp16 / fp8 ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_models_count_exactly_and_health_is_computed_in_float32(socket_dir, dtype):
    model = tiny_mixtral(seed=8, dtype=dtype)
    x = batch(seed=9, shape=(2, 10))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        plain = model(x, output_router_logits=True)
    client = Client(moe_probe.attach(model, flush_interval_s=0, health_passes_per_s=1000))
    client.wait(lambda f: f["t"] == "hello")
    assert wait_until(lambda: hook_count(model) > 0)
    with torch.no_grad():
        out = model(x, output_router_logits=True)
    frame = client.wait(lambda f: f["t"] == "counts" and f["passes"] == 1)
    assert out.logits.dtype == dtype and torch.equal(out.logits, plain.logits)
    assert all(p.dtype == dtype and torch.equal(p, params[name]) for name, p in model.named_parameters()), \
        "the probe changed the model's tensors"
    # recomputed by the same eager ops as the model's own router: ties break alike
    assert torch.equal(counts_of(frame), routed_counts(out.router_logits, margin=0))
    health = struct.unpack("<%dd" % (LAYERS * len(HEALTH_COLUMNS)), frame["health"])
    max_logit = struct.unpack("<%dd" % LAYERS, frame["max_logit"])
    for layer, logits in enumerate(out.router_logits):
        assert logits.dtype == dtype  # the model's own logits, low precision
        # the float32 recomputation the probe's sums must equal
        f32 = logits.float()
        log_p = torch.log_softmax(f32, dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        zloss = torch.logsumexp(f32, dim=-1) ** 2
        row = health[layer * len(HEALTH_COLUMNS):(layer + 1) * len(HEALTH_COLUMNS)]
        assert row[0] == 20
        assert row[1] == pytest.approx(float(entropy.double().sum()), rel=1e-6)
        assert row[2] == pytest.approx(float(zloss.double().sum()), rel=1e-6)
        assert row[3] == 0 and row[4] == 0
        assert max_logit[layer] == float(f32.max())
    client.close()


class Fp8Router(nn.Module):
    """A router that hands out float8 (e4m3) logits, as fp8 inference kernels do."""

    def __init__(self, hidden, experts):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, hidden))
        self.top_k = TOP_K

    def forward(self, x):
        return nn.functional.linear(x, self.weight).to(torch.float8_e4m3fn)


class Fp8Block(nn.Module):
    def __init__(self, hidden=16, experts=EXPERTS):
        super().__init__()
        self.router = Fp8Router(hidden, experts)
        self.experts = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(experts))

    def forward(self, x):
        logits = self.router(x).float()  # the block upcasts to rank them
        ids = torch.topk(logits, TOP_K, dim=-1).indices
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows = (ids == e).any(-1)
            out[rows] += expert(x[rows])
        return out


def test_fp8_logits_are_read_and_measured_in_float32_without_touching_them():
    torch.manual_seed(10)
    block = Fp8Block().eval()
    model = nn.Sequential(block)
    x = torch.randn(24, 16)
    layers = find_moe_layers(model)
    assert [layer.name for layer in layers] == ["0"]
    recorder = Recorder(0, model, layers, queue.Queue(), Settings(flush_interval_s=0, health_passes_per_s=1000),
                        pytest.fail)
    recorder.start()
    with torch.no_grad():
        out = model(x)
    recorder.stop()
    with torch.no_grad():
        logits = block.router(x)
        reference = model(x)
    assert torch.equal(out, reference)
    host = recorder.flush_now().to_host()
    ids = torch.topk(logits.float(), TOP_K, dim=-1).indices
    assert torch.equal(host["counts"], torch.bincount(ids.reshape(-1), minlength=EXPERTS))
    f32 = logits.float()
    log_p = torch.log_softmax(f32, dim=-1)
    row = host["health"][0]
    assert float(row[0]) == 24
    assert float(row[1]) == pytest.approx(float(-(log_p.exp() * log_p).sum()), rel=1e-6)
    assert float(row[2]) == pytest.approx(float((torch.logsumexp(f32, -1) ** 2).double().sum()), rel=1e-6)
