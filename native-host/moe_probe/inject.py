"""Entry point run inside a job the host attached to (via gdb or sys.remote_exec).

It runs on the job's main thread at a safe point, so it must be quick and must
never raise: it only starts the probe's background thread and returns.
Problems are written to a status file the host reads, since there is no
connection yet to report them on.
"""

import json
import os
import sys


def start(socket_dir):
    try:
        _write_status(socket_dir, None)
        if "torch" not in sys.modules:
            _write_status(socket_dir, {
                "code": "no_torch",
                "message": "This Python process has not imported torch, so there is no model to watch.",
            })
            return
        from .server import start_server
        start_server(mode="injected", once=True, socket_dir=socket_dir)
    except BaseException as exc:  # the job must not see our failure
        try:
            _write_status(socket_dir, {"code": "probe_start_failed", "message": "%s: %s" % (type(exc).__name__, exc)})
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
