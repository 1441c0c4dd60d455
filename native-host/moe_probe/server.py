"""The probe's socket: one host at a time, hooks installed only while it is connected.

A single background thread accepts a connection, installs the recorders, and
then streams snapshots until the host goes away, at which point every hook is
removed. An injected probe (once=True) then also closes and unlinks its socket
and the thread ends, leaving the process as it found it.
"""

import ctypes
import hmac
import json
import os
import platform
import queue
import secrets
import select
import socket
import struct
import sys
import threading
import time
import traceback

from . import frameworks, paths
from .framing import FrameError, FrameReader, encode_frame
from .refusal import refusal
from .distributed import dist_info
from .settings import Settings

PROTOCOL_VERSION = 2
QUEUE_SIZE = 64
SEND_TIMEOUT_S = 5.0
POLL_S = 0.05
FINAL_FLUSH_WAIT_S = 0.5
# An injected probe whose host never connects (it gave up, or died) leaves the job after this long.
INJECTED_LINGER_S = 30.0


def _peer_uid(conn):
    """The connecting process's uid (Linux SO_PEERCRED), or None where unsupported."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _check_token(conn, token):
    """A TCP client's first frame must be {"t": "auth", "token": TOKEN}; anything else is refused."""
    conn.settimeout(2.0)
    reader = FrameReader()
    data = b""
    try:
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return False
            data += chunk
            if len(data) > 4096:
                return False
            messages = reader.feed(chunk)
            if messages:
                first = messages[0]
                return (isinstance(first, dict) and first.get("t") == "auth"
                        and isinstance(first.get("token"), str)
                        and hmac.compare_digest(first["token"], token))
    except (OSError, ValueError):
        return False


def _tensor_bytes(tensor) -> bytes:
    """Raw little-endian bytes of a host tensor: a torch tensor (read without numpy) or, from the
    other frameworks' backends, a numpy array."""
    if not hasattr(tensor, "data_ptr"):
        return tensor.tobytes()  # numpy: C order, the machine's (little-endian) byte order
    tensor = tensor.contiguous()
    return ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size())


def _on_host(tensor):
    """A torch tensor copied to host memory (the sender thread's job); numpy arrays already are."""
    return tensor.to("cpu") if hasattr(tensor, "data_ptr") else tensor


