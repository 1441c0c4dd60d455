"""Print docs/moe-types.md: every MoE model type of the installed transformers, how the probe
reads its routing, and what it cannot see. The facts columns come from building each type's tiny
model (native-host/tests/tiny_models.py) and running one pass with the probe's hooks in; the
notes are this project's own, written next to the type they concern.

    .venv/bin/python scripts/moe_types_table.py > docs/moe-types.md
"""

import collections
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "native-host"))
sys.path.insert(0, os.path.join(ROOT, "native-host", "tests"))

import torch  # noqa: E402

torch.set_num_threads(1)
import tiny_models  # noqa: E402
import transformers  # noqa: E402
from moe_probe.routers import find_moe_layers  # noqa: E402

SOURCE = {
    "dispatched": "ids handed to the experts",
    "expert-inputs": "rows each expert module received",
    "router": "ids in the router's output",
    "recomputed": "top-k of the router's logits, recomputed",
}

# What the probe cannot see (or sees differently from what one might expect), per type.
NOTES = {
    "deepseek_v4": "Hash layers: experts come from the model's token-id table (tid2eid); the gate only weights "
                   "them, so no router-entropy finding there.",
    "ernie4_5_vl_moe": "Text and vision experts are separate blocks (mlp.text_moe, mlp.vision_moe); with text "
                       "input only the text experts run, and the vision block shows no tokens.",
    "jetmoe": "Attention experts (self_attention.experts) are their own kind of layer beside the MLP experts. "
              "Counts come from the per-expert sizes the experts are handed; per-token ids are the gate's "
              "top-k recomputed on its own logits (the gate returns no ids).",
    "llama4": "The experts get every token pre-scaled (no ids): ids are the top-k of the router's logits, "
              "which is the router's own rule; marked recomputed.",
    "longcat_flash": "Zero-compute experts are the last ones of each layer (router rows beyond the stacked "
                     "expert weights); counted like the others and marked. The router computes its logits "
                     "with F.linear on its classifier's weight and returns only weights and ids: no router health.",
    "nllb-moe": "transformers 5.18's NllbMoeExperts one-hot-encodes the router's one-hot mask again, so "
                "only expert_0 and expert_1 ever run; the probe counts the rows each expert module "
                "received, so the panel shows exactly that (the other experts dead). No per-token ids.",
    "qwen3_omni_moe": "Tested through the thinker (the text model), the part that runs on its own; the "
                      "talker's MoE (audio output) needs the thinker's hidden states and was not run here.",
    "switch_transformers": "Experts are separate modules: counts are the rows each received, so tokens "
                           "dropped by expert capacity are not counted and are reported as dropped. No per-token ids.",
    "vitpose_backbone": "Fixed routing: the expert is the dataset index given per image, every expert runs on "
                        "every token masked; the probe reads the index handed to the experts.",
    "zaya": "The skip class (the router's last row) reaches the experts as expert 0 with weight 0; the probe "
            "counts a zero-weight assignment as the skip class, so a routed choice whose softmax weight "
            "underflows to exactly 0 is counted as a skip.",
    "inkling_mm_model": "The router scores the shared experts too; their rows are not routed and not counted.",
    "doge": "Retrieval experts are rows of an nn.Embedding looked up by id (product keys); the ids reaching "
            "the embedding are the routing. No router logits, so no router health.",
    "gemma4": "The MoE block is the decoder layer itself (router and experts beside a dense MLP); its router "
              "returns probabilities, whose entropy is measured as such.",
    "diffusion_gemma": "Both the encoder's and the decoder's MoE layers are found (encoder.language_model.layers, "
                       "decoder.layers).",
}


def row(model_type):
    model, inputs = tiny_models.build(model_type)
    call = tiny_models.forward(model_type, model)
    layers = find_moe_layers(model)
    seen = collections.Counter()
    with_logits = collections.Counter()
    handles = []

    def record(lay, routing):
        seen.update([lay.name])
        if routing.logits is not None:
            with_logits.update([lay.name])

    for layer in layers:
        handles += layer.install(record)
    started = time.perf_counter()
    with torch.no_grad():
        call(**inputs)
    seconds = time.perf_counter() - started
    for handle in handles:
        handle.remove()
    stacks = sorted({layer.stack for layer in layers})
    kinds = sorted({(layer.num_experts, layer.top_k, layer.identity_experts) for layer in layers})
    read = sorted({SOURCE[layer.source] for layer in layers})
    tokens = sorted({layer.token_source for layer in layers})
    designs = sorted({layer.design for layer in layers})
    extras = []
    if any(layer.kind == "attention" for layer in layers):
        extras.append("attention experts")
    if any(layer.shared_experts for layer in layers):
        extras.append("shared experts")
    if any(layer.gating for layer in layers):
        extras.append("%s gate" % "/".join(sorted({layer.gating for layer in layers if layer.gating})))
    width = ", ".join("%d%s top-%d" % (e, " (%d zero-compute)" % z if z else "", k) for e, k, z in kinds)
    health = "yes" if with_logits and set(with_logits) == set(seen) else ("some layers" if with_logits else "no")
    return "| `%s` | %s | %d of %d ran (%s) | %s | %s | %s | %s | %s | %s |" % (
        model_type, type(model).__name__, len(seen), len(layers), ", ".join(s or "(root)" for s in stacks),
        width, "; ".join(read), ", ".join(tokens), health, ", ".join(designs + extras),
        NOTES.get(model_type, "")), seconds


def main():
    lines = [
        "# MoE model types of transformers %s" % transformers.__version__,
        "",
        "Every MoE model type the installed transformers defines (%d, found from the library's own "
        "modeling files by `tiny_models.moe_model_types()`), as the probe reads it. Each is tested in "
        "`native-host/tests/test_architectures.py::test_every_moe_model_type` on a tiny random-weight "
        "model: the probe's ids, weights and per-expert loads must equal what the test itself captured "
        "the experts receiving (or, where the experts get no ids, a recomputation the test writes), the "
        "outputs must be bitwise identical with the probe attached, and the probe's recorder must count "
        "exactly that at each layer's own width." % len(tiny_models.MOE_TYPES),
        "",
        "Columns: layers the probe found (and how many of them ran on text input); experts per layer and "
        "top-k; where the counts come from; where per-token ids (the Tokens and Co-activation views) come "
        "from; whether router logits were seen (router health: NaN/Inf, entropy, z-loss; a router that "
        "returns only weights and ids shows none); the routing design; what else cannot be seen. "
        "Generated by `scripts/moe_types_table.py` from one pass of each tiny model.",
        "",
        "Gates: the probe knows a gate's scoring function only where the model declares it (a "
        "`scoring_func`-like setting); router-entropy findings are skipped for sigmoid and other "
        "non-softmax gates it knows of. DeepSeek-V3 and others whose configs no longer declare their "
        "sigmoid gate are judged as softmax routers there.",
        "",
        "| type | model class | MoE layers | experts | counts read from | per-token ids | router logits | design | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model_type in sorted(tiny_models.MOE_TYPES):
        line, _seconds = row(model_type)
        lines.append(line)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
