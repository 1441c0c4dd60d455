"""A minimal host for tests: connects to a probe's socket and reads its frames with the reference
msgpack package. Standard library and msgpack only, so a test can use it inside a job without
loading any framework into it."""

import socket
import struct
import threading
import time

import msgpack


class Client:
    """A minimal host: connects, reads frames with the reference msgpack package."""

    def __init__(self, path, read=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.frames = []
        self.buf = b""
        self.closed = False
        if read:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                break
            if not data:
                break
            self.buf += data
            while len(self.buf) >= 4:
                (n,) = struct.unpack("<I", self.buf[:4])
                if len(self.buf) < 4 + n:
                    break
                self.frames.append(msgpack.unpackb(self.buf[4:4 + n], raw=False))
                self.buf = self.buf[4 + n:]
        self.closed = True

    def wait(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in list(self.frames):
                if predicate(frame):
                    return frame
            time.sleep(0.01)
        raise AssertionError("no matching frame; got %s" % [f.get("t") for f in self.frames])

    def detach(self):
        body = msgpack.packb({"t": "detach"})
        self.sock.sendall(struct.pack("<I", len(body)) + body)

    def close(self):
        self.sock.close()