class ProbeServer:
    def __init__(self, mode: str, once: bool, socket_dir: str = None, models=None, settings=None,
                 tcp_port=None, expert_map=None):
        self.mode = mode  # "injected" or "library"
        self.once = once
        # Optional TCP listener for a job on a remote machine reached through an SSH tunnel:
        # bound to 127.0.0.1 only, and a client must present the random token first.
        self.tcp_port = tcp_port
        self.tcp_token = None
        self.tcp_address = None
        self._tcp_listener = None
        self.socket_dir = socket_dir
        self.explicit_models = models  # roots given by moe_probe.attach(model), else found by gc
        self.expert_map = expert_map  # the user's expert-parallel map (distributed.check_expert_map)
        self.settings = settings or Settings()
        self.path = None
        self._listener = None
        self._thread = None
        self._stopping = threading.Event()
        self.session = None

    def start(self):
        if self.socket_dir:
            os.environ.setdefault("MOE_DEVTOOLS_SOCKET_DIR", self.socket_dir)
            os.makedirs(self.socket_dir, mode=0o700, exist_ok=True)
            directory = self.socket_dir
        else:
            directory = paths.ensure_socket_dir()
        self.path = os.path.join(directory, "%s%d%s" % (paths.SOCKET_PREFIX, os.getpid(), paths.SOCKET_SUFFIX))
        if os.path.exists(self.path):
            os.unlink(self.path)  # left by a process with our pid that died
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound and listening under a temporary name first, then renamed: the host watches the
        # folder and connects the moment the path appears, which must not be before listen().
        pending = os.path.join(directory, ".%s%d.tmp" % (paths.SOCKET_PREFIX, os.getpid()))
        if os.path.exists(pending):
            os.unlink(pending)
        old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
        try:
            listener.bind(pending)
        finally:
            os.umask(old_umask)
        os.chmod(pending, 0o600)
        listener.listen(4)
        os.rename(pending, self.path)
        self._listener = listener
        if self.tcp_port is not None:
            self._start_tcp(directory)
        self._thread = threading.Thread(target=self._serve, name="moe_probe", daemon=True)
        self._thread.start()

    def stop(self, wait=True):
        self._stopping.set()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def _start_tcp(self, directory):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", int(self.tcp_port)))
        tcp.listen(4)
        self._tcp_listener = tcp
        self.tcp_token = secrets.token_hex(16)
        self.tcp_address = "127.0.0.1:%d" % tcp.getsockname()[1]
        info = os.path.join(directory, "%s%d.tcp.json" % (paths.SOCKET_PREFIX, os.getpid()))
        fd = os.open(info, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"address": self.tcp_address, "token": self.tcp_token}, f)
        self._tcp_info = info
        sys.stderr.write("moe_probe: listening on %s (token in %s)\n" % (self.tcp_address, info))

    def _accept(self):
        """The next connection and whether it came over TCP, or (None, False) on timeout."""
        listeners = [l for l in (self._listener, self._tcp_listener) if l is not None]
        readable, _, _ = select.select(listeners, [], [], POLL_S * 4)
        if not readable:
            return None, False
        conn, _ = readable[0].accept()
        return conn, readable[0] is self._tcp_listener

    def _serve(self):
        give_up_at = time.monotonic() + INJECTED_LINGER_S if self.once else None
        try:
            while not self._stopping.is_set():
                try:
                    conn, over_tcp = self._accept()
                except (OSError, ValueError):
                    break
                if conn is None:
                    if give_up_at is not None and time.monotonic() > give_up_at:
                        break  # nobody came: close the socket and end the thread
                    continue
                conn.setblocking(True)
                if over_tcp:
                    if not _check_token(conn, self.tcp_token):
                        conn.close()
                        continue
                else:
                    uid = _peer_uid(conn)
                    if uid is not None and uid != os.getuid():
                        conn.close()  # another user's process: refuse without a word
                        continue
                if self.once:
                    # An injected probe serves exactly one host: the socket goes now, so a
                    # later attach never finds it half-closed and injects a fresh probe.
                    self._close_listener()
                self.session = Session(self, conn)
                try:
                    self.session.run()
                finally:
                    self.session = None
                if self.once:
                    break
        finally:
            self._close()

    def _close_listener(self):
        for listener in (self._listener, self._tcp_listener):
            try:
                if listener is not None:
                    listener.close()
            except OSError:
                pass
        for path in (self.path, getattr(self, "_tcp_info", None)):
            try:
                if path:
                    os.unlink(path)
            except OSError:
                pass

    def _close(self):
        self._close_listener()
        _forget_server(self)


