"""The probe's readers against real (tiny, random-weight) models of every MoE model type of the
installed transformers, and of hand-written blocks.

`test_every_moe_model_type` runs each model type of tiny_models.MOE_TYPES (which must cover every
MoE type the installed transformers defines) through probe_check.check_probe against this test's
own capture of what the experts received: the ids and weights handed to each experts module
(transformers v5 calls experts(hidden, top_k_index, top_k_weights)), the rows each separately
called expert received, or, where the experts are handed no ids (Llama4, Zaya's skip class,
DeepSeek-V4's hash table), a recomputation written here. Then the probe's Recorder must count
exactly that, layer by layer, each at its own width.

The other tests recompute each architecture's documented selection rule from transformers'
router outputs (or from the router input, captured here) and check the probe against that too.
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

from moe_probe.routers import find_moe_layers  # noqa: E402
from probe_check import Capture, assert_routing_equal, by_sorted_ids, check_probe, check_recorder  # noqa: E402

torch.set_num_threads(1)
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
import tiny_models  # noqa: E402

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)


def input_ids(batch=2, seq=12, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def spread_routers(model, std=0.5, seed=3):
    """Give router weights a wider spread than the 0.02 init, so that routing varies per token."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            name = type(module).__name__
            if not ("Router" in name or "Gat" in name):
                continue
            for sub in [module] + [c for c in module.modules() if isinstance(c, nn.Linear)]:
                weight = getattr(sub, "weight", None)
                if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.is_floating_point():
                    weight.copy_(torch.randn(weight.shape, generator=gen) * std)


def experts_used(calls):
    """(ids [N,k], weights [N,k]) that transformers' experts modules were called with:
    experts(hidden_states, top_k_index, top_k_weights), read by position."""
    used = []
    for _module, args, kwargs in calls:
        rest = list(args[1:]) + [v for k, v in kwargs.items() if k != "hidden_states"]
        used.append(dict(ids=rest[0], weights=rest[1] if len(rest) > 1 else None))
    return used


def by_layer(truth, names):
    """Per-call truth in forward order (layer 0, 1, ..., then again) as {layer name: [calls]}."""
    out = {name: [] for name in names}
    for i, record in enumerate(truth):
        out[names[i % len(names)]].append(record)
    return out


def ground_truth(model, inputs, experts_cls=None, base=None):
    """Run once with transformers' router outputs on, and this test's pre-hooks on the experts."""
    experts = [m for m in model.modules() if experts_cls is not None and isinstance(m, experts_cls)]
    capture = Capture(experts)
    try:
        with torch.no_grad():
            output = (base or model)(**inputs, output_router_logits=True)
    finally:
        capture.remove()
    return output, experts_used(capture.calls)


def assert_same(truth_a, truth_b, what, experts=64):
    assert_routing_equal(truth_a, truth_b, what, experts)


# -- selection rules, written out from each architecture's documentation/code -------------------


