"""Why did this token go to that expert: attribution of one router decision to the input tokens.

For a token at `position` of a sequence and an expert `e` of MoE layer L, the target is
the router's score for e at that position (`logit`: the router's [N, E] output, as the
probe reads it for router health) and its routing probability (`prob`: softmax over the
experts, sigmoid for sigmoid gates, or the row itself when the router hands out
probabilities). Each is attributed to the input embedding of every position by

* gradient x input: sum over the hidden dimension of x * df/dx at the input x;
* integrated gradients (Sundararajan et al. 2017): (x - b) * the mean of df/dx along the
  straight path from a baseline b to x, by the midpoint rule over `steps` points
  (alpha = (k + 1/2) / steps), summed over the hidden dimension. The sum over positions
  should equal f(x) - f(b) (completeness); the panel reports how far it is, which also
  shows where f is not smooth along the path (an earlier layer's top-k choice switching).

How it runs, and why it leaves the job alone (see side.py):

* only on the probe's request thread, never inside the job's forward; grad mode is
  enabled there only (torch's grad mode is thread-local);
* the model is called again from that thread with the kept input ids; two hooks that
  exist only while an explanation runs, and that return at once on any other thread,
  replace the input embedding module's output with the point on the path (a leaf that
  requires grad) and take layer L's router output, then stop the forward there (the
  layers after L are never run);
* gradients come from torch.autograd.grad with respect to that leaf only: no
  parameter's .grad is created or changed; the model is never put in train or eval mode,
  nothing is assigned to a module; a model in training mode is refused (its dropout and
  router noise would draw from the job's random generator);
* memory: every tensor autograd saves for the backward (parameters excluded) is counted
  as it is saved; a pass that would go over the limit stops right there and the request
  is refused with what it would have needed. Integrated-gradient steps run in batches
  as large as the limit allows. Time is checked at every saved tensor too.
"""

import inspect
import time
from typing import Callable, List, Optional

import torch
from torch import nn

from . import side
from .routers import MoELayer

DEFAULT_STEPS = 32
MAX_STEPS = 1024
BASELINES = ("zero", "mean", "token")


class Refusal(Exception):
    """The request cannot be answered: `code` for programs, the message for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Limits:
    """Bounds of one explanation: seconds of work and bytes saved for the backward at once."""

    def __init__(self, max_seconds: float = 60.0, max_bytes: int = 512 * 2**20, max_tokens: int = 2048):
        self.max_seconds = float(max_seconds)
        self.max_bytes = int(max_bytes)
        self.max_tokens = int(max_tokens)


class _Stop(BaseException):
    """Raised from the router hook once layer L's scores are taken: the rest of the model is
    not needed. A BaseException, so a model's own `except Exception` never swallows it."""


class _Abort(BaseException):
    """Over a limit, or cancelled, in the middle of a pass."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Capture:
    """What the side computation's hooks do for one forward call (set in side.state.capture)."""

    def __init__(self, inputs: Callable[[torch.Tensor], torch.Tensor]):
        self.inputs = inputs  # embedding output -> the tensor to run the model on instead
        self.embedded = False
        self.leaf: Optional[torch.Tensor] = None
        self.embedding: Optional[torch.Tensor] = None  # the real embedding output (detached)
        self.projection: Optional[torch.Tensor] = None  # the router's inner projection output, if any
        self.recomputed_scores = False  # scores computed here from the router's weight and input
        self.scores: Optional[torch.Tensor] = None


def input_embedding(root: nn.Module) -> Optional[nn.Module]:
    """The module that turns input ids into the first hidden states."""
    get = getattr(root, "get_input_embeddings", None)
    if callable(get):
        try:
            module = get()
        except Exception:  # models that do not implement it raise NotImplementedError
            module = None
        if isinstance(module, nn.Module):
            return module
    for module in root.modules():
        if isinstance(module, nn.Embedding):
            return module
    return None


def router_scores(layer: MoELayer, output) -> Optional[torch.Tensor]:
    """The router's per-expert scores [N, E] in its output, by dtype and shape (as the probe
    reads them for router health): the declared item when transformers says which, else the
    last float item one column per expert wide. Gradients are kept."""
    items = list(output) if isinstance(output, (tuple, list)) else [output]
    if layer.logits_index is not None and isinstance(output, (tuple, list)):
        idx = layer.logits_index if layer.logits_index >= 0 else len(items) + layer.logits_index
        if 0 <= idx < len(items):
            items = [items[idx]]
    widths = (layer.num_experts, layer.num_experts - layer.identity_experts)
    found = [t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 2
             and t.shape[-1] in widths]
    return found[-1].reshape(-1, found[-1].shape[-1]) if found else None


