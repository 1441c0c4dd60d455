"""Command-line entry: options as arguments, the Python source on stdin, one JSON line on stdout.

    --pid N  [--timeout-s S (1.0)]  [--fail-at STEP] [--pause-at STEP --pause-s S]   (the last three for tests)

Result:  {"ok": true, "tid": int, "thread": "main"|"other", "syscall": str, "image": str,
          "page": int, "timings_ms": {...}, ...}
      or {"ok": false, "code": str, "message": str}

The exit status is 0 either way once a result was written; the result says what happened.
No json module: it imports re, and this process starts anew on every attach (see to_json).
"""

import os
import sys

OPTIONS = {"--pid": int, "--timeout-s": float, "--fail-at": str, "--pause-at": str, "--pause-s": float}


def main():
    try:
        options = parse_args(sys.argv[1:])
        pid = options["--pid"]
        source = sys.stdin.buffer.read().decode("utf-8")
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as exc:
        _write({"ok": False, "code": "bad_request", "message": "bad injector request: %s" % exc})
        return
    try:
        from .injector import InjectError, Injector
    except ImportError as exc:  # ctypes missing from this interpreter's build, most likely
        _write({"ok": False, "code": "injector_unavailable", "message": "the injector cannot run in %s: %s" % (sys.executable, exc)})
        return
    try:
        injector = Injector(pid, source, timeout_s=options.get("--timeout-s", 1.0), fail_at=options.get("--fail-at"),
                            pause_at=options.get("--pause-at"), pause_s=options.get("--pause-s", 0.0))
        result = injector.run()
        result["ok"] = True
        _write(result)
    except InjectError as exc:
        _write({"ok": False, "code": exc.code, "message": exc.message})
    except OSError as exc:
        code = {1: "ptrace_denied", 13: "ptrace_denied", 3: "process_exited"}.get(exc.errno, "inject_failed")
        _write({"ok": False, "code": code, "message": "%s (process %s)" % (exc, pid)})
    except Exception as exc:  # a bug here must still produce one clear line for the host
        _write({"ok": False, "code": "inject_failed", "message": "%s: %s" % (type(exc).__name__, exc)})


def parse_args(argv):
    options = {}
    for i in range(0, len(argv), 2):
        name = argv[i]
        if name not in OPTIONS:
            raise ValueError("unknown option %s" % name)
        options[name] = OPTIONS[name](argv[i + 1])
    if "--pid" not in options:
        raise ValueError("--pid is required")
    return options


def to_json(value):
    """JSON for the result's plain values (dict, list, str, int, float, bool, None)."""
    if value is None or value is True or value is False:
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            code = ord(ch)
            if ch in '"\\':
                out.append("\\" + ch)
            elif code < 0x20 or code > 0x7E:
                out.append("\\u%04x" % code if code < 0x10000 else "\\u%04x\\u%04x" % (
                    0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)))
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, dict):
        return "{" + ", ".join("%s: %s" % (to_json(str(k)), to_json(v)) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return to_json(str(value))


def _write(result):
    try:
        sys.stdout.write(to_json(result) + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # the host went away; the job was left as the result says, whoever reads it


def run():
    """main(), then an immediate exit: threads of the job that are still traced (running, so not
    detachable without stopping them again) are released by the kernel the moment this process
    is gone, so it does not linger in interpreter finalization."""
    try:
        main()
    finally:
        os._exit(0)


if __name__ == "__main__":
    run()
