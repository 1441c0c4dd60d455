"""Distributed jobs: where a rank sits in its job, and expert-parallel layers read by global id.

The expert-parallel block is the one of test/jobs/ep_moe_job.py (router over all experts,
rows sent to the ranks holding the chosen experts with all_to_all). Two real processes run it
with torch.distributed (gloo): each rank's probe must count exactly the rows its own experts
received, at their global ids, and the model's outputs must be unchanged while it reads.
"""

import os
import socket
import struct
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_HOST = os.path.dirname(HERE)
JOBS = os.path.join(os.path.dirname(NATIVE_HOST), "test", "jobs")
for path in (HERE, NATIVE_HOST, JOBS):
    if path not in sys.path:
        sys.path.insert(0, path)

from moe_probe.distributed import (  # noqa: E402
    ExpertMapError, check_expert_map, dist_info, held_from_model, held_from_user,
)
from moe_probe.expert_parallel import ExpertParallelLayer  # noqa: E402
from moe_probe.models import Survey, no_moe_message  # noqa: E402
from moe_probe.routers import find_moe_layers  # noqa: E402

import ep_moe_job  # noqa: E402
from test_protocol_vectors import assert_matches_vectors  # noqa: E402


# -- where a rank sits --------------------------------------------------------------------------


def test_dist_info_from_the_launchers_environment():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500",
           "TORCHELASTIC_RUN_ID": "job-7"}
    info = dist_info(env)
    assert info == {"rank": 3, "world_size": 4, "local_rank": 1, "node": socket.gethostname(), "run_id": "job-7",
                    "master": "10.0.0.1:29500", "backend": "", "source": "environment"}
    # one process alone, or nonsense, is no distributed job
    assert dist_info({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert dist_info({"RANK": "4", "WORLD_SIZE": "4"}) is None
    assert dist_info({"RANK": "x", "WORLD_SIZE": "4"}) is None
    assert dist_info({}) is None
    assert dist_info({"RANK": "0", "WORLD_SIZE": "2"})["local_rank"] == -1


# -- the expert map -----------------------------------------------------------------------------


def test_user_expert_maps_are_checked_and_looked_up_by_path_layer_number_or_star():
    assert check_expert_map(None) is None
    assert check_expert_map([2, 3]) == {"*": [2, 3]}
    user = check_expert_map({"model.layers.0.mlp": [0, 1], 1: [4, 5], "*": [6, 7]})
    assert held_from_user(user, "model.layers.0.mlp", 0) == [0, 1]
    assert held_from_user(user, "model.layers.1.mlp", 1) == [4, 5]
    assert held_from_user(user, "model.layers.5.mlp", 5) == [6, 7]
    assert held_from_user(check_expert_map({3: [1]}), "moe", -1) is None
    for bad, words in [("2,3", "list of global expert ids"), ([], "is empty"), ([1, 1], "twice"), ([-1], "negative"),
                       ({1.5: [0]}, "keys"), ({"*": ["a"]}, "list of global expert ids"), ([True], "list")]:
        with pytest.raises(ExpertMapError, match=words):
            check_expert_map(bad)


class _Holder(torch.nn.Module):
    pass


def test_expert_maps_the_model_declares():
    megatron = _Holder()
    megatron.local_expert_indices = [4, 5]
    assert held_from_model([megatron], 2, 8) == [4, 5]
    vllm = _Holder()
    vllm.expert_map = torch.tensor([-1, -1, 0, 1, -1, -1, -1, -1])  # global -> local slot, -1: elsewhere
    assert held_from_model([vllm], 2, 8) == [2, 3]
    deepspeed_like = _Holder()
    deepspeed_like.ep_rank, deepspeed_like.ep_size = 3, 4
    assert held_from_model([deepspeed_like], 2, 8) == [6, 7]
    assert held_from_model([deepspeed_like], 3, 8) is None  # 3 x 4 != 8: not contiguous placement
    assert held_from_model([_Holder()], 2, 8) is None


# -- expert-parallel layers, read in real ranks --------------------------------------------------


class Args:
    mode, layers, experts, top_k, hidden, seed = "ep", 2, 8, 2, 16, 0

    def __init__(self, expert_map):
        self.expert_map = expert_map


def _rank(rank, world, port, expert_map, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, held = ep_moe_job.build(Args(expert_map), rank, world)
        user = check_expert_map(held) if expert_map == "user" else None
        inputs = [torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(10 + rank + i)) for i in range(3)]
        with torch.no_grad():
            plain = [model(x) for x in inputs]
        rejected = []
        layers = find_moe_layers(model, rejected, user)
        calls = {layer.index: [] for layer in layers}
        handles = [h for layer in layers for h in layer.install(lambda l, r: calls[l.index].append(r))]
        truth = []
        with torch.no_grad():
            probed = []
            for x in inputs:
                probed.append(model(x))
                truth.append([list(layer.mlp.last[1]) for layer in model.layers])
        for h in handles:
            h.remove()
        frames = _probe_frames(model, held if expert_map == "user" else None, inputs)
        results.put({
            "frames": frames,
            "rank": rank, "held": held, "where": dist_info(),
            "layers": [(type(l).__name__, l.name, l.num_experts, l.top_k, l.held, l.source, l.token_source) for l in layers],
            "loads": {i: [r.loads for r in rs] for i, rs in calls.items()},
            "tokens": {i: [r.tokens for r in rs] for i, rs in calls.items()},
            "token_ids": {i: [None if r.token_ids is None else list(r.token_ids.shape) for r in rs] for i, rs in calls.items()},
            "truth": truth,
            "same_outputs": all(torch.equal(a, b) for a, b in zip(plain, probed)),
            "rejected": [r.describe() for r in rejected],
        })
    finally:
        dist.destroy_process_group()


def _probe_frames(model, expert_map, inputs):
    """What a real probe in this rank sends: hello, then counts and tokens of the passes, then bye."""
    import tempfile
    import time

    import moe_probe
    from moe_probe import framing
    from test_protocol_vectors import read_frame

    os.environ["MOE_DEVTOOLS_SOCKET_DIR"] = tempfile.mkdtemp(prefix="moe-ep-")
    path = moe_probe.attach(model, expert_map=expert_map)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(20)
    try:
        conn.connect(path)
        frames = [read_frame(conn)]
        deadline = time.monotonic() + 10
        while not model._forward_hooks:
            assert time.monotonic() < deadline, "the probe did not hook the model"
            time.sleep(0.01)
        with torch.no_grad():
            for x in inputs:
                model(x)
        conn.sendall(framing.encode_frame({"t": "detach"}))
        while frames[-1] is not None and frames[-1]["t"] != "bye":
            frames.append(read_frame(conn))
        return frames
    finally:
        conn.close()
        moe_probe.detach()


def _run_ranks(expert_map, world=2):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_rank, args=(r, world, port, expert_map, results)) for r in range(world)]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return sorted(out, key=lambda r: r["rank"])


