"""The native injector against real processes on this machine (x86-64 here; see test_inject_sim.py
for aarch64), run exactly as the host runs it: `python -I -S -c ...` with a JSON request on stdin.

Each target is a plain Python program that reports, on its stdout, that it is still doing its
own work; after every injection it must go on doing it, print nothing to stderr (no
traceback, no OSError with errno 512/514 from an unrestarted system call), and the
injected source must have run on its main thread only when the injection succeeded.
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from test_inject_elf import interpreters

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # native-host: where moe_inject lives
LOADER = "import sys; sys.path.insert(0, %r); from moe_inject.__main__ import run; run()" % ROOT
STEPS = ("seized", "chosen", "saved", "mapped", "written", "called")


def inject(pid, source, python=None, timeout=60, preexec=None, **options):
    argv = ["--pid", str(pid)]
    for name, value in options.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    done = subprocess.run([python or sys.executable, "-I", "-S", "-c", LOADER] + argv, input=source,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)
    assert done.stdout.strip(), "no result; stderr: %s" % done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


class Target:
    """A running Python program that prints a line per unit of its own work."""

    def __init__(self, body, python=None, stdin=subprocess.DEVNULL):
        self.proc = subprocess.Popen([python or sys.executable, "-u", "-c", body], stdin=stdin,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = []
        self._buffer = b""
        self.ready = self.read_line(20)
        assert self.ready is not None and self.ready.startswith("ready"), self.stderr()

    @property
    def pid(self):
        return self.proc.pid

    def read_line(self, timeout=5.0):
        """The next line the target printed, or None if it printed none within timeout.
        Read with os.read into our own buffer: select() knows nothing of a file object's buffer."""
        end = time.time() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.time()))
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        self.lines.append(line.decode().strip())
        return self.lines[-1]

    def progresses(self, n=3, timeout=5.0):
        """Whether it prints n more lines of work within timeout (it is alive and working)."""
        for _ in range(n):
            if self.read_line(timeout) is None:
                return False
        return True

    def stderr(self):
        if self.proc.poll() is None:
            os.set_blocking(self.proc.stderr.fileno(), False)
            data = self.proc.stderr.read() or b""
            os.set_blocking(self.proc.stderr.fileno(), True)
            return data.decode()
        return self.proc.stderr.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def targets():
    made = []
    yield lambda *a, **k: made.append(Target(*a, **k)) or made[-1]
    for t in made:
        t.stop()


@pytest.fixture
def marker():
    with tempfile.TemporaryDirectory() as d:
        yield os.path.join(d, "ran")


def marker_source(path):
    """Writes which thread ran it, and the page it was written to (the tokens the injector fills in)."""
    return ("open(%r, 'w').write(__import__('threading').current_thread().name + ' __MOE_PAGE_ADDRESS__ __MOE_PAGE_SIZE__')\n" % path)


def wait_for(path, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path) and os.path.getsize(path):
            return open(path).read()
        time.sleep(0.01)
    return None


SLEEPER = "import time\nprint('ready', flush=True)\ni = 0\nwhile True:\n    time.sleep(0.02)\n    i += 1\n    print(i)\n"


@pytest.mark.parametrize("python", interpreters())
def test_queues_code_on_the_main_thread_of_every_python_build_here(python, targets, marker):
    target = targets(SLEEPER, python=python)
    result = inject(target.pid, marker_source(marker), python=python)
    assert result["ok"], result
    assert result["registers_restored"] is True and result["pending_call"] == 0
    ran = wait_for(marker)
    assert ran is not None
    thread, page, size = ran.split()
    assert thread == "MainThread"
    assert int(page) == result["page"] and int(size) == 4096
    assert target.progresses()
    assert target.stderr() == ""


BUSY_MAIN = """
import threading, time
def tick():
    while True:
        time.sleep(0.005)
threading.Thread(target=tick, daemon=True, name="ticker").start()
print('ready', flush=True)
n = 0
while True:
    x = 0
    for i in range(200000):
        x += i * i
    n += 1
    if n % 5 == 0:
        print(n)
"""


def test_main_thread_that_makes_no_system_calls_gets_the_call_from_another_thread(targets, marker):
    target = targets(BUSY_MAIN)
    result = inject(target.pid, marker_source(marker))
    assert result["ok"], result
    assert wait_for(marker).split()[0] == "MainThread"
    assert target.progresses() and target.stderr() == ""


BLOCKED_THREADS = """
import os, queue, select, sys, threading, time
def say(text):  # one write per line: lines from different threads never interleave
    os.write(1, (text + '\\n').encode())
q = queue.Queue()
r, w = os.pipe()
er, ew = os.pipe()
ep = select.epoll()
ep.register(er, select.EPOLLIN)
def from_queue():
    while True:
        say('queue ' + q.get())
def from_select():
    while True:
        select.select([r], [], [])
        say('select ' + os.read(r, 100).decode())
def from_epoll():
    while True:
        ep.poll()
        say('epoll ' + os.read(er, 100).decode())
for f in (from_queue, from_select, from_epoll):
    threading.Thread(target=f, daemon=True, name=f.__name__).start()
time.sleep(0.2)
print('ready', threading.get_native_id(), flush=True)
for line in sys.stdin:
    word = line.strip()
    if word == 'q':
        q.put('item')
    elif word == 's':
        os.write(w, b'byte')
    elif word == 'e':
        os.write(ew, b'event')
    say('main ' + word)
"""


