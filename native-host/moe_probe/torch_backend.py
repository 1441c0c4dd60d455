"""The torch backend, as frameworks.py sees it: models.py finds the models, routers.py their MoE
layers, recorder.py counts with forward hooks. Imported only when the job has imported torch."""

import torch
from torch import nn

from .frameworks import BackendSurvey, Model
from .models import describe_model, no_moe_message, survey as survey_process
from .recorder import Recorder


def version() -> str:
    return torch.__version__


def owns(obj) -> bool:
    return isinstance(obj, nn.Module)


def survey(explicit=None, expert_map=None) -> BackendSurvey:
    from .pass_visibility import visibility_warnings

    found = survey_process(explicit, expert_map)
    models = [_model(root, layers) for root, layers in found.roots]
    warnings = visibility_warnings([root for root, _ in found.roots], found.cuda_graphs, found.wrapped)
    return BackendSurvey(models, warnings, "" if models else no_moe_message(found), found.tokenizer)


def _model(root, layers) -> Model:
    return Model(
        "torch",
        lambda model_id: dict(describe_model(model_id, root, layers), framework="torch"),
        lambda model_id, out, settings, on_error: Recorder(model_id, root, layers, out, settings, on_error),
    )
