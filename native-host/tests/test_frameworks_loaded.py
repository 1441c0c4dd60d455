"""The probe reads the frameworks a job has loaded and never loads one itself: a torch job attached
and detached has no JAX, TensorFlow or ONNX Runtime in it afterwards, an ONNX Runtime job no torch;
a process with none of them gets the clear message, in library mode as when injected."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_HOST = os.path.dirname(HERE)
JOBS = os.path.join(os.path.dirname(NATIVE_HOST), "test", "jobs")
OTHERS = ["torch", "jax", "jaxlib", "flax", "tensorflow", "keras", "onnxruntime", "onnx"]

ATTACH_AND_DETACH = """
import json, sys, os
sys.path.insert(0, {jobs!r})
{setup}
before = set(sys.modules)
import moe_probe
sys.path.insert(0, {tests!r})
from probe_client import Client
client = Client(moe_probe.attach())
hello = client.wait(lambda f: f["t"] == "hello", timeout=60)
{run}
client.detach()
client.wait(lambda f: f["t"] == "bye", timeout=30)
moe_probe.detach()
print(json.dumps({{"loaded": sorted(m for m in {others!r} if m in sys.modules and m not in before),
                  "framework": hello["framework"], "frameworks": [f["name"] for f in hello.get("frameworks", [])],
                  "models": [m.get("framework") for m in hello["models"]], "error": hello.get("error")}}))
"""


def run(setup, run_code="", timeout=240):
    code = ATTACH_AND_DETACH.format(jobs=JOBS, tests=HERE, setup=setup, run=run_code, others=OTHERS)
    env = dict(os.environ, PYTHONPATH=NATIVE_HOST, TF_CPP_MIN_LOG_LEVEL="2")
    env["MOE_DEVTOOLS_SOCKET_DIR"] = os.path.join("/tmp", "moe-frameworks-loaded-%d" % os.getpid())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_torch_job_gets_no_other_framework_from_the_probe():
    result = run("import torch, tiny_moe_job\nmodel = tiny_moe_job.build_model('mixtral', 2, 4, 2, 32, 0).eval()",
                 "import torch\nwith torch.no_grad(): model(torch.zeros(1, 4, dtype=torch.long))")
    assert result == {"loaded": [], "framework": "torch", "frameworks": ["torch"], "models": ["torch"], "error": None}


def test_an_onnx_runtime_job_gets_no_torch_from_the_probe():
    pytest.importorskip("onnxruntime")
    result = run("import numpy as np, onnxruntime as ort, onnx_moe_job\n"
                 "session = ort.InferenceSession(onnx_moe_job.build_model(2, 8, 2, 16, 64, 0), providers=['CPUExecutionProvider'])\n"
                 "import sys\nfor m in ('onnx', 'onnx.helper', 'onnx.numpy_helper'): sys.modules.pop(m, None)",
                 "session.run(None, {'input_ids': np.zeros((1, 4), dtype=np.int64)})")
    assert result["loaded"] == [] and result["framework"] == "onnxruntime" and result["models"] == ["onnxruntime"]
    assert "torch" not in result["frameworks"]


def test_a_process_with_no_framework_is_told_so():
    result = run("pass")
    assert result["models"] == [] and result["loaded"] == []
    assert result["error"] == {"code": "no_moe", "message": "This Python process has not imported torch, JAX, Keras "
                               "(TensorFlow) or ONNX Runtime, so there is no model to watch."}


def test_a_job_without_torch_refuses_explanations_in_words():
    # Explanations and expert weights are read from torch models only: a job without torch must
    # answer such a request with a refusal (the panel would otherwise wait), and load no torch.
    pytest.importorskip("onnxruntime")
    ask = """
import msgpack, struct
for request in ({"t": "explain", "id": 7, "model": 0, "pass": 1, "position": 0, "layer": 0},
                {"t": "expert-params", "id": 8, "model": 0}):
    body = msgpack.packb(request)
    client.sock.sendall(struct.pack("<I", len(body)) + body)
    refused = client.wait(lambda f: f["t"] == "refused" and f["id"] == request["id"], timeout=30)
    assert refused["request"] == request["t"] and refused["code"] == "bad_request", refused
    assert "PyTorch models only" in refused["message"], refused
"""
    result = run("import numpy as np, onnxruntime as ort, onnx_moe_job\n"
                 "session = ort.InferenceSession(onnx_moe_job.build_model(2, 8, 2, 16, 64, 0), providers=['CPUExecutionProvider'])\n"
                 "import sys\nfor m in ('onnx', 'onnx.helper', 'onnx.numpy_helper'): sys.modules.pop(m, None)", ask)
    assert result["framework"] == "onnxruntime" and "torch" not in result["loaded"]
