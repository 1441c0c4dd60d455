"""The probe on models written for routing designs that are not "top-k of a softmax".

Each model below is a small hand-written MoE whose blocks log exactly what they handed their
experts (the ground truth). The probe must find each block by structure, say what kind of layer
and routing it is, and report exactly what was dispatched (probe_check.check_probe), with the
model's outputs unchanged; the Recorder must count it at each layer's own width.
"""

import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_HOST = os.path.dirname(HERE)
for path in (HERE, NATIVE_HOST):
    if path not in sys.path:
        sys.path.insert(0, path)

from moe_probe.models import Survey, no_moe_message  # noqa: E402
from moe_probe.routers import find_moe_layers  # noqa: E402
from probe_check import check_probe, check_recorder  # noqa: E402

torch.set_num_threads(1)

H, VOCAB = 16, 64


def tokens(batch=2, seq=12, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


class StackedExperts(nn.Module):
    """E experts as stacked weights, called as experts(hidden, ids [N, k], weights [N, k]) like
    transformers v5; ids >= `compute` are zero-compute experts that pass the token through."""

    def __init__(self, num_experts, compute=None):
        super().__init__()
        self.compute = num_experts if compute is None else compute
        self.weight = nn.Parameter(torch.randn(self.compute, H, H) * 0.2)

    def forward(self, hidden, ids, weights):
        out = torch.zeros_like(hidden)
        for slot in range(ids.shape[1]):
            chosen = ids[:, slot]
            real = chosen.clamp(max=self.compute - 1)
            y = torch.einsum("nh,nhd->nd", hidden, self.weight[real])
            y = torch.where((chosen < self.compute).unsqueeze(-1), y, hidden)  # identity experts
            out = out + weights[:, slot:slot + 1] * y
        return out


class Model(nn.Module):
    """Embedding, the given blocks with residuals, a head. Blocks that need the token ids get them."""

    def __init__(self, blocks):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, H)
        self.layers = nn.ModuleList(blocks)
        self.head = nn.Linear(H, VOCAB)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for block in self.layers:
            x = x + (block(x, input_ids) if getattr(block, "wants_ids", False) else block(x))
        return self.head(x)


def run(model, inputs, names):
    """Truth logged by the blocks over one pass, by layer name."""
    for block in model.modules():
        if hasattr(block, "log"):
            block.log.clear()
    with torch.no_grad():
        model(**inputs)
    truth = {name: list(model.get_submodule(name).log) for name in names}
    for block in model.modules():
        if hasattr(block, "log"):
            block.log.clear()
    return truth


def check(model, names, inputs=None, **kwargs):
    inputs = inputs or dict(input_ids=tokens())
    truth = run(model, inputs, names)
    layers, records = check_probe(model, inputs, truth, names, **kwargs)
    for block in model.modules():
        if hasattr(block, "log"):
            block.log.clear()
    check_recorder(model, inputs, layers, truth)
    return layers, records, truth


# -- mixture of attention ---------------------------------------------------------------------


class RoutedQueryAttention(nn.Module):
    """Mixture-of-attention: each token's query projection is a mix of its top-k of E experts."""

    def __init__(self, num_experts=6, top_k=2):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(H, num_experts, bias=False)
        self.experts = StackedExperts(num_experts)
        self.k_proj = nn.Linear(H, H)
        self.v_proj = nn.Linear(H, H)
        self.log = []

    def forward(self, x):
        b, s, _ = x.shape
        flat = x.reshape(-1, H)
        weights, ids = torch.topk(torch.softmax(self.router(flat), dim=-1), self.top_k, dim=-1)
        self.log.append(dict(ids=ids.clone(), weights=weights.clone()))
        q = self.experts(flat, ids, weights).reshape(b, s, H)
        att = torch.softmax(q @ self.k_proj(x).transpose(1, 2) / H ** 0.5, dim=-1)
        return att @ self.v_proj(x)


class TopKBlock(nn.Module):
    """A plain top-k MoE MLP of `num_experts` experts, for models that mix layer kinds and widths."""

    def __init__(self, num_experts, top_k=2):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(H, num_experts, bias=False)
        self.experts = StackedExperts(num_experts)
        self.log = []

    def forward(self, x):
        flat = x.reshape(-1, H)
        weights, ids = torch.topk(torch.softmax(self.gate(flat), dim=-1), self.top_k, dim=-1)
        self.log.append(dict(ids=ids.clone(), weights=weights.clone()))
        return self.experts(flat, ids, weights).reshape(x.shape)


