"""What a torch MoE model computes for training: per-layer auxiliary losses, and its backward passes.

For every pass the model runs in training mode (`root.training`), the torch Recorder hands this
reader each MoE layer's router logits and, at the end of the pass, the model's outputs. The
hooks only keep references (detached, no copy, no device work): the losses are computed later by
the probe's sender thread (`compute`), off the job's forward, so the model's own loss function
may use calls that wait for the device (transformers' load_balancing_loss_func uses bincount)
without ever stalling the job. Per layer, as the model computes them:

* aux: the model's own load-balancing function (`load_balancing_loss_func` of the model's
  transformers module: Mixtral, Qwen-MoE, OLMoE, ...) applied to that layer's logits alone, with
  the pass's attention mask; for a model without one, the Switch Transformer loss it implements,
  E * sum_e f_e * P_e (f_e: share of the top-k assignments of expert e per token, P_e: its mean
  router probability);
* z: the router z-loss, the model's own `router_z_loss_func` where it has one, else
  mean over tokens of logsumexp(logits)^2 (ST-MoE);
* and the totals the model returned: its `aux_loss` output and its `loss`.

Backward passes: a gradient hook on each MoE block's output and input (Tensor.register_hook,
returning None, so gradients are untouched) notes when the gradient reaches the block and when
its input's gradient is ready; the difference is the block's backward time (on a GPU, the CPU
time at which the work was queued). A backward pass is counted when the first MoE layer's
input gradient is ready. Forward work recomputed inside a backward pass (activation
checkpointing) is recognised by torch's current graph task and not counted again.
"""

import inspect
import sys
import threading
from time import perf_counter
from typing import Dict, List, Optional

import torch

MAX_PENDING_PASSES = 512  # passes kept between two snapshots; older ones are dropped and counted


def in_backward() -> bool:
    """Whether the calling code runs inside an autograd backward pass (a checkpointed layer's recompute)."""
    return torch._C._current_graph_task_id() != -1


class LossPass:
    """One training pass: references to what its MoE layers routed and what the model returned."""

    __slots__ = ("pass_id", "logits", "mask", "model_aux", "loss")

    def __init__(self, pass_id, mask):
        self.pass_id = pass_id
        self.logits: Dict[int, torch.Tensor] = {}
        self.mask = mask
        self.model_aux = None
        self.loss = None


