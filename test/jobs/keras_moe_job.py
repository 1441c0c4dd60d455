"""A real TensorFlow/Keras MoE job for the tests: a tiny MoE language model written with Keras 3
(TensorFlow backend), run in a loop inside a tf.function by default, or eagerly. It never
imports the probe.

Each MoE block: a Dense router to E logits -> softmax -> keras.ops.top_k(k) -> normalised
weights; experts are stacked [E, H, F] weights computed densely and mixed by the top-k gates.
Like transformers' output_router_logits, the model also returns each layer's router logits; the
job computes top-k over them with tf.math.top_k itself (the framework's own computation) and
appends one JSON line per pass to --log: per-expert counts per layer, a hash of the output, how
many places hold the probe's reading (wrapped `call`s, the top-k op), and the threads.
Inputs cycle through --cycle fixed batches.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


class MoEBlock(keras.layers.Layer):
    def __init__(self, num_experts, top_k, hidden, **kwargs):
        super().__init__(**kwargs)
        self.num_experts, self.top_k, self.hidden = num_experts, top_k, hidden
        self.router = keras.layers.Dense(num_experts, use_bias=False, name="router")

    def build(self, input_shape):
        init = keras.initializers.RandomNormal(stddev=0.2, seed=7)
        self.w1 = self.add_weight(shape=(self.num_experts, self.hidden, 2 * self.hidden), initializer=init, name="w1")
        self.w2 = self.add_weight(shape=(self.num_experts, 2 * self.hidden, self.hidden), initializer=init, name="w2")

    def call(self, x):
        logits = self.router(x)
        weights, ids = keras.ops.top_k(keras.ops.softmax(logits, axis=-1), self.top_k)
        weights = weights / keras.ops.sum(weights, axis=-1, keepdims=True)
        h = keras.ops.relu(keras.ops.einsum("nd,edf->nef", x, self.w1))
        y = keras.ops.einsum("nef,efd->ned", h, self.w2)
        gates = keras.ops.sum(keras.ops.one_hot(ids, self.num_experts) * weights[..., None], axis=-2)
        return keras.ops.einsum("ned,ne->nd", y, gates), logits


class MoELM(keras.Model):
    def __init__(self, layers, experts, top_k, hidden, vocab, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.embed = keras.layers.Embedding(vocab, hidden, embeddings_initializer=keras.initializers.RandomNormal(seed=1))
        self.blocks = [MoEBlock(experts, top_k, hidden, name="moe_%d" % i) for i in range(layers)]
        self.lm_head = keras.layers.Dense(vocab, name="lm_head")

    def call(self, input_ids):
        x = keras.ops.reshape(self.embed(input_ids), (-1, self.hidden))
        router_logits = []
        for block in self.blocks:
            y, logits = block(x)
            x = x + y
            router_logits.append(logits)
        return self.lm_head(x), router_logits


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--eager", action="store_true", help="call the model directly (no tf.function)")
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

    keras.utils.set_random_seed(0)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    model = MoELM(args.layers, args.experts, args.top_k, args.hidden, args.vocab)
    rng = np.random.default_rng(1)
    batches = [tf.constant(rng.integers(0, args.vocab, size=(args.batch, args.seq)), dtype=tf.int32)
               for _ in range(args.cycle)]
    model(batches[0])
    forward = model if args.eager else tf.function(lambda ids: model(ids))

    def probe_reading_in():
        from tensorflow.python.ops import gen_nn_ops
        classes = {MoELM, MoEBlock, keras.layers.Dense}
        return (sum(int(getattr(vars(c).get("call"), "__moe_probe__", False)) for c in classes)
                + int(type(gen_nn_ops.top_kv2).__name__ == "partial"))

    with open(args.log, "a", buffering=1) as log:
        log.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
        i = 0
        while args.passes == 0 or i < args.passes:
            out, router_logits = forward(batches[i % args.cycle])
            counts = [np.bincount(tf.math.top_k(l, args.top_k).indices.numpy().reshape(-1), minlength=args.experts).tolist()
                      for l in router_logits]
            log.write(json.dumps({
                "pass": i, "counts": counts, "out": hashlib.sha256(out.numpy().tobytes()).hexdigest()[:16],
                "hooks": probe_reading_in(), "threads": sorted(t.name for t in threading.enumerate()),
            }) + "\n")
            i += 1
            if args.sleep:
                time.sleep(args.sleep)


if __name__ == "__main__":
    sys.exit(main())