def softmax_topk(logits, k, normalize):
    probs = torch.softmax(logits.float(), dim=-1)
    weights, ids = torch.topk(probs, k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return dict(ids=ids, weights=weights)


def topk_then_softmax(logits, k):
    values, ids = torch.topk(logits.float(), k, dim=-1)
    return dict(ids=ids, weights=torch.softmax(values, dim=-1))


def deepseek_v3_rule(logits, bias, k, n_group, topk_group, norm, scale, group_limited=True, use_bias=True):
    scores = logits.float().sigmoid()
    choice = scores + bias if use_bias else scores
    n, e = choice.shape
    if group_limited:
        group_scores = choice.view(n, n_group, e // n_group).topk(2, dim=-1).values.sum(dim=-1)
        keep = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(topk_group, dim=-1).indices, 1.0)
        keep = keep.unsqueeze(-1).expand(n, n_group, e // n_group).reshape(n, e).bool()
        choice = choice.masked_fill(~keep, float("-inf"))
    ids = choice.topk(k, dim=-1).indices
    weights = scores.gather(1, ids)
    if norm:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return dict(ids=ids, weights=weights * scale)


# -- architectures ------------------------------------------------------------------------------


def test_mixtral():
    torch.manual_seed(0)
    config = transformers.MixtralConfig(num_hidden_layers=2, num_local_experts=6, num_experts_per_tok=2, **COMMON)
    model = transformers.MixtralForCausalLM(config).eval()
    spread_routers(model)
    inputs = dict(input_ids=input_ids())
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts
    out, used = ground_truth(model, inputs, MixtralExperts)
    truth = [softmax_topk(lg, 2, normalize=True) for lg in out.router_logits]
    assert_same(used, truth, "mixtral rule vs experts")
    check_probe(model, inputs, by_layer(truth, ["model.layers.0.mlp", "model.layers.1.mlp"]), ["model.layers.0.mlp", "model.layers.1.mlp"])


def test_qwen2_moe_with_dense_layer_and_shared_expert():
    torch.manual_seed(0)
    config = transformers.Qwen2MoeConfig(num_hidden_layers=3, num_experts=6, num_experts_per_tok=2,
                                         moe_intermediate_size=24, shared_expert_intermediate_size=24,
                                         mlp_only_layers=[1], norm_topk_prob=False, **COMMON)
    model = transformers.Qwen2MoeForCausalLM(config).eval()
    spread_routers(model)
    inputs = dict(input_ids=input_ids())
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeExperts
    out, used = ground_truth(model, inputs, Qwen2MoeExperts)
    truth = [softmax_topk(lg, 2, normalize=False) for lg in out.router_logits]
    assert_same(used, truth, "qwen2-moe rule vs experts")
    check_probe(model, inputs, by_layer(truth, ["model.layers.0.mlp", "model.layers.2.mlp"]), ["model.layers.0.mlp", "model.layers.2.mlp"])


def test_qwen3_moe():
    torch.manual_seed(0)
    config = transformers.Qwen3MoeConfig(num_hidden_layers=2, num_experts=8, num_experts_per_tok=3,
                                         moe_intermediate_size=24, norm_topk_prob=True, **COMMON)
    model = transformers.Qwen3MoeForCausalLM(config).eval()
    spread_routers(model)
    inputs = dict(input_ids=input_ids())
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts
    out, used = ground_truth(model, inputs, Qwen3MoeExperts)
    truth = [softmax_topk(lg, 3, normalize=True) for lg in out.router_logits]
    assert_same(used, truth, "qwen3-moe rule vs experts")
    check_probe(model, inputs, by_layer(truth, ["model.layers.0.mlp", "model.layers.1.mlp"]), ["model.layers.0.mlp", "model.layers.1.mlp"])


def test_olmoe():
    torch.manual_seed(0)
    config = transformers.OlmoeConfig(num_hidden_layers=2, num_experts=8, num_experts_per_tok=2,
                                      eos_token_id=2, pad_token_id=1, **COMMON)
    model = transformers.OlmoeForCausalLM(config).eval()
    spread_routers(model)
    inputs = dict(input_ids=input_ids())
    from transformers.models.olmoe.modeling_olmoe import OlmoeExperts
    out, used = ground_truth(model, inputs, OlmoeExperts)
    truth = [softmax_topk(lg, 2, normalize=False) for lg in out.router_logits]
    assert_same(used, truth, "olmoe rule vs experts")
    check_probe(model, inputs, by_layer(truth, ["model.layers.0.mlp", "model.layers.1.mlp"]), ["model.layers.0.mlp", "model.layers.1.mlp"])


DEEPSEEK = dict(num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=2,
                n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
                moe_intermediate_size=24, n_shared_experts=1, kv_lora_rank=16, q_lora_rank=None,
                qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0),
                **{**COMMON, "num_key_value_heads": 4})


def tiny_deepseek_v3():
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**DEEPSEEK)).eval()
    spread_routers(model, std=0.3)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(8, generator=gen) * 0.3)
    return model


def deepseek_truth(model, inputs, gates):
    """Router inputs captured by this test's pre-hook on each gate, with the documented rule."""
    capture = Capture(gates)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        capture.remove()
    truth, naive, no_groups = [], [], []
    for gate, args, _ in capture.calls:
        hidden = args[0].reshape(-1, args[0].shape[-1])
        logits = F.linear(hidden.float(), gate.weight.float())
        rule = dict(bias=gate.e_score_correction_bias, k=2, n_group=4, topk_group=2, norm=True, scale=2.5)
        truth.append(deepseek_v3_rule(logits, **rule))
        naive.append(deepseek_v3_rule(logits, **rule, group_limited=False, use_bias=False))
        no_groups.append(deepseek_v3_rule(logits, **rule, group_limited=False))
    # the bias and the group limit both change the choice for some tokens, so a probe that
    # reported the plain top-k of the scores would fail here
    for other in (naive, no_groups):
        assert any(not torch.equal(by_sorted_ids(a["ids"])[0], by_sorted_ids(b["ids"])[0])
                   for a, b in zip(truth, other))
    return truth


