"""Which machine-learning frameworks this process uses, and the backend that reads each one.

A framework counts as used when the job has imported it (its module is in sys.modules): the
probe never imports one itself, so a torch job never loads JAX, TensorFlow or ONNX Runtime
because of the probe, and the other way round. A process may use several at once (a torch
model beside an ONNX Runtime session, a JAX job that also imported TensorFlow for its data
pipeline): every framework loaded is surveyed, and every MoE model found, whatever its
framework, becomes one model of the same hello, read by its own backend.

Backends (each imports its framework only when that framework is already loaded):
    torch        models.py, routers.py, recorder.py (forward hooks)
    jax          jax_backend.py (Flax linen method interception and nnx method wrapping,
                 jax.debug.callback inside jit)
    tensorflow   keras_backend.py (Keras 3 layers, eager and tf.function, tf.numpy_function)
    onnxruntime  ort_backend.py (InferenceSession.run with the router TopK outputs added)
"""

import sys
from typing import Any, Callable, List, NamedTuple, Optional

# Protocol name -> the module whose presence says the job uses the framework.
FRAMEWORK_MODULES = (("torch", "torch"), ("jax", "jax"), ("tensorflow", "keras"), ("onnxruntime", "onnxruntime"))
DISPLAY_NAMES = {"torch": "PyTorch", "jax": "JAX", "tensorflow": "TensorFlow/Keras", "onnxruntime": "ONNX Runtime"}
NO_FRAMEWORK_MESSAGE = ("This Python process has not imported torch, JAX, Keras (TensorFlow) or ONNX Runtime, "
                        "so there is no model to watch.")


class Model(NamedTuple):
    """One MoE model found in the process, with what it takes to describe and record it."""

    framework: str
    describe: Callable[[int], dict]  # model id -> the hello's model entry (src/protocol/probe.ts ModelInfo)
    recorder: Callable[..., Any]  # (model_id, queue, settings, on_error) -> a recorder the session drives


class Found(NamedTuple):
    """What one survey of the process found, over every framework it has loaded."""

    frameworks: List[dict]  # [{"name", "version"}] of every framework loaded
    models: List[Model]
    warnings: List[dict]
    no_moe_message: str  # why nothing was found, per framework (used only when models is empty)
    tokenizer: Optional[object]

    @property
    def framework(self) -> str:
        """The hello's framework: the one the models use (names joined by "+" when several)."""
        used = [m.framework for m in self.models]
        names = [f["name"] for f in self.frameworks if f["name"] in used] or [f["name"] for f in self.frameworks]
        return "+".join(names)

    @property
    def version(self) -> str:
        chosen = self.framework.split("+")
        return ", ".join(f["version"] for f in self.frameworks if f["name"] in chosen)


def loaded() -> List[str]:
    """The frameworks this process has imported, by protocol name."""
    return [name for name, module in FRAMEWORK_MODULES if module in sys.modules]


def _backend(name: str):
    if name == "torch":
        from . import torch_backend as backend
    elif name == "jax":
        from . import jax_backend as backend
    elif name == "tensorflow":
        from . import keras_backend as backend
    else:
        from . import ort_backend as backend
    return backend


def survey(explicit_models=None, expert_map=None) -> Found:
    """Every MoE model of this process, over every loaded framework.

    explicit_models: the objects given to moe_probe.attach(...); each goes to the backend of
    its framework, and nothing else is looked for. expert_map: moe_probe.attach(expert_map=...),
    for torch's expert-parallel layers (distributed.py).
    """
    names = loaded()
    frameworks, models, warnings, messages, tokenizer = [], [], [], [], None
    for name in names:
        backend = _backend(name)
        frameworks.append({"name": name, "version": backend.version()})
        mine = None
        if explicit_models is not None:
            mine = [m for m in explicit_models if backend.owns(m)]
            if not mine:
                continue
        result = backend.survey(mine, expert_map) if name == "torch" else backend.survey(mine)
        models += result.models
        warnings += result.warnings
        if result.message:
            messages.append(result.message)
        tokenizer = tokenizer or result.tokenizer
    if not names:
        messages.append(NO_FRAMEWORK_MESSAGE)
    elif explicit_models is not None and not models and not messages:
        messages.append("None of the objects given to moe_probe.attach() is a model of a framework this process "
                        "has loaded (%s)." % ", ".join(DISPLAY_NAMES[n] for n in names))
    return Found(frameworks, models, warnings, " ".join(messages), tokenizer)


class BackendSurvey(NamedTuple):
    """What one backend found: its models, what it warns about, and (when none) why."""

    models: List[Model]
    warnings: List[dict]
    message: str
    tokenizer: Optional[object] = None
