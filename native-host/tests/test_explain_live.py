"""Explanations and expert-weight analyses through a real probe, on its own thread, while the
job keeps running its forward passes on another: the job's outputs stay bitwise identical,
its routing is counted exactly once (never the side computation's), no parameter gets a
.grad, and the answers equal this test's own computation."""

import struct
import threading
import time

import msgpack
import pytest
import torch

from test_probe_safety import Client, hook_count, socket_dir, tiny_mixtral, wait_until  # noqa: F401
from test_protocol_vectors import assert_matches_vectors

import moe_probe  # noqa: E402  (test_probe_safety puts native-host on the path)

LAYERS, EXPERTS, TOP_K = 3, 4, 2


def send(client, message):
    body = msgpack.packb(message, use_bin_type=True)
    client.sock.sendall(struct.pack("<I", len(body)) + body)


def floats(data):
    return list(struct.unpack("<%dd" % (len(data) // 8), data))


def ints(data):
    return list(struct.unpack("<%di" % (len(data) // 4), data))


def own_gradient_x_input(model, ids, layer, position, expert):
    """This test's own gradient x input: the model run on inputs_embeds, layer `layer`'s gate
    output taken by a hook of this test, gradient by autograd."""
    seen = []
    handle = model.model.layers[layer].mlp.gate.register_forward_hook(lambda m, a, out: seen.append(out[0]))
    try:
        x = model.get_input_embeddings()(ids.reshape(1, -1)).detach().requires_grad_(True)
        with torch.enable_grad():
            model(inputs_embeds=x, use_cache=False)
            (grad,) = torch.autograd.grad(seen[0][position, expert], x)
    finally:
        handle.remove()
    return (grad[0] * x[0].detach()).sum(-1).tolist(), float(seen[0][position, expert].detach())


def routed_counts(model, batch):
    with torch.no_grad():
        out = model(batch, output_router_logits=True)
    counts = []
    for logits in out.router_logits:
        ids = torch.topk(torch.softmax(logits.float(), -1), TOP_K, dim=-1).indices
        counts += torch.bincount(ids.reshape(-1), minlength=EXPERTS).tolist()
    return counts


def test_explanations_run_beside_the_jobs_forward_and_change_nothing(socket_dir):
    model = tiny_mixtral()
    generator = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, 64, (2, 12), generator=generator) for _ in range(3)]
    with torch.no_grad():
        references = [model(b).logits.clone() for b in batches]
    per_batch = [routed_counts(model, b) for b in batches]
    hooks_before = hook_count(model)

    client = Client(moe_probe.attach(model, token_passes_per_s=1000, flush_interval_s=0))
    client.wait(lambda f: f["t"] == "hello")
    assert wait_until(lambda: hook_count(model) > hooks_before)
    passes = [0, 0, 0]
    with torch.no_grad():
        for i in range(3):
            assert torch.equal(model(batches[i]).logits, references[i])
            passes[i] += 1
    record = client.wait(lambda f: f["t"] == "tokens" and f["pass"] == 2)  # batches[1]

    # The job goes on in a thread of its own while the probe answers.
    stop = threading.Event()
    mismatches = []

    def job():
        i = 0
        with torch.no_grad():
            while not stop.is_set():
                out = model(batches[i % 3]).logits
                if not torch.equal(out, references[i % 3]):
                    mismatches.append(i)
                passes[i % 3] += 1
                i += 1

    thread = threading.Thread(target=job)
    before = sum(passes)
    thread.start()
    try:
        # token 14 of pass 2: row 1, position 2 of batches[1]
        for layer in range(LAYERS):
            expert = ints(record["layers"][layer]["ids"])[14 * TOP_K]
            send(client, {"t": "explain", "id": 10 + layer, "model": 0, "pass": 2, "index": 14, "layer": layer,
                          "expert": expert, "steps": 8, "baseline": "zero"})
        send(client, {"t": "expert-params", "id": 20, "model": 0})
        answers = [client.wait(lambda f, i=i: f.get("id") == i and f["t"] in ("explanation", "refused"), timeout=60)
                   for i in (10, 11, 12)]
        params = [client.wait(lambda f, l=l: f["t"] == "expert-params" and f["layer"] == l, timeout=60)
                  for l in range(LAYERS)]
    finally:
        stop.set()
        thread.join()
    assert sum(passes) > before, "the job ran no pass while the probe worked"
    assert mismatches == [], "outputs changed during an explanation"
    assert all(p.grad is None for p in model.parameters())

    # The side computations were never counted: the final counts are exactly the job's passes.
    client.detach()
    client.wait(lambda f: f["t"] == "bye")
    final = [f for f in client.frames if f["t"] == "counts"][-1]
    assert final["passes"] == sum(passes)
    expected = [sum(n * c[j] for n, c in zip(passes, per_batch)) for j in range(LAYERS * EXPERTS)]
    assert list(struct.unpack("<%dq" % (LAYERS * EXPERTS), final["counts"])) == expected

    # The answers against this test's own computation (after detach: its passes are not the job's).
    for layer, answer in enumerate(answers):
        assert answer["t"] == "explanation", answer
        assert_matches_vectors(answer)  # the frame has exactly the protocol's keys and types
        assert (answer["row"], answer["position"]) == (1, 2)
        assert ints(answer["token_ids"]) == batches[1][1].tolist()
        expert = answer["expert"]
        mine, logit = own_gradient_x_input(model, batches[1][1], layer, 2, expert)
        assert answer["logit"] == pytest.approx(logit, abs=1e-5)
        assert floats(answer["gxi_logit"]) == pytest.approx(mine, abs=1e-5)
        # The router's recomputed choice is what the job routed for that token.
        assert sorted(ints(answer["recomputed"])) == sorted(ints(record["layers"][layer]["ids"])[28:30])
    assert [p["part"] for p in params] == [0, 1, 2] and all(p["parts"] == 3 for p in params)
    for frame in params:
        assert_matches_vectors(frame)
    gate = model.model.layers[0].mlp.gate.weight
    assert floats(params[0]["router_norms"]) == pytest.approx(gate.norm(dim=1).tolist(), rel=1e-5)
    assert all(p.grad is None for p in model.parameters())
    assert wait_until(lambda: hook_count(model) == hooks_before)
    # the request thread ends at detach (a library probe's listener thread stays, by design)
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == "moe_probe-requests"])
    client.close()


def test_a_generated_token_is_explained_with_its_prompt_and_what_was_generated(socket_dir):
    model = tiny_mixtral()
    prompt = torch.tensor([[5, 9, 33, 2, 61, 17]])
    client = Client(moe_probe.attach(model, token_passes_per_s=1000, flush_interval_s=0))
    client.wait(lambda f: f["t"] == "hello")
    assert wait_until(lambda: hook_count(model) > 0)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
    record = client.wait(lambda f: f["t"] == "tokens" and f["pass"] == 5)
    assert record["phase"] == "decode"
    layer = 1
    recorded = ints(record["layers"][layer]["ids"])[:TOP_K]
    send(client, {"t": "explain", "id": 1, "model": 0, "pass": 5, "index": 0, "layer": layer,
                  "expert": recorded[0], "steps": 4, "baseline": "zero"})
    answer = client.wait(lambda f: f.get("id") == 1 and f["t"] in ("explanation", "refused"), timeout=60)
    assert answer["t"] == "explanation", answer
    # pass 5 fed the 4th generated token: the prompt and 4 generated tokens
    sequence = out[0, : prompt.shape[1] + 4]
    assert ints(answer["token_ids"]) == sequence.tolist()
    assert answer["position"] == sequence.shape[0] - 1
    assert sorted(ints(answer["recomputed"])) == sorted(recorded)
    mine, logit = own_gradient_x_input(model, sequence, layer, sequence.shape[0] - 1, recorded[0])
    assert answer["logit"] == pytest.approx(logit, abs=1e-5)
    assert floats(answer["gxi_logit"]) == pytest.approx(mine, abs=1e-5)
    assert any("generated" in note for note in answer["notes"])
    client.close()


def test_requests_that_cannot_be_answered_are_refused_with_a_reason(socket_dir):
    model = tiny_mixtral()
    client = Client(moe_probe.attach(model, token_passes_per_s=1000, flush_interval_s=0))
    client.wait(lambda f: f["t"] == "hello")
    assert wait_until(lambda: hook_count(model) > 0)
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 8)))
    client.wait(lambda f: f["t"] == "tokens" and f["pass"] == 1)

    def ask(message):
        send(client, message)
        return client.wait(lambda f: f.get("id") == message["id"] and f["t"] in ("explanation", "refused"), timeout=30)

    base = {"t": "explain", "model": 0, "pass": 1, "index": 3, "layer": 0, "expert": 1, "steps": 4, "baseline": "zero"}
    refused = ask({**base, "id": 1, "pass": 99})
    assert (refused["t"], refused["code"], refused["request"]) == ("refused", "no_context", "explain")
    assert_matches_vectors(refused)
    assert "pass 99 was not sampled" in refused["message"]
    assert ask({**base, "id": 2, "layer": 7})["code"] == "bad_request"
    assert ask({**base, "id": 3, "baseline": "noise"})["code"] == "bad_request"
    too_small = ask({**base, "id": 4, "max_mb": 0.001})  # ~1 KiB for the gradients
    assert too_small["code"] == "over_limit" and "over the limit" in too_small["message"]
    model.train()
    training = ask({**base, "id": 5})
    assert training["code"] == "training_mode" and "eval mode" in training["message"]
    model.eval()
    assert ask({**base, "id": 6})["t"] == "explanation"
    assert all(p.grad is None for p in model.parameters())
    client.close()
