"""Length-prefixed MessagePack frames on a stream socket (4-byte little-endian length)."""

import struct

from . import msgpack

MAX_FRAME_BYTES = 16 * 1024 * 1024
_LEN = struct.Struct("<I")


class FrameError(ValueError):
    pass


def encode_frame(message) -> bytes:
    body = msgpack.packb(message)
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError("frame of %d bytes is over the %d byte limit" % (len(body), MAX_FRAME_BYTES))
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Accumulates bytes and yields complete decoded messages."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes):
        self._buf += data
        messages = []
        while len(self._buf) >= 4:
            (length,) = _LEN.unpack_from(self._buf, 0)
            if length > MAX_FRAME_BYTES:
                raise FrameError("incoming frame declares %d bytes, over the limit" % length)
            if len(self._buf) < 4 + length:
                break
            body = bytes(self._buf[4:4 + length])
            del self._buf[:4 + length]
            messages.append(msgpack.unpackb(body))
        return messages
