"""Real jobs of every framework, watched by a real probe over its real socket.

`Job.start(script, args)` runs one of test/jobs/*_moe_job.py as a process of its own under
`python -m moe_probe run` (the job never imports the probe itself), with its own socket folder;
each job appends one JSON line per pass to its log with what its framework routed (top-k over
its router logits, computed by the framework), a hash of its outputs and whether probe hooks are
in it. `Job.attach()` connects a minimal host (test_probe_safety.Client) to the probe's socket.
`find_window` finds the run of consecutive passes whose summed counts equal what the probe sent.
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
import time

from probe_client import Client

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_HOST = os.path.dirname(HERE)
if NATIVE_HOST not in sys.path:
    sys.path.insert(0, NATIVE_HOST)  # for the tests that read the probe's own modules
ROOT = os.path.dirname(NATIVE_HOST)
JOBS = os.path.join(ROOT, "test", "jobs")


class Job:
    def __init__(self, process, log, socket_dir):
        self.process = process
        self.log = log
        self.socket_dir = socket_dir
        self.pid = process.pid

    @classmethod
    def start(cls, script, args=(), min_passes=4, timeout=120, probe=True, env=None):
        folder = tempfile.mkdtemp(prefix="moe-job-check-")
        log = os.path.join(folder, "job.jsonl")
        socket_dir = os.path.join(folder, "sockets")
        os.makedirs(socket_dir, mode=0o700)
        command = [sys.executable] + (["-m", "moe_probe", "run"] if probe else []) + \
            [os.path.join(JOBS, script), "--log", log] + list(args)
        environment = dict(os.environ, MOE_DEVTOOLS_SOCKET_DIR=socket_dir, PYTHONPATH=NATIVE_HOST,
                           TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
        process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        job = cls(process, log, socket_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError("job exited (%s): %s" % (process.returncode, process.stderr.read().decode()[-3000:]))
            if len(job.passes()) >= min_passes:
                return job
            time.sleep(0.1)
        job.stop()
        raise AssertionError("job did not run %d passes in %d s" % (min_passes, timeout))

    @property
    def socket(self):
        return os.path.join(self.socket_dir, "probe-%d.sock" % self.pid)

    def passes(self):
        out = []
        if not os.path.exists(self.log):
            return out
        with open(self.log) as f:
            for line in f:
                try:
                    value = json.loads(line)
                except ValueError:
                    continue  # the line being written
                if "pass" in value:
                    out.append(value)
        return out

    def attach(self, timeout=60):
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            assert time.monotonic() < deadline, "the probe never listened"
            time.sleep(0.05)
        client = Client(self.socket)
        client.wait(lambda f: f["t"] == "hello", timeout=timeout)
        return client

    def wait_passes(self, n, timeout=60):
        deadline = time.monotonic() + timeout
        while len(self.passes()) < n:
            assert time.monotonic() < deadline, "job stalled at %d passes" % len(self.passes())
            assert self.process.poll() is None, "job exited"
            time.sleep(0.05)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def hello_of(client):
    return next(f for f in client.frames if f["t"] == "hello")


def last_counts(client, model=0):
    frames = [f for f in client.frames if f["t"] == "counts" and f["model"] == model]
    return frames[-1] if frames else None


def layer_counts(frame, layer):
    widths = frame["widths"]
    start = sum(widths[:layer])
    values = struct.unpack("<%dq" % sum(widths), frame["counts"])
    return list(values[start:start + widths[layer]])


def find_window(passes, layer, n, shown):
    """The first pass of a run of n consecutive passes whose counts of `layer` sum to `shown`, or -1."""
    for start in range(0, len(passes) - n + 1):
        total = [0] * len(shown)
        for record in passes[start:start + n]:
            for e, c in enumerate(record["counts"][layer]):
                total[e] += c
        if total == shown:
            return start
    return -1


def check_counts_match_the_job(job, client, min_passes=5, timeout=60):
    """Every layer's counts in the latest counts frame equal the job's own routing over a run of
    exactly that many consecutive passes; returns that frame."""
    deadline = time.monotonic() + timeout
    frame = None
    while time.monotonic() < deadline:
        frame = last_counts(client)
        if frame is not None and frame["passes"] >= min_passes:
            break
        time.sleep(0.05)
    assert frame is not None and frame["passes"] >= min_passes, "no counts covering %d passes" % min_passes
    job.wait_passes(len(job.passes()) + 2)  # the job logs a pass after it returns
    passes = job.passes()
    for layer in range(frame["layers"]):
        shown = layer_counts(frame, layer)
        assert sum(shown) > 0, "layer %d: nothing counted" % layer
        assert find_window(passes, layer, frame["passes"], shown) >= 0, \
            "layer %d: no run of %d passes of the job sums to %s" % (layer, frame["passes"], shown)
    return frame


def outputs_by_input(passes, cycle=4):
    """The output hash of each of the job's cycling inputs (one each: the jobs are deterministic)."""
    reference = {}
    for record in passes:
        reference.setdefault(record["pass"] % cycle, set()).add(record["out"])
    assert all(len(outs) == 1 for outs in reference.values()), "the job's outputs vary for one input: %s" % reference
    return {key: outs.pop() for key, outs in reference.items()}


def assert_same_outputs(passes, reference, cycle=4):
    for record in passes:
        assert record["out"] == reference[record["pass"] % cycle], "pass %d: output changed" % record["pass"]


def detach_and_check_unchanged(job, client, reference, cycle=4, settle=2, more=8, timeout=60):
    """Every pass so far (attached ones too) gave the outputs the job had before attach; detach;
    then the job runs on with those outputs and no probe hooks in it."""
    assert_same_outputs(job.passes(), reference, cycle)
    client.detach()
    client.wait(lambda f: f["t"] == "bye", timeout=timeout)
    detached_at = len(job.passes())
    job.wait_passes(detached_at + settle + more, timeout=timeout)
    after = job.passes()[detached_at + settle:]
    for record in after:
        assert record["hooks"] == 0, "pass %d still carries probe hooks" % record["pass"]
    assert_same_outputs(job.passes(), reference, cycle)
    return after
