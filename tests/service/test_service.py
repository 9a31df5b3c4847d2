"""The service end to end on local processes (tiny-llama): client SDK, orchestrator, parties, dealer.

One :class:`LocalService` serves the whole module; the fault tests kill and restart its processes and
leave it serving. Generations are short (2-3 tokens) because the point here is the plumbing; the MPC
numerics are covered in tests/protocols.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import pinfer
from pinfer import keys
from pinfer.keys import envelope
from pinfer.kvcache.serving import SERVED, resolve
from pinfer.model.generation import generate_plain
from pinfer.model.registry import load_model
from pinfer.proto import inference_pb2, inference_pb2_grpc, node_pb2, node_pb2_grpc
from pinfer.service.client import prepare_request
from pinfer.service.local_service import LocalService
from pinfer.service.orchestrator import Admission, OrchestratorConfig, serve, token_digest

PROMPT = [5, 6, 7, 8, 9]
KV_PROMPT = [(37 * i + 11) % 500 + 3 for i in range(96)]
"""Long enough that a 25% budget (24 tokens) evicts: MPCache then picks 3 of 12 fine clusters of 8."""
KV_BUDGET = 0.25
KV_TOKENS = 3


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    with LocalService(tmp_path_factory.mktemp("service"), model="tiny-llama", slots=2, queue=1) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service: LocalService) -> Iterator[pinfer.Client]:
    with pinfer.Client(service.endpoint, service.token, service.ca_path, timeout_s=120) as c:
        yield c


@pytest.fixture(scope="module")
def plain_tokens() -> list[int]:
    config, weights, _ = load_model("tiny-llama")
    return generate_plain(config, weights, PROMPT, 3)


def _stub(service: LocalService, token: str | None = None) -> inference_pb2_grpc.InferenceStub:
    creds = grpc.ssl_channel_credentials(root_certificates=service.ca_path.read_bytes())
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    channel = grpc.secure_channel(service.endpoint, creds, options=[("grpc.ssl_target_name_override", "orchestrator")])
    return inference_pb2_grpc.InferenceStub(channel)


def _node_channel(service: LocalService, role: str, as_role: str = keys.ORCHESTRATOR,
                  key_dir: Path | None = None) -> grpc.Channel:
    creds = keys.load_node_credentials(key_dir or service.key_dir, as_role)
    return grpc.secure_channel(
        f"127.0.0.1:{service.ports[role]}",
        grpc.ssl_channel_credentials(service.ca_path.read_bytes(), creds.private_key_pem(), creds.certificate_pem()),
        options=[("grpc.ssl_target_name_override", role), ("grpc.max_send_message_length", 64 << 20)])


def _node_stub(service: LocalService, role: str, as_role: str = keys.ORCHESTRATOR,
               key_dir: Path | None = None) -> node_pb2_grpc.NodeStub:
    return node_pb2_grpc.NodeStub(_node_channel(service, role, as_role, key_dir))


def _active_sessions(service: LocalService) -> dict[str, int]:
    return {role: _node_stub(service, role).Describe(node_pb2.DescribeRequest(), timeout=10).active_sessions
            for role in service.node_roles}


def _wait_idle(service: LocalService, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (active := _active_sessions(service)) != {role: 0 for role in service.node_roles}:
        assert time.monotonic() < deadline, f"workers left behind: {active}"
        time.sleep(0.5)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_private_generation_matches_plaintext(client: pinfer.Client, plain_tokens: list[int]) -> None:
    tokens = list(client.generate_ids(PROMPT, 3))
    assert [t.token_id for t in tokens] == plain_tokens
    assert [t.phase for t in tokens] == ["prefill", "decode", "decode"]
    assert all(len(t.costs) == 2 and t.costs[0].bytes_sent > 0 and t.costs[0].rounds > 0 for t in tokens)


@pytest.fixture(scope="module")
def kv_plain_tokens() -> dict[str, list[int]]:
    """Each served policy's plaintext greedy tokens on ``KV_PROMPT`` (the full cache at its only budget)."""
    config, weights, _ = load_model("tiny-llama")
    return {p.name: generate_plain(config, weights, KV_PROMPT, KV_TOKENS,
                                   resolve(p.name, 0.0 if p.name == "full" else KV_BUDGET).build()) for p in SERVED}


@pytest.mark.parametrize("policy", [p.name for p in SERVED])
def test_every_kv_policy_through_the_service_matches_its_plaintext_run(client: pinfer.Client, policy: str,
                                                                        kv_plain_tokens: dict[str, list[int]]) -> None:
    budget = None if policy == "full" else KV_BUDGET
    tokens = [t.token_id for t in client.generate_ids(KV_PROMPT, KV_TOKENS, kv_policy=policy, kv_budget=budget)]
    assert tokens == kv_plain_tokens[policy]


