"""A job with models of two frameworks in one process: a tiny transformers Mixtral (torch) and the
ONNX MoE language model of onnx_moe_job.py run by ONNX Runtime, both run every pass. It never
imports the probe. Each pass appends one JSON line to --log: "counts" for the ONNX Runtime model
(the framework's own TopK over its router logits), "counts_torch" for the Mixtral (top-k over the
softmax of the router logits transformers returns), a hash of both outputs, and the threads.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_moe_job import build_model, topk_session  # noqa: E402
from tiny_moe_job import build_model as build_torch_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    mixtral = build_torch_model("mixtral", layers=2, experts=4, top_k=2, hidden=32, seed=0).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(build_model(2, 8, 2, 32, 256, 0), sess_options=options, providers=["CPUExecutionProvider"])
    topk = topk_session(2)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, size=(2, 16), dtype=np.int64) for _ in range(4)]
    with open(args.log, "a", buffering=1) as log:
        log.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
        i = 0
        while True:
            batch = batches[i % 4]
            results = session.run(None, {"input_ids": batch})
            counts = [np.bincount(topk.run(["ids"], {"scores": l})[0].reshape(-1), minlength=8).tolist() for l in results[1:]]
            with torch.no_grad():
                out = mixtral(torch.from_numpy(batch), output_router_logits=True)
            counts_torch = [torch.bincount(torch.topk(torch.softmax(l.float(), -1), 2, -1).indices.reshape(-1), minlength=4).tolist()
                            for l in out.router_logits]
            digest = hashlib.sha256(results[0].tobytes() + out.logits.numpy().tobytes()).hexdigest()[:16]
            hooks = int("run" in vars(session)) + sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mixtral.modules())
            log.write(json.dumps({"pass": i, "counts": counts, "counts_torch": counts_torch, "out": digest, "hooks": hooks,
                                  "threads": sorted(t.name for t in threading.enumerate())}) + "\n")
            i += 1
            time.sleep(args.sleep)


if __name__ == "__main__":
    sys.exit(main())
