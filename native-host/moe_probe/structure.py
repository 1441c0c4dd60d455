"""What every framework's backend shares about MoE structure: the attribute names models keep
their settings under, layer names, and the description of one layer sent in the probe's frames.

Standard library only: imported by the torch, JAX, Keras and ONNX Runtime backends alike, so it
must never pull a framework into a job that does not already have it.
"""

from typing import Optional, Tuple

# Attribute names under which modules and configs keep the expert count and top-k.
EXPERT_COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K_ATTRS = ("top_k", "num_experts_per_tok", "moe_top_k", "router_top_k", "experts_per_token",
               "num_selected_experts", "top_k_experts", "moe_k", "moe_topk")
SHARED_COUNT_ATTRS = ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts", "shared_expert_count")
SCORING_ATTRS = ("scoring_func", "score_func", "scoring_function", "gating_func", "router_activation",
                 "router_score_function", "moe_router_score_function")
# Child names that hold a router in the MoE blocks seen so far; structure decides, names only order.
ROUTER_CHILD_NAMES = ("gate", "router", "gating", "classifier", "wg", "switch", "router_gate")


def layer_position(name: str, numbered_names: bool = False) -> Tuple[int, str]:
    """The model's own layer number and the stack holding it, from the module path:
    "model.layers.2.mlp" -> (2, "model.layers"); "decoder.block.3.layer.2.mlp" ->
    (3, "decoder.block"). The outermost number is the layer (inner ones number sublayers).
    numbered_names: names such as Flax's and Keras's automatic "layers_2" count as numbered
    too: "layers_2.moe" -> (2, "layers")."""
    parts = name.split(".") if name else []
    for i, part in enumerate(parts):
        if part.isdigit():
            return int(part), ".".join(parts[:i])
        head, _, tail = part.rpartition("_")
        if numbered_names and head and tail.isdigit():
            return int(tail), ".".join(parts[:i] + [head])
    return -1, ""


def _attr(obj, name):
    try:
        return getattr(obj, name, None)
    except Exception:  # properties that raise, proxies that warn
        return None


def _int_attr(obj, names) -> Optional[int]:
    for name in names:
        value = _attr(obj, name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def settings_of(objects, names) -> Optional[int]:
    """The first whole-number setting found on the objects, or on their `config` (and the
    sub-configs MoE settings live in), in that order."""
    for obj in objects:
        value = _int_attr(obj, names)
        if value:
            return value
    for obj in objects:
        config = _attr(obj, "config")
        for source in ([config, _attr(config, "moe_config")] if config is not None else []):
            value = _int_attr(source, names) if source is not None else None
            if value:
                return value
    return None


def gating_of(objects) -> str:
    """The router's scoring function when a module or its config names it ("softmax", "sigmoid")."""
    for obj in objects:
        config = _attr(obj, "config")
        for source in (obj, config):
            for name in SCORING_ATTRS:
                value = _attr(source, name) if source is not None else None
                if isinstance(value, str) and value:
                    return "sigmoid" if "sigmoid" in value.lower() else value.lower()
    return ""


class LayerSpec:
    """One MoE layer as the non-torch backends describe it (the torch backend's MoELayer has
    the same describe()). `source` says how the counts are read (see src/protocol/probe.ts)."""

    def __init__(self, index: int, name: str, num_experts: int, top_k: int, *, arch: str = "moe-block",
                 source: str = "router", kind: str = "mlp", design: str = "top-k", gating: str = "",
                 shared_experts: int = 0):
        self.index = index
        self.name = name
        self.num_experts = int(num_experts)
        self.top_k = int(top_k)
        self.arch = arch
        self.source = source
        self.token_source = source
        self.kind = kind
        self.design = design
        self.gating = gating
        self.shared_experts = int(shared_experts)
        self.model_index, self.stack = layer_position(name, numbered_names=True)
        self.changed = False

    def describe(self):
        # exactly these keys: they go into the probe's frames (see src/protocol/probe.ts)
        return {
            "index": self.index,
            "name": self.name,
            "arch": self.arch,
            "experts": self.num_experts,
            "top_k": self.top_k,
            "model_index": self.model_index,
            "stack": self.stack,
            "kind": self.kind,
            "design": self.design,
            "source": self.source,
            "token_source": self.token_source,
            "identity_experts": 0,
            "shared_experts": self.shared_experts,
            "gating": self.gating,
        }

    def learn_source(self, source: str):
        """How the first call showed the ids are read (sent again in a layers frame when it changes)."""
        if source != self.source:
            self.source = self.token_source = source
            self.changed = True
