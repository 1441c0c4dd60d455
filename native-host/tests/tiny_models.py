"""Tiny random-weight models of every MoE model type in the installed transformers.

`MOE_TYPES` lists each model type with what differs from the generic tiny settings;
`build(model_type)` returns (model, inputs) ready for a forward pass on CPU in well
under a second. `moe_model_types()` enumerates the installed library's MoE types
independently of this table (a config class whose modeling file defines experts), so
a test can fail when transformers gains a type this table does not cover.
"""

import inspect
import os
import re

import torch

import transformers
from transformers import CONFIG_MAPPING

transformers.logging.set_verbosity_error()

VOCAB = 128

# Generic small sizes, applied to every config (and sub-config) that has the field.
SIZES = dict(
    vocab_size=VOCAB, hidden_size=32, d_model=32, intermediate_size=48, moe_intermediate_size=24,
    ffn_hidden_size=48, shared_expert_intermediate_size=24, expert_ffn_hidden_size=24,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
    num_hidden_layers=3, num_layers=3, n_layers=3, num_decoder_layers=3, encoder_layers=3, decoder_layers=3,
    num_local_experts=8, num_experts=8, n_routed_experts=8, moe_num_experts=8, num_experts_per_tok=2,
    moe_top_k=2, moe_topk=2, top_k_experts=2, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
    v_head_dim=8, first_k_dense_replace=1, n_group=2, topk_group=1, d_ff=48, d_kv=8, num_heads=4,
    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, n_heads=4,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
)

# Per model type: config fields beyond SIZES ("text" for the text sub-config of a
# multimodal config), the model class when the auto classes do not pick it, and
# forward keyword arguments beyond input_ids.
MOE_TYPES = {
    "afmoe": {},
    "aria": {},
    "axk1": {"config": dict(num_key_value_heads=4)},
    "axk2": {"config": dict(num_key_value_heads=4)},
    "cohere2_moe": {},
    "dbrx": {"config": dict(attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                            ffn_config=dict(ffn_hidden_size=48, moe_num_experts=8, moe_top_k=2))},
    "deepseek_ocr2": {"text": dict(num_key_value_heads=4, mlp_layer_types=["dense", "sparse", "sparse"])},
    "deepseek_v2": {"config": dict(num_key_value_heads=4)},
    "deepseek_v3": {"config": dict(num_key_value_heads=4)},
    "deepseek_v32": {"config": dict(num_key_value_heads=4)},
    "deepseek_v4": {"config": dict(num_key_value_heads=4, mlp_layer_types=["hash_moe", "moe", "moe"])},
    "diffusion_gemma": {"text": dict(enable_moe_block=True), "model": lambda c: transformers.DiffusionGemmaModel(c),
                        "config": dict(vision_config=lambda: tiny_config(CONFIG_MAPPING["gemma4_vision"]).to_dict()),
                        "forward": dict(decoder_input_ids="input_ids")},
    "doge": {"config": dict(is_moe=True, num_experts=16)},
    "dots1": {"config": dict(n_shared_experts=1)},
    "ernie4_5_moe": {"config": dict(moe_k=2)},
    "ernie4_5_vl_moe": {"text": dict(moe_intermediate_size=[24, 16], moe_k=2,
                                     rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2]))},
    "exaone_moe": {},
    "flex_olmo": {},
    "gemma4": {"text": dict(enable_moe_block=True)},
    "glm4_moe": {},
    "glm4_moe_lite": {"config": dict(num_key_value_heads=4)},
    "glm4v_moe": {"text": dict(head_dim=16, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                 mrope_section=[2, 1, 1], partial_rotary_factor=0.5))},
    "glm5_next": {"text": dict(num_key_value_heads=4, qk_rope_head_dim=0, mlp_layer_types=["dense", "sparse", "sparse"]),
                  "forward": dict(use_cache=False)},
    "glm_moe_dsa": {"config": dict(num_key_value_heads=4)},
    "gpt_oss": {},
    "granitemoe": {},
    "granitemoe_swa": {},
    "granitemoehybrid": {"config": dict(mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1,
                                        layer_types=["mamba", "attention", "mamba"]), "forward": dict(use_cache=False)},
    "granitemoeshared": {},
    "hunyuan_v1_moe": {},
    "hy_v3": {},
    "hy_v4": {"config": dict(num_key_value_heads=4)},
    "inkling_mm_model": {},
    "jamba": {"forward": dict(use_cache=False)},
    "jetmoe": {},
    "kimi_linear": {"forward": dict(use_cache=False)},
    "laguna": {},
    "lfm2_moe": {"config": dict(layer_types=["full_attention", "conv", "full_attention"], num_dense_layers=1)},
    "llama4": {},
    "longcat_flash": {"config": dict(num_key_value_heads=4, zero_expert_num=2)},
    "mellum": {},
    "mimo_v2_flash": {},
    "minimax": {},
    "minimax_m2": {},
    "minimax_m3_vl": {},
    "mistral4": {"config": dict(num_key_value_heads=4)},
    "mixtral": {},
    "nemotron_h": {},
    "nllb-moe": {"config": dict(encoder_sparse_step=2, decoder_sparse_step=2, expert_capacity=6)},
    "olmoe": {},
    "openai_privacy_filter": {},
    "phimoe": {},
    "qwen2_moe": {},
    "qwen3_5_moe": {"forward": dict(use_cache=False)},
    "qwen3_moe": {},
    "qwen3_next": {"forward": dict(use_cache=False)},
    # thinker (the text model, MoE) only: the talker speaks from the thinker's hidden states
    "qwen3_omni_moe": {"config": dict(enable_audio_output=False), "model": lambda c: transformers.Qwen3OmniMoeForConditionalGeneration(c),
                       "call": lambda model: model.thinker},
    "qwen3_vl_moe": {},
    "qwen4_exp": {"forward": dict(use_cache=False)},
    "solar_open": {},
    "step3p7": {"text": dict(sliding_window=8, mlp_layer_types=["dense", "sparse", "sparse"])},
    "switch_transformers": {},
    "vitpose_backbone": {"config": dict(image_size=[32, 32], patch_size=[8, 8], num_experts=4, part_features=8,
                                        out_indices=[3]),
                         "inputs": lambda model, seed: dict(
                             pixel_values=torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed)),
                             dataset_index=torch.tensor([0, 2, 3]))},
    "zaya": {"config": dict(num_experts_per_tok=1)},
}


