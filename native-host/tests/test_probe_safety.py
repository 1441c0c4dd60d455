"""The job comes first: the probe must never crash it, hang it, change its outputs, or
leave anything behind. Each test runs a real library-mode probe on a tiny transformers
Mixtral, with a real Unix-socket client playing the host."""

import gc
import os
import socket
import struct
import sys
import tempfile
import threading
import time

import msgpack
import pytest
import torch

NATIVE_HOST = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if NATIVE_HOST not in sys.path:
    sys.path.insert(0, NATIVE_HOST)

import moe_probe  # noqa: E402
from moe_probe import routers  # noqa: E402

torch.set_num_threads(1)

LAYERS, EXPERTS, TOP_K = 3, 4, 2


def tiny_mixtral(seed=0):
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(seed)
    config = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                           num_attention_heads=2, num_key_value_heads=2, num_local_experts=EXPERTS,
                           num_experts_per_tok=TOP_K, max_position_embeddings=64)
    return MixtralForCausalLM(config).eval()


@pytest.fixture()
def socket_dir(monkeypatch):
    with tempfile.TemporaryDirectory(prefix="moe-probe-test-") as d:
        monkeypatch.setenv("MOE_DEVTOOLS_SOCKET_DIR", d)
        yield d
    moe_probe.detach()


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


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def probe_threads():
    return [t for t in threading.enumerate() if t.name == "moe_probe"]


def wait_until(predicate, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_outputs_are_bitwise_identical_with_the_probe_attached(socket_dir):
    model = tiny_mixtral()
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x).logits
    client = Client(moe_probe.attach(model, token_passes_per_s=1000, health_passes_per_s=1000))
    client.wait(lambda f: f["t"] == "hello")
    assert wait_until(lambda: hook_count(model) > 0)
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(model(x).logits, reference)
    tokens = client.wait(lambda f: f["t"] == "tokens")
    assert tokens["n"] == 24 and tokens["k"] == TOP_K and len(tokens["layers"]) == LAYERS
    client.close()


def test_health_and_token_records_match_the_routers_own_outputs(socket_dir):
    model = tiny_mixtral()
    x = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(2))
    client = Client(moe_probe.attach(model, token_passes_per_s=1000, health_passes_per_s=1000, flush_interval_s=0))
    client.wait(lambda f: f["t"] == "hello")
    assert wait_until(lambda: hook_count(model) > 0)
    with torch.no_grad():
        out = model(x, output_router_logits=True)
    counts = client.wait(lambda f: f["t"] == "counts" and f["passes"] == 1)
    tokens = client.wait(lambda f: f["t"] == "tokens" and f["pass"] == 1)
    health = struct.unpack("<%dd" % (LAYERS * 6), counts["health"])
    for layer, logits in enumerate(out.router_logits):
        logits = logits.float()
        log_p = torch.log_softmax(logits, dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1).sum().item()
        zloss = (torch.logsumexp(logits, -1) ** 2).sum().item()
        row = health[layer * 6:(layer + 1) * 6]
        assert row[0] == 10  # tokens whose logits were measured
        assert row[1] == pytest.approx(entropy, rel=1e-5)
        assert row[2] == pytest.approx(zloss, rel=1e-5)
        assert row[3] == 0 and row[4] == 0
        top = torch.topk(torch.softmax(logits, -1), TOP_K, dim=-1)
        record = tokens["layers"][layer]
        ids = struct.unpack("<%di" % (10 * TOP_K), record["ids"])
        weights = struct.unpack("<%df" % (10 * TOP_K), record["weights"])
        assert list(ids) == top.indices.reshape(-1).tolist()
        expected_w = (top.values / top.values.sum(-1, keepdim=True)).reshape(-1).tolist()
        assert list(weights) == pytest.approx(expected_w, abs=1e-6)
    assert list(struct.unpack("<10i", tokens["token_ids"])) == x.reshape(-1).tolist()
    assert tokens["phase"] == "prefill"
    assert counts["prefill"] == 1 and counts["decode"] == 0 and counts["shape"] == [1, 10]
    assert all(t > 0 for t in counts["time_s"])
    client.close()