def test_mixture_of_attention_is_its_own_kind_of_layer_beside_mlps_of_another_width():
    torch.manual_seed(0)
    model = Model([RoutedQueryAttention(num_experts=8), TopKBlock(4), RoutedQueryAttention(num_experts=8), TopKBlock(4)]).eval()
    layers, _, _ = check(model, ["layers.0", "layers.1", "layers.2", "layers.3"])
    assert [(l.kind, l.num_experts, l.model_index) for l in layers] == [
        ("attention", 8, 0), ("mlp", 4, 1), ("attention", 8, 2), ("mlp", 4, 3)]


# -- zero-compute experts ----------------------------------------------------------------------


class ZeroComputeRouter(nn.Module):
    """LongCat-Flash's router: logits by F.linear on its classifier's weight (the module itself is
    never called), softmax, top-k with a selection-only bias, over routed + zero-compute experts."""

    def __init__(self, routed, zero, top_k):
        super().__init__()
        self.top_k = top_k
        self.classifier = nn.Linear(H, routed + zero, bias=False)
        self.register_buffer("e_score_correction_bias", torch.linspace(-0.3, 0.3, routed + zero))

    def forward(self, hidden):
        logits = F.linear(hidden.float(), self.classifier.weight.float())
        scores = logits.softmax(dim=-1)
        ids = torch.topk(scores + self.e_score_correction_bias, self.top_k, dim=-1, sorted=False).indices
        return scores.gather(1, ids), ids


class ZeroComputeBlock(nn.Module):
    def __init__(self, routed=6, zero=3, top_k=2):
        super().__init__()
        self.router = ZeroComputeRouter(routed, zero, top_k)
        self.experts = StackedExperts(routed + zero, compute=routed)
        self.log = []

    def forward(self, x):
        flat = x.reshape(-1, H)
        weights, ids = self.router(flat)
        self.log.append(dict(ids=ids.clone(), weights=weights.clone()))
        return self.experts(flat, ids, weights).reshape(x.shape)


def test_zero_compute_experts_router_applied_with_f_linear_on_its_classifier_weight():
    torch.manual_seed(0)
    model = Model([ZeroComputeBlock(), ZeroComputeBlock()]).eval()
    with torch.no_grad():
        for block in model.layers:
            block.router.classifier.weight.normal_(0, 1.0)
    layers, records, truth = check(model, ["layers.0", "layers.1"])
    assert [(l.num_experts, l.identity_experts) for l in layers] == [(9, 3), (9, 3)]
    # the zero-compute experts are really chosen in this run, and counted as such
    chosen = torch.cat([t["ids"].reshape(-1) for t in truth["layers.0"]])
    assert (chosen >= 6).any()


# -- expert choice -----------------------------------------------------------------------------


class ExpertChoiceExperts(nn.Module):
    """Experts called with the tokens each one picked: experts(hidden, token_idx [E, C], gates [E, C])."""

    def __init__(self, num_experts):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_experts, H, H) * 0.2)

    def forward(self, hidden, token_idx, gates):
        out = torch.zeros_like(hidden)
        for e in range(token_idx.shape[0]):
            rows = hidden[token_idx[e]] @ self.weight[e]
            out = out.index_add(0, token_idx[e], gates[e].unsqueeze(-1) * rows)
        return out


class ExpertChoiceBlock(nn.Module):
    """Each expert takes its `capacity` highest-scoring tokens (Zhou et al. 2022)."""

    def __init__(self, num_experts=4, capacity_factor=1.0):
        super().__init__()
        self.num_experts = num_experts
        self.capacity_factor = capacity_factor
        self.gate = nn.Linear(H, num_experts, bias=False)
        self.experts = ExpertChoiceExperts(num_experts)
        self.log = []

    def forward(self, x):
        flat = x.reshape(-1, H)
        n = flat.shape[0]
        capacity = int(n * self.capacity_factor / self.num_experts)
        scores = torch.softmax(self.gate(flat), dim=-1)  # [N, E]
        gates, token_idx = torch.topk(scores.t(), capacity, dim=-1)  # [E, C]: experts choose
        per_token = torch.zeros(n, dtype=torch.int64).scatter_add(0, token_idx.reshape(-1), torch.ones(token_idx.numel(), dtype=torch.int64))
        self.log.append(dict(loads=[capacity] * self.num_experts, tokens=n, dropped=per_token == 0))
        return self.experts(flat, token_idx, gates).reshape(x.shape)


