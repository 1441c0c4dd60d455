"""The Python probe against the shared probe-frame vectors (test/vectors/probe-frames.json).

The protocol is defined once, in src/protocol/probe.ts; the vectors are packed on the
JavaScript side by scripts/gen-probe-vectors.mjs. Here the probe's own MessagePack
encoder must produce exactly the same bytes, and the frames a real probe sends about a
real model must have exactly the keys and value types of the vector of the same "t".
"""

import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_HOST = os.path.dirname(HERE)
ROOT = os.path.dirname(NATIVE_HOST)
if NATIVE_HOST not in sys.path:
    sys.path.insert(0, NATIVE_HOST)

from moe_probe import framing  # noqa: E402
from moe_probe import msgpack as probe_msgpack  # noqa: E402

with open(os.path.join(ROOT, "test", "vectors", "probe-frames.json"), encoding="utf-8") as _f:
    VECTORS = json.load(_f)
VALID = [v for v in VECTORS if not v.get("invalid")]
BY_NAME = {v["name"]: v for v in VECTORS}


def from_json(value):
    """The vector's JSON value with {"$bin": hex} turned into bytes."""
    if isinstance(value, list):
        return [from_json(item) for item in value]
    if isinstance(value, dict):
        if list(value) == ["$bin"]:
            return bytes.fromhex(value["$bin"])
        return {key: from_json(item) for key, item in value.items()}
    return value


def ids(vectors):
    return [v["name"] for v in vectors]


@pytest.mark.parametrize("vector", VECTORS, ids=ids(VECTORS))
def test_probe_encoder_produces_the_vector_bytes(vector):
    value = from_json(vector["frame"])
    expected = bytes.fromhex(vector["msgpack_hex"])
    assert probe_msgpack.packb(value) == expected
    assert framing.encode_frame(value) == struct.pack("<I", len(expected)) + expected


@pytest.mark.parametrize("vector", VECTORS, ids=ids(VECTORS))
def test_probe_decoder_round_trips_the_vector_bytes(vector):
    value = from_json(vector["frame"])
    data = bytes.fromhex(vector["msgpack_hex"])
    assert probe_msgpack.unpackb(data) == value
    assert probe_msgpack.unpackb(probe_msgpack.packb(value)) == value
    # The same bytes through the stream reader, split at every position.
    stream = framing.encode_frame(value)
    for cut in range(len(stream) + 1):
        reader = framing.FrameReader()
        assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == [value]


@pytest.mark.parametrize("vector", VECTORS, ids=ids(VECTORS))
def test_reference_msgpack_agrees_with_the_vector_bytes(vector):
    msgpack = pytest.importorskip("msgpack")
    value = from_json(vector["frame"])
    assert msgpack.packb(value, use_bin_type=True) == bytes.fromhex(vector["msgpack_hex"])


def test_probe_speaks_the_vectors_protocol_version():
    import moe_probe
    assert moe_probe.PROTOCOL_VERSION == BY_NAME["hello"]["frame"]["v"]


# -- a real probe, attached to a real (tiny) transformers model --------------------


# Maps the protocol declares open (Record<string, number>): any keys, values of these types.
OPEN_MAPS = {"frame.settings"}


def _kind(value):
    return "bytes" if isinstance(value, (bytes, bytearray)) else type(value).__name__


