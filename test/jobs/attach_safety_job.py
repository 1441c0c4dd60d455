"""A real torch MoE job whose main thread, between passes, is in one chosen state, for the
attach-safety tests and benchmark. It never imports the probe.

States (--state):
  sleep          time.sleep between passes
  busy           pure Python arithmetic between passes: no system call at all
  threads        sleeps, beside threads blocked in queue.get, select and epoll, fed every few passes
  pipe           blocks reading a pipe (fed by a child process) between passes
  torch_threads  a multi-threaded torch op (2 intra-op threads) between passes

Every pass appends a JSON line to --log: the pass number, a hash of the model's output (inputs
cycle through --cycle fixed batches, so pass i and i + cycle hash the same) and, for the states
with helpers, what they have seen so far. Anything unexpected (an OSError from an interrupted
system call, a helper thread that stops answering, a changed result) is written as an "error"
line, then the job exits with status 3, so a harmed job is seen both in its log and as dead.
"""

import argparse
import hashlib
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_moe_job import build_model  # noqa: E402

FEED_EVERY = 5  # passes between items for the helper threads (state "threads")
ANSWER_S = 5.0  # how long a helper thread may take to report an item


class Helpers:
    """Threads blocked in queue.get, select.select and epoll.poll, each reporting what it got."""

    def __init__(self):
        self.queue = queue.Queue()
        self.select_r, self.select_w = os.pipe()
        self.epoll_r, self.epoll_w = os.pipe()
        self.epoll = select.epoll()
        self.epoll.register(self.epoll_r, select.EPOLLIN)
        self.seen = {"queue": 0, "select": 0, "epoll": 0}
        self.lock = threading.Lock()
        for name, body in (("queue", self._from_queue), ("select", self._from_select), ("epoll", self._from_epoll)):
            threading.Thread(target=body, name="helper-" + name, daemon=True).start()

    def _got(self, name):
        with self.lock:
            self.seen[name] += 1

    def _from_queue(self):
        while True:
            self.queue.get()
            self._got("queue")

    def _from_select(self):
        while True:
            select.select([self.select_r], [], [])
            os.read(self.select_r, 1)
            self._got("select")

    def _from_epoll(self):
        while True:
            self.epoll.poll()
            os.read(self.epoll_r, 1)
            self._got("epoll")

    def feed_and_check(self, items):
        """Give each helper its next item and wait until every one has reported it."""
        self.queue.put(items)
        os.write(self.select_w, b"x")
        os.write(self.epoll_w, b"x")
        deadline = time.monotonic() + ANSWER_S
        while time.monotonic() < deadline:
            with self.lock:
                if all(v == items for v in self.seen.values()):
                    return dict(self.seen)
            time.sleep(0.001)
        raise RuntimeError("helper threads stopped answering: %s after %d items" % (self.seen, items))


def busy_work():
    x = 0
    for i in range(150000):
        x += i * i
    return x


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", required=True, choices=["sleep", "busy", "threads", "pipe", "torch_threads"])
    parser.add_argument("--log", required=True)
    parser.add_argument("--cycle", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.02)
    args = parser.parse_args()

    torch.set_num_threads(2 if args.state == "torch_threads" else 1)
    model = build_model("mixtral", 2, 8, 2, 64, 0).eval()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (2, 16), generator=generator) for _ in range(args.cycle)]
    matrices = [torch.randn(192, 192, generator=generator) for _ in range(2)]
    helpers = Helpers() if args.state == "threads" else None
    feeder = None
    if args.state == "pipe":
        # Another process writes a line every 20 ms; the job blocks in read() for each one.
        feeder = subprocess.Popen([sys.executable, "-c", "import sys, time\nwhile True:\n    sys.stdout.write('x\\n'); sys.stdout.flush(); time.sleep(%r)" % args.sleep],
                                  stdout=subprocess.PIPE)
    first = {}
    with open(args.log, "a", buffering=1) as log:
        log.write(json.dumps({"ready": True, "pid": os.getpid(), "state": args.state}) + "\n")
        i = 0
        try:
            while True:
                with torch.no_grad():
                    out = model(batches[i % args.cycle]).logits
                digest = hashlib.sha256(out.contiguous().numpy().tobytes()).hexdigest()[:16]
                expected = first.setdefault(i % args.cycle, digest)
                if digest != expected:
                    raise RuntimeError("pass %d computed %s, not %s as before" % (i, digest, expected))
                record = {"pass": i, "out": digest}
                if args.state == "sleep" or args.state == "threads":
                    time.sleep(args.sleep)
                elif args.state == "busy":
                    busy_work()
                elif args.state == "pipe":
                    if feeder.stdout.readline() != b"x\n":
                        raise RuntimeError("the pipe read returned something else")
                elif args.state == "torch_threads":
                    product = torch.linalg.matrix_power(matrices[0] @ matrices[1] / 192, 3)
                    record["op"] = hashlib.sha256(product.numpy().tobytes()).hexdigest()[:8]
                    if record["op"] != first.setdefault("op", record["op"]):
                        raise RuntimeError("the torch op computed %s, not %s as before" % (record["op"], first["op"]))
                if helpers is not None and i % FEED_EVERY == FEED_EVERY - 1:
                    record["helpers"] = helpers.feed_and_check(i // FEED_EVERY + 1)
                record["threads"] = threading.active_count()
                log.write(json.dumps(record) + "\n")
                i += 1
        except BaseException as exc:
            log.write(json.dumps({"error": "%s: %s" % (type(exc).__name__, exc), "trace": traceback.format_exc()}) + "\n")
            if feeder is not None:
                feeder.kill()
            sys.exit(3)


if __name__ == "__main__":
    main()