def test_expert_choice_routing_counts_the_tokens_each_expert_took_and_tokens_no_expert_took():
    torch.manual_seed(0)
    model = Model([ExpertChoiceBlock(), ExpertChoiceBlock()]).eval()
    with torch.no_grad():
        for block in model.layers:
            block.gate.weight.normal_(0, 1.0)
    layers, records, truth = check(model, ["layers.0", "layers.1"])
    assert {l.design for l in layers} == {"expert-choice"}
    assert {l.token_source for l in layers} == {"none"}
    assert any(bool(t["dropped"].any()) for t in truth["layers.0"]), "some tokens should be picked by no expert"


# -- variable top-k ----------------------------------------------------------------------------


class MaskExperts(nn.Module):
    """Experts called with a multi-hot mask [N, E] and dense weights [N, E]."""

    def __init__(self, num_experts):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_experts, H, H) * 0.2)

    def forward(self, hidden, mask, weights):
        out = torch.zeros_like(hidden)
        for e in range(mask.shape[1]):
            out = out + (weights[:, e] * mask[:, e]).unsqueeze(-1) * (hidden @ self.weight[e])
        return out


class ThresholdBlock(nn.Module):
    """Each token takes every expert whose probability reaches `threshold` (0 to E experts)."""

    def __init__(self, num_experts=6, threshold=0.2):
        super().__init__()
        self.threshold = threshold
        self.gate = nn.Linear(H, num_experts, bias=False)
        self.experts = MaskExperts(num_experts)
        self.log = []

    def forward(self, x):
        flat = x.reshape(-1, H)
        probs = torch.softmax(self.gate(flat), dim=-1)
        mask = (probs >= self.threshold).to(torch.int64)
        ids = torch.where(mask.bool(), torch.arange(mask.shape[1]).expand_as(mask), torch.full_like(mask, -1))
        self.log.append(dict(ids=ids))
        return self.experts(flat, mask, probs).reshape(x.shape)


def test_variable_top_k_threshold_routing():
    torch.manual_seed(0)
    model = Model([ThresholdBlock(), ThresholdBlock()]).eval()
    with torch.no_grad():
        for block in model.layers:
            block.gate.weight.normal_(0, 0.6)
    layers, records, truth = check(model, ["layers.0", "layers.1"], check_weights=False)
    assert {(l.design, l.top_k) for l in layers} == {("variable-k", 6)}
    per_token = torch.cat([(t["ids"] >= 0).sum(dim=-1) for t in truth["layers.0"]])
    assert len(set(per_token.tolist())) > 1, "the number of experts per token should vary here"


# -- hash routing ------------------------------------------------------------------------------


class HashBlock(nn.Module):
    """Experts looked up from the token id in a fixed table; the gate only weights them."""

    wants_ids = True

    def __init__(self, num_experts=8, top_k=2, seed=0):
        super().__init__()
        self.top_k = top_k
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.stack([torch.randperm(num_experts, generator=gen)[:top_k] for _ in range(VOCAB)]))
        self.gate = nn.Linear(H, num_experts, bias=False)
        self.experts = StackedExperts(num_experts)
        self.log = []

    def forward(self, x, input_ids):
        flat = x.reshape(-1, H)
        ids = self.table[input_ids.reshape(-1)]
        weights = torch.softmax(self.gate(flat), dim=-1).gather(1, ids)
        self.log.append(dict(ids=ids.clone(), weights=weights.clone()))
        return self.experts(flat, ids, weights).reshape(x.shape)


def test_hash_routing_by_token_id():
    torch.manual_seed(0)
    model = Model([HashBlock(seed=1), TopKBlock(8)]).eval()
    inputs = dict(input_ids=tokens())
    layers, _, truth = check(model, ["layers.0", "layers.1"], inputs=inputs)
    assert [l.design for l in layers] == ["hash", "top-k"]
    # the table, not the gate, chose: the test's own lookup equals what the block dispatched
    assert torch.equal(truth["layers.0"][0]["ids"], model.layers[0].table[inputs["input_ids"].reshape(-1)])


