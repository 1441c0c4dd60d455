"""The probe's MoE adapters against real (tiny, random-weight) models of every common architecture.

For each architecture the test builds a 2-4 layer model and checks that:
  1. find_moe_layers finds exactly the MoE layers (dense layers, interleaved layers and
     encoder/decoder stacks included or excluded as the config says);
  2. the ids (as sets per token) and weights the probe reports equal the routing the model
     really used, obtained independently of the probe's code:
       - from transformers' own router outputs (output_router_logits=True) with the
         architecture's selection rule written out here, or, where transformers exposes no
         router output (DeepSeek-V3), from the router input captured by a separate pre-hook
         of this test and the documented selection rule;
       - and, where the experts module is handed the ids (experts(hidden, ids, weights)),
         from a pre-hook of this test on the experts module: what the model really used;
  3. the model's outputs are bitwise identical with and without the probe's hooks;
  4. after every handle is removed, every module has exactly the hooks and instance
     attributes it had before (and install did add something).
"""

import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_HOST = os.path.dirname(HERE)
if NATIVE_HOST not in sys.path:
    sys.path.insert(0, NATIVE_HOST)

from moe_probe.routers import find_moe_layers  # noqa: E402

torch.set_num_threads(1)
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

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
            weight = getattr(module, "weight", None)
            name = type(module).__name__
            if isinstance(weight, torch.Tensor) and weight.dim() == 2 and ("Router" in name or "Gat" in name):
                weight.copy_(torch.randn(weight.shape, generator=gen) * std)


# -- independent capture ------------------------------------------------------------------------


class Capture:
    """This test's own pre-hooks on given modules: what each call received."""

    def __init__(self, modules):
        self.calls = []
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in modules]

    def _hook(self, module, args, kwargs):
        self.calls.append((module, [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args],
                           {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}))

    def remove(self):
        for handle in self.handles:
            handle.remove()


def experts_used(calls):
    """(ids [N,k], weights [N,k]) that transformers' experts modules were called with."""
    used = []
    for _module, args, kwargs in calls:
        rest = list(args[1:]) + [v for k, v in kwargs.items() if k != "hidden_states"]
        ids = next(t for t in rest if isinstance(t, torch.Tensor) and not t.is_floating_point())
        weights = next(t for t in rest if isinstance(t, torch.Tensor) and t.is_floating_point())
        used.append(dict(ids=ids, weights=weights))
    return used


# -- comparing ----------------------------------------------------------------------------------


def by_sorted_ids(ids, weights=None):
    order = ids.argsort(dim=-1)
    return ids.gather(-1, order), (None if weights is None else weights.gather(-1, order))


def assert_routing_equal(probe, truth, what, check_weights=True):
    assert len(probe) == len(truth), f"{what}: {len(probe)} probe records for {len(truth)} MoE calls"
    for call, (got, want) in enumerate(zip(probe, truth)):
        got_ids, got_w = by_sorted_ids(got["ids"].to(torch.int64), got.get("weights"))
        want_ids, want_w = by_sorted_ids(want["ids"].to(torch.int64).reshape(got_ids.shape[0], -1),
                                         want.get("weights"))
        assert torch.equal(got_ids, want_ids), f"{what}: expert ids differ in call {call}"
        if check_weights and want_w is not None:
            assert got_w is not None, f"{what}: probe reports no weights in call {call}"
            torch.testing.assert_close(got_w.float(), want_w.reshape(got_w.shape).float(), rtol=1e-5, atol=1e-6,
                                       msg=f"{what}: weights differ in call {call}")
        if want.get("dropped") is not None:
            assert got.get("dropped") is not None, f"{what}: probe reports no dropped tokens in call {call}"
            assert torch.equal(got["dropped"].reshape(-1), want["dropped"].reshape(-1)), \
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


def first_tensor(output):
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
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
    """Run each layer's read() under OpLog (an attribute on the probe's layer object, not the model)."""
    log = []
    for layer in layers:
        def traced(args, output, _read=layer.read):
            with OpLog() as ops:
                result = _read(args, output)
            log.extend(ops.ops)
            return result
        layer.read = traced
    return log