@pytest.mark.parametrize("expert_map", ["model", "user"])
def test_each_rank_counts_what_its_own_experts_received_at_their_global_ids(expert_map):
    ranks = _run_ranks(expert_map)
    for r in ranks:
        assert r["where"]["rank"] == r["rank"] and r["where"]["world_size"] == 2
        assert r["where"]["source"] == "torch.distributed" and r["where"]["backend"] == "gloo"
        assert r["where"]["master"].startswith("127.0.0.1:")
        assert r["same_outputs"], "reading must not change the model's outputs"
        assert r["rejected"] == []
        assert r["layers"] == [("ExpertParallelLayer", "layers.%d.mlp" % i, 8, 2, r["held"], "expert-inputs", "recomputed")
                               for i in range(2)]
        for layer in range(2):
            for call, received in enumerate(r["truth"]):
                expected = [0] * 8
                for j, g in enumerate(r["held"]):
                    expected[g] = received[layer][j]
                assert r["loads"][layer][call] == expected
                assert r["tokens"][layer][call] == 16  # this rank's own tokens (batch 2 x 8)
                assert r["token_ids"][layer][call] == [16, 2]  # its own tokens' choices, for token records
        # a real probe in the rank says where it sits and what it holds, in frames the protocol knows
        hello, *rest = r["frames"]
        assert_matches_vectors(hello)
        assert hello["dist"]["rank"] == r["rank"] and hello["dist"]["world_size"] == 2
        assert [l["held"] for l in hello["models"][0]["layers"]] == [r["held"], r["held"]]
        counts = [f for f in rest if f["t"] == "counts"]
        for frame in rest:
            assert_matches_vectors(frame)
        assert counts[-1]["passes"] == 3 and counts[-1]["widths"] == [8, 8]
        # the time inside its own experts, per expert-parallel layer (its compute, no all-to-all wait)
        assert len(counts[-1]["expert_s"]) == 2 and all(0 < s < counts[-1]["time_s"][i] for i, s in enumerate(counts[-1]["expert_s"]))
        last = struct.unpack("<16q", counts[-1]["counts"])
        for layer in range(2):
            assert list(last[8 * layer:8 * layer + 8]) == [sum(call[g] for call in r["loads"][layer]) for g in range(8)]
    # every assignment of the job was processed by exactly one rank: the ranks add up
    assert ranks[0]["held"] == [0, 1, 2, 3] and ranks[1]["held"] == [4, 5, 6, 7]
    for layer in range(2):
        total = sum(sum(sum(call) for call in r["loads"][layer]) for r in ranks)
        assert total == 2 * 3 * 16 * 2  # ranks x passes x tokens x top-k