def assert_conforms(real, refs, where="frame"):
    """`real` has exactly the key set of one of the reference values (the vectors of its "t"),
    and every value has a type the references show at that place, all the way down.
    An int is accepted where the references have a float (TypeScript reads both as numbers)."""
    kinds = {_kind(ref) for ref in refs}
    kind = _kind(real)
    assert kind in kinds or (kind == "int" and "float" in kinds), "%s: %r is %s, the vectors have %s" % (
        where, real, kind, sorted(kinds))
    if isinstance(real, dict):
        maps = [ref for ref in refs if isinstance(ref, dict)]
        if where in OPEN_MAPS:
            values = [item for ref in maps for item in ref.values()]
            for key, item in real.items():
                assert isinstance(key, str), "%s: key %r" % (where, key)
                assert_conforms(item, values, "%s.%s" % (where, key))
            return
        key_sets = [set(ref) for ref in maps]
        assert set(real) in key_sets, "%s: keys %s, the vectors have %s" % (
            where, sorted(real), [sorted(keys) for keys in key_sets])
        for key, item in real.items():
            assert_conforms(item, [ref[key] for ref in maps if key in ref], "%s.%s" % (where, key))
    elif isinstance(real, list):
        items = [item for ref in refs if isinstance(ref, list) for item in ref]
        assert items or not real, "%s: the vectors have no example item for this list" % where
        for i, item in enumerate(real):
            assert_conforms(item, items, "%s[%d]" % (where, i))


def assert_matches_vectors(frame):
    refs = [from_json(v["frame"]) for v in VALID if v["frame"]["t"] == frame["t"]]
    assert refs, "no vector for frame type %r" % frame["t"]
    assert_conforms(frame, refs)


def test_conformance_check_is_strict():
    hello = from_json(BY_NAME["hello"]["frame"])
    assert_matches_vectors(hello)
    for broken in ({**hello, "extra": 1}, {k: v for k, v in hello.items() if k != "pid"}, {**hello, "pid": "1"},
                   {**hello, "models": [{**hello["models"][0], "layers": [{"index": 0}]}]},
                   {**hello, "settings": {"x": "y"}}):
        with pytest.raises(AssertionError):
            assert_matches_vectors(broken)
    assert_matches_vectors({**hello, "settings": {"new_setting": 3}})  # settings is an open map
    tokens = from_json(BY_NAME["tokens"]["frame"])
    assert_matches_vectors({**tokens, "texts": None})
    with pytest.raises(AssertionError):
        assert_matches_vectors({**tokens, "n": 1.5})


def read_frame(conn):
    """One frame from the socket, decoded independently of the probe's own decoder when possible."""
    head = recv_exactly(conn, 4)
    if head is None:
        return None
    (length,) = struct.unpack("<I", head)
    body = recv_exactly(conn, length)
    assert body is not None, "connection closed inside a frame"
    value = probe_msgpack.unpackb(body)
    try:
        import msgpack
    except ImportError:
        return value
    assert msgpack.unpackb(body, raw=False) == value
    return value


def recv_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            assert not data, "connection closed inside a frame"
            return None
        data += chunk
    return data