def test_model_info_lists_the_kv_policies(client: pinfer.Client) -> None:
    info = client.model_info("tiny-llama")
    assert [offer.name for offer in info.kv_policies] == [p.name for p in SERVED]
    assert info.kv_policy == "full" and info.kv_choice() == ("full", 1.0)
    assert all(0 < offer.default_budget <= 1 and offer.description for offer in info.kv_policies)
    assert info.kv_choice("mpcache") == ("mpcache", 0.1) and info.kv_choice("h2o", 0.5) == ("h2o", 0.5)


def test_an_unknown_kv_policy_or_a_budget_out_of_range_is_invalid_argument(service: LocalService,
                                                                           client: pinfer.Client,
                                                                           plain_tokens: list[int]) -> None:
    stub = _stub(service, service.token)
    info = client.model_info("tiny-llama")
    cases = [("lru", 0.0, "unknown KV policy 'lru'"), ("h2o", 1.5, "in (0, 1]"), ("h2o", -0.25, "in (0, 1]"),
             ("h2o", math.nan, "in (0, 1]"), ("full", 0.5, "keeps every token"), ("x" * 300, 0.1, "unknown KV policy")]
    for policy, budget, message in cases:
        request = prepare_request(info, PROMPT, 2, service.token, kv_policy=policy, kv_budget=budget).request
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Generate(request))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in refused.value.details()
        assert len(refused.value.details()) < 200
    for policy, budget in (("lru", None), ("h2o", 2.0), ("h2o", 0.0)):  # the SDK refuses before sealing anything
        with pytest.raises(ValueError):
            list(client.generate_ids(PROMPT, 2, kv_policy=policy, kv_budget=budget))
    # Empty and 0 are the defaults (an older client sends neither field): the full cache.
    prepared = prepare_request(info, PROMPT, 3, service.token)
    assert (prepared.request.kv_policy, prepared.request.kv_budget) == ("", 0.0)
    assert [t.token_id for t in prepared.open_stream(stub.Generate(prepared.request))] == plain_tokens


