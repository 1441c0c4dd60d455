"""A real JAX/Flax MoE job for the tests: a tiny MoE language model written with Flax (linen or
nnx), run in a loop (under jit by default). It never imports the probe.

Each MoE block: a router Dense to E logits -> softmax -> jax.lax.top_k(k) -> normalised weights;
experts are stacked [E, H, F] parameters computed densely and mixed by the top-k gates. Like
transformers' output_router_logits, the model also returns each layer's router logits; the job
computes top-k over them with jax.lax.top_k itself (the framework's own computation) and appends
one JSON line per pass to --log: per-expert counts per layer, a hash of the output, whether the
probe's reading is in the process (Flax interceptor or wrapped methods), and the threads.
Inputs cycle through --cycle fixed batches.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np


def linen_model(layers, experts, top_k, hidden, vocab):
    import flax.linen as nn

    class MoEBlock(nn.Module):
        num_experts: int
        top_k: int
        hidden: int

        @nn.compact
        def __call__(self, x):
            logits = nn.Dense(self.num_experts, use_bias=False, name="router")(x)
            weights, ids = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), self.top_k)
            weights = weights / weights.sum(-1, keepdims=True)
            w1 = self.param("w1", nn.initializers.normal(0.2), (self.num_experts, self.hidden, 2 * self.hidden))
            w2 = self.param("w2", nn.initializers.normal(0.2), (self.num_experts, 2 * self.hidden, self.hidden))
            y = jnp.einsum("nef,efd->ned", jax.nn.relu(jnp.einsum("nd,edf->nef", x, w1)), w2)
            gates = (jax.nn.one_hot(ids, self.num_experts) * weights[..., None]).sum(-2)
            return jnp.einsum("ned,ne->nd", y, gates), logits

    class MoELM(nn.Module):
        @nn.compact
        def __call__(self, input_ids):
            x = nn.Embed(vocab, hidden)(input_ids).reshape(-1, hidden)
            router_logits = []
            for i in range(layers):
                y, logits = MoEBlock(experts, top_k, hidden, name="layers_%d" % i)(x)
                x = x + y
                router_logits.append(logits)
            return nn.Dense(vocab, name="lm_head")(x), router_logits

    model = MoELM()
    params = model.init(jax.random.key(0), jnp.zeros((2, 4), jnp.int32))
    return model, (lambda ids: model.apply(params, ids))


def nnx_model(layers, experts, top_k, hidden, vocab):
    from flax import nnx

    class MoEBlock(nnx.Module):
        def __init__(self, num_experts, top_k, hidden, rngs):
            self.num_experts, self.top_k = num_experts, top_k
            self.router = nnx.Linear(hidden, num_experts, use_bias=False, rngs=rngs)
            self.w1 = nnx.Param(jax.random.normal(rngs.params(), (num_experts, hidden, 2 * hidden)) * 0.2)
            self.w2 = nnx.Param(jax.random.normal(rngs.params(), (num_experts, 2 * hidden, hidden)) * 0.2)

        def __call__(self, x):
            logits = self.router(x)
            weights, ids = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), self.top_k)
            weights = weights / weights.sum(-1, keepdims=True)
            y = jnp.einsum("nef,efd->ned", jax.nn.relu(jnp.einsum("nd,edf->nef", x, self.w1[...])), self.w2[...])
            gates = (jax.nn.one_hot(ids, self.num_experts) * weights[..., None]).sum(-2)
            return jnp.einsum("ned,ne->nd", y, gates), logits

    class MoELM(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(vocab, hidden, rngs=rngs)
            self.layers = nnx.List([MoEBlock(experts, top_k, hidden, rngs) for _ in range(layers)])
            self.lm_head = nnx.Linear(hidden, vocab, rngs=rngs)

        def __call__(self, input_ids):
            x = self.embed(input_ids).reshape(-1, hidden)
            router_logits = []
            for block in self.layers:
                y, logits = block(x)
                x = x + y
                router_logits.append(logits)
            return self.lm_head(x), router_logits

    model = MoELM(nnx.Rngs(0))
    return model, (lambda ids: model(ids))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", choices=["linen", "nnx"], default="linen")
    parser.add_argument("--eager", action="store_true", help="no jit")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--cycle", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--passes", type=int, default=0, help="0: run until killed")
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    build = linen_model if args.api == "linen" else nnx_model
    model, forward = build(args.layers, args.experts, args.top_k, args.hidden, args.vocab)
    if args.api == "nnx" and not args.eager:
        from flax import nnx
        step = nnx.jit(lambda m, ids: m(ids))
        forward = lambda ids: step(model, ids)  # noqa: E731
    elif not args.eager:
        forward = jax.jit(forward)
    rng = np.random.default_rng(1)
    batches = [jnp.asarray(rng.integers(0, args.vocab, size=(args.batch, args.seq)), dtype=jnp.int32)
               for _ in range(args.cycle)]
    own_top_k = jax.jit(lambda logits: jax.lax.top_k(logits, args.top_k)[1])

    def probe_reading_in():
        """How many places hold the probe's reading: Flax's interceptor stack, wrapped __call__s, lax.top_k."""
        import flax.linen.module as linen_module
        from flax import nnx
        from jax._src.lax.lax import top_k_p
        classes = {type(model), nnx.Linear} | ({type(b) for b in model.layers} if args.api == "nnx" else set())
        return (int(type(linen_module._global_interceptor_stack).__name__ != "ThreadLocalStack")
                + sum(int(getattr(vars(c).get("__call__"), "__moe_probe__", False)) for c in classes)
                + int("bind" in vars(top_k_p)))

    with open(args.log, "a", buffering=1) as log:
        log.write(json.dumps({"ready": True, "pid": os.getpid(), "api": args.api}) + "\n")
        i = 0
        while args.passes == 0 or i < args.passes:
            out, router_logits = forward(batches[i % args.cycle])
            counts = [np.bincount(np.asarray(own_top_k(l)).reshape(-1), minlength=args.experts).tolist()
                      for l in router_logits]
            log.write(json.dumps({
                "pass": i, "counts": counts, "out": hashlib.sha256(np.asarray(out).tobytes()).hexdigest()[:16],
                "hooks": probe_reading_in(), "threads": sorted(t.name for t in threading.enumerate()),
            }) + "\n")
            i += 1
            if args.sleep:
                time.sleep(args.sleep)


if __name__ == "__main__":
    sys.exit(main())
