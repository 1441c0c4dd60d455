"""Attribution of a router decision (moe_probe.attribution) against computations written here:
finite differences for gradient x input, a plain loop of midpoint Riemann steps for integrated
gradients, completeness within 1 % at 64 steps; and what it must leave alone in the model."""

import math
import os
import sys

import pytest
import torch
from torch import nn

NATIVE_HOST = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if NATIVE_HOST not in sys.path:
    sys.path.insert(0, NATIVE_HOST)

import tiny_models  # noqa: E402
from moe_probe.attribution import Limits, Refusal, attribute  # noqa: E402
from moe_probe.models import find_model_roots  # noqa: E402
from moe_probe.routers import find_moe_layers  # noqa: E402

torch.set_num_threads(1)

IDS = torch.tensor([[3, 17, 5, 40, 22, 9, 31]])


@pytest.fixture(autouse=True)
def float64_throughout(monkeypatch):
    """Mixtral computes its norms and its routing softmax in float32 whatever the model's dtype.
    Finite differences need a function computed in float64 throughout, so for these tests the
    two do their arithmetic in the input's dtype (the same formulas, no float32 round trip)."""
    from transformers.models.mixtral import modeling_mixtral as mm

    def norm(self, hidden):
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))

    def router(self, hidden):
        hidden = hidden.reshape(-1, self.hidden_dim)
        logits = torch.nn.functional.linear(hidden, self.weight)
        top, ids = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
        return logits, top / top.sum(dim=-1, keepdim=True), ids

    monkeypatch.setattr(mm.MixtralRMSNorm, "forward", norm)
    monkeypatch.setattr(mm.MixtralTopKRouter, "forward", router)


def tiny_mixtral(dtype=torch.float64, layers=3):
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(0)
    # eager experts: transformers' grouped matmul takes no float64
    config = MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=64, experts_implementation="eager")
    return MixtralForCausalLM(config).eval().to(dtype)


def router_score(model, embeds, layer, position, expert, prob=False):
    """This test's own f: the model run on inputs_embeds, the gate output of `layer` taken by a hook."""
    seen = []
    handle = model.model.layers[layer].mlp.gate.register_forward_hook(lambda m, a, out: seen.append(out[0]))
    try:
        model(inputs_embeds=embeds, use_cache=False)
    finally:
        handle.remove()
    scores = seen[0].reshape(embeds.shape[0], embeds.shape[1], -1)[:, position]
    return torch.softmax(scores, -1)[:, expert] if prob else scores[:, expert]


def embeddings(model, ids=IDS):
    return model.get_input_embeddings()(ids).detach()


def finite_difference_gxi(model, layer, position, expert, prob=False, eps=1e-6):
    x = embeddings(model)
    grad = torch.zeros_like(x)
    with torch.no_grad():
        for j in range(x.shape[1]):
            for h in range(x.shape[2]):
                up, down = x.clone(), x.clone()
                up[0, j, h] += eps
                down[0, j, h] -= eps
                grad[0, j, h] = (router_score(model, up, layer, position, expert, prob)
                                 - router_score(model, down, layer, position, expert, prob)) / (2 * eps)
    return (grad[0] * x[0]).sum(-1)


def riemann_ig(model, layer, position, expert, steps, baseline, prob=False):
    """Integrated gradients by a plain loop: the midpoint rule, one step at a time."""
    x = embeddings(model)
    total = torch.zeros_like(x)
    for k in range(steps):
        alpha = (k + 0.5) / steps
        point = (baseline + alpha * (x - baseline)).requires_grad_(True)
        with torch.enable_grad():
            f = router_score(model, point, layer, position, expert, prob).sum()
            (g,) = torch.autograd.grad(f, point)
        total += g
    return ((x - baseline) * total / steps)[0].sum(-1)


@pytest.mark.parametrize("layer,position,expert", [(0, 4, 1), (1, 6, 3), (2, 2, 0)])
def test_gradient_x_input_equals_finite_differences(layer, position, expert):
    model = tiny_mixtral()
    moe = find_moe_layers(model)
    result = attribute(model, moe[layer], IDS, position, expert, steps=2)
    fd = finite_difference_gxi(model, layer, position, expert)
    assert result.gxi_logit == pytest.approx(fd.tolist(), abs=1e-7)
    fd_prob = finite_difference_gxi(model, layer, position, expert, prob=True)
    assert result.gxi_prob == pytest.approx(fd_prob.tolist(), abs=1e-7)
    # a causal model: positions after the token do not move its router
    assert all(v == 0 for v in result.gxi_logit[position + 1:])
    with torch.no_grad():
        assert result.logit == pytest.approx(float(router_score(model, embeddings(model), layer, position, expert)), abs=1e-12)