def test_cli_generate_through_the_endpoint(service: LocalService, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pinfer.cli import main
    from pinfer.cli.generate import until_stop
    from pinfer.model.tokenizer import encode_prompt

    config, weights, tokenizer = load_model("tiny-llama")
    expected = generate_plain(config, weights, encode_prompt(tokenizer, "hi", raw=True), 2)
    argv = ["generate", "--endpoint", service.endpoint, "--token-file", str(service.root / "client.token"),
            "--ca", str(service.ca_path), "--model", "tiny-llama", "--prompt", "hi", "--raw", "--max-new-tokens", "2",
            "--json", "--check"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["text"] == report["plaintext_text"] == tokenizer.decode(until_stop(expected, config.eos_token_ids))
    assert report["tokens"] == report["plaintext_tokens"] == expected and report["match"]
    assert set(report["by_phase"]) == {"prefill", "decode"}
    assert all(b > 0 for b in report["bytes_per_party"]) and report["latency_s"]["first_token"] > 0


def test_cli_generate_with_a_kv_policy_through_the_endpoint(service: LocalService,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pinfer.cli import main
    from pinfer.model.tokenizer import encode_prompt

    config, weights, tokenizer = load_model("tiny-llama")
    prompt = "a private prompt that is long enough for the cache to evict " * 2
    expected = generate_plain(config, weights, encode_prompt(tokenizer, prompt, raw=True), 2,
                              resolve("mpcache", KV_BUDGET).build())
    argv = ["generate", "--endpoint", service.endpoint, "--token-file", str(service.root / "client.token"),
            "--ca", str(service.ca_path), "--model", "tiny-llama", "--prompt", prompt, "--raw", "--max-new-tokens", "2"]
    assert main([*argv, "--kv-policy", "mpcache", "--kv-budget", str(KV_BUDGET), "--json", "--check"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["kv_policy"], report["kv_budget"]) == ("mpcache", KV_BUDGET) and report["prompt_tokens"] > 100
    assert report["tokens"] == report["plaintext_tokens"] == expected and report["match"]
    assert main([*argv, "--kv-policy", "lru"]) == 2
    assert "no KV policy 'lru'" in capsys.readouterr().err


def test_import_pinfer_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, pinfer; assert not {'grpc', 'torch'} & set(sys.modules), sorted(sys.modules); "
            "assert pinfer.Client.__module__ == 'pinfer.service.client'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_info_health_and_reflection(service: LocalService, client: pinfer.Client) -> None:
    info = client.model_info("tiny-llama")
    manifest = keys.load_manifest(service.key_dir)
    assert info.config.family == "llama" and info.tokenizer == "tiny-llama" and info.parties == 2
    assert [k.encode() for k in info.deployment.party_keys] == [manifest.envelope_public_keys[f"party{i}"] for i in range(2)]
    assert info.config.max_positions > info.max_new_tokens > 0
    channel = grpc.secure_channel(service.endpoint, grpc.ssl_channel_credentials(service.ca_path.read_bytes()),
                                  options=[("grpc.ssl_target_name_override", "orchestrator")])
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="pinfer.v1.Inference"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {s.name for reply in replies for s in reply.list_services_response.service}
    assert "pinfer.v1.Inference" in services and "grpc.health.v1.Health" in services


def test_unauthenticated_client(service: LocalService, client: pinfer.Client) -> None:
    info = client.model_info("tiny-llama")
    for token in (None, "wrong-token"):
        stub = _stub(service, token)
        assert _code(lambda: stub.ListModels(inference_pb2.ListModelsRequest())) == grpc.StatusCode.UNAUTHENTICATED
        request = prepare_request(info, PROMPT, 2, service.token).request
        assert _code(lambda: list(stub.Generate(request))) == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_model_and_invalid_parameters(service: LocalService, client: pinfer.Client) -> None:
    stub = _stub(service, service.token)
    info = client.model_info("tiny-llama")
    assert _code(lambda: stub.GetModel(inference_pb2.GetModelRequest(model="no-such-model"))) == grpc.StatusCode.NOT_FOUND
    request = prepare_request(info, PROMPT, 2, service.token).request
    request.model = "no-such-model"
    assert _code(lambda: list(stub.Generate(request))) == grpc.StatusCode.NOT_FOUND

    def variant(**changes) -> inference_pb2.GenerateRequest:
        request = prepare_request(info, PROMPT, 2, service.token).request
        for name, value in changes.items():
            setattr(request, name, value)
        return request

    bad = [
        variant(max_new_tokens=0),
        variant(max_new_tokens=info.max_new_tokens + 1),
        variant(request_id="not hex"),
        variant(prompt_tokens=0),
        # over the context: a prompt as long as the context leaves no room for a new token
        variant(prompt_tokens=info.config.max_positions),
    ]
    one_share = prepare_request(info, PROMPT, 2, service.token).request
    del one_share.input_shares[1]
    bad.append(one_share)
    for request in bad:
        assert _code(lambda: list(stub.Generate(request))) == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_envelopes_then_the_next_request_succeeds(service: LocalService, client: pinfer.Client,
                                                      plain_tokens: list[int]) -> None:
    stub = _stub(service, service.token)
    info = client.model_info("tiny-llama")

    def with_share(party: int, make) -> inference_pb2.GenerateRequest:
        request = prepare_request(info, PROMPT, 2, service.token).request
        request.input_shares[party] = make(request.input_shares[party])
        return request

    checked_by_orchestrator = [
        with_share(0, lambda e: b"XXXX" + e[4:]),                   # malformed magic
        with_share(0, lambda e: e[: len(e) // 2]),                  # truncated
        with_share(1, lambda e: e + bytes(200)),                    # trailing bytes
        with_share(1, lambda e: envelope.seal(bytes(4096), info.deployment.party_keys[1],
                                              envelope.EnvelopeContext("x", 1, "input-share"))),  # oversized
    ]
    for request in checked_by_orchestrator:
        assert _code(lambda: list(stub.Generate(request))) == grpc.StatusCode.INVALID_ARGUMENT
    # Well-framed envelopes only a party can reject: sealed to the other party, or under another session.
    swapped = prepare_request(info, PROMPT, 2, service.token).request
    other = prepare_request(info, PROMPT, 2, service.token).request
    swapped.input_shares[1] = other.input_shares[1]
    assert _code(lambda: list(stub.Generate(swapped))) == grpc.StatusCode.INVALID_ARGUMENT
    wrong_key = prepare_request(info, PROMPT, 2, service.token)
    party0 = info.deployment.party_keys[0]
    wrong_key.request.input_shares[1] = envelope.seal(bytes(46), party0,
                                                      envelope.EnvelopeContext(wrong_key.session_id, 1, "input-share"))
    assert _code(lambda: list(stub.Generate(wrong_key.request))) == grpc.StatusCode.INVALID_ARGUMENT

    def zero_encapsulation(sealed: bytes) -> bytes:  # all-zero HPKE encapsulated key (a low-order X25519 part)
        size = envelope.Kem(sealed[5]).encapsulated_size
        return sealed[:envelope.HEADER_SIZE] + bytes(size) + sealed[envelope.HEADER_SIZE + size:]

    for party in (0, 1):  # refused by the party before any peer is contacted, not retryable
        assert _code(lambda: list(stub.Generate(with_share(party, zero_encapsulation)))) == grpc.StatusCode.INVALID_ARGUMENT
    _wait_idle(service)
    assert [t.token_id for t in client.generate_ids(PROMPT, 3)] == plain_tokens


def test_node_refuses_foreign_and_wrong_role_callers(service: LocalService, foreign_key_dir: Path) -> None:
    foreign = _node_stub(service, "party0", key_dir=foreign_key_dir)
    assert _code(lambda: foreign.Describe(node_pb2.DescribeRequest(), timeout=10)) == grpc.StatusCode.UNAVAILABLE
    wrong_role = _node_stub(service, "party0", as_role="party1")
    assert _code(lambda: wrong_role.Describe(node_pb2.DescribeRequest(), timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    client_role = _node_stub(service, "dealer", as_role=keys.CLIENT)
    assert _code(lambda: list(client_role.Session(iter([]), timeout=10))) == grpc.StatusCode.PERMISSION_DENIED


def test_node_accepts_messages_as_large_as_a_smollm2_prompt(service: LocalService) -> None:
    """A 37-token SmolLM2 prompt's one-hot share is 14.5 MB, beyond gRPC's 4 MiB default: the node
    must take what the orchestrator may relay (`envelope.MAX_MESSAGE_BYTES`)."""
    padding = b"\x00" * (15 << 20)
    # Field 1000, length-delimited: unknown to DescribeRequest, so the node parses and ignores it.
    field = bytes([0xC2, 0x3E]) + _varint(len(padding)) + padding
    describe = _node_channel(service, "party0").unary_unary(
        "/pinfer.v1.Node/Describe", request_serializer=lambda raw: raw,
        response_deserializer=node_pb2.NodeDescription.FromString)
    assert describe(field, timeout=30).role == "party0"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Recorder(grpc.ServerInterceptor):
    """Sees every Generate request and event on the orchestrator, as a compromised orchestrator would."""

    def __init__(self) -> None:
        self.requests: list[inference_pb2.GenerateRequest] = []
        self.events: list[inference_pb2.GenerateEvent] = []

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if not handler_call_details.method.endswith("/Generate"):
            return handler

        def recording(request, context):
            self.requests.append(request)
            for event in handler.unary_stream(request, context):
                self.events.append(event)
                yield event

        return grpc.unary_stream_rpc_method_handler(recording, handler.request_deserializer, handler.response_serializer)


def test_interceptor_on_the_orchestrator_sees_only_ciphertext(service: LocalService, plain_tokens: list[int]) -> None:
    orchestrator_keys = service.node_keys(keys.ORCHESTRATOR)
    assert not list(orchestrator_keys.glob("envelope.key")), "the orchestrator must hold no envelope key"
    recorder = _Recorder()
    config = OrchestratorConfig(
        key_root=str(orchestrator_keys), models_root=str(service.root / "models"),
        nodes={role: f"127.0.0.1:{service.ports[role]}" for role in service.node_roles},
        token_sha256=frozenset({token_digest(service.token)}))
    server, port, orchestrator = serve(config, "127.0.0.1:0", interceptors=[recorder])
    try:
        with pinfer.Client(f"127.0.0.1:{port}", service.token, service.ca_path, timeout_s=120) as c:
            info = c.model_info("tiny-llama")
            prepared = prepare_request(info, PROMPT, 3, service.token)
            events = list(c._stub.Generate(prepared.request))
            assert [t.token_id for t in prepared.open_stream(events)] == plain_tokens
    finally:
        orchestrator.close()
        server.stop(grace=1)
    assert len(recorder.requests) == 1 and len(recorder.events) == 3
    for item in recorder.requests[0].input_shares:
        envelope.parse_header(item)  # every input it relayed is an envelope...
    party_keys = {i: keys.load_envelope_private_key(service.key_dir, f"party{i}") for i in range(2)}
    for i, item in enumerate(recorder.requests[0].input_shares):
        with pytest.raises(envelope.EnvelopeAuthError):  # ...that opens for its party only
            envelope.open_envelope(item, party_keys[1 - i], envelope.EnvelopeContext(prepared.session_id, i, "input-share"))
    for event in recorder.events:
        for field, value in event.ListFields():
            assert field.name in ("step", "phase", "token_shares")


def test_party_killed_mid_generation(service: LocalService, client: pinfer.Client, plain_tokens: list[int]) -> None:
    seen: list[int] = []
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            for token in client.generate_ids(PROMPT, 40):
                seen.append(token.token_id)
        except grpc.RpcError as exc:
            outcome["code"] = exc.code()
            outcome["detail"] = exc.details()
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not seen and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seen, f"no token arrived before the kill: {outcome}"
    service.kill("party1")
    killed_at = time.monotonic()
    thread.join(timeout=30)
    assert outcome.get("code") == grpc.StatusCode.UNAVAILABLE
    assert outcome["at"] - killed_at < 15
    for role in ("party0", "dealer"):  # the survivors' workers are gone
        deadline = time.monotonic() + 15
        while _node_stub(service, role).Describe(node_pb2.DescribeRequest(), timeout=10).active_sessions:
            assert time.monotonic() < deadline, f"{role} kept its worker"
            time.sleep(0.5)
    service.restart("party1")
    assert [t.token_id for t in client.generate_ids(PROMPT, 3)] == plain_tokens


def test_orchestrator_restart_leaves_no_orphan_workers(service: LocalService, plain_tokens: list[int]) -> None:
    seen: list[int] = []
    client = pinfer.Client(service.endpoint, service.token, service.ca_path, timeout_s=120)

    def run() -> None:
        try:
            for token in client.generate_ids(PROMPT, 40):
                seen.append(token.token_id)
        except grpc.RpcError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not seen and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seen
    service.kill("orchestrator")
    _wait_idle(service)
    thread.join(timeout=30)
    client.close()
    service.restart("orchestrator")
    with pinfer.Client(service.endpoint, service.token, service.ca_path, timeout_s=120) as again:
        assert [t.token_id for t in again.generate_ids(PROMPT, 3)] == plain_tokens


def _health(service: LocalService) -> int:
    channel = grpc.secure_channel(service.endpoint, grpc.ssl_channel_credentials(service.ca_path.read_bytes()),
                                  options=[("grpc.ssl_target_name_override", "orchestrator")])
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="pinfer.v1.Inference"), timeout=10).status


def _wait_health(service: LocalService, status: int, timeout_s: float) -> float:
    """Seconds until the orchestrator's health reads ``status``."""
    start = time.monotonic()
    while _health(service) != status:
        assert time.monotonic() - start < timeout_s, f"health not {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"
        time.sleep(0.2)
    return time.monotonic() - start


def test_health_follows_the_nodes(service: LocalService, client: pinfer.Client, plain_tokens: list[int]) -> None:
    assert _health(service) == health_pb2.HealthCheckResponse.SERVING
    service.kill("party1", hold=True)
    try:
        assert _wait_health(service, health_pb2.HealthCheckResponse.NOT_SERVING, timeout_s=8) < 8
    finally:
        service.restart("party1")
    _wait_health(service, health_pb2.HealthCheckResponse.SERVING, timeout_s=10)
    assert [t.token_id for t in client.generate_ids(PROMPT, 3)] == plain_tokens


def test_a_killed_party_is_restarted_by_the_supervisor(service: LocalService, client: pinfer.Client,
                                                        plain_tokens: list[int],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    killed = service.processes["party1"]
    with caplog.at_level(logging.INFO, logger="pinfer.service.local_service"):
        service.kill("party1")
        deadline = time.monotonic() + 60
        while service.processes["party1"] is killed or not (service.root / "party1.port").exists():
            assert time.monotonic() < deadline, "party1 was not restarted"
            time.sleep(0.2)
    assert service.processes["party1"].poll() is None
    assert any("party1 exited" in r.getMessage() for r in caplog.records)
    assert any("party1 restarted" in r.getMessage() for r in caplog.records)
    assert [t.token_id for t in client.generate_ids(PROMPT, 3)] == plain_tokens


def test_admission_bounds_the_queue() -> None:
    admission = Admission(slots=1, queue_size=1)
    assert admission.enter(lambda: True)
    entered = threading.Event()
    waiter = threading.Thread(target=lambda: admission.enter(lambda: True) and entered.set())
    waiter.start()
    time.sleep(0.3)
    assert not admission.enter(lambda: True)  # one running, one queued: the next is refused
    admission.leave()
    waiter.join(timeout=5)
    assert entered.is_set()
    gone = Admission(slots=1, queue_size=1)
    assert gone.enter(lambda: True)
    assert not gone.enter(lambda: False)  # a caller that leaves the queue gives up its place


def _wait_for(condition, timeout_s: float = 5, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_admission_is_first_come_first_served() -> None:
    """Under contention for one slot, callers are admitted in the order they queued, and a newcomer
    arriving while the queue is non-empty waits behind it rather than taking the freed slot."""
    admission = Admission(slots=1, queue_size=5)
    assert admission.enter(lambda: True)
    order: list[int] = []

    def caller(i: int) -> None:
        assert admission.enter(lambda: True)
        order.append(i)
        time.sleep(0.05)  # hold the slot a while, so the later callers contend for it
        admission.leave()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(5)]
    for i, thread in enumerate(threads):
        thread.start()
        _wait_for(lambda: admission.waiting == i + 1, what=f"caller {i} to queue")
    admission.leave()
    assert not admission.enter(lambda: False), "a newcomer took the slot freed for the head of the queue"
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert order == [0, 1, 2, 3, 4]
    assert admission.enter(lambda: True)  # every slot came back


def test_admission_departed_waiter_does_not_stall_the_queue() -> None:
    admission = Admission(slots=1, queue_size=2)
    assert admission.enter(lambda: True)
    gone = threading.Event()
    outcomes: dict[str, bool] = {}
    admitted_at: dict[str, float] = {}

    def caller(name: str, still_wanted) -> None:
        outcomes[name] = admission.enter(still_wanted)
        admitted_at[name] = time.monotonic()

    leaver = threading.Thread(target=caller, args=("leaver", lambda: not gone.is_set()))
    leaver.start()
    _wait_for(lambda: admission.waiting == 1, what="the leaver to queue")
    stayer = threading.Thread(target=caller, args=("stayer", lambda: True))
    stayer.start()
    _wait_for(lambda: admission.waiting == 2, what="the stayer to queue")
    gone.set()
    released_at = time.monotonic()
    admission.leave()  # the head has left: the slot goes to the next waiter at once
    stayer.join(timeout=5)
    leaver.join(timeout=5)
    assert outcomes == {"leaver": False, "stayer": True}
    assert admitted_at["stayer"] - released_at < 0.25, "the departed head held up the queue"
    assert admission.waiting == 0
    # A waiter that leaves while nothing is released frees its queue place too, and no slot leaked:
    gone.clear()
    leaver = threading.Thread(target=caller, args=("leaver", lambda: not gone.is_set()))
    leaver.start()
    _wait_for(lambda: admission.waiting == 1, what="the leaver to queue again")
    gone.set()
    leaver.join(timeout=5)
    assert outcomes["leaver"] is False and admission.waiting == 0
    admission.leave()  # the stayer's slot
    assert admission.enter(lambda: True)
    assert not admission.enter(lambda: False)  # exactly one slot: the next caller queues (and leaves)


def test_cancel_ends_the_stream_and_the_workers(service: LocalService, client: pinfer.Client) -> None:
    stub = _stub(service, service.token)
    prepared = prepare_request(client.model_info("tiny-llama"), PROMPT, 40, service.token)
    stream = stub.Generate(prepared.request, timeout=120)
    next(stream)  # the prefill token: the session runs on every node
    assert stub.Cancel(inference_pb2.CancelRequest(request_id=prepared.request.request_id)).cancelled
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    _wait_idle(service)


@contextlib.contextmanager
def _orchestrator_for_two_tokens(service: LocalService, other_token: str,
                                 **options: object) -> Iterator[Callable[[str], inference_pb2_grpc.InferenceStub]]:
    """A second orchestrator over the service's nodes that also accepts ``other_token``; yields a
    function that opens an inference stub with a given token."""
    config = OrchestratorConfig(
        key_root=str(service.node_keys(keys.ORCHESTRATOR)), models_root=str(service.root / "models"),
        nodes={role: f"127.0.0.1:{service.ports[role]}" for role in service.node_roles},
        token_sha256=frozenset({token_digest(service.token), token_digest(other_token)}), **options)
    server, port, orchestrator = serve(config, "127.0.0.1:0")

    def stub(token: str) -> inference_pb2_grpc.InferenceStub:
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=service.ca_path.read_bytes()),
            grpc.access_token_call_credentials(token))
        return inference_pb2_grpc.InferenceStub(grpc.secure_channel(
            f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "orchestrator")]))

    try:
        yield stub
    finally:
        orchestrator.close()
        server.stop(grace=1)


def test_cancel_only_by_the_token_that_started_the_request(service: LocalService, client: pinfer.Client) -> None:
    """Another accepted token's Cancel gets the unknown-id answer and leaves the generation running."""
    other_token = "another-client-token"
    with _orchestrator_for_two_tokens(service, other_token) as stub:
        owner, intruder = stub(service.token), stub(other_token)
        prepared = prepare_request(client.model_info("tiny-llama"), PROMPT, 40, service.token)
        request_id = prepared.request.request_id
        stream = owner.Generate(prepared.request, timeout=120)
        next(stream)
        unknown = intruder.Cancel(inference_pb2.CancelRequest(request_id="0" * 32))
        foreign = intruder.Cancel(inference_pb2.CancelRequest(request_id=request_id))
        assert foreign == unknown == inference_pb2.CancelResponse(cancelled=False)
        next(stream)  # still running
        assert owner.Cancel(inference_pb2.CancelRequest(request_id=request_id)).cancelled
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() == grpc.StatusCode.CANCELLED
    _wait_idle(service)


def test_request_ids_are_per_caller_so_generate_is_no_oracle(service: LocalService, client: pinfer.Client,
                                                             plain_tokens: list[int]) -> None:
    """Another token's request id, in flight or run before, is no answer to probe: the same id from a
    second caller simply runs. A caller's own id still runs once (the parties remember it)."""
    other_token = "a-second-client-token"
    with _orchestrator_for_two_tokens(service, other_token, slots=2) as stub:
        info = client.model_info("tiny-llama")
        alice, bob = stub(service.token), stub(other_token)
        mine = prepare_request(info, PROMPT, 40, service.token)
        request_id = mine.request.request_id
        stream = alice.Generate(mine.request, timeout=120)
        next(stream)  # alice's request runs on every node, so the parties have admitted its session id
        # The same request id from another caller: not ALREADY_EXISTS, it just runs.
        theirs = prepare_request(info, PROMPT, 3, other_token, request_id=request_id)
        assert theirs.session_id != mine.session_id
        assert [t.token_id for t in theirs.open_stream(bob.Generate(theirs.request, timeout=120))] == plain_tokens
        assert not bob.Cancel(inference_pb2.CancelRequest(request_id=request_id)).cancelled  # bob's has finished
        next(stream)  # alice's still runs
        # A caller's own id in flight is its own business: ALREADY_EXISTS at the orchestrator.
        again = prepare_request(info, PROMPT, 3, service.token, request_id=request_id)
        assert _code(lambda: list(alice.Generate(again.request, timeout=120))) == grpc.StatusCode.ALREADY_EXISTS
        assert alice.Cancel(inference_pb2.CancelRequest(request_id=request_id)).cancelled
        with pytest.raises(grpc.RpcError):
            list(stream)
        # ...and once it ran, the parties refuse it as a replay, for either caller.
        for token, call in ((service.token, alice), (other_token, bob)):
            replay = prepare_request(info, PROMPT, 3, token, request_id=request_id)
            assert _code(lambda: list(call.Generate(replay.request, timeout=120))) == grpc.StatusCode.ALREADY_EXISTS
    _wait_idle(service)


@pytest.mark.parametrize("name", ["orchestrator", "party0", "party1", "dealer"])
def test_every_grpc_port_refuses_a_tls_1_2_only_client(service: LocalService, name: str) -> None:
    """grpcio has no minimum-version setting; the nodes and the orchestrator refuse TLS 1.2 anyway
    (pinfer.keys.grpc_tls). Checked with Python's ssl module, presenting a CA-issued certificate (the
    nodes require one) and offering h2, so only the version can make the handshake fail."""
    import socket
    import ssl

    creds = keys.load_node_credentials(service.key_dir, keys.CLIENT)

    def handshake(version: ssl.TLSVersion) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = context.maximum_version = version
        context.load_verify_locations(cafile=str(service.ca_path))
        context.load_cert_chain(creds.cert_path, creds.key_path)
        context.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", service.ports[name]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                return f"{tls.version()} {tls.selected_alpn_protocol()}"

    assert handshake(ssl.TLSVersion.TLSv1_3) == "TLSv1.3 h2"
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(ssl.TLSVersion.TLSv1_2)


def _drive_node(service: LocalService, role: str, session_id: str,
                start: Callable[[int], node_pb2.StartSession]) -> grpc.RpcError:
    """Open a session on one node as the orchestrator would, send ``start(worker_port)``, return its error."""
    import queue

    controls: queue.Queue = queue.Queue()
    controls.put(node_pb2.SessionControl(open=node_pb2.OpenSession(session_id=session_id, model="tiny-llama",
                                                                   parties=2)))

    def requests() -> Iterator[node_pb2.SessionControl]:
        while (item := controls.get()) is not None:
            yield item

    call = _node_stub(service, role).Session(requests(), timeout=120)
    try:
        ready = next(call).ready
        controls.put(node_pb2.SessionControl(start=start(ready.port)))
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        return info.value
    finally:
        controls.put(None)


def test_a_failed_worker_is_logged_on_its_node_as_types_and_frames(service: LocalService,
                                                                    client: pinfer.Client) -> None:
    """A real worker failure on a real node: party 1 is told to dial its own port as party 0, so its mesh
    set-up fails (wrong peer role). Its node's log then holds one line in the node's format naming the
    exception type and its frames, the node's own line on the session's end, and no traceback."""
    import re

    prepared = prepare_request(client.model_info("tiny-llama"), PROMPT, 2, service.token)
    sid = prepared.session_id[:8]

    def start(port: int) -> node_pb2.StartSession:
        return node_pb2.StartSession(endpoints=[node_pb2.Endpoint(rank=r, host="127.0.0.1", port=port) for r in range(3)],
                                     input_share=prepared.request.input_shares[1], prompt_tokens=len(PROMPT),
                                     max_new_tokens=2)

    error = _drive_node(service, "party1", prepared.session_id, start)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "session worker failed (" in error.details()
    log_file = service.root / "party1.log"
    deadline = time.monotonic() + 30
    while f"session {sid}: ended with" not in log_file.read_text():
        assert time.monotonic() < deadline, "the node never logged the session's end"
        time.sleep(0.2)
    lines = [line for line in log_file.read_text().splitlines() if sid in line]
    [failure] = [line for line in lines if " ERROR " in line]
    assert re.match(rf"^\d{{4}}-\d\d-\d\d [\d:,]+ party1 worker {sid} ERROR party1 worker of session {sid} failed: "
                    r"pinfer\.\S+Error at \S+\.py:\d+ in \w+( <- \S+\.py:\d+ in \w+)* <- \S+session_worker\.py:\d+ "
                    r"in party_worker_main$", failure), failure
    assert any(re.search(rf" party1 WARNING session {sid}: worker failed \(\w+\)$", line) for line in lines), lines
    assert any(line.endswith(f"session {sid}: ended with UNAVAILABLE") for line in lines), lines
    text = log_file.read_text()
    assert "Traceback" not in text[text.index(f"session {sid}: worker "):]
    _wait_idle(service)


def test_nodes_refuse_start_messages_they_should_not_run(service: LocalService, client: pinfer.Client) -> None:
    """A node checks the orchestrator's StartSession itself (endpoints, token counts, who takes an input)."""
    from pinfer.keys import session

    info = client.model_info("tiny-llama")
    context = info.config.max_positions

    def case(role: str, ranks: range = range(3), port: int | None = None, prompt: int = len(PROMPT), new: int = 2,
             share: bool = True, kv_policy: str = "", kv_budget: float = 0.0) -> str:
        def start(worker_port: int) -> node_pb2.StartSession:
            return node_pb2.StartSession(
                endpoints=[node_pb2.Endpoint(rank=r, host="127.0.0.1", port=worker_port if port is None else port)
                           for r in ranks],
                input_share=b"sealed" if share else b"", prompt_tokens=prompt, max_new_tokens=new,
                kv_policy=kv_policy, kv_budget=kv_budget)

        error = _drive_node(service, role, session.new_request_id(), start)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (role, error.details())
        return error.details()

    assert "ranks 0..2" in case("party0", ranks=range(2))
    assert "ranks 0..2" in case("dealer", ranks=[0, 1, 1, 2], share=False)
    assert "a port in 1..65535" in case("party1", port=70000)
    assert "context" in case("party0", prompt=context - 1, new=2)
    assert "needs its sealed input" in case("party1", share=False)
    assert "the dealer takes no input" in case("dealer")
    assert "unknown KV policy 'lru'" in case("party0", kv_policy="lru")
    assert "in (0, 1]" in case("party1", kv_policy="h2o", kv_budget=1.5)
    _wait_idle(service)


@pytest.mark.parametrize(("told", "why"), [(("tova", 0.5), "kv_policy"), (("h2o", 0.25), "kv_budget"),
                                           (("", 0.0), "kv_policy, kv_budget")],
                         ids=["other-policy", "other-budget", "defaults"])
def test_a_party_runs_only_the_kv_policy_sealed_to_it(service: LocalService, client: pinfer.Client,
                                                      told: tuple[str, float], why: str) -> None:
    """An orchestrator that tells one party another policy or budget than the client sealed to it (so
    that the two parties would run different caches) is refused by that party before the mesh forms."""
    prepared = prepare_request(client.model_info("tiny-llama"), PROMPT, 2, service.token, kv_policy="h2o",
                               kv_budget=0.5)

    def start(port: int) -> node_pb2.StartSession:
        return node_pb2.StartSession(endpoints=[node_pb2.Endpoint(rank=r, host="127.0.0.1", port=port) for r in range(3)],
                                     input_share=prepared.request.input_shares[1], prompt_tokens=len(PROMPT),
                                     max_new_tokens=2, kv_policy=told[0], kv_budget=told[1])

    error = _drive_node(service, "party1", prepared.session_id, start)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the session's {why} disagree with what the client sealed" in error.details()
    _wait_idle(service)
