"""Entry point run inside a job the host attached to (via ptrace, a debugger or sys.remote_exec).

It runs on the job's main thread at a safe point, so it must be quick and must
never raise: it only starts the probe's background thread and returns.
Problems are written to a status file the host reads, since there is no
connection yet to report them on.
"""

import json
import os
import sys
import time


def start(socket_dir, deadline=None, page=None):
    """Start the probe's server for one host connection.

    deadline: seconds since the epoch after which the host has stopped waiting (the main
    thread reached Python too late); the probe then does not start, so nothing is left in
    the job. page: (address, size) of the memory the ptrace injector mapped for this very
    source, unmapped here once it has run.
    """
    try:
        if deadline is not None and time.time() > deadline:
            return  # the host gave up on this attach and said so; a new attach queues a new bootstrap
        _write_status(socket_dir, None)
        from .frameworks import NO_FRAMEWORK_MESSAGE, loaded
        if not loaded():  # none of torch, jax, keras, onnxruntime: nothing a backend could read
            _write_status(socket_dir, {"code": "no_torch", "message": NO_FRAMEWORK_MESSAGE})
            return
        from .server import start_server
        start_server(mode="injected", once=True, socket_dir=socket_dir)
    except BaseException as exc:  # the job must not see our failure
        try:
            _write_status(socket_dir, {"code": "probe_start_failed", "message": "%s: %s" % (type(exc).__name__, exc)})
        except BaseException:
            pass
    finally:
        if page is not None:
            _unmap(*page)


def _unmap(address, size):
    """Give back the page that held the bootstrap's source.

    Safe here: PyRun_SimpleString parsed the whole source into a code object before running
    it, and never reads the source again. Done with ctypes only when the job already imported
    it (torch does), so an injected probe loads nothing new for this; otherwise the page stays.
    """
    ctypes = sys.modules.get("ctypes")
    if ctypes is None:
        return
    try:
        munmap = ctypes.CDLL(None).munmap
        munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        munmap.restype = ctypes.c_int
        munmap(address, size)
    except BaseException:
        pass


def _write_status(socket_dir, error):
    path = os.path.join(socket_dir, "probe-%d.status.json" % os.getpid())
    if error is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(error, f)
    os.replace(tmp, path)