@pytest.fixture
def socket_dir(monkeypatch):
    # Short path under /tmp: Unix socket paths are limited to about 100 bytes.
    path = tempfile.mkdtemp(prefix="moe-vec-")
    monkeypatch.setenv("MOE_DEVTOOLS_SOCKET_DIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tiny_mixtral():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=64)
    return transformers.MixtralForCausalLM(config).eval()


def test_real_probe_frames_match_the_vectors(socket_dir):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    import moe_probe

    model = tiny_mixtral()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 64, (2, 8), generator=generator) for _ in range(3)]

    moe_probe.detach()  # one probe per process: make sure this test's is the one listening
    conn = None
    try:
        path = moe_probe.attach(model)
        assert os.path.dirname(path) == socket_dir
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(10)
        conn.connect(path)

        hello = read_frame(conn)
        assert hello["t"] == "hello"
        assert_matches_vectors(hello)
        assert hello["mode"] == "library" and hello["pid"] == os.getpid()
        assert len(hello["models"]) == 1
        layers = hello["models"][0]["layers"]
        assert [(l["index"], l["experts"], l["top_k"]) for l in layers] == [(0, 4, 2), (1, 4, 2)]

        # The hooks go in right after the hello is sent: wait for them before the passes.
        deadline = time.monotonic() + 10
        while not model._forward_hooks:
            assert time.monotonic() < deadline, "the probe did not hook the model"
            time.sleep(0.01)

        expected = torch.zeros(2, 4, dtype=torch.int64)
        with torch.no_grad():
            for batch in batches:
                out = model(batch, output_router_logits=True)
                assert len(out.router_logits) == 2
                for layer, logits in enumerate(out.router_logits):
                    chosen = torch.topk(torch.softmax(logits.float(), dim=-1), 2, dim=-1).indices
                    expected[layer] += torch.bincount(chosen.reshape(-1), minlength=4)
        assert int(expected.sum()) == 3 * 2 * 8 * 2 * 2  # passes * tokens * top_k * layers

        conn.sendall(framing.encode_frame({"t": "detach"}))
        frames = []
        while True:
            frame = read_frame(conn)
            if frame is None:
                break
            frames.append(frame)
            if frame["t"] == "bye":
                break

        kinds = [frame["t"] for frame in frames]
        assert kinds and kinds[-1] == "bye", kinds
        assert set(kinds) <= {"counts", "tokens", "bye"}, frames
        for frame in frames:
            assert_matches_vectors(frame)
        counts = [frame for frame in frames if frame["t"] == "counts"]
        assert counts, "no counts frame before bye"
        for frame in counts:
            assert (frame["model"], frame["layers"], frame["widths"]) == (0, 2, [4, 4])
            assert len(frame["counts"]) == 2 * 4 * 8 and len(frame["tokens"]) == 2 * 8
        for frame in (f for f in frames if f["t"] == "tokens"):
            for layer in frame["layers"]:
                ids = struct.unpack("<%di" % (layer["n"] * layer["k"]), layer["ids"])
                assert layer["k"] == 2 and all(0 <= i < 4 for i in ids), layer
        assert [f["seq"] for f in counts] == sorted(f["seq"] for f in counts)
        last = counts[-1]
        decoded = struct.unpack("<8q", last["counts"])
        assert last["passes"] == 3
        assert [list(decoded[0:4]), list(decoded[4:8])] == expected.tolist()
        assert list(struct.unpack("<2q", last["tokens"])) == [3 * 2 * 8, 3 * 2 * 8]  # passes * batch * sequence
    finally:
        if conn is not None:
            conn.close()
        moe_probe.detach()


def test_real_probe_sends_a_layers_frame_when_the_first_call_tells_more(socket_dir):
    """A block whose gate returns only logits: at attach the probe guesses it reads the router's
    ids; the first pass shows it must recompute top-k, and a layers frame says so."""
    torch = pytest.importorskip("torch")
    from torch import nn
    import moe_probe

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.top_k = 2
            self.gate = nn.Linear(16, 4, bias=False)
            self.experts = nn.Parameter(torch.randn(4, 16, 16) * 0.1)

        def forward(self, x):
            weights, ids = torch.topk(torch.softmax(self.gate(x), -1), 2, dim=-1)
            return torch.einsum("nk,nh,nkhd->nd", weights, x, self.experts[ids])

    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block()).eval()
    moe_probe.detach()
    conn = None
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(10)
        conn.connect(moe_probe.attach(model))
        hello = read_frame(conn)
        assert [l["source"] for l in hello["models"][0]["layers"]] == ["router", "router"]
        deadline = time.monotonic() + 10
        while not model._forward_hooks:
            assert time.monotonic() < deadline, "the probe did not hook the model"
            time.sleep(0.01)
        with torch.no_grad():
            model(torch.randn(6, 16))
        conn.sendall(framing.encode_frame({"t": "detach"}))
        frames = []
        while True:
            frame = read_frame(conn)
            if frame is None or frame["t"] == "bye":
                break
            frames.append(frame)
        layers = [f for f in frames if f["t"] == "layers"]
        assert len(layers) == 1, [f["t"] for f in frames]
        assert_matches_vectors(layers[0])
        assert [(l["source"], l["token_source"]) for l in layers[0]["layers"]] == [("recomputed", "recomputed")] * 2
    finally:
        if conn is not None:
            conn.close()
        moe_probe.detach()