def check_probe(model, inputs, truth, expected_names, check_weights=True):
    """Layers found, routing equal to `truth`, outputs bitwise identical, hooks restored,
    and the probe's reads neither write into a tensor nor synchronise with the device."""
    layers = find_moe_layers(model)
    assert [layer.name for layer in layers] == expected_names
    assert [layer.index for layer in layers] == list(range(len(expected_names)))
    for layer in layers:
        assert set(layer.describe()) == {"index", "name", "arch", "experts", "top_k"}
    ops = trace_reads(layers)

    with torch.no_grad():
        plain = first_tensor(model(**inputs))
    before = hook_state(model)

    records = []
    handles = []
    for layer in layers:
        handles += layer.install(lambda lay, routing: records.append((lay, routing)))
    during = hook_state(model)
    with torch.no_grad():
        hooked = first_tensor(model(**inputs))
    for handle in handles:
        handle.remove()
    after = hook_state(model)

    assert during != before, "install added no hook"
    assert after == before, "hooks or attributes left behind after remove()"
    assert torch.equal(plain, hooked), "outputs changed with the probe's hooks installed"
    assert all(layer.errors == 0 for layer in layers), [layer.last_error for layer in layers]
    assert ops, "the probe's reads were not traced"
    assert not [name for name, _ in ops if name.startswith(SYNCING_OPS) or " (to " in name], ops
    assert not [name for name, mutable in ops if mutable], "the probe wrote into a tensor"

    # records arrive in forward order; their layer indices must walk the layers in order
    assert [lay.index for lay, _ in records] == [i % len(layers) for i in range(len(records))]
    probe = [dict(ids=r.ids, weights=r.weights, dropped=r.dropped) for _, r in records]
    for lay, r in records:
        assert r.ids.dim() == 2 and not r.ids.is_floating_point() and r.ids.shape[1] == lay.top_k
    assert_routing_equal(probe, truth, type(model).__name__, check_weights=check_weights)
    return layers, records


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


def assert_same(truth_a, truth_b, what):
    assert_routing_equal(truth_a, truth_b, what)


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
    check_probe(model, inputs, truth, ["model.layers.0.mlp", "model.layers.1.mlp"])


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
    check_probe(model, inputs, truth, ["model.layers.0.mlp", "model.layers.2.mlp"])


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
    check_probe(model, inputs, truth, ["model.layers.0.mlp", "model.layers.1.mlp"])


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
    check_probe(model, inputs, truth, ["model.layers.0.mlp", "model.layers.1.mlp"])


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
    check_probe(model, inputs, truth, ["model.layers.1.mlp", "model.layers.2.mlp"])


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
    layers, records = check_probe(model, inputs, truth, ["model.layers.1.mlp", "model.layers.2.mlp"])
    assert {layer.arch for layer in layers} == {"route-fn"}
    assert all("route_tokens_to_experts" not in vars(layer.module) for layer in layers)
    assert all(r.logits is not None and r.logits.shape == (32, 8) for _, r in records)


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
    check_probe(model, inputs, truth, ["model.layers.0.mlp", "model.layers.1.mlp"])


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
    check_probe(model, inputs, truth, ["model.layers.1.feed_forward", "model.layers.3.feed_forward"])


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
    layers, _ = check_probe(model, inputs, truth, ["transformer.blocks.0.ffn", "transformer.blocks.1.ffn"])
    assert {layer.arch for layer in layers} == {"route-fn"}


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
    check_probe(model, inputs, truth, ["model.layers.0.block_sparse_moe", "model.layers.1.block_sparse_moe"])


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
    check_probe(model, inputs, truth, ["model.layers.0.mlp", "model.layers.1.mlp"])


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
    layers, records = check_probe(model, inputs, truth, [
        "encoder.block.1.layer.1.mlp", "encoder.block.3.layer.1.mlp",
        "decoder.block.1.layer.2.mlp", "decoder.block.3.layer.2.mlp"])
    assert all(layer.top_k == 1 and layer.num_experts == 4 for layer in layers)


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
    check_probe(model, inputs, truth, ["model.layers.1.feed_forward", "model.layers.3.feed_forward"])


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
    truth = list(log)
    # the gate's logits alone do not say how a hand-written block mixes its experts: ids only
    layers, records = check_probe(model, inputs, truth, ["blocks.0", "blocks.2", "blocks.3"],
                                  check_weights=False)
    assert [(layer.num_experts, layer.top_k) for layer in layers] == [(4, 2), (4, 1), (4, 2)]
    assert all(r.logits is not None for _, r in records)


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
