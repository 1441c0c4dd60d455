"""The experts' own weights (moe_probe.expert_weights) against this test's own reading of them:
every MoE model type of the installed transformers, experts held as a ModuleList and as
stacked parameters, two experts identical by construction, a zeroed router row, and a
result that does not depend on the chunk size the weights are read in."""

import math
import os
import sys

import pytest
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

import tiny_models  # noqa: E402
from moe_probe.expert_weights import analyze_layer  # noqa: E402
from moe_probe.models import find_model_roots  # noqa: E402
from moe_probe.routers import find_moe_layers  # noqa: E402

torch.set_num_threads(1)


def own_expert_weights(layer):
    """The experts' weights as this test reads them: the floating parameters inside the block's
    `experts` child (or parameter); without one, the block's parameters but its router's and
    shared experts'; for experts kept as embedding rows, those tables. In a parameter whose
    leading dimension counts every expert, the zero-compute experts' slices are not expert weights."""
    block = layer.module
    if layer.arch == "embedding-experts":
        return [m.weight for m in block.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == layer.num_experts]
    experts = getattr(block, "experts", None)
    if isinstance(experts, torch.Tensor):
        return [experts]
    if experts is not None:
        return [p for p in experts.parameters() if p.is_floating_point()]
    router = {id(p) for p in layer.router.parameters()}
    shared = {id(p) for n, c in block.named_children() if "shared" in n for p in c.parameters()}
    return [p for p in block.parameters() if id(p) not in router | shared and p.is_floating_point()]


def own_total_sumsq(layer):
    """Sum of squares of every weight of the computing experts, read here without the probe."""
    compute = layer.num_experts - layer.identity_experts
    total = 0.0
    for p in own_expert_weights(layer):
        if layer.identity_experts and p.shape[0] == layer.num_experts:
            p = p[:compute]
        total += float(p.detach().double().pow(2).sum())
    return total


def own_router_rows(layer):
    weight = getattr(layer.router, "weight", None)
    if not (isinstance(weight, torch.Tensor) and weight.dim() == 2):
        weight = [m.weight for m in layer.router.modules() if isinstance(m, nn.Linear)
                  and m.out_features in (layer.num_experts, layer.num_experts - layer.identity_experts)][-1]
    return weight.detach().double()[: layer.num_experts]


@pytest.mark.parametrize("model_type", sorted(tiny_models.MOE_TYPES))
def test_every_moe_model_type(model_type):
    model, _inputs = tiny_models.build(model_type)
    (root, layers), = find_model_roots([model])
    for layer in layers:
        r = analyze_layer(layer)
        E = layer.num_experts
        compute = E - layer.identity_experts
        assert r["layout"] in ("modules", "stacked", "embedding-rows"), (layer.name, r["notes"])
        norms = r["expert_norms"]
        # the experts' weights, all of them and nothing else: total squared norms agree
        mine = own_total_sumsq(layer)
        assert float(norms[:compute].pow(2).sum()) == pytest.approx(mine, rel=1e-5), layer.name
        assert torch.allclose(r["group_norms"][:, :compute].pow(2).sum(0), norms[:compute].pow(2), rtol=1e-6)
        cos = r["weight_cosine"][:compute, :compute]
        assert torch.allclose(cos, cos.T, atol=1e-9) and torch.allclose(cos.diagonal(), torch.ones(compute, dtype=cos.dtype), atol=1e-6)
        assert bool((cos.abs() <= 1 + 1e-9).all())
        if layer.identity_experts:
            assert bool(torch.isnan(norms[compute:]).all())
        if layer.router is not None and layer.arch != "embedding-experts":
            rows = own_router_rows(layer)
            assert r["router_norms"][: rows.shape[0]].tolist() == pytest.approx(rows.norm(dim=1).tolist(), rel=1e-6)
    assert all(p.grad is None for p in root.parameters())


def tiny_mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2)
    return MixtralForCausalLM(config).eval()