@pytest.mark.parametrize("layer", [0, 2])
def test_integrated_gradients_equal_a_plain_riemann_loop(layer):
    model = tiny_mixtral()
    moe = find_moe_layers(model)
    x = embeddings(model)
    for baseline, b in (("zero", torch.zeros_like(x)), ("token", model.get_input_embeddings()(torch.full_like(IDS, 7)).detach())):
        result = attribute(model, moe[layer], IDS, 5, 2, steps=12, baseline=baseline, baseline_token=7)
        mine = riemann_ig(model, layer, 5, 2, 12, b)
        assert result.ig_logit == pytest.approx(mine.tolist(), abs=1e-9)
        mine_prob = riemann_ig(model, layer, 5, 2, 12, b, prob=True)
        assert result.ig_prob == pytest.approx(mine_prob.tolist(), abs=1e-9)
        with torch.no_grad():
            assert result.baseline_logit == pytest.approx(float(router_score(model, b, layer, 5, 2)), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_completeness_error_under_one_percent_at_64_steps(dtype):
    model = tiny_mixtral(dtype)
    moe = find_moe_layers(model)
    for position, expert in ((6, 0), (3, 2)):
        for baseline in ("zero", "mean"):
            r = attribute(model, moe[0], IDS, position, expert, steps=64, baseline=baseline)
            for values, fx, fb in ((r.ig_logit, r.logit, r.baseline_logit), (r.ig_prob, r.prob, r.baseline_prob)):
                error = abs(sum(values) - (fx - fb)) / abs(fx - fb)
                assert error < 0.01, (position, expert, baseline, error)


def test_steps_are_batched_as_the_memory_limit_allows_with_the_same_answer():
    model = tiny_mixtral()
    layer = find_moe_layers(model)[1]
    wide = attribute(model, layer, IDS, 4, 1, steps=16)
    assert wide.batch == 16
    # room for about two paths at once: the same integral in eight batches
    narrow = attribute(model, layer, IDS, 4, 1, steps=16, limits=Limits(max_bytes=int(wide.peak_bytes / 16 * 2.5)))
    assert narrow.batch == 2
    assert narrow.ig_logit == pytest.approx(wide.ig_logit, abs=1e-12)


def test_nothing_in_the_model_changes_and_no_parameter_gets_a_grad():
    model = tiny_mixtral(torch.float32)
    for p in model.parameters():
        assert p.requires_grad  # gradients could reach them: they must not be stored
    state = {k: v.clone() for k, v in model.state_dict().items()}
    versions = {k: v._version for k, v in model.state_dict().items()}
    attrs = {name: sorted(vars(m)) for name, m in model.named_modules()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with torch.no_grad():
        reference = model(IDS).logits
    for layer in find_moe_layers(model):
        attribute(model, layer, IDS, 3, 0, steps=8)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {k: v._version for k, v in model.state_dict().items()} == versions
    assert {name: sorted(vars(m)) for name, m in model.named_modules()} == attrs
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, reference)
    assert torch.is_grad_enabled()  # grad mode of this thread is as it was


class HandWrittenMoE(nn.Module):
    """A model of this test's own: embedding, two blocks of gate + ModuleList experts, no
    transformers, called with the ids as a positional argument."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.top_k = 2
            self.gate = nn.Linear(8, 4, bias=False)
            self.experts = nn.ModuleList(nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)) for _ in range(4))

        def forward(self, x):
            flat = x.reshape(-1, x.shape[-1])
            weights, ids = torch.topk(torch.softmax(self.gate(flat), -1), self.top_k, dim=-1)
            out = torch.zeros_like(flat)
            for e, expert in enumerate(self.experts):
                rows, slot = torch.where(ids == e)
                if rows.numel():
                    out[rows] += weights[rows, slot].unsqueeze(-1) * expert(flat[rows])
            return x + out.reshape(x.shape)

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(32, 8)
        self.mix = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([self.Block(), self.Block()])

    def forward(self, ids):
        x = self.embed(ids)
        x = x + torch.tanh(self.mix(x)).cumsum(1)  # a little context across positions
        for block in self.blocks:
            x = block(x)
        return x


def test_a_hand_written_model_called_with_positional_ids():
    torch.manual_seed(1)
    model = HandWrittenMoE().eval().double()
    ids = torch.tensor([[1, 5, 9, 30, 2]])
    layers = find_moe_layers(model)
    assert [layer.name for layer in layers] == ["blocks.0", "blocks.1"]

    def f(embeds):
        seen = []
        handle = model.blocks[1].gate.register_forward_hook(lambda m, a, out: seen.append(out))
        try:
            x = embeds + torch.tanh(model.mix(embeds)).cumsum(1)
            x = model.blocks[0](x)
            model.blocks[1](x)
        finally:
            handle.remove()
        return seen[0].reshape(1, 5, 4)[0, 3, 2]

    x = model.embed(ids).detach()
    grad = torch.zeros_like(x)
    with torch.no_grad():
        for j in range(5):
            for h in range(8):
                up, down = x.clone(), x.clone()
                up[0, j, h] += 1e-6
                down[0, j, h] -= 1e-6
                grad[0, j, h] = (f(up) - f(down)) / 2e-6
    result = attribute(model, layers[1], ids, 3, 2, steps=4)
    assert result.gxi_logit == pytest.approx((grad[0] * x[0]).sum(-1).tolist(), abs=1e-7)
    with torch.no_grad():
        assert result.logit == pytest.approx(float(f(x)), abs=1e-12)


def test_what_cannot_be_explained_is_refused_with_the_reason():
    model = tiny_mixtral()
    layer = find_moe_layers(model)[0]
    with pytest.raises(Refusal, match="outside the 7-token sequence"):
        attribute(model, layer, IDS, 7, 0)
    with pytest.raises(Refusal, match="not one of the layer's 4 experts"):
        attribute(model, layer, IDS, 1, 4)
    with pytest.raises(Refusal, match="over the limit of 4"):
        attribute(model, layer, IDS, 1, 0, limits=Limits(max_tokens=4))
    with pytest.raises(Refusal, match="longer than its limit"):
        attribute(model, find_moe_layers(model)[2], IDS, 1, 0, limits=Limits(max_seconds=1e-4))
    with pytest.raises(Refusal, match="cancelled"):
        attribute(model, layer, IDS, 1, 0, cancelled=lambda: True)
    model.model.layers[1].train()
    with pytest.raises(Refusal) as refused:
        attribute(model, layer, IDS, 1, 0)
    assert refused.value.code == "training_mode"
    assert all(p.grad is None for p in model.parameters())


# Why a layer of these types cannot be explained, which the probe must say rather than fail on.
EXPECTED_REFUSALS = {
    "no_router",      # Doge: experts looked up through product keys, no per-expert scores
    "no_scores",      # a router that does not see text tokens (Ernie 4.5 VL's vision experts)
    "over_limit",     # linear-attention models whose tiny versions save > 64 MiB for a backward
    "decoder_layer",  # the decoder of an encoder-decoder model (only the encoder's ids are kept)
}


@pytest.mark.parametrize("model_type", sorted(tiny_models.MOE_TYPES))
def test_every_moe_model_type_is_explained_or_refused_with_a_reason(model_type):
    model, inputs = tiny_models.build(model_type)
    if "input_ids" not in inputs:
        pytest.skip("%s takes no token ids" % model_type)
    (root, layers), = find_model_roots([model])
    ids = inputs["input_ids"][0]
    call = tiny_models.forward(model_type, model)
    with torch.no_grad():
        before = call(**inputs)
    for layer in (layers[0], layers[-1]):
        try:
            r = attribute(root, layer, ids, 3, 0, steps=2, limits=Limits(max_bytes=64 * 2**20))
        except Refusal as refused:
            assert refused.code in EXPECTED_REFUSALS, (layer.name, refused.code, str(refused))
            continue
        assert len(r.gxi_logit) == len(r.ig_logit) == ids.shape[0]
        assert all(math.isfinite(v) for v in r.gxi_logit + r.ig_logit + r.gxi_prob + r.ig_prob)
        assert len(r.recomputed) == min(layer.top_k, layer.num_experts)
    with torch.no_grad():
        after = call(**inputs)
    for a, b in zip(_tensors(before), _tensors(after)):
        assert torch.equal(a, b), model_type
    assert all(p.grad is None for p in model.parameters())


def _tensors(output):
    """Every tensor in a model's output (a ModelOutput is a dict; tuples of layers' caches nest)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in _tensors(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in _tensors(v)]
    return []
