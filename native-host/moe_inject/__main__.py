"""Command-line entry: one JSON request on stdin, one JSON line on stdout.

Request: {"pid": int, "source": str, "timeout_s": float (1.0),
          "fail_at": step?, "pause_at": step?, "pause_s": float?}  (the last three for tests)
Result:  {"ok": true, "tid": int, "thread": "main"|"other", "syscall": str, "image": str,
          "page": int, "timings_ms": {...}, ...}
      or {"ok": false, "code": str, "message": str}

The exit status is 0 either way once a result was written; the result says what happened.
"""

import json
import os
import sys


def main():
    try:
        request = json.loads(sys.stdin.read())
        pid = int(request["pid"])
        source = str(request["source"])
    except (ValueError, KeyError, TypeError) as exc:
        _write({"ok": False, "code": "bad_request", "message": "bad injector request: %s" % exc})
        return
    try:
        from .injector import InjectError, Injector
    except ImportError as exc:  # ctypes missing from this interpreter's build, most likely
        _write({"ok": False, "code": "injector_unavailable", "message": "the injector cannot run in %s: %s" % (sys.executable, exc)})
        return
    try:
        injector = Injector(pid, source, timeout_s=float(request.get("timeout_s", 1.0)),
                            fail_at=request.get("fail_at"), pause_at=request.get("pause_at"),
                            pause_s=float(request.get("pause_s", 0.0)))
        result = injector.run()
        result["ok"] = True
        _write(result)
    except InjectError as exc:
        _write({"ok": False, "code": exc.code, "message": exc.message})
    except OSError as exc:
        code = {1: "ptrace_denied", 13: "ptrace_denied", 3: "process_exited"}.get(exc.errno, "inject_failed")
        _write({"ok": False, "code": code, "message": "%s (process %s)" % (exc, request.get("pid"))})
    except Exception as exc:  # a bug here must still produce one clear line for the host
        _write({"ok": False, "code": "inject_failed", "message": "%s: %s" % (type(exc).__name__, exc)})


def _write(result):
    try:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # the host went away; the job was left as the result says, whoever reads it


if __name__ == "__main__":
    main()