class ListMoE(nn.Module):
    """A block of this test's own: a gate and a ModuleList of experts."""

    def __init__(self, experts=6, hidden=16):
        super().__init__()
        self.top_k = 2
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(hidden, 32), nn.ReLU(), nn.Linear(32, hidden))
                                     for _ in range(experts))

    def forward(self, x):
        return x


def own_cosine(vectors):
    v = torch.stack([t.detach().double() for t in vectors])
    n = v.norm(dim=1)
    return (v @ v.T) / (n[:, None] * n[None, :])


def test_identical_experts_and_a_zeroed_router_row_in_stacked_parameters():
    model = tiny_mixtral()
    block = model.model.layers[1].mlp
    with torch.no_grad():
        block.experts.gate_up_proj[5].copy_(block.experts.gate_up_proj[2])
        block.experts.down_proj[5].copy_(block.experts.down_proj[2])
        block.gate.weight[3].zero_()
    healthy, planted = (analyze_layer(layer) for layer in find_moe_layers(model))
    vectors = [torch.cat([block.experts.gate_up_proj[e].flatten(), block.experts.down_proj[e].flatten()]) for e in range(8)]
    assert torch.allclose(planted["weight_cosine"], own_cosine(vectors), atol=1e-6)
    assert planted["weight_cosine"][2, 5] == pytest.approx(1.0, abs=1e-6)
    off = planted["weight_cosine"] - torch.eye(8, dtype=torch.float64)
    off[2, 5] = off[5, 2] = 0
    assert float(off.abs().max()) < 0.5  # nothing else alike
    assert planted["router_norms"][3] == 0 and bool(torch.isnan(planted["router_cosine"][3]).all())
    median = float(planted["router_norms"].median())
    assert all(float(n) > 0.5 * median for i, n in enumerate(planted["router_norms"]) if i != 3)
    # the healthy layer: random experts are far from alike, router rows all of a size
    hoff = healthy["weight_cosine"] - torch.eye(8, dtype=torch.float64)
    assert float(hoff.abs().max()) < 0.5
    assert float(healthy["router_norms"].min()) > 0.5 * float(healthy["router_norms"].median())


def test_identical_experts_in_a_module_list():
    torch.manual_seed(1)
    model = nn.Sequential(ListMoE(), ListMoE())
    with torch.no_grad():
        model[0].experts[4].load_state_dict(model[0].experts[1].state_dict())
    layer = find_moe_layers(model)[0]
    r = analyze_layer(layer)
    assert r["layout"] == "modules" and r["groups"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    vectors = [torch.cat([p.flatten() for p in e.parameters()]) for e in model[0].experts]
    assert torch.allclose(r["weight_cosine"], own_cosine(vectors), atol=1e-6)
    assert r["weight_cosine"][1, 4] == pytest.approx(1.0, abs=1e-6)
    assert r["expert_norms"].tolist() == pytest.approx([float(v.detach().double().norm()) for v in vectors], rel=1e-6)
    first = model[0].experts[0][0].weight.detach().double().norm()
    assert r["group_norms"][0, 0] == pytest.approx(float(first), rel=1e-6)


def test_the_answer_does_not_depend_on_the_chunk_size():
    model = tiny_mixtral()
    layer = find_moe_layers(model)[0]
    whole = analyze_layer(layer)
    chunked = analyze_layer(layer, chunk_bytes=1024)
    for key in ("router_norms", "router_cosine", "expert_norms", "group_norms", "weight_cosine"):
        assert torch.allclose(whole[key], chunked[key], atol=1e-6, equal_nan=True), key
    # what it held at once: the chunk (float32, and its stacked source) and the [E, E] sums
    assert chunked["peak_bytes"] <= 2 * 1024 + 2 * 8 * 8 * 8 + 2 * 4 * 8 * 96
    assert math.isfinite(chunked["seconds"])


def test_a_cancelled_analysis_stops():
    layer = find_moe_layers(tiny_mixtral())[0]
    with pytest.raises(InterruptedError):
        analyze_layer(layer, cancelled=lambda: True)