# -- soft routing ------------------------------------------------------------------------------


class DenseExperts(nn.Module):
    """Every expert on every token, mixed by dense weights [N, E]."""

    def __init__(self, num_experts):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_experts, H, H) * 0.2)

    def forward(self, hidden, weights):
        return torch.einsum("ne,nh,ehd->nd", weights, hidden, self.weight)


class SoftBlock(nn.Module):
    def __init__(self, num_experts=5):
        super().__init__()
        self.gate = nn.Linear(H, num_experts, bias=False)
        self.experts = DenseExperts(num_experts)
        self.log = []

    def forward(self, x):
        flat = x.reshape(-1, H)
        weights = torch.softmax(self.gate(flat), dim=-1)
        top = weights.argmax(dim=-1, keepdim=True)
        self.log.append(dict(ids=top, weights=weights.gather(1, top)))
        return self.experts(flat, weights).reshape(x.shape)


def test_soft_routing_counts_each_tokens_largest_weight_expert():
    torch.manual_seed(0)
    model = Model([SoftBlock(), SoftBlock()]).eval()
    layers, _, _ = check(model, ["layers.0", "layers.1"])
    assert {(l.design, l.top_k) for l in layers} == {("soft", 1)}


# -- sigmoid gating with a selection-only bias, router returning logits only -------------------


