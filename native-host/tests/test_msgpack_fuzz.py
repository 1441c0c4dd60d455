"""Fuzzing the probe's MessagePack decoder and frame reader with a fixed seed.

The probe decodes what arrives on its socket inside the job's process, so a bad
input must only ever raise DecodeError / FrameError (both ValueError subclasses,
which the session catches), never anything else, and never take long.
Inputs start from the shared vectors (test/vectors/probe-frames.json).
"""

import json
import os
import random
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_HOST = os.path.dirname(HERE)
ROOT = os.path.dirname(NATIVE_HOST)
if NATIVE_HOST not in sys.path:
    sys.path.insert(0, NATIVE_HOST)

from moe_probe import framing  # noqa: E402
from moe_probe import msgpack  # noqa: E402
from moe_probe.framing import FrameError, FrameReader  # noqa: E402
from moe_probe.msgpack import DecodeError  # noqa: E402

ITERATIONS = 10_000
TIME_LIMIT_S = 30.0

with open(os.path.join(ROOT, "test", "vectors", "probe-frames.json"), encoding="utf-8") as _f:
    VECTORS = json.load(_f)
SEEDS = [bytes.fromhex(v["msgpack_hex"]) for v in VECTORS]
# What the host sends the probe, too (msgpackr writes maps as map16 unless told otherwise).
SEEDS += [msgpack.packb({"t": "detach"}), bytes.fromhex("de0001a174a6646574616368")]

TYPE_BYTES = [0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7,
              0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7,
              0xD8, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0xFF]
LENGTHS = [b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x01\x00\x00", b"\x00\x00\x00\x01",
           b"\x00\x00\xff\xff", b"\x01\x00\x00\x00"]


def make_mutator(rng):
    def rand_bytes(n):
        return bytes(rng.getrandbits(8) for _ in range(n))

    def odd_value():
        choice = rng.randrange(7)
        if choice == 0:  # fixext / ext with any type
            return bytes([rng.choice([0xD4, 0xD5, 0xD6, 0xD7, 0xD8]), rng.getrandbits(8)]) + rand_bytes(rng.randrange(17))
        if choice == 1:
            return bytes([rng.choice([0xDC, 0xDE, 0xDA, 0xC5]), 0xFF, 0xFF])
        if choice == 2:
            return bytes([rng.choice([0xDD, 0xDF, 0xDB, 0xC6, 0xC9])]) + rng.choice(LENGTHS)
        if choice == 3:
            return bytes([rng.choice(TYPE_BYTES)])
        if choice == 4:
            return b"\xcf" + rand_bytes(8)
        if choice == 5:  # NaN, Infinity, random float
            return b"\xcb" + rng.choice([b"\x7f\xf8\x00\x00\x00\x00\x00\x00", b"\x7f\xf0\x00\x00\x00\x00\x00\x00", rand_bytes(8)])
        return b"\xa3" + rng.choice([b"\xff\xfe\xfd", b"\xed\xa0\x80", b"\xc3\x28a"])  # invalid UTF-8, a surrogate

    def nested():
        depth = rng.choice([31, 32, 33, 40, 1000, 100_000])
        opener = rng.choice([b"\x91", b"\x81\xa1t", b"\xdc\x00\x01", b"\x81\x91"])
        return opener * depth + (b"\xc0" if rng.random() < 0.5 else b"")

    def once(body):
        b = bytearray(body)
        choice = rng.randrange(12)
        if choice == 0:
            for _ in range(1 + rng.randrange(4)):
                if b:
                    b[rng.randrange(len(b))] ^= 1 + rng.randrange(255)
            return bytes(b)
        if choice == 1:
            if b:
                b[rng.randrange(len(b))] = rng.choice(TYPE_BYTES)
            return bytes(b)
        if choice == 2:
            return bytes(b[:rng.randrange(len(b) + 1)])
        if choice == 3:
            return bytes(b) + rand_bytes(1 + rng.randrange(16))
        if choice == 4:
            p = rng.randrange(len(b) + 1)
            return bytes(b[:p]) + rand_bytes(1 + rng.randrange(8)) + bytes(b[p:])
        if choice == 5:
            p = rng.randrange(len(b) + 1)
            return bytes(b[:p]) + bytes(b[p + 1 + rng.randrange(8):])
        if choice == 6:
            p = rng.randrange(len(b) + 1)
            return bytes(b[:p]) + bytes([rng.choice([0xDD, 0xDF, 0xDB, 0xC6, 0xC9])]) + rng.choice(LENGTHS) + bytes(b[p + 5:])
        if choice == 7:
            other = rng.choice(SEEDS)
            return bytes(b[:rng.randrange(len(b) + 1)]) + other[rng.randrange(len(other) + 1):]
        if choice == 8:
            return rand_bytes(rng.randrange(64))
        if choice == 9:
            return nested() if rng.random() < 0.3 else rand_bytes(rng.randrange(64))
        if choice == 10:  # replace the value after a fixstr key
            keys = [i for i in range(len(b) - 1) if 0xA1 <= b[i] <= 0xB1 and i + 1 + (b[i] & 0x1F) < len(b)]
            if not keys:
                return bytes(b)
            k = rng.choice(keys)
            end = k + 1 + (b[k] & 0x1F)
            return bytes(b[:end]) + odd_value() + bytes(b[end + 1 + rng.randrange(3):])
        return b"\x81\xa1t" + odd_value()

    def mutate(body):
        out = once(body)
        while rng.random() < 0.3:
            out = once(out)
        return out

    return mutate