def test_deepseek_v3_bias_and_groups_dense_first_layer():
    model = tiny_deepseek_v3()
    inputs = dict(input_ids=input_ids(seq=16))
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Experts
    gates = [layer.mlp.gate for layer in model.model.layers[1:]]
    truth = deepseek_truth(model, inputs, gates)
    _, used = ground_truth(model, inputs, DeepseekV3Experts)
    assert_same(used, truth, "deepseek-v3 rule vs experts")
    check_probe(model, inputs, by_layer(truth, ["model.layers.1.mlp", "model.layers.2.mlp"]), ["model.layers.1.mlp", "model.layers.2.mlp"])


class EarlyV5DeepseekGate(nn.Module):
    """DeepSeek-V3's gate as in early transformers v5: raw fp32 logits, no selection."""

    def __init__(self, gate):
        super().__init__()
        self.weight = gate.weight
        self.e_score_correction_bias = gate.e_score_correction_bias

    def forward(self, hidden_states):
        hidden_states = hidden_states.view(-1, self.weight.shape[1])
        return F.linear(hidden_states.float(), self.weight.float())


class EarlyV5DeepseekMoE(nn.Module):
    """DeepSeek-V3's MoE block as in early transformers v5: selection in route_tokens_to_experts."""

    def __init__(self, block, config):
        super().__init__()
        self.experts = block.experts
        self.gate = EarlyV5DeepseekGate(block.gate)
        self.shared_experts = block.shared_experts
        self.n_routed_experts = config.n_routed_experts
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.top_k = config.num_experts_per_tok

    def route_tokens_to_experts(self, router_logits):
        router_logits = router_logits.sigmoid()
        router_logits_for_choice = router_logits + self.gate.e_score_correction_bias
        group_scores = (
            router_logits_for_choice.view(-1, self.n_group, self.n_routed_experts // self.n_group)
            .topk(2, dim=-1)[0].sum(dim=-1))
        group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores)
        group_mask.scatter_(1, group_idx, 1)
        score_mask = (group_mask.unsqueeze(-1)
                      .expand(-1, self.n_group, self.n_routed_experts // self.n_group)
                      .reshape(-1, self.n_routed_experts))
        scores_for_choice = router_logits_for_choice.masked_fill(~score_mask.bool(), 0.0)
        topk_indices = torch.topk(scores_for_choice, k=self.top_k, dim=-1, sorted=False)[1]
        topk_weights = router_logits.gather(1, topk_indices)
        if self.norm_topk_prob:
            topk_weights /= topk_weights.sum(dim=-1, keepdim=True) + 1e-20
        return topk_indices, topk_weights * self.routed_scaling_factor

    def forward(self, hidden_states):
        residuals = hidden_states
        orig_shape = hidden_states.shape
        router_logits = self.gate(hidden_states)
        topk_indices, topk_weights = self.route_tokens_to_experts(router_logits)
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        hidden_states = self.experts(hidden_states, topk_indices, topk_weights).view(*orig_shape)
        return hidden_states + self.shared_experts(residuals)


def test_deepseek_v3_early_v5_layout_route_tokens_to_experts():
    model = tiny_deepseek_v3()
    for layer in model.model.layers[1:]:
        layer.mlp = EarlyV5DeepseekMoE(layer.mlp, model.config)
    inputs = dict(input_ids=input_ids(seq=16))
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Experts
    gates = [layer.mlp.gate for layer in model.model.layers[1:]]
    truth = deepseek_truth(model, inputs, gates)
    _, used = ground_truth(model, inputs, DeepseekV3Experts)
    assert_same(used, truth, "early-v5 deepseek rule vs experts")
    names = ["model.layers.1.mlp", "model.layers.2.mlp"]
    layers, records = check_probe(model, inputs, by_layer(truth, names), names)
    # the experts are handed the ids: read there, with the gate's raw logits kept for health
    assert {layer.source for layer in layers} == {"dispatched"}
    assert all(r["logits"] is not None and r["logits"].shape == (32, 8) for name in names for r in records[name])


def test_gpt_oss():
    torch.manual_seed(0)
    config = transformers.GptOssConfig(num_hidden_layers=2, num_local_experts=6, num_experts_per_tok=2, head_dim=8,
                                       sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                                       **COMMON)
    model = transformers.GptOssForCausalLM(config).eval()
    spread_routers(model)
    inputs = dict(input_ids=input_ids())
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts
    out, used = ground_truth(model, inputs, GptOssExperts)
    truth = [topk_then_softmax(lg, 2) for lg in out.router_logits]
    assert_same(used, truth, "gpt-oss rule vs experts")
    check_probe(model, inputs, by_layer(truth, ["model.layers.0.mlp", "model.layers.1.mlp"]), ["model.layers.0.mlp", "model.layers.1.mlp"])


def test_llama4_interleaved_moe_layers():
    torch.manual_seed(0)
    config = transformers.Llama4TextConfig(num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=1,
                                           interleave_moe_layer_step=2, intermediate_size_mlp=48, head_dim=8,
                                           attention_chunk_size=16, **COMMON)
    model = transformers.Llama4ForCausalLM(config).eval()
    spread_routers(model)
    inputs = dict(input_ids=input_ids())
    # the causal-LM head drops router outputs; the base model returns transformers' router logits
    out, _ = ground_truth(model, inputs, base=model.model)
    truth = []
    for logits in out.router_logits:  # Llama4: top-k of the logits, sigmoid of the chosen ones
        values, ids = torch.topk(logits, 1, dim=-1)
        truth.append(dict(ids=ids, weights=torch.sigmoid(values.float())))
    check_probe(model, inputs, by_layer(truth, ["model.layers.1.feed_forward", "model.layers.3.feed_forward"]), ["model.layers.1.feed_forward", "model.layers.3.feed_forward"])


def test_dbrx_route_tokens_to_experts():
    torch.manual_seed(0)
    config = transformers.DbrxConfig(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=VOCAB,
                                     attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                                     ffn_config=dict(ffn_hidden_size=48, moe_num_experts=6, moe_top_k=2,
                                                     moe_normalize_expert_weights=1.0))
    model = transformers.DbrxForCausalLM(config).eval()
    with torch.no_grad():
        for block in model.transformer.blocks:
            block.ffn.router.layer.weight.normal_(0, 0.5)
    inputs = dict(input_ids=input_ids())
    from transformers.models.dbrx.modeling_dbrx import DbrxExperts
    out, used = ground_truth(model, inputs, DbrxExperts)
    truth = []
    for logits in out.router_logits:  # softmax, top-k, then divide by the p-norm (p=1)
        weights, ids = torch.topk(torch.softmax(logits, dim=-1), 2, dim=-1)
        truth.append(dict(ids=ids, weights=weights / weights.norm(p=1.0, dim=-1, keepdim=True)))
    assert_same(used, truth, "dbrx rule vs experts")
    layers, _ = check_probe(model, inputs, by_layer(truth, ["transformer.blocks.0.ffn", "transformer.blocks.1.ffn"]), ["transformer.blocks.0.ffn", "transformer.blocks.1.ffn"])
    assert {layer.source for layer in layers} == {"dispatched"}


def test_granite_moe():
    torch.manual_seed(0)
    config = transformers.GraniteMoeConfig(num_hidden_layers=2, num_local_experts=6, num_experts_per_tok=2,
                                           **COMMON)
    model = transformers.GraniteMoeForCausalLM(config).eval()
    spread_routers(model)
    inputs = dict(input_ids=input_ids())
    from transformers.models.granitemoe.modeling_granitemoe import GraniteMoeExperts
    out, used = ground_truth(model, inputs, GraniteMoeExperts)
    truth = [topk_then_softmax(lg, 2) for lg in out.router_logits]
    assert_same(used, truth, "granite-moe rule vs experts")
    check_probe(model, inputs, by_layer(truth, ["model.layers.0.block_sparse_moe", "model.layers.1.block_sparse_moe"]), ["model.layers.0.block_sparse_moe", "model.layers.1.block_sparse_moe"])


def sparsemixer_eval(logits, jitter_eps):
    """PhiMoE's SparseMixer in eval mode: top-1, then top-1 of the rest, each with a masked softmax."""
    scores = logits.float()
    ids, weights = [], []
    masked_scores = scores
    for _ in range(2):
        top, idx = masked_scores.max(dim=-1, keepdim=True)
        factor = scores.abs().clamp(min=top)
        gates = masked_scores.masked_fill((top - scores) / factor > 2 * jitter_eps, float("-inf"))
        weights.append(torch.softmax(gates, dim=-1).gather(-1, idx))
        ids.append(idx)
        masked_scores = masked_scores.scatter(-1, idx, float("-inf"))
    return dict(ids=torch.cat(ids, dim=-1), weights=torch.cat(weights, dim=-1))


def test_phimoe():
    torch.manual_seed(0)
    config = transformers.PhimoeConfig(num_hidden_layers=2, num_local_experts=6, num_experts_per_tok=2,
                                       router_jitter_noise=0.01, **COMMON)
    model = transformers.PhimoeForCausalLM(config).eval()
    spread_routers(model)
    inputs = dict(input_ids=input_ids())
    from transformers.models.phimoe.modeling_phimoe import PhimoeExperts
    out, used = ground_truth(model, inputs, PhimoeExperts)
    truth = [sparsemixer_eval(lg, 0.01) for lg in out.router_logits]
    assert_same(used, truth, "phimoe rule vs experts")
    check_probe(model, inputs, by_layer(truth, ["model.layers.0.mlp", "model.layers.1.mlp"]), ["model.layers.0.mlp", "model.layers.1.mlp"])


def switch_rule(logits, capacity):
    """Top-1 of the softmax; per sequence, an expert takes tokens in order up to its capacity."""
    probs = torch.softmax(logits.float(), dim=-1)  # [B, S, E]
    weights, ids = probs.max(dim=-1)
    one_hot = F.one_hot(ids, logits.shape[-1])
    dropped = ((one_hot.cumsum(dim=1) * one_hot).sum(dim=-1)) > capacity
    return dict(ids=ids.reshape(-1, 1), weights=weights.reshape(-1, 1), dropped=dropped.reshape(-1))


def test_switch_transformers_encoder_decoder_capacity_drops():
    torch.manual_seed(0)
    config = transformers.SwitchTransformersConfig(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=4, num_decoder_layers=4,
        num_sparse_encoder_layers=2, num_sparse_decoder_layers=2, num_experts=4, expert_capacity=3)
    model = transformers.SwitchTransformersForConditionalGeneration(config).eval()
    spread_routers(model)
    ids = input_ids(seq=12)
    inputs = dict(input_ids=ids, decoder_input_ids=ids[:, :7])
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersExperts
    out, used = ground_truth(model, inputs, SwitchTransformersExperts)
    # transformers' router logits: the encoder's sparse layers run first, then the decoder's
    truth = [switch_rule(lg, 3) for lg in tuple(out.encoder_router_logits) + tuple(out.decoder_router_logits)]
    assert sum(int(t["dropped"].sum()) for t in truth) > 0, "capacity 3 should drop tokens here"
    # what the experts were really given: a one-hot dispatch mask, all zero for a dropped token
    for t, u in zip(truth, used):
        dispatch = u["ids"].reshape(-1, 4)
        assert torch.equal(dispatch.sum(dim=-1) == 0, t["dropped"])
        kept = ~t["dropped"]
        assert torch.equal(dispatch.argmax(dim=-1)[kept], t["ids"][kept, 0])
    # Each expert is a separate module: the probe counts the rows each one received, which
    # leaves out the dropped tokens, and reports how many assignments went unserved.
    served = [dict(loads=torch.bincount(t["ids"][~t["dropped"], 0], minlength=4), dropped=int(t["dropped"].sum()))
              for t in truth]
    names = ["encoder.block.1.layer.1.mlp", "encoder.block.3.layer.1.mlp",
             "decoder.block.1.layer.2.mlp", "decoder.block.3.layer.2.mlp"]
    layers, records = check_probe(model, inputs, by_layer(served, names), names)
    assert all(layer.top_k == 1 and layer.num_experts == 4 for layer in layers)
    assert {layer.source for layer in layers} == {"expert-inputs"}
    assert [(layer.stack, layer.model_index) for layer in layers] == [
        ("encoder.block", 1), ("encoder.block", 3), ("decoder.block", 1), ("decoder.block", 3)]


def test_jamba_hybrid_expert_layer_period():
    torch.manual_seed(0)
    config = transformers.JambaConfig(num_hidden_layers=4, num_experts=4, num_experts_per_tok=2,
                                      expert_layer_period=2, expert_layer_offset=1, attn_layer_period=2,
                                      attn_layer_offset=0, mamba_d_state=4, **COMMON)
    model = transformers.JambaForCausalLM(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "route_tokens_to_experts"):
                module.router.weight.normal_(0, 0.5)
    inputs = dict(input_ids=input_ids(seq=8))
    from transformers.models.jamba.modeling_jamba import JambaExperts
    out, used = ground_truth(model, inputs, JambaExperts)
    truth = [softmax_topk(lg, 2, normalize=False) for lg in out.router_logits]
    assert_same(used, truth, "jamba rule vs experts")
    check_probe(model, inputs, by_layer(truth, ["model.layers.1.feed_forward", "model.layers.3.feed_forward"]), ["model.layers.1.feed_forward", "model.layers.3.feed_forward"])


# -- a user-written MoE, not from transformers -------------------------------------------------


class UserTopKMoE(nn.Module):
    """A hand-written block: nn.Linear gate, top-k computed inline in forward, experts in a ModuleList."""

    def __init__(self, hidden, num_experts, top_k, log):
        super().__init__()
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
            for _ in range(num_experts))
        self.top_k = top_k
        self.log = log  # the test's record of what this block really used

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        probs = torch.softmax(self.gate(flat), dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        self.log.append(dict(ids=ids.clone(), weights=weights.clone()))
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            out = out + (weights * (ids == e)).sum(dim=-1, keepdim=True) * expert(flat)
        return out.reshape(x.shape)


class UserStackedMoE(nn.Module):
    """Another style: `router` Linear, experts as one stacked [E, H, H] parameter, top-1."""

    def __init__(self, hidden, num_experts, log):
        super().__init__()
        self.router = nn.Linear(hidden, num_experts)
        self.experts = nn.Parameter(torch.randn(num_experts, hidden, hidden) * 0.1)
        self.num_experts_per_tok = 1
        self.log = log

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        ids = self.router(flat).argmax(dim=-1, keepdim=True)
        self.log.append(dict(ids=ids.clone()))
        return torch.einsum("nh,nhd->nd", flat, self.experts[ids[:, 0]]).reshape(x.shape)


class UserModel(nn.Module):
    def __init__(self, log, hidden=32, num_experts=4):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.blocks = nn.ModuleList([
            UserTopKMoE(hidden, num_experts, 2, log),
            # a dense MLP whose Linear happens to have num_experts outputs: not an MoE layer
            nn.Sequential(nn.Linear(hidden, num_experts), nn.ReLU(), nn.Linear(num_experts, hidden)),
            UserStackedMoE(hidden, num_experts, log),
            UserTopKMoE(hidden, num_experts, 2, log),
        ])
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def test_user_written_moe_blocks():
    torch.manual_seed(0)
    log = []
    model = UserModel(log).eval()
    inputs = dict(input_ids=input_ids())
    with torch.no_grad():
        model(**inputs)
    names = ["blocks.0", "blocks.2", "blocks.3"]
    truth = by_layer(list(log), names)
    # Every expert of UserTopKMoE runs on every token (weighted by a mask) and UserStackedMoE
    # indexes a stacked parameter: nothing but the gate's logits shows the choice, so the
    # probe recomputes top-k from them and says so.
    layers, records = check_probe(model, inputs, truth, names, check_weights=False)
    assert [(layer.num_experts, layer.top_k) for layer in layers] == [(4, 2), (4, 1), (4, 2)]
    assert {layer.source for layer in layers} == {"recomputed"}
    assert all(r["logits"] is not None for name in names for r in records[name])


# -- no MoE at all ------------------------------------------------------------------------------


def test_probe_source_has_no_host_sync_calls():
    """Calls that copy to the host or wait for the device never appear in the adapters' code
    (on CPU some of them are no-ops the op trace above cannot see)."""
    import inspect
    from moe_probe import routers
    source = inspect.getsource(routers)
    code = "\n".join(line.split("#")[0] for line in source.splitlines() if not line.strip().startswith(("#",)))
    code = code.split('"""', 2)[2]  # past the module docstring, which names them
    for call in (".item(", ".cpu(", ".tolist(", ".numpy(", ".nonzero(", "synchronize(", ".to('cpu'", '.to("cpu"'):
        assert call not in code, call


def test_models_without_moe_layers():
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_hidden_layers=2, **COMMON))
    assert find_moe_layers(llama) == []
    assert find_moe_layers(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8))) == []
    assert find_moe_layers(nn.Linear(8, 4)) == []