class TrainingReader:
    def __init__(self, root, layers):
        self.layers = layers
        self.num_layers = len(layers)
        self._aux_fn, self._z_fn = _model_functions(root)
        self.train_passes = 0
        self.backward_passes = 0
        self.backward_s = [0.0] * self.num_layers
        self.dropped_passes = 0
        self._current: Optional[LossPass] = None
        self._pending: List[LossPass] = []
        self._grad_handles = []
        self._grad_started: Dict[int, float] = {}
        self._lock = threading.Lock()  # gradient hooks run on autograd's threads
        self.active = True

    # -- job's thread, inside the forward --

    def begin(self, root, pass_id, mask):
        """A pass starts (with its attention mask, if any); returns whether it is a training pass
        (then it is read)."""
        self._current = None
        if not root.training:
            return False
        self.train_passes += 1
        self._current = LossPass(pass_id, mask.detach() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None)
        # the previous pass's gradient hooks went with its graph; forget their handles
        self._grad_handles = [h for h in self._grad_handles[-4 * self.num_layers:]]
        return True

    def on_logits(self, index, logits):
        if self._current is not None and logits is not None and index not in self._current.logits:
            self._current.logits[index] = logits.detach()

    def on_block(self, index, inputs, output):
        """Gradient hooks on a block's output and input, to time its backward."""
        if self._current is None or not torch.is_grad_enabled():
            return
        out = output[0] if isinstance(output, (tuple, list)) and output else output
        if isinstance(out, torch.Tensor) and out.requires_grad:
            self._grad_handles.append(out.register_hook(self._grad_at_output(index)))
        x = inputs[0] if inputs else None
        if isinstance(x, torch.Tensor) and x.requires_grad:
            self._grad_handles.append(x.register_hook(self._grad_at_input(index)))

    def end(self, model_aux=None, loss=None):
        """The pass ended with the model's own totals (its aux_loss and loss outputs, if it returned
        them): keep them with it, for the sender thread."""
        current, self._current = self._current, None
        if current is None:
            return
        current.model_aux = model_aux.detach() if isinstance(model_aux, torch.Tensor) else None
        current.loss = loss.detach() if isinstance(loss, torch.Tensor) else None
        with self._lock:
            self._pending.append(current)
            if len(self._pending) > MAX_PENDING_PASSES:
                self._pending.pop(0)
                self.dropped_passes += 1

    def _grad_at_output(self, index):
        def hook(grad):
            if self.active:
                with self._lock:
                    self._grad_started[index] = perf_counter()
            return None
        return hook

    def _grad_at_input(self, index):
        def hook(grad):
            if self.active:
                now = perf_counter()
                with self._lock:
                    started = self._grad_started.pop(index, None)
                    if started is not None:
                        self.backward_s[index] += now - started
                    if index == 0:
                        self.backward_passes += 1
            return None
        return hook

    # -- probe's threads --

    def take(self) -> List[LossPass]:
        with self._lock:
            passes, self._pending = self._pending, []
        return passes

    def compute(self, passes: List[LossPass]):
        """[passes x layers] aux and z losses (float64, NaN where a layer did not route), the model's
        aux_loss and loss per pass; on the host. Runs on the sender thread."""
        n, width = len(passes), self.num_layers
        aux = torch.full((n, width), float("nan"), dtype=torch.float64)
        z = torch.full((n, width), float("nan"), dtype=torch.float64)
        model_aux = torch.full((n,), float("nan"), dtype=torch.float64)
        loss = torch.full((n,), float("nan"), dtype=torch.float64)
        with torch.no_grad():
            for row, record in enumerate(passes):
                for index, logits in record.logits.items():
                    layer = self.layers[index]
                    aux[row, index] = float(self._aux(logits, layer.num_experts, layer.top_k, record.mask))
                    z[row, index] = float(self._z(logits))
                if isinstance(record.model_aux, torch.Tensor) and record.model_aux.numel() == 1:
                    model_aux[row] = float(record.model_aux)
                if isinstance(record.loss, torch.Tensor) and record.loss.numel() == 1:
                    loss[row] = float(record.loss)
        return aux, z, model_aux, loss

    def _aux(self, logits, experts, top_k, mask):
        if self._aux_fn is not None:
            if mask is not None and mask.numel() != logits.reshape(-1, logits.shape[-1]).shape[0]:
                mask = None  # a mask for another layout (packed sequences): the unmasked loss
            return self._aux_fn((logits,), experts, top_k, mask)
        probs = torch.softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)
        chosen = torch.topk(probs, top_k, dim=-1).indices
        share = torch.zeros(probs.shape[-1], device=probs.device).scatter_add_(
            0, chosen.reshape(-1), torch.ones(chosen.numel(), device=probs.device)) / probs.shape[0]
        return (share * probs.mean(0)).sum() * probs.shape[-1]

    def _z(self, logits):
        if self._z_fn is not None:
            return self._z_fn(logits.reshape(1, -1, logits.shape[-1]))
        return torch.logsumexp(logits.reshape(-1, logits.shape[-1]), dim=-1).square().mean()

    def stop(self):
        self.active = False
        for handle in self._grad_handles:
            handle.remove()
        self._grad_handles = []


def _model_functions(root):
    """The model's own load-balancing and z-loss functions (from its transformers module), if any."""
    aux = z = None
    for cls in type(root).__mro__:
        module = sys.modules.get(cls.__module__)
        if module is None:
            continue
        candidate = getattr(module, "load_balancing_loss_func", None)
        if aux is None and callable(candidate) and _takes(candidate, ("gate_logits", "num_experts", "top_k")):
            aux = candidate
        candidate = getattr(module, "router_z_loss_func", None)
        if z is None and callable(candidate) and _takes(candidate, ("router_logits",)):
            z = candidate
    return aux, z


def _takes(fn, names) -> bool:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return params[: len(names)] == list(names)