def declared_length(rng, length):
    choice = rng.randrange(5)
    if choice == 0:
        return 0
    if choice == 1:
        return max(0, length - 1 - rng.randrange(4))
    if choice == 2:
        return length + 1 + rng.randrange(4)
    if choice == 3:
        return framing.MAX_FRAME_BYTES + rng.randrange(2)
    return rng.getrandbits(32)


def test_unpackb_and_frame_reader_raise_only_their_own_errors():
    rng = random.Random(0x5EED)
    mutate = make_mutator(rng)
    started = time.monotonic()
    slowest = 0.0
    decoded = rejected = 0
    for i in range(ITERATIONS):
        body = mutate(rng.choice(SEEDS))
        t0 = time.monotonic()
        # 1. unpackb on the body alone.
        try:
            value = msgpack.unpackb(body)
        except DecodeError as exc:
            assert str(exc), "empty error message"
            rejected += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            raise AssertionError("unpackb(%s) raised %r" % (body[:200].hex(), exc)) from exc
        else:
            decoded += 1
            # What it decoded can be written again, and that reads back the same (byte-wise: NaN != NaN).
            packed = msgpack.packb(value)
            assert msgpack.packb(msgpack.unpackb(packed)) == packed
        # 2. In a stream with a true or wrong length, fed in random pieces.
        length = len(body) if rng.random() < 0.7 else declared_length(rng, len(body))
        stream = struct.pack("<I", length) + body + (mutate(rng.choice(SEEDS)) if rng.random() < 0.3 else b"")
        reader = FrameReader()
        try:
            pos = 0
            while pos < len(stream):
                size = len(stream) if rng.random() < 0.3 else 1 + rng.randrange(32)
                reader.feed(stream[pos:pos + size])
                pos += size
        except (DecodeError, FrameError) as exc:
            assert str(exc)
        except Exception as exc:  # noqa: BLE001
            raise AssertionError("FrameReader on %s raised %r" % (stream[:200].hex(), exc)) from exc
        slowest = max(slowest, time.monotonic() - t0)
        assert time.monotonic() - started < TIME_LIMIT_S, "fuzzing took too long (at input %d)" % i
    assert decoded + rejected == ITERATIONS
    assert rejected > ITERATIONS // 2
    assert decoded > 0
    assert slowest < 2.0
    # Nothing left behind: the vectors still decode.
    for vector in VECTORS:
        assert msgpack.packb(msgpack.unpackb(bytes.fromhex(vector["msgpack_hex"]))) == bytes.fromhex(vector["msgpack_hex"])


def test_error_classes_are_value_errors():
    # The session catches ValueError (and OSError): both reader errors must be ValueErrors.
    assert issubclass(DecodeError, ValueError)
    assert issubclass(FrameError, ValueError)


def test_deep_nesting_is_refused_before_recursing():
    for depth in (33, 10_000, 1_000_000):
        data = b"\x91" * depth + b"\xc0"
        try:
            msgpack.unpackb(data)
        except DecodeError as exc:
            assert "nested too deeply" in str(exc)
        else:
            raise AssertionError("depth %d was accepted" % depth)
    value = None
    for _ in range(32):
        value = [value]
    assert msgpack.unpackb(msgpack.packb(value)) == value  # 32 levels are fine


def test_huge_declared_sizes_are_refused_without_allocating():
    for data in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff"):
        try:
            msgpack.unpackb(data)
        except DecodeError:
            pass
        else:
            raise AssertionError("%s was accepted" % data.hex())
    reader = FrameReader()
    try:
        reader.feed(struct.pack("<I", framing.MAX_FRAME_BYTES + 1))
    except FrameError as exc:
        assert "over the limit" in str(exc)
    else:
        raise AssertionError("an oversized frame was accepted")
    assert FrameReader().feed(struct.pack("<I", framing.MAX_FRAME_BYTES)) == []  # at the limit: waits