def _params(cls):
    return set(inspect.signature(cls.__init__).parameters)


def tiny_config(cls, extra=None, sub_extra=None):
    """cls with SIZES applied to every field it has, recursively through its sub-configs."""
    fields = _params(cls)
    kwargs = {k: v for k, v in SIZES.items() if k in fields}
    default = None
    for name, sub in (getattr(cls, "sub_configs", {}) or {}).items():
        if name not in fields or not isinstance(sub, type):
            continue
        if sub is transformers.AutoConfig:
            # the sub-config's class is known only from the default the config builds itself
            default = default or cls()
            if getattr(default, name, None) is None:
                continue  # optional (a modality this model type can go without)
            sub = type(getattr(default, name))
        kwargs[name] = tiny_config(sub, (sub_extra or {}).get(name)).to_dict()
    kwargs.update({k: v() if callable(v) else v for k, v in (extra or {}).items()})
    return cls(**kwargs)


def _auto_model(config):
    autos = (transformers.AutoModelForCausalLM, transformers.AutoModelForImageTextToText,
             transformers.AutoModelForSeq2SeqLM, transformers.AutoModel, transformers.AutoBackbone)
    for auto in autos:
        try:
            return auto.from_config(config)
        except ValueError:
            continue
    raise LookupError("no auto class builds %s" % type(config).__name__)


def build(model_type, seed=0):
    """A tiny eval-mode model of `model_type` and the keyword arguments of one forward pass."""
    spec = MOE_TYPES[model_type]
    torch.manual_seed(seed)
    cls = CONFIG_MAPPING[model_type]
    sub_extra = {"text_config": spec["text"]} if "text" in spec else None
    config = tiny_config(cls, spec.get("config"), sub_extra)
    model = (spec["model"](config) if "model" in spec else _auto_model(config)).eval()
    ids = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(seed + 1))
    inputs = dict(input_ids=ids)
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids[:, :5]
    for key, value in spec.get("forward", {}).items():
        inputs[key] = inputs[value] if isinstance(value, str) and value in inputs else value
    if "inputs" in spec:
        inputs = spec["inputs"](model, seed)
    return model, inputs


def forward(model_type, model):
    """The callable a pass goes through: the model itself, or the part of a composite that runs
    on its own (Qwen3-Omni's thinker)."""
    call = MOE_TYPES[model_type].get("call")
    return call(model) if call else model


def moe_model_types():
    """Model types of the installed transformers whose modeling code routes tokens to experts:
    found from the library's own files (a modeling file that defines an experts module or a
    router and declares a number of experts), not from MOE_TYPES."""
    root = os.path.dirname(transformers.models.__file__)
    found = set()
    pattern = re.compile(r"num_experts|n_routed_experts|num_local_experts|moe_num_experts")
    for directory in sorted(os.listdir(root)):
        path = os.path.join(root, directory, "modeling_%s.py" % directory)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            source = f.read()
        if not pattern.search(source) or not re.search(r"self\.experts\b|Experts\b|class \w*(Router|Gating)\b|router_gate", source):
            continue
        types = [t for t, c in CONFIG_MAPPING.items() if c.__module__.split(".")[-2] == directory]
        found.add(_top_type(directory, types))
    return sorted(found)


def _top_type(directory, types):
    """The composite model type of a modeling folder: the folder's own name when it is a type,
    else the type whose config holds the most sub-configs (inkling_mm_model over inkling_text)."""
    for t in types:
        if t.replace("-", "_") == directory:
            return t
    return max(types, key=lambda t: (len(getattr(CONFIG_MAPPING[t], "sub_configs", {}) or {}), -len(t)))