def test_an_expert_parallel_block_without_a_map_says_why_it_is_not_read():
    """Rank 1 of 4, built by hand (no process group needed to find layers): without a map the
    block holds 2 experts behind a router over 8, which routers.py cannot read; a wrong map is
    named as such."""
    block = ep_moe_job.ExpertParallelMoE(16, 8, 2, [2, 3], world=4, declare_map=False)
    model = torch.nn.Sequential(block)
    rejected = []
    assert find_moe_layers(model, rejected) == []
    message = no_moe_message(Survey([], 3, None, 0, rejected))
    assert "has 2 experts but no child projects to 2 outputs" in message
    rejected = []
    assert find_moe_layers(model, rejected, check_expert_map([2, 3, 4])) == []
    assert "the expert map given to moe_probe.attach names 3 experts for this layer, but this process holds 2" in rejected[0].describe()
    rejected = []
    assert find_moe_layers(model, rejected, check_expert_map([2, 9])) == []
    assert "names expert 9, but the router (0.gate) chooses among 8" in rejected[0].describe()
    layers = find_moe_layers(model, [], check_expert_map({"0": [2, 3]}))
    assert isinstance(layers[0], ExpertParallelLayer) and layers[0].held == [2, 3] and layers[0].held_from == "user"
    assert layers[0].describe()["held"] == [2, 3]


def test_expert_parallel_hooks_have_no_host_sync_calls():
    """What runs in the job's forward pass (expert_parallel.py's reading) copies nothing to the host
    and waits for no device; distributed.py reads its maps once, at attach, outside any hook."""
    import inspect
    from moe_probe import expert_parallel
    source = inspect.getsource(expert_parallel)
    code = "\n".join(line.split("#")[0] for line in source.splitlines())
    code = code.split('"""', 2)[2]  # past the module docstring
    for call in (".item(", ".cpu(", ".tolist(", ".numpy(", ".nonzero(", "synchronize(", ".to('cpu'", '.to("cpu"'):
        assert call not in code, call