def test_no_double_counting_when_probed_from_inner_modules():
    """find_moe_layers on the block or on the router alone still yields the layer exactly once."""
    torch.manual_seed(0)
    config = transformers.MixtralConfig(num_hidden_layers=1, num_local_experts=4, num_experts_per_tok=2, **COMMON)
    model = transformers.MixtralForCausalLM(config).eval()
    block = model.model.layers[0].mlp
    assert [layer.name for layer in find_moe_layers(block)] == [""]
    assert [layer.name for layer in find_moe_layers(block.gate)] == [""]
    assert len(find_moe_layers(model)) == 1


# -- every MoE model type of the installed transformers ----------------------------------------


def test_the_table_covers_every_moe_model_type_of_transformers():
    """A transformers upgrade that adds an MoE model type fails here until it is in the table."""
    assert sorted(tiny_models.MOE_TYPES) == tiny_models.moe_model_types()


class Truth:
    """This test's own capture of what each MoE block's experts received, by block name.

    Its knowledge of the interfaces is written out here, by position, independently of the
    probe (which reads by dtype and shape):
      - experts(hidden_states, top_k_index, top_k_weights): the transformers v5 experts call;
      - separately called experts (a ModuleList/ModuleDict): the rows each one received;
      - JetMoE's ParallelExperts(inputs, expert_size): the per-expert sizes;
      - Doge's down_embed(indices): the expert rows looked up.
    Where the experts get no ids, the test recomputes them from what the router returned
    (Llama4: top-k of its logits; Zaya: its skip class; ViTPose: the dataset index)."""

    def __init__(self, model_type, model, inputs):
        self.model_type = model_type
        self.calls = {}  # block name -> [per-call dict]
        self.names = []  # blocks in module order
        self.handles = []
        self.inputs = inputs
        for name, module in model.named_modules():
            leaf, parent = name.rpartition(".")[2], name.rpartition(".")[0]
            if leaf == "experts" and model_type == "vitpose_backbone":
                self._dispatch(parent, module)
            elif leaf == "experts" and isinstance(module, (nn.ModuleList, nn.ModuleDict)):
                self._rows(parent, module)
            elif leaf == "experts" and model_type == "llama4":
                self._llama4(parent, model.get_submodule(parent).router)
            elif leaf == "experts" and model_type == "zaya":
                self._zaya(parent, model.get_submodule(parent))
            elif leaf == "experts" and isinstance(module, nn.Module) and not hasattr(module, "map"):
                self._dispatch(parent, module)
            elif leaf == "input_linear" and hasattr(module, "num_experts"):  # JetMoE, MoE and MoA
                self._sizes(parent, module, model.get_submodule(parent).router.top_k)
            elif leaf == "down_embed" and isinstance(module, nn.Embedding):  # Doge
                self._embedding(parent, module)

    def _block(self, name):
        self.names.append(name)
        self.calls[name] = []
        return self.calls[name]

    def _pre(self, module, hook):
        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _dispatch(self, name, experts):
        calls = self._block(name)

        def hook(module, args, kwargs):
            rest = list(args[1:]) + [v for k, v in kwargs.items() if k != "hidden_states"]
            ids = rest[0].detach().clone()
            if self.model_type == "vitpose_backbone":  # one expert per image: every token of it
                tokens = args[0].shape[1]
                ids = ids.reshape(-1, 1).expand(-1, tokens).reshape(-1, 1)
                calls.append(dict(ids=ids))
            else:
                calls.append(dict(ids=ids, weights=rest[1].detach().clone() if len(rest) > 1 else None))
        self._pre(experts, hook)

    def _rows(self, name, container):
        calls = self._block(name)
        experts = list(container.values()) if isinstance(container, nn.ModuleDict) else list(container)
        experts = [e for e in experts if any(True for _ in e.parameters())]  # not NLLB's Dropout

        def start(module, args, kwargs):
            calls.append(dict(loads=[0] * len(experts), tokens=int(args[0].reshape(-1, args[0].shape[-1]).shape[0])))
        self._pre(container, start)
        for e, expert in enumerate(experts):
            def count(module, args, kwargs, e=e):
                calls[-1]["loads"][e] += int(args[0].reshape(-1, args[0].shape[-1]).shape[0])
            self._pre(expert, count)

    def _sizes(self, name, linear, top_k):
        calls = self._block(name)
        self._pre(linear, lambda module, args, kwargs: calls.append(dict(loads=list(args[1]),
                                                                         tokens=sum(args[1]) // top_k)))

    def _embedding(self, name, embedding):
        calls = self._block(name)
        self._pre(embedding, lambda module, args, kwargs: calls.append(dict(ids=args[0].detach().clone())))

    def _llama4(self, name, router):
        calls = self._block(name)

        def hook(module, args, output):
            scores, logits = output  # Llama4Router: sigmoid of the top-k logits, and the logits
            values, ids = torch.topk(logits, module.top_k, dim=-1)
            calls.append(dict(ids=ids, weights=torch.sigmoid(values.float())))
        self.handles.append(router.register_forward_hook(hook))

    def _zaya(self, name, block):
        calls = self._block(name)
        router = block.gate

        def hook(module, args, output):
            # Zaya's rule: top-k of softmax + balancing biases over E + 1 classes, the last a skip
            logits = output[0]
            probs = torch.softmax(logits, dim=-1).float() + module.balancing_biases
            calls.append(dict(ids=torch.topk(probs, module.top_k, dim=-1).indices))
        self.handles.append(router.register_forward_hook(hook))

    def run(self, call):
        try:
            with torch.no_grad():
                call(**self.inputs)
        finally:
            for handle in self.handles:
                handle.remove()
        return self.calls


def prepare(model_type, model):
    """Make routing vary per token: wider router weights, and a random table for hash routers.
    Zaya's router is a 3-layer MLP: widened, its logits reach softmax probabilities of exactly 0,
    and a routed choice of weight 0 reaches the experts exactly like its skip class (see docs)."""
    if model_type != "zaya":
        spread_routers(model)
    gen = torch.Generator().manual_seed(7)
    for module in model.modules():
        table = getattr(module, "tid2eid", None)
        if isinstance(table, torch.Tensor):  # DeepSeek-V4's hash layers look experts up by token id
            experts = module.num_experts
            table.copy_(torch.stack([torch.randperm(experts, generator=gen)[: table.shape[1]]
                                     for _ in range(table.shape[0])]))


# What the probe must say about some types beyond the routing itself: (layer name suffix, field, value).
EXPECT = {
    "longcat_flash": [("", "identity_experts", 2), ("", "experts", 10)],
    "zaya": [("", "identity_experts", 1), ("", "experts", 9)],
    "jetmoe": [("self_attention.experts", "kind", "attention"), ("mlp", "kind", "mlp")],
    "deepseek_v4": [("layers.0.mlp", "design", "hash"), ("layers.1.mlp", "design", "top-k")],
    "vitpose_backbone": [("", "design", "fixed")],
    "switch_transformers": [("", "source", "expert-inputs")],
    "nllb-moe": [("", "source", "expert-inputs")],
    "llama4": [("", "source", "recomputed")],
    "qwen2_moe": [("", "shared_experts", 1)],
    "deepseek_v3": [("layers.1.mlp", "model_index", 1), ("layers.1.mlp", "stack", "model.layers")],
    "inkling_mm_model": [("", "experts", 8)],
}


@pytest.mark.parametrize("model_type", sorted(tiny_models.MOE_TYPES))
def test_every_moe_model_type(model_type):
    model, inputs = tiny_models.build(model_type)
    prepare(model_type, model)
    call = tiny_models.forward(model_type, model)
    truth = Truth(model_type, model, inputs)
    calls = truth.run(call)
    assert any(calls.values()), "no MoE block of %s ran" % model_type
    # weights only where the test read them from the experts call
    layers, records = check_probe(model, inputs, {k: v for k, v in calls.items()}, truth.names, call=call)
    by_name = {layer.name: layer for layer in layers}
    for suffix, field, value in EXPECT.get(model_type, []):
        chosen = [layer for name, layer in by_name.items() if name.endswith(suffix)]
        assert chosen, suffix
        assert all(layer.describe()[field] == value for layer in chosen), \
            [(layer.name, layer.describe()[field]) for layer in chosen]
    check_recorder(model, inputs, layers, calls, call=call)
