"""A small MessagePack encoder/decoder, standard library only.

The probe is injected into processes nobody prepared, so it cannot rely on the
`msgpack` package being installed. Output follows the MessagePack spec's
smallest-representation rules, so it is byte-identical to msgpack/msgpackr for
the types used by the protocol (checked by test/vectors/probe-frames.json).
"""

import struct

_pack_be_u16 = struct.Struct(">H").pack
_pack_be_u32 = struct.Struct(">I").pack
_pack_be_f64 = struct.Struct(">d").pack


class DecodeError(ValueError):
    """The bytes are not valid MessagePack for the types the protocol uses."""


def packb(obj):
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack(obj, out):
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        _pack_int(obj, out)
    elif isinstance(obj, float):
        out.append(0xCB)
        out += _pack_be_f64(obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        n = len(data)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 0x100:
            out += b"\xd9" + bytes((n,))
        elif n < 0x10000:
            out += b"\xda" + _pack_be_u16(n)
        else:
            out += b"\xdb" + _pack_be_u32(n)
        out += data
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        n = len(data)
        if n < 0x100:
            out += b"\xc4" + bytes((n,))
        elif n < 0x10000:
            out += b"\xc5" + _pack_be_u16(n)
        else:
            out += b"\xc6" + _pack_be_u32(n)
        out += data
    elif isinstance(obj, (list, tuple)):
        n = len(obj)
        if n < 16:
            out.append(0x90 | n)
        elif n < 0x10000:
            out += b"\xdc" + _pack_be_u16(n)
        else:
            out += b"\xdd" + _pack_be_u32(n)
        for item in obj:
            _pack(item, out)
    elif isinstance(obj, dict):
        n = len(obj)
        if n < 16:
            out.append(0x80 | n)
        elif n < 0x10000:
            out += b"\xde" + _pack_be_u16(n)
        else:
            out += b"\xdf" + _pack_be_u32(n)
        for key, value in obj.items():
            _pack(key, out)
            _pack(value, out)
    else:
        raise TypeError("cannot encode %s as MessagePack" % type(obj).__name__)


def _pack_int(n, out):
    if 0 <= n < 0x80:
        out.append(n)
    elif -32 <= n < 0:
        out.append(n & 0xFF)
    elif n >= 0:
        if n < 0x100:
            out += b"\xcc" + bytes((n,))
        elif n < 0x10000:
            out += b"\xcd" + _pack_be_u16(n)
        elif n < 0x100000000:
            out += b"\xce" + _pack_be_u32(n)
        elif n < 0x10000000000000000:
            out += b"\xcf" + struct.pack(">Q", n)
        else:
            raise OverflowError("integer too large for MessagePack")
    else:
        if n >= -0x80:
            out += b"\xd0" + struct.pack(">b", n)
        elif n >= -0x8000:
            out += b"\xd1" + struct.pack(">h", n)
        elif n >= -0x80000000:
            out += b"\xd2" + struct.pack(">i", n)
        elif n >= -0x8000000000000000:
            out += b"\xd3" + struct.pack(">q", n)
        else:
            raise OverflowError("integer too small for MessagePack")


# Decoder: used for the (small) messages the host sends to the probe.

_MAX_DEPTH = 32


def unpackb(data):
    value, end = _unpack(memoryview(bytes(data)), 0, 0)
    if end != len(data):
        raise DecodeError("trailing bytes after MessagePack value")
    return value


def _need(buf, pos, n):
    if pos + n > len(buf):
        raise DecodeError("truncated MessagePack value")


def _unpack(buf, pos, depth):
    if depth > _MAX_DEPTH:
        raise DecodeError("MessagePack value nested too deeply")
    _need(buf, pos, 1)
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    if b >= 0xE0:
        return b - 0x100, pos
    if 0x80 <= b <= 0x8F:
        return _unpack_map(buf, pos, b & 0x0F, depth)
    if 0x90 <= b <= 0x9F:
        return _unpack_array(buf, pos, b & 0x0F, depth)
    if 0xA0 <= b <= 0xBF:
        return _unpack_str(buf, pos, b & 0x1F)
    if b == 0xC0:
        return None, pos
    if b == 0xC2:
        return False, pos
    if b == 0xC3:
        return True, pos
    fixed = {
        0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
        0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
    }
    if b in fixed:
        fmt = fixed[b]
        size = struct.calcsize(fmt)
        _need(buf, pos, size)
        return struct.unpack_from(fmt, buf, pos)[0], pos + size
    lengths = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4, 0xDC: 2, 0xDD: 4, 0xDE: 2, 0xDF: 4}
    if b in lengths:
        size = lengths[b]
        _need(buf, pos, size)
        n = int.from_bytes(buf[pos:pos + size], "big")
        pos += size
        if b in (0xC4, 0xC5, 0xC6):
            _need(buf, pos, n)
            return bytes(buf[pos:pos + n]), pos + n
        if b in (0xD9, 0xDA, 0xDB):
            return _unpack_str(buf, pos, n)
        if b in (0xDC, 0xDD):
            return _unpack_array(buf, pos, n, depth)
        return _unpack_map(buf, pos, n, depth)
    raise DecodeError("unsupported MessagePack type byte 0x%02x" % b)


def _unpack_str(buf, pos, n):
    _need(buf, pos, n)
    try:
        return bytes(buf[pos:pos + n]).decode("utf-8"), pos + n
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid UTF-8 in MessagePack string") from exc


def _unpack_array(buf, pos, n, depth):
    if n > len(buf) - pos:
        raise DecodeError("MessagePack array longer than the frame")
    items = []
    for _ in range(n):
        item, pos = _unpack(buf, pos, depth + 1)
        items.append(item)
    return items, pos


def _unpack_map(buf, pos, n, depth):
    if 2 * n > len(buf) - pos:
        raise DecodeError("MessagePack map longer than the frame")
    result = {}
    for _ in range(n):
        key, pos = _unpack(buf, pos, depth + 1)
        if not isinstance(key, (str, int)):
            raise DecodeError("MessagePack map key must be a string or integer")
        result[key], pos = _unpack(buf, pos, depth + 1)
    return result, pos