def test_an_exception_inside_the_probe_never_reaches_the_forward(socket_dir, monkeypatch):
    model = tiny_mixtral()
    x = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        reference = model(x).logits
    baseline = hook_count(model)

    def broken_read(layer, values):
        raise RuntimeError("adapter bug")

    monkeypatch.setattr(routers, "read_dispatch", broken_read)
    client = Client(moe_probe.attach(model))
    client.wait(lambda f: f["t"] == "hello")
    assert wait_until(lambda: hook_count(model) > baseline)
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(model(x).logits, reference)  # the job never saw the exception
    error = client.wait(lambda f: f["t"] == "error")
    assert error["code"] == "probe_failed" and "adapter bug" in error["message"]
    assert wait_until(lambda: hook_count(model) == baseline), "the probe did not remove its hooks"
    client.close()


def test_a_slow_host_never_blocks_the_forward_and_drops_are_counted(socket_dir, monkeypatch):
    from moe_probe import server
    # The sender gives up on a host that reads nothing for SEND_TIMEOUT_S: longer than the 400 passes
    # take on a loaded machine, so the session lasts the whole test.
    monkeypatch.setattr(server, "SEND_TIMEOUT_S", 600.0)
    model = tiny_mixtral()
    x = torch.randint(0, 64, (1, 8))
    client = Client(moe_probe.attach(model, flush_interval_s=0, token_passes_per_s=1000), read=False)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert wait_until(lambda: hook_count(model) > 0)
    passes = 400
    started = time.monotonic()
    with torch.no_grad():
        for _ in range(passes):
            model(x)
    elapsed = time.monotonic() - started
    # Nobody reads the socket: the sender blocks, the queue fills, and the forward goes on.
    assert elapsed < 60
    session = moe_probe.current_server().session
    recorder = session.recorders[0]
    assert recorder.passes == passes
    assert recorder.dropped_snapshots + recorder.dropped_token_records > 0
    client.close()


def test_twenty_attach_detach_cycles_leave_the_process_as_it_was(socket_dir):
    model = tiny_mixtral()
    x = torch.randint(0, 64, (1, 8))
    gc.collect()
    fds_before = len(os.listdir("/proc/self/fd"))
    threads_before = {t.name for t in threading.enumerate()}
    hooks_before = hook_count(model)
    for _ in range(20):
        path = moe_probe.attach(model)
        client = Client(path)
        client.wait(lambda f: f["t"] == "hello")
        assert wait_until(lambda: hook_count(model) > hooks_before)
        with torch.no_grad():
            model(x)
        client.detach()
        client.wait(lambda f: f["t"] == "bye")
        client.close()
        moe_probe.detach()
        assert wait_until(lambda: not probe_threads())
        assert not os.path.exists(path)
    assert hook_count(model) == hooks_before
    assert {t.name for t in threading.enumerate()} == threads_before
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_the_socket_is_private(socket_dir):
    model = tiny_mixtral()
    path = moe_probe.attach(model)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o077 == 0


def test_hello_warns_when_a_model_runs_under_torch_compile(socket_dir):
    from moe_probe.server import visibility_warnings
    model = tiny_mixtral()
    assert visibility_warnings([model]) == []
    model.compile()  # wraps the call; nothing is compiled until the first forward
    warnings = visibility_warnings([model])
    assert [w["code"] for w in warnings] == ["compiled"]
    assert "MixtralForCausalLM" in warnings[0]["message"]


def test_token_records_carry_the_strings_of_a_live_tokenizer(socket_dir):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"tok%d" % i: i for i in range(64)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="tok0")))
    model = tiny_mixtral()
    x = torch.tensor([[5, 17, 42, 63]])
    client = Client(moe_probe.attach(model, token_passes_per_s=1000))
    client.wait(lambda f: f["t"] == "hello")
    assert wait_until(lambda: hook_count(model) > 0)
    with torch.no_grad():
        model(x)
    tokens = client.wait(lambda f: f["t"] == "tokens")
    assert tokens["texts"] == ["tok5", "tok17", "tok42", "tok63"]
    assert tokenizer is not None  # alive for the whole test
    client.close()