class SigmoidBlock(nn.Module):
    """DeepSeek-V3-style gating written by hand: the gate returns raw logits; the block takes
    sigmoid scores, adds a bias for selection only, and normalizes the chosen scores."""

    scoring_func = "sigmoid"

    def __init__(self, num_experts=8, top_k=2):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(H, num_experts, bias=False)
        self.register_buffer("bias", torch.linspace(0.5, -0.5, num_experts))
        self.experts = StackedExperts(num_experts)
        self.log = []

    def forward(self, x):
        flat = x.reshape(-1, H)
        scores = torch.sigmoid(self.gate(flat))
        ids = torch.topk(scores + self.bias, self.top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        self.log.append(dict(ids=ids.clone(), weights=weights.clone()))
        return self.experts(flat, ids, weights).reshape(x.shape)


def test_sigmoid_gating_is_read_as_dispatched_not_recomputed_from_the_logits():
    torch.manual_seed(0)
    model = Model([SigmoidBlock(), SigmoidBlock()]).eval()
    layers, records, truth = check(model, ["layers.0", "layers.1"])
    assert {(l.gating, l.source) for l in layers} == {("sigmoid", "dispatched")}
    # top-k of the logits alone would have chosen otherwise for some tokens
    block = model.layers[0]
    naive = torch.topk(records["layers.0"][0]["logits"], 2, dim=-1).indices.sort(dim=-1).values
    assert not torch.equal(naive, truth["layers.0"][0]["ids"].sort(dim=-1).values)
    assert block is not None


# -- shared experts ----------------------------------------------------------------------------


class SharedExpertBlock(nn.Module):
    """Routed top-k experts plus one shared expert every token goes through."""

    def __init__(self, num_experts=6, top_k=2):
        super().__init__()
        self.top_k = top_k
        self.n_shared_experts = 1
        self.gate = nn.Linear(H, num_experts, bias=False)
        self.experts = StackedExperts(num_experts)
        self.shared_experts = nn.Sequential(nn.Linear(H, 2 * H), nn.GELU(), nn.Linear(2 * H, H))
        self.log = []

    def forward(self, x):
        flat = x.reshape(-1, H)
        weights, ids = torch.topk(torch.softmax(self.gate(flat), dim=-1), self.top_k, dim=-1)
        self.log.append(dict(ids=ids.clone(), weights=weights.clone()))
        return self.experts(flat, ids, weights).reshape(x.shape) + self.shared_experts(x)


def test_shared_experts_are_reported_and_not_counted_as_routed():
    torch.manual_seed(0)
    model = Model([SharedExpertBlock(), SharedExpertBlock()]).eval()
    layers, _, _ = check(model, ["layers.0", "layers.1"])
    assert {(l.shared_experts, l.num_experts) for l in layers} == {(1, 6)}


# -- NaN logits in a block whose router returns only logits ------------------------------------


class SubsetMoE(nn.Module):
    """A user-written block: a Linear gate (logits only), top-k inline, and an nn.ModuleList of
    experts each called on the rows routed to it (the Mixtral-v4 style)."""

    def __init__(self, num_experts=4, top_k=2):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(H, num_experts, bias=False)
        self.experts = nn.ModuleList(nn.Linear(H, H) for _ in range(num_experts))
        self.log = []

    def forward(self, x):
        flat = x.reshape(-1, H)
        probs = torch.softmax(self.gate(flat), dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        out = torch.zeros_like(flat)
        loads = []
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(ids == e)
            loads.append(int(rows.numel()))
            if rows.numel():
                out = out.index_add(0, rows, weights[rows, slot, None] * expert(flat[rows]))
        self.log.append(dict(loads=loads, tokens=flat.shape[0]))
        return out.reshape(x.shape)


def test_nan_logits_counts_what_reached_the_experts_and_health_reports_the_nan():
    torch.manual_seed(0)
    model = Model([SubsetMoE(), SubsetMoE()]).eval()
    with torch.no_grad():
        model.layers[1].gate.weight[0, 0] = float("nan")  # every logit of expert 0 is NaN
    inputs = dict(input_ids=tokens())
    layers, records, truth = check(model, ["layers.0", "layers.1"], inputs=inputs)
    assert {l.source for l in layers} == {"expert-inputs"}
    # torch.topk over NaN logits picks expert 0 everywhere; the block's own top-k over NaN
    # probabilities did something else, and the counts show what the experts received
    naive = torch.topk(records["layers.1"][0]["logits"], 2, dim=-1).indices
    assert not torch.equal(torch.bincount(naive.reshape(-1), minlength=4), torch.tensor(truth["layers.1"][0]["loads"]))
    recorder = check_recorder(model, inputs, layers, truth)
    health = recorder.flush_now().to_host()["health"]
    assert health[1, 3] > 0 and health[0, 3] == 0  # NaN logits counted in layer 1 only


# -- a model the probe cannot read -------------------------------------------------------------


class Unnamed(nn.Module):
    """A gate with one row per expert, but its experts under a name the probe does not know and
    no top-k setting anywhere: nothing says how many experts a token takes, nor where they are."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(H, 4, bias=False)
        self.ffns = nn.ModuleList(nn.Linear(H, H) for _ in range(4))

    def forward(self, x):
        probs = torch.softmax(self.gate(x), -1)
        return sum(probs[..., e:e + 1] * f(x) for e, f in enumerate(self.ffns))


class NoRouter(nn.Module):
    def __init__(self):
        super().__init__()
        self.experts = nn.ModuleList(nn.Linear(H, H) for _ in range(4))
        self.norm = nn.LayerNorm(H)

    def forward(self, x):
        return self.norm(sum(e(x) for e in self.experts))


def test_a_model_the_probe_cannot_read_gets_told_which_modules_looked_like_routers_and_why():
    model = Model([Unnamed(), NoRouter()])
    rejected = []
    assert find_moe_layers(model, rejected) == []
    message = no_moe_message(Survey([], 40, None, 0, rejected))
    assert message.startswith("No MoE layer the probe understands was found among the 40 live torch modules.")
    assert "layers.0.gate (Linear 16->4): named like a router, but no experts beside it and no top-k setting on it" in message
    assert "layers.1 (NoRouter): has 4 experts but no child projects to 4 outputs (children: layers.1.norm (LayerNorm))" in message
    # nothing MoE-like at all: the message says what the probe looks for
    plain = no_moe_message(Survey([], 12, None, 0, []))
    assert "No module looked like a router" in plain


@pytest.mark.parametrize("k", [1, 3])
def test_reading_never_changes_with_the_number_of_experts_per_token(k):
    """The same block at k = 1 and k = 3: one-hot masks are not mistaken for ids and back."""
    torch.manual_seed(0)
    model = Model([TopKBlock(5, top_k=k), TopKBlock(5, top_k=k)]).eval()
    layers, _, _ = check(model, ["layers.0", "layers.1"])
    assert {l.top_k for l in layers} == {k}