def test_threads_blocked_in_queue_get_select_and_epoll_carry_on(targets, marker):
    target = targets(BLOCKED_THREADS, stdin=subprocess.PIPE)
    # The main thread reads stdin between commands: the pipe read is the safe point.
    result_box = {}

    def feed():
        time.sleep(0.3)
        target.proc.stdin.write(b"tick\n")
        target.proc.stdin.flush()

    import threading
    feeder = threading.Thread(target=feed)
    feeder.start()
    result_box = inject(target.pid, marker_source(marker))
    feeder.join()
    assert result_box["ok"], result_box
    assert target.read_line() == "main tick"
    assert any("epoll" in why for why in result_box["left_alone"].values()), result_box["left_alone"]
    for word, expect in (("q", "queue item"), ("s", "select byte"), ("e", "epoll event")):
        target.proc.stdin.write((word + "\n").encode())
        target.proc.stdin.flush()
        got = {target.read_line(), target.read_line()}
        assert got == {expect, "main " + word}, got
    assert wait_for(marker).split()[0] == "MainThread"
    assert target.stderr() == ""


PIPE_READER = "import sys\nprint('ready', flush=True)\nfor line in sys.stdin:\n    print('got', line.strip(), flush=True)\n"


def test_a_main_thread_blocked_reading_a_pipe_is_not_disturbed(targets, marker):
    target = targets(PIPE_READER, stdin=subprocess.PIPE)
    import threading
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set():
            target.proc.stdin.write(b"%d\n" % i)
            target.proc.stdin.flush()
            i += 1
            time.sleep(0.05)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        result = inject(target.pid, marker_source(marker))
        assert result["ok"], result
        assert result["thread"] == "main" and result["syscall"] == "read"
        assert wait_for(marker).split()[0] == "MainThread"
        assert target.progresses(5)
    finally:
        stop.set()
        feeder.join()
    numbers = [int(line.split()[1]) for line in target.lines if line.startswith("got")]
    assert numbers == list(range(len(numbers)))  # every line read once, in order: nothing lost
    assert target.stderr() == ""


@pytest.mark.parametrize("step", STEPS)
def test_a_failure_at_any_step_leaves_the_job_running_as_before(step, targets, marker):
    target = targets(SLEEPER)
    result = inject(target.pid, marker_source(marker), fail_at=step)
    assert not result["ok"] and result["code"] == "test_failure"
    ran = wait_for(marker, timeout=1.0 if step != "called" else 5.0)
    assert (ran is not None) == (step == "called")  # queued only once the call was made
    assert target.progresses(5)
    assert target.stderr() == ""


def test_the_job_exiting_mid_injection_is_reported_and_the_injector_ends(targets, marker):
    target = targets(SLEEPER)
    killer = subprocess.Popen([sys.executable, "-c", "import os, time, sys; time.sleep(0.5); os.kill(%d, 9)" % target.pid])
    result = inject(target.pid, marker_source(marker), pause_at="mapped", pause_s=1.5)
    killer.wait()
    assert not result["ok"] and result["code"] == "process_exited", result


def world_runnable(path):
    """Whether any user may run the file: it and every folder above it are open to others."""
    if not os.path.exists(path):
        return False
    path = os.path.realpath(path)
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def test_refused_by_the_kernel_when_the_job_is_another_users(targets, marker):
    if os.getuid() == 0:
        target = targets(SLEEPER)
        # As user nobody, with an interpreter nobody may run (pyenv's under /root is not).
        python = next(p for p in ("/usr/bin/python3", os.path.realpath(sys.executable)) if world_runnable(p))
        result = inject(target.pid, marker_source(marker), python=python, preexec=lambda: (os.setgid(65534), os.setuid(65534)))
        assert target.progresses()
    else:
        result = inject(1, marker_source(marker))  # init: root's
    assert not result["ok"] and result["code"] == "ptrace_denied", result


def test_a_process_without_python_is_refused_and_untouched(targets):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        result = inject(sleeper.pid, "print(1)")
        assert not result["ok"] and result["code"] == "no_python_symbols", result
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


HOLD_TRACE = """
import sys, time
sys.path.insert(0, %r)
from moe_inject import tracer
tracer.seize(%d)
print('tracing', flush=True)
time.sleep(30)
"""


def test_a_job_already_being_traced_is_left_to_its_tracer(targets, marker):
    target = targets(SLEEPER)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_TRACE % (ROOT, target.pid)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "tracing"
        result = inject(target.pid, marker_source(marker))
        assert not result["ok"] and result["code"] == "already_traced", result
        assert "traced by process %d" % holder.pid in result["message"]
    finally:
        holder.kill()
        holder.wait()
    assert target.progresses()


COMPUTE_ONLY = "print('ready', flush=True)\nx = 0\nfor i in range(60_000_000):\n    x += i\nprint('done', x == sum(range(60_000_000)), flush=True)\n"


def test_no_system_call_within_the_timeout_changes_nothing(targets, marker):
    target = targets(COMPUTE_ONLY)
    started = time.time()
    result = inject(target.pid, marker_source(marker), timeout_s=0.5)
    assert not result["ok"] and result["code"] == "no_safe_point", result
    assert "main thread running" in result["message"] and "nothing was changed" in result["message"]
    assert time.time() - started < 5
    assert target.read_line(120) == "done True"
    assert target.proc.wait(10) == 0 and target.stderr() == ""
    assert wait_for(marker, timeout=0.2) is None


def test_a_stopped_job_is_not_touched_and_resumes(targets, marker):
    target = targets(SLEEPER)
    os.kill(target.pid, signal.SIGSTOP)
    time.sleep(0.1)
    try:
        result = inject(target.pid, marker_source(marker), timeout_s=0.3)
        assert not result["ok"] and result["code"] == "no_safe_point", result
        assert "in state T" in result["message"]
    finally:
        os.kill(target.pid, signal.SIGCONT)
    assert target.progresses() and target.stderr() == ""