class Session:
    """One connected host: hooks in, frames out, hooks out."""

    def __init__(self, server: ProbeServer, conn: socket.socket):
        self.server = server
        self.conn = conn
        self.queue = queue.Queue(maxsize=QUEUE_SIZE)
        self.recorders = []
        self.seq = 0
        self.error = None  # set (from any thread) when the probe disables itself
        self.error_trace = ""
        self.reader = FrameReader()
        self.tokenizer = None
        self.requests = None  # answers explain / expert-params requests on a thread of its own
        self.pass_watch = None  # torch jobs: how passes ran (torch.compile, CUDA graphs); pass_visibility.py

    def send(self, message):
        self.conn.sendall(encode_frame(message))

    def fail(self, exc):
        """Called from a hook: stop recording at once; the session thread reports why."""
        if self.error is None:
            self.error = "%s: %s" % (type(exc).__name__, exc)
            self.error_trace = traceback.format_exc(limit=8)
        for recorder in self.recorders:
            recorder.active = False

    def run(self):
        self.conn.settimeout(SEND_TIMEOUT_S)
        try:
            self._run()
        except (OSError, FrameError, ValueError):
            pass  # the host went away or spoke nonsense: just clean up
        finally:
            if self.requests is not None:
                self.requests.stop()  # cancels a running request at its next step
                self.requests = None
            for recorder in self.recorders:
                recorder.stop()
            self.recorders = []
            self.tokenizer = None
            if self.pass_watch is not None:
                self.pass_watch.stop()
                self.pass_watch = None
            try:
                self.conn.close()
            except OSError:
                pass

    def _run(self):
        # Every framework the job has loaded is surveyed (frameworks.py); each model found is
        # read by its own framework's backend, and all of them share this one session.
        found = frameworks.survey(self.server.explicit_models, self.server.expert_map)
        settings = self.server.settings
        hello = {
            "t": "hello",
            "v": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "mode": self.server.mode,
            "framework": found.framework,
            "framework_version": found.version,
            "frameworks": found.frameworks,
            "python": platform.python_version(),
            "argv": list(sys.argv)[:16],
            "models": [model.describe(i) for i, model in enumerate(found.models)],
            "settings": settings.describe(),
            "warnings": found.warnings,
        }
        where = dist_info()
        if where is not None:
            hello["dist"] = where  # one rank of a distributed job: the host shows all ranks as one
        if not found.models:
            hello["error"] = {"code": "no_moe", "message": found.no_moe_message}
            self.send(hello)
            self._wait_for_close(1.0)
            return
        self.tokenizer = found.tokenizer
        for model_id, model in enumerate(found.models):
            self.recorders.append(model.recorder(model_id, self.queue, settings, self.fail))
        if "torch" in sys.modules:  # explain and expert-params read torch models; requests.py imports torch
            from .requests import RequestWorker

            self.requests = RequestWorker(self.recorders, self.queue, self._texts)
        self.send(hello)
        if any(model.framework == "torch" for model in found.models):
            # What the probe cannot see of how torch passes run is watched from before the first
            # hook goes in: compilations (torch.compile) and CUDA graph captures and replays.
            from .pass_visibility import PassWatch

            self.pass_watch = PassWatch()
        for recorder in self.recorders:
            recorder.start()
        while not self.server._stopping.is_set():
            if self.error is not None:
                self.send({"t": "error", "code": "probe_failed", "message": self.error, "detail": self.error_trace})
                break
            try:
                item = self.queue.get(timeout=POLL_S)
            except queue.Empty:
                item = None
            if item is not None:
                self._send_item(item)
            if not self._read_incoming():
                return
        self._send_final()

    def _send_item(self, item):
        kind, recorder, payload = item
        if kind == "counts":
            self._send_counts(recorder, payload)
        elif kind == "losses":
            self._send_losses(recorder, payload)
        elif kind == "layers":
            self.send({"t": "layers", "model": recorder.model_id, "layers": payload})
        elif kind == "frame":
            self.send(payload)  # an answer to a request, built on the request thread
        else:
            self._send_tokens(recorder, payload)

    def _send_counts(self, recorder, snapshot):
        self.seq += 1
        tensors = snapshot.to_host()
        host = snapshot.host
        for index, start, end in host["gpu_events"]:  # CUDA events (torch on a GPU); [] elsewhere
            if end is not None:
                end.synchronize()
                recorder.gpu_time_s[index] += start.elapsed_time(end) / 1000.0
        time_s = host["time_s"]  # None where the backend cannot time layers (compiled graphs)
        if time_s is not None and any(recorder.gpu_time_s):
            time_s = [a + b for a, b in zip(time_s, recorder.gpu_time_s)]
        frame = {
            "t": "counts",
            "model": recorder.model_id,
            "seq": self.seq,
            "ts": snapshot.wall_time,
            "passes": snapshot.passes,
            "layers": recorder.num_layers,
            "widths": list(recorder.widths),
            "counts": _tensor_bytes(tensors["counts"]),
            "tokens": _tensor_bytes(tensors["tokens"]),
            "dropped": recorder.dropped_snapshots,
            "health": _tensor_bytes(tensors["health"]),
            "max_logit": _tensor_bytes(tensors["max_logit"]),
            "time_s": time_s,
            "probe_s": host["probe_s"],
            "prefill": host["prefill"],
            "decode": host["decode"],
            "shape": host["shape"],
            "dropped_tokens": host["dropped_tokens_records"],
        }
        if self.pass_watch is not None and "compiled_passes" in host:  # a torch model's recorder
            frame["visibility"] = self.pass_watch.visibility(host)
        if time_s is None:
            del frame["time_s"]
        if host.get("expert_s") is not None:
            # expert-parallel layers: the time in this process's own experts (GPU events after the blocks')
            frame["expert_s"] = [a + b for a, b in zip(host["expert_s"], recorder.gpu_time_s[recorder.num_layers:])]
        if host.get("train"):  # a training run (torch): forward passes in training mode, backward passes
            frame.update(train=host["train"], backward=host["backward"], backward_s=host["backward_s"])
        self.send(frame)

    def _send_losses(self, recorder, passes):
        """Per-layer training losses of some passes, computed here, off the job's forward (training.py)."""
        aux, z, model_aux, loss = recorder.training.compute(passes)
        self.send({
            "t": "losses",
            "model": recorder.model_id,
            "passes": [p.pass_id for p in passes],
            "ts": time.time(),
            "aux": _tensor_bytes(aux),
            "z": _tensor_bytes(z),
            "model_aux": _tensor_bytes(model_aux),
            "loss": _tensor_bytes(loss),
        })

    def _send_tokens(self, recorder, record):
        layers = []
        n = 0
        k = 0
        for index in sorted(record.layers):
            ids, weights = record.layers[index]
            n = max(n, ids.shape[0])
            k = max(k, ids.shape[1])
            layers.append({
                "layer": index,
                "n": ids.shape[0],
                "k": ids.shape[1],
                "ids": _tensor_bytes(_on_host(ids)),
                "weights": None if weights is None else _tensor_bytes(_on_host(weights)),
            })
        token_ids = None if record.token_ids is None else _on_host(record.token_ids)
        texts = None
        if token_ids is not None and self.tokenizer is not None:
            texts = token_texts(self.tokenizer, token_ids.tolist())
        self.send({
            "t": "tokens",
            "model": recorder.model_id,
            "pass": record.pass_id,
            "phase": record.phase,
            "n": n,
            "k": k,
            "token_ids": None if token_ids is None else _tensor_bytes(token_ids),
            "texts": texts,
            "layers": layers,
        })

    def _send_final(self):
        """Send counts that cover whole passes, then stop recording and say goodbye."""
        for recorder in self.recorders:
            recorder.request_flush()
        deadline = time.monotonic() + FINAL_FLUSH_WAIT_S
        waiting = set(self.recorders)
        while (waiting or not self.queue.empty()) and time.monotonic() < deadline:
            try:
                item = self.queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
            self._send_item(item)
            if item[0] == "counts" and not item[1].flush_pending:
                waiting.discard(item[1])
        for recorder in self.recorders:
            recorder.active = False
        for recorder in waiting:
            # No pass ended in time: the job is idle between passes, so the counters are whole.
            snapshot = recorder.flush_now()
            if snapshot is not None:
                self._send_counts(recorder, snapshot)
        self.send({"t": "bye", "reason": "detached"})

    def _read_incoming(self) -> bool:
        """Handle what the host sent; False when it closed the connection or asked to detach."""
        readable, _, _ = select.select([self.conn], [], [], 0)
        if not readable:
            return True
        data = self.conn.recv(65536)
        if not data:
            return False
        for message in self.reader.feed(data):
            if isinstance(message, dict) and message.get("t") == "detach":
                self._send_final()
                return False
            if isinstance(message, dict) and message.get("t") in ("explain", "expert-params"):
                if self.requests is not None:
                    self.requests.submit(message)
                else:  # no torch in this job: nothing can answer, so say so rather than leave the panel waiting
                    self.send(refusal(message, "bad_request", "explanations and expert weights are read from PyTorch "
                                                              "models only, and this job has no PyTorch model"))
        return True

    def _texts(self, ids):
        """The live tokenizer's strings for token ids, or None without one."""
        return None if self.tokenizer is None else token_texts(self.tokenizer, ids)

    def _wait_for_close(self, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and self._read_incoming():
            time.sleep(POLL_S)



def token_texts(tokenizer, ids):
    try:
        texts = tokenizer.convert_ids_to_tokens(ids)
        return [t if isinstance(t, str) else "" for t in texts][: len(ids)]
    except Exception:
        return None


# One probe per process.
_server = None
_server_lock = threading.Lock()


def current_server():
    return _server


def start_server(mode, once, socket_dir=None, models=None, settings=None, tcp_port=None, expert_map=None):
    global _server
    with _server_lock:
        if _server is not None and _server.running:
            return _server
        _server = ProbeServer(mode=mode, once=once, socket_dir=socket_dir, models=models, settings=settings,
                              tcp_port=tcp_port, expert_map=expert_map)
        _server.start()
        return _server


def _forget_server(server):
    global _server
    with _server_lock:
        if _server is server:
            _server = None
