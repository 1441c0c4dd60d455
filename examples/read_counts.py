"""Read a live job's per-expert routing counts from the MoE DevTools host (standard library only).

usage: python examples/read_counts.py PID [UPDATES]     (after `npm run build`)

The host speaks Chrome's native messaging on stdin/stdout: a 4-byte little-endian length, then
that many bytes of UTF-8 JSON (docs/protocol.md). Counts are cumulative since attach.
"""
import json
import os
import struct
import subprocess
import sys

HOST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dist", "host", "moe-devtools-host")


def send(host, message):
    body = json.dumps(message).encode()
    host.stdin.write(struct.pack("<I", len(body)) + body)
    host.stdin.flush()


def receive(host):
    head = host.stdout.read(4)
    if len(head) < 4:
        sys.exit("the host exited")
    return json.loads(host.stdout.read(struct.unpack("<I", head)[0]))


def main(pid, updates):
    host = subprocess.Popen([HOST], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    send(host, {"type": "hello", "version": 1})
    send(host, {"type": "attach", "pid": pid})
    while updates > 0:
        message = receive(host)
        if message["type"] == "error":
            sys.exit(message["message"])
        if message["type"] == "update":
            updates -= 1
            start = 0  # layers may differ in width: each one's experts follow the last's
            for layer, width in enumerate(message["widths"]):
                print("pass %d layer %d: %s" % (message["passes"], layer, message["counts"][start:start + width]), flush=True)
                start += width
    host.stdin.close()  # end of input: the host detaches from the job and exits
    host.wait()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 5)