class _SavedBytes:
    """Counts the bytes autograd saves for the backward on this thread, and stops the pass
    when they go over the limit, the time is up, or the request was cancelled."""

    def __init__(self, param_storages, limit, deadline, cancelled):
        self.param_storages = param_storages
        self.limit = limit
        self.deadline = deadline
        self.cancelled = cancelled
        self.storages = set()
        self.bytes = 0

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.param_storages and ptr not in self.storages:
            self.storages.add(ptr)
            self.bytes += storage.nbytes()
            if self.bytes > self.limit:
                raise _Abort("over_limit", "over_memory")
        if time.perf_counter() > self.deadline:
            raise _Abort("over_limit", "over_time")
        if self.cancelled():
            raise _Abort("cancelled", "cancelled")
        return tensor

    @staticmethod
    def unpack(tensor):
        return tensor


class Attribution:
    """The answer, as plain Python values (float64 lists per position)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def probability_kind(layer: MoELayer, row: torch.Tensor) -> str:
    """How the router turns scores into routing probabilities: 'sigmoid' for sigmoid gates,
    'row' when the scores already are probabilities (>= 0, summing to 1), else 'softmax'."""
    if layer.gating == "sigmoid":
        return "sigmoid"
    if bool((row >= 0).all()) and abs(float(row.sum()) - 1.0) < 1e-3:
        return "row"
    return "softmax"


def _probability(scores: torch.Tensor, expert: int, kind: str) -> torch.Tensor:
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()  # half-precision scores: the probability in float32, as routers compute it
    if kind == "sigmoid":
        return torch.sigmoid(scores[..., expert])
    if kind == "row":
        return scores[..., expert]
    return torch.softmax(scores, dim=-1)[..., expert]


def _forward_kwargs(module: nn.Module):
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _call_roots(root: nn.Module, layer_name: str):
    """(module, its forward's parameter names): the root, then each module on the way to the
    layer that has input embeddings of its own, outermost first."""
    entries = [(root, _forward_kwargs(root))]
    parts = layer_name.split(".") if layer_name else []
    for i in range(1, len(parts)):
        try:
            module = root.get_submodule(".".join(parts[:i]))
        except AttributeError:
            break
        if callable(getattr(module, "get_input_embeddings", None)):
            entries.append((module, _forward_kwargs(module)))
    return entries


def _router_projection(layer: MoELayer):
    """The router's weight [E, hidden] and bias (or None), for routers that return only their choice."""
    from .expert_weights import router_weight
    weight, name = router_weight(layer)
    if weight is None:
        return None, None
    owner = layer.router.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer.router
    bias = getattr(owner, "bias", None)
    ok = isinstance(bias, torch.Tensor) and bias.dim() == 1 and bias.shape[0] == weight.shape[0]
    return weight, bias if ok else None


def _projection_module(layer: MoELayer) -> Optional[nn.Module]:
    """The Linear inside a router that projects to one score per expert (the last such, as routers
    project last), for routers that return only their choice; None when the router is that Linear."""
    router = layer.router
    if router is None or isinstance(router, nn.Linear):
        return None
    wanted = {layer.num_experts, layer.num_experts - layer.identity_experts}
    found = None
    for _name, module in router.named_modules():
        if module is not router and isinstance(module, nn.Linear) and module.out_features in wanted:
            found = module
    return found


def attribute(root: nn.Module, layer: MoELayer, ids: torch.Tensor, position: int, expert: int, *,
              steps: int = DEFAULT_STEPS, baseline: str = "zero", baseline_token: Optional[int] = None,
              attention_mask: Optional[torch.Tensor] = None, limits: Optional[Limits] = None,
              cancelled: Callable[[], bool] = lambda: False) -> Attribution:
    """Attribute layer `layer`'s router decision for `expert` at `position` of `ids` ([n] or
    [1, n] token ids) to every position's input embedding. Runs on the calling thread, which
    must not be a thread the job runs its model on. Raises Refusal when it cannot answer."""
    limits = limits or Limits()
    started = time.perf_counter()
    ids = ids.reshape(1, -1)
    n = int(ids.shape[1])
    if not 0 <= position < n:
        raise Refusal("bad_request", "position %d is outside the %d-token sequence" % (position, n))
    if not 0 <= expert < layer.num_experts:
        raise Refusal("bad_request", "expert %d is not one of the layer's %d experts" % (expert, layer.num_experts))
    if not 1 <= steps <= MAX_STEPS:
        raise Refusal("bad_request", "steps should be between 1 and %d" % MAX_STEPS)
    if baseline not in BASELINES:
        raise Refusal("bad_request", "baseline should be one of %s" % ", ".join(BASELINES))
    if n > limits.max_tokens:
        raise Refusal("over_limit", "the sequence holds %d tokens, over the limit of %d for an explanation"
                      % (n, limits.max_tokens))
    if any(m.training for m in root.modules()):
        raise Refusal("training_mode", (
            "the model is in training mode: its dropout and router noise would draw from the job's random "
            "generator, so the probe does not run it; explanations work on a model in eval mode"))
    if getattr(root, "_compiled_call_impl", None) is not None or type(root).__name__ == "OptimizedModule":
        raise Refusal("compiled", "the model runs under torch.compile; explanations need an eager model")
    router = layer.router
    if router is None:
        raise Refusal("no_router", "%s has no router module whose scores could be attributed (%s routing)"
                      % (layer.name or "this layer", layer.design))
    if getattr(getattr(root, "config", None), "is_encoder_decoder", False) and "decoder" in layer.name.split("."):
        raise Refusal("decoder_layer", (
            "%s is in the decoder of an encoder-decoder model: the probe keeps the encoder's input ids only, so it "
            "cannot recompute what the decoder saw" % layer.name))
    # What to run the sequence through: the root, or (when its own forward is not implemented,
    # as in composite models that run their language part themselves) the part holding the layer.
    entries = _call_roots(root, layer.name)
    # The input embedding of each, and every module that looks up the same table (a shared
    # embedding called by an encoder and a decoder, or kept under two names): the first call of
    # any of them is the model's input.
    embeddings = []
    for module, _names in entries:
        found = input_embedding(module)
        if found is not None and found not in embeddings:
            embeddings.append(found)
    if not embeddings:
        raise Refusal("no_embedding", "no input embedding module was found to attribute to")
    embedding = embeddings[0]
    tables = {id(getattr(m, "weight", None)) for m in embeddings if isinstance(getattr(m, "weight", None), torch.Tensor)}
    embeddings += [m for m in root.modules() if isinstance(m, nn.Embedding) and id(m.weight) in tables
                   and m not in embeddings]
    projection = _projection_module(layer)
    weight, bias = _router_projection(layer)

    # Clones made here, outside inference mode, are ordinary tensors autograd can save.
    ids = ids.clone()
    mask = attention_mask.reshape(1, -1).clone() if attention_mask is not None else None
    storages = {p.untyped_storage().data_ptr() for p in root.parameters()}
    storages |= {b.untyped_storage().data_ptr() for b in root.buffers()}
    deadline = started + limits.max_seconds
    dtype = next((p.dtype for p in embedding.parameters() if p.is_floating_point()), torch.float32)

    def call(batch_ids, batch_mask, capture, counter):
        """One forward on this thread, up to layer L's router."""
        while True:
            module, names = entries[0]
            kwargs = {}
            args = ()
            if "input_ids" in names:
                kwargs["input_ids"] = batch_ids
            else:
                args = (batch_ids,)
            if "use_cache" in names:
                kwargs["use_cache"] = False
            if batch_mask is not None and "attention_mask" in names:
                kwargs["attention_mask"] = batch_mask
            side.state.capture = capture
            try:
                if counter is None:
                    module(*args, **kwargs)
                else:
                    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                        module(*args, **kwargs)
            except _Stop:
                pass
            except NotImplementedError as exc:
                if len(entries) > 1 and not capture.embedded:
                    entries.pop(0)  # this module's forward is not implemented: try the part holding the layer
                    continue
                raise Refusal("model_error", "the model raised NotImplementedError while the probe recomputed the "
                              "sequence: %s" % _short(str(exc)))
            except Exception as exc:
                raise Refusal("model_error", "the model raised %s while the probe recomputed the sequence: %s"
                              % (type(exc).__name__, _short(str(exc))))
            finally:
                side.state.capture = None
            break
        if not capture.embedded:
            raise Refusal("no_embedding", "the input embedding module was not called when the model ran on the "
                          "token ids, so there is nothing to attribute to")
        if capture.scores is None:
            raise Refusal("no_scores", "the router of %s did not run (or gave no per-expert scores) when the "
                          "model was called with this sequence" % (layer.name or "this layer"))
        rows = capture.scores.shape[0]
        if rows != batch_ids.numel():
            raise Refusal("no_scores", "the router of %s scored %d rows for %d tokens, so the token's row "
                          "cannot be told" % (layer.name or "this layer", rows, batch_ids.numel()))
        return capture.scores.reshape(batch_ids.shape[0], batch_ids.shape[1], -1)[:, position, :]

    def on_embedding(module, args, output):
        st = side.state
        if not st.active or st.capture is None or st.capture.embedded or not isinstance(output, torch.Tensor):
            return None
        st.capture.embedded = True
        st.capture.embedding = output.detach()
        st.capture.leaf = st.capture.inputs(output.detach())
        return st.capture.leaf

    def on_projection(module, args, output):
        st = side.state
        if st.active and st.capture is not None and isinstance(output, torch.Tensor):
            st.capture.projection = output

    def on_router(module, args, output):
        st = side.state
        if not st.active or st.capture is None:
            return None
        scores = router_scores(layer, output)
        if scores is None and st.capture.projection is not None:
            # a router that returns only its choice: its scores are its projection's output
            scores = router_scores(layer, st.capture.projection)
        if scores is None and weight is not None:
            # ... or its projection of its input, when it applies the weight itself (LongCat)
            hidden = next((a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()
                           and a.shape[-1] == weight.shape[1]), None)
            if hidden is not None:
                flat = hidden.reshape(-1, hidden.shape[-1])
                scores = torch.nn.functional.linear(flat.to(weight.dtype), weight, bias)
                st.capture.recomputed_scores = True
        st.capture.scores = scores
        raise _Stop()

    handles = [m.register_forward_hook(on_embedding) for m in embeddings]
    if projection is not None:
        handles.append(projection.register_forward_hook(on_projection))
    handles.append(router.register_forward_hook(on_router))
    side.state.active = True
    try:
        with torch.enable_grad():
            return _attribute(call, layer, ids, mask, n, position, expert, steps, baseline, baseline_token,
                              embedding, dtype, storages, limits, deadline, started, cancelled)
    except _Abort as abort:
        if abort.code == "cancelled":
            raise Refusal("cancelled", "the explanation was cancelled (the host detached)")
        if abort.message == "over_time":
            raise Refusal("over_limit", "the explanation took longer than its limit of %.0f s and was stopped"
                          % limits.max_seconds)
        raise Refusal("over_limit", (
            "one pass of %d tokens up to %s would save more than %s for its gradients, over the limit; "
            "pick a shorter sequence or raise the memory limit" % (n, layer.name or "this layer", _mib(limits.max_bytes))))
    finally:
        side.state.active = False
        side.state.capture = None
        for handle in handles:
            handle.remove()


def _short(text, limit=300):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mib(n):
    return "%.0f MiB" % (n / 2**20) if n >= 2**20 else "%.0f KiB" % (n / 1024)


def _attribute(call, layer, ids, mask, n, position, expert, steps, baseline, baseline_token, embedding, dtype,
               storages, limits, deadline, started, cancelled):
    # 1. The input itself: f(x), its gradient (gradient x input), and how much memory a pass takes.
    capture = Capture(lambda x: x.clone().requires_grad_(True))
    counter = _SavedBytes(storages, limits.max_bytes, deadline, cancelled)
    scores = call(ids, mask, capture, counter)
    per_sample = max(1, counter.bytes)
    if not scores.requires_grad:
        raise Refusal("not_differentiable", "the router's scores do not depend differentiably on the input "
                      "embeddings (the model computes them without gradients)")
    x = capture.embedding.to(dtype)[0]  # [n, H]
    kind = probability_kind(layer, scores[0].detach())
    logit = scores[0, expert]
    prob = _probability(scores[0], expert, kind)
    g_logit, g_prob = _grads([logit, prob], capture.leaf)
    xf = x.double()
    gxi_logit = (g_logit[0].double() * xf).sum(-1)
    gxi_prob = (g_prob[0].double() * xf).sum(-1)
    recomputed = torch.topk(scores[0].detach().float(), min(layer.top_k, scores.shape[-1])).indices
    f_logit, f_prob = float(logit.detach()), float(prob.detach())
    notes = []
    if capture.recomputed_scores:
        notes.append("the router hands out only its choice: its scores were computed from its weight and its input")
    del scores, logit, prob, capture

    # 2. The baseline: b and f(b).
    b = _baseline(embedding, ids, x, baseline, baseline_token, dtype)
    capture = Capture(lambda _x: b.unsqueeze(0).clone())
    with torch.no_grad():
        scores = call(ids, mask, capture, None)
        b_logit = float(scores[0, expert])
        b_prob = float(_probability(scores[0], expert, kind))
    del scores, capture

    # 3. Integrated gradients: the mean gradient along the path, in batches as large as the limit allows.
    batch = max(1, min(steps, limits.max_bytes // per_sample))
    total_logit = torch.zeros_like(xf)
    total_prob = torch.zeros_like(xf)
    diff = (x - b)
    alphas = [(k + 0.5) / steps for k in range(steps)]
    for start in range(0, steps, batch):
        if cancelled():
            raise _Abort("cancelled", "cancelled")
        if time.perf_counter() > deadline:
            raise _Abort("over_limit", "over_time")
        chunk = alphas[start:start + batch]
        alpha = torch.tensor(chunk, dtype=dtype, device=x.device).reshape(-1, 1, 1)
        points = b.unsqueeze(0) + alpha * diff.unsqueeze(0)  # [c, n, H]
        capture = Capture(lambda _x, p=points: p.requires_grad_(True))
        batch_ids = ids.expand(len(chunk), n)
        batch_mask = None if mask is None else mask.expand(len(chunk), n)
        counter = _SavedBytes(storages, limits.max_bytes, deadline, cancelled)
        scores = call(batch_ids, batch_mask, capture, counter)
        logits = scores[:, expert]
        probs = _probability(scores, expert, kind)
        g_logit, g_prob = _grads([logits.sum(), probs.sum()], capture.leaf)
        total_logit += g_logit.double().sum(0)
        total_prob += g_prob.double().sum(0)
        del scores, logits, probs, capture, g_logit, g_prob, points
    dfl = diff.double()
    ig_logit = (dfl * total_logit / steps).sum(-1)
    ig_prob = (dfl * total_prob / steps).sum(-1)
    return Attribution(
        n=n, position=position, expert=expert, steps=steps, baseline=baseline,
        baseline_token=-1 if baseline_token is None else int(baseline_token), prob_kind=kind,
        logit=f_logit, prob=f_prob, baseline_logit=b_logit, baseline_prob=b_prob,
        gxi_logit=gxi_logit.cpu().tolist(), gxi_prob=gxi_prob.cpu().tolist(),
        ig_logit=ig_logit.cpu().tolist(), ig_prob=ig_prob.cpu().tolist(),
        recomputed=recomputed.cpu().tolist(), seconds=time.perf_counter() - started,
        peak_bytes=int(per_sample * batch), batch=batch, device=str(x.device), notes=notes,
    )


def _grads(outputs: List[torch.Tensor], leaf: torch.Tensor):
    """d output / d leaf for each output, without touching any parameter's .grad."""
    grads = []
    for i, out in enumerate(outputs):
        (g,) = torch.autograd.grad(out, leaf, retain_graph=i < len(outputs) - 1, allow_unused=True)
        if g is None:
            raise Refusal("not_differentiable", "the router's scores do not depend on the input embeddings "
                          "through operations with gradients")
        grads.append(g)
    return grads


def _baseline(embedding, ids, x, kind, token, dtype):
    """The baseline input b [n, H]: zeros, the embedding of one token at every position, or the
    mean embedding over the vocabulary (of the module's output, so any scaling it does is in)."""
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "token":
        if token is None or token < 0:
            raise Refusal("bad_request", "a token baseline needs a token id")
        vocab = getattr(embedding, "num_embeddings", None)
        if vocab is not None and token >= vocab:
            raise Refusal("bad_request", "token %d is outside the vocabulary of %d" % (token, vocab))
        with torch.no_grad():
            row = embedding(torch.full((1, 1), int(token), dtype=ids.dtype, device=ids.device))
        return row.reshape(1, -1).to(dtype).expand_as(x).clone()
    vocab = getattr(embedding, "num_embeddings", None)
    if vocab is None:
        raise Refusal("bad_request", "the mean-embedding baseline needs an nn.Embedding input layer")
    total = torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for start in range(0, vocab, 8192):
            chunk = torch.arange(start, min(vocab, start + 8192), device=ids.device).reshape(1, -1)
            total += embedding(chunk).reshape(-1, x.shape[-1]).double().sum(0)
    return (total / vocab).to(dtype).expand_as(x).clone()
