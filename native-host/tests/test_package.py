"""The package's public surface: the version matches the project's, every public name resolves
and is documented, the entry points are typed, and importing the package loads no torch."""

import inspect
import json
import os
import subprocess
import sys

NATIVE_HOST = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(NATIVE_HOST)
if NATIVE_HOST not in sys.path:
    sys.path.insert(0, NATIVE_HOST)

import moe_probe  # noqa: E402


def test_version_is_the_projects():
    with open(os.path.join(ROOT, "package.json")) as f:
        assert moe_probe.__version__ == json.load(f)["version"]


def test_public_names_resolve_and_are_documented():
    for name in moe_probe.__all__:
        value = getattr(moe_probe, name)
        if callable(value):
            assert inspect.getdoc(value), name


def test_entry_points_are_typed():
    for fn in (moe_probe.attach, moe_probe.detach, moe_probe.find_moe_layers):
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, fn.__name__
        for p in sig.parameters.values():
            assert p.annotation is not inspect.Parameter.empty, (fn.__name__, p.name)
    assert os.path.exists(os.path.join(NATIVE_HOST, "moe_probe", "py.typed"))


def test_import_loads_no_torch_and_detach_without_attach_is_a_no_op():
    code = "import sys, moe_probe; moe_probe.detach(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=NATIVE_HOST, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_module_usage_errors_exit_2():
    out = subprocess.run([sys.executable, "-m", "moe_probe"], cwd=NATIVE_HOST, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("usage: python -m moe_probe run")
    out = subprocess.run([sys.executable, "-m", "moe_probe", "run", "no_such_script.py"], cwd=NATIVE_HOST, capture_output=True, text=True)
    assert out.returncode == 2 and "no such script" in out.stderr
