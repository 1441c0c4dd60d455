"""A stand-in for gdb at the seam the canary tests isolate (DebuggerOptions.gdbPath).

It understands exactly the command line injectGdb builds (-p PID ... -ex 'call (int)Py_AddPendingCall(
..., "C string")') and behaves as FAKE_GDB_MODE says:
  works      queues the string for real (with the project's ptrace injector) and prints "$1 = 0", as gdb does;
  amx_error  prints what gdb 13 prints on Intel CPUs with AMX, and nothing happens;
  kills      prints "$1 = 0", then the target dies a moment later (as with errno 514 after gdb);
  no_effect  prints "$1 = 0" and does nothing;
  stderr     queues code that writes an error to the target's stderr, as a disturbed job would.
"""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def c_string(literal):
    body = literal[1:-1]
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode()
            i += 1
        elif body[i + 1] in '"\\':
            out += body[i + 1].encode()
            i += 2
        elif body[i + 1] == "n":
            out += b"\n"
            i += 2
        else:
            out.append(int(body[i + 1:i + 4], 8))
            i += 4
    return out.decode()


def queue(pid, source):
    loader = "import sys; sys.path.insert(0, %r); from moe_inject.__main__ import run; run()" % os.path.join(ROOT, "native-host")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", loader, "--pid", str(pid)], input=source,
                          capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    argv = sys.argv[1:]
    pid = int(argv[argv.index("-p") + 1])
    call = next(a for a in argv if a.startswith("call (int)Py_AddPendingCall"))
    source = c_string(re.search(r'("(?:[^"\\]|\\.)*")\)$', call).group(1))
    mode = os.environ.get("FAKE_GDB_MODE", "works")
    if mode == "amx_error":
        print("Couldn't write extended state status: Bad address.")
        return 1
    if mode == "stderr":
        source = "import sys; sys.stderr.write('OSError: [Errno 514] Unknown error 514\\n')\n" + source
    if mode in ("works", "stderr"):
        result = queue(pid, source)
        if not result.get("ok"):
            print("fake gdb: %s" % result.get("message"))
            return 1
    if mode == "kills":
        subprocess.Popen([sys.executable, "-c", "import os, time; time.sleep(0.1); os.kill(%d, 9)" % pid], start_new_session=True)
    print("$1 = 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
