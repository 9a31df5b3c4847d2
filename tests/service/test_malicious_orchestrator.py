"""A malicious orchestrator, through the real service on tiny-llama.

The double is the real orchestrator with an interceptor that relays everything and rewrites what it
likes: the model description it serves, the requests it forwards, the token shares it streams back.
It holds no envelope key (it has only the orchestrator's key folder) and, where it makes keys of its
own, nothing is ever sealed to them. Every attack must end in a typed client-side error or a refused
request, never in a wrong answer or a readable share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from cryptography import x509

import pinfer
from pinfer import keys
from pinfer.keys import envelope, session, trust
from pinfer.model.generation import generate_plain
from pinfer.model.registry import load_model
from pinfer.proto import inference_pb2
from pinfer.protocols import token_input
from pinfer.service.client import prepare_request
from pinfer.service.local_service import LocalService
from pinfer.service.orchestrator import OrchestratorConfig, serve, token_digest

PROMPT = [5, 6, 7, 8, 9]
TOKENS = 3

class Double(grpc.ServerInterceptor):
    """Relays every call of the real orchestrator, rewriting model descriptions, requests and events."""

    def __init__(self) -> None:
        self.rewrite_info: Callable[[inference_pb2.ModelInfo], inference_pb2.ModelInfo] | None = None
        self.rewrite_request: Callable[[inference_pb2.GenerateRequest], inference_pb2.GenerateRequest] | None = None
        self.rewrite_events: Callable[[list[inference_pb2.GenerateEvent]], list[inference_pb2.GenerateEvent]] | None = None
        self.requests: list[inference_pb2.GenerateRequest] = []

    def reset(self) -> None:
        self.rewrite_info = self.rewrite_request = self.rewrite_events = None
        self.requests.clear()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if method.endswith("/GetModel"):
            def get_model(request, context):
                info = handler.unary_unary(request, context)
                return self.rewrite_info(info) if self.rewrite_info else info

            return grpc.unary_unary_rpc_method_handler(get_model, handler.request_deserializer,
                                                       handler.response_serializer)
        if method.endswith("/Generate"):
            def generate(request, context):
                self.requests.append(inference_pb2.GenerateRequest.FromString(request.SerializeToString()))
                if self.rewrite_request:
                    request = self.rewrite_request(request)
                events = handler.unary_stream(request, context)
                if self.rewrite_events:  # collect, then rewrite (reordering needs the whole stream)
                    events = self.rewrite_events(list(events))
                yield from events

            return grpc.unary_stream_rpc_method_handler(generate, handler.request_deserializer,
                                                        handler.response_serializer)
        return handler


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    with LocalService(tmp_path_factory.mktemp("malicious"), model="tiny-llama", slots=2, queue=2) as svc:
        yield svc


@pytest.fixture(scope="module")
def double(service: LocalService) -> Iterator[tuple[Double, str]]:
    orchestrator_keys = service.node_keys(keys.ORCHESTRATOR)
    interceptor = Double()
    config = OrchestratorConfig(
        key_root=str(orchestrator_keys), models_root=str(service.root / "models"),
        nodes={role: f"127.0.0.1:{service.ports[role]}" for role in service.node_roles},
        token_sha256=frozenset({token_digest(service.token)}), slots=2, queue=2)
    server, port, orchestrator = serve(config, "127.0.0.1:0", interceptors=[interceptor])
    try:
        yield interceptor, f"127.0.0.1:{port}"
    finally:
        orchestrator.close()
        server.stop(grace=1)


@pytest.fixture
def attack(service: LocalService, double: tuple[Double, str]) -> Iterator[tuple[Double, pinfer.Client]]:
    interceptor, endpoint = double
    interceptor.reset()
    with pinfer.Client(endpoint, service.token, service.ca_path, timeout_s=120) as client:
        yield interceptor, client
    interceptor.reset()


@pytest.fixture(scope="module")
def plain_tokens() -> list[int]:
    config, weights, _ = load_model("tiny-llama")
    return generate_plain(config, weights, PROMPT, TOKENS)


def _ca(service: LocalService) -> x509.Certificate:
    return x509.load_pem_x509_certificate(service.ca_path.read_bytes())


def _serving(field: str, statement: bytes) -> Callable[[inference_pb2.ModelInfo], inference_pb2.ModelInfo]:
    """A rewrite of ``ModelInfo`` that serves ``statement`` as its ``field`` (deployment or card)."""
    def rewrite(info: inference_pb2.ModelInfo) -> inference_pb2.ModelInfo:
        setattr(info, field, statement)
        return info

    return rewrite


def _own_ca_statement(kind: str, body: bytes) -> bytes:
    """A statement signed by a CA the attacker made (not the deployment's)."""
    ca_key, _ = keys.make_ca()
    return trust.sign_statement(ca_key, kind, body)


def test_malicious_the_double_holds_no_envelope_key(service: LocalService) -> None:
    folder = service.node_keys(keys.ORCHESTRATOR)
    assert not list(folder.rglob("envelope.key")) and not list(folder.rglob("ca.key"))


def test_malicious_relay_that_rewrites_nothing_gives_the_plaintext_answer(attack, plain_tokens: list[int]) -> None:
    _, client = attack
    assert [t.token_id for t in client.generate_ids(PROMPT, TOKENS)] == plain_tokens


def test_malicious_substituted_party_key_is_refused_before_anything_is_sealed(attack, service: LocalService) -> None:
    interceptor, client = attack
    attacker_key = envelope.PrivateKey.generate()
    real = trust.verify_deployment(_ca(service), keys.load_deployment_statement(service.key_dir))
    forged = trust.Deployment(real.deployment_id, (attacker_key.public_key(), real.party_keys[1]))
    signed_by_attacker = _own_ca_statement(trust.DEPLOYMENT, forged.to_body())
    original = keys.load_deployment_statement(service.key_dir)
    resigned = original.replace(b'"body": "', b'"body": "' + b"A" * 4, 1)  # body changed, signature kept
    for statement in (signed_by_attacker, resigned):
        interceptor.rewrite_info = _serving("deployment", statement)
        with pytest.raises(trust.UntrustedStatementError):
            list(client.generate_ids(PROMPT, TOKENS, model="tiny-llama"))
    assert interceptor.requests == []  # nothing was ever sealed, to the attacker's key or any other


def test_malicious_one_party_deployment_is_refused(attack, service: LocalService) -> None:
    interceptor, client = attack
    real = trust.verify_deployment(_ca(service), keys.load_deployment_statement(service.key_dir))
    one_party = trust.Deployment(real.deployment_id, real.party_keys[:1]).to_body()
    # Even the real CA's signature on a one-party statement would not do: the client needs two parties.
    for statement in (_own_ca_statement(trust.DEPLOYMENT, one_party),
                      trust.sign_statement(keys.load_ca_key(service.key_dir), trust.DEPLOYMENT, one_party)):
        interceptor.rewrite_info = _serving("deployment", statement)
        with pytest.raises(trust.UntrustedStatementError):
            list(client.generate_ids(PROMPT, TOKENS, model="tiny-llama"))
    assert interceptor.requests == []


def test_malicious_changed_card_eos_vocab_or_tokenizer_is_refused(attack, service: LocalService) -> None:
    interceptor, client = attack
    card = session.ModelCard.from_json((service.root / "models" / "tiny-llama" / "model.json").read_text())
    hf = dict(card.hf_config, eos_token_id=5, vocab_size=card.hf_config["vocab_size"] + 1)
    changed = session.ModelCard(**{**vars(card), "hf_config": hf, "tokenizer": "gpt2-base"}).to_json().encode()
    for statement in (_own_ca_statement(trust.MODEL_CARD, changed),
                      # a card the real CA signed, but served as the deployment statement
                      keys.load_deployment_statement(service.key_dir)):
        interceptor.rewrite_info = _serving("card", statement)
        with pytest.raises(trust.UntrustedStatementError):
            client.model_info("tiny-llama")
    assert interceptor.requests == []


def test_malicious_unsigned_display_fields_change_nothing(attack, plain_tokens: list[int]) -> None:
    """vocab_size, architecture, tokenizer outside the card are display only: the client ignores them;
    no scale, end-of-sequence id or party count travels outside a signed statement at all."""
    interceptor, client = attack
    for absent in ("parties", "party_keys", "eos_token_ids", "input_scale"):
        assert absent not in inference_pb2.ModelInfo.DESCRIPTOR.fields_by_name
    assert "scale" not in inference_pb2.GenerateEvent.DESCRIPTOR.fields_by_name

    def lie(info: inference_pb2.ModelInfo) -> inference_pb2.ModelInfo:
        info.vocab_size, info.tokenizer, info.architecture = 7, "gpt2-base", "gpt2"
        return info

    interceptor.rewrite_info = lie
    model = client.model_info("tiny-llama")
    assert model.tokenizer == "tiny-llama" and model.config.vocab_size != 7
    assert [t.token_id for t in client.generate_ids(PROMPT, TOKENS, model="tiny-llama")] == plain_tokens


def test_malicious_swapped_reply_key_gets_nothing(attack, service: LocalService) -> None:
    """There is no reply key on the wire to swap: the reply secrets travel inside the sealed inputs.
    The most the double can do is replace party 1's sealed input with one it sealed itself (with a
    reply secret of its own, but without the client's share): the party then answers under the
    double's key, the client cannot authenticate that share and stops with a typed error."""
    interceptor, client = attack
    assert "client_public_key" not in inference_pb2.GenerateRequest.DESCRIPTOR.fields_by_name
    real = trust.verify_deployment(_ca(service), keys.load_deployment_statement(service.key_dir))
    vocab_size = load_model("tiny-llama")[0].vocab_size

    def reseal(request: inference_pb2.GenerateRequest) -> inference_pb2.GenerateRequest:
        # The double knows every caller's token digest, so it can name the session id the parties expect.
        session_id = session.session_id(token_digest(service.token), request.request_id)
        parameters = session.SessionParameters(session_id, request.model, 2, 1, request.prompt_tokens,
                                               request.max_new_tokens, request.kv_policy, request.kv_budget)
        # a prompt of the double's own, in the form party 1 expects
        own_share = envelope.encode_tensor(token_input.share_prompt([0] * request.prompt_tokens, vocab_size, 2)[1])
        request.input_shares[1] = session.seal_input(parameters, int(time.time()), bytes(32), own_share,
                                                     real.party_keys[1])
        return request

    interceptor.rewrite_request = reseal
    with pytest.raises(session.OutputIntegrityError):
        list(client.generate_ids(PROMPT, TOKENS, model="tiny-llama"))


def test_malicious_replay_of_a_recorded_request_is_refused(attack, service: LocalService,
                                                           plain_tokens: list[int]) -> None:
    interceptor, client = attack
    assert [t.token_id for t in client.generate_ids(PROMPT, TOKENS, model="tiny-llama")] == plain_tokens
    recorded = interceptor.requests[-1]
    prepared = prepare_request(client.model_info("tiny-llama"), PROMPT, TOKENS, service.token)
    # Replayed as it was: the nodes remember the id.
    with pytest.raises(grpc.RpcError) as same_id:
        list(client._stub.Generate(recorded, timeout=120))
    assert same_id.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Replayed under a fresh id: the sealed inputs name the old one, so the parties refuse them.
    renamed = inference_pb2.GenerateRequest.FromString(recorded.SerializeToString())
    renamed.request_id = prepared.request.request_id
    with pytest.raises(grpc.RpcError) as new_id:
        list(client._stub.Generate(renamed, timeout=120))
    assert new_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Replayed with other public parameters than the client sealed: refused by the parties.
    longer = prepare_request(client.model_info("tiny-llama"), PROMPT, TOKENS, service.token).request
    longer.max_new_tokens = TOKENS + 5
    with pytest.raises(grpc.RpcError) as changed:
        list(client._stub.Generate(longer, timeout=120))
    assert changed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "disagree with what the client sealed" in changed.value.details()


@pytest.mark.parametrize("change", [{"kv_policy": "streamingllm"}, {"kv_budget": 0.5}, {"kv_policy": "", "kv_budget": 0.0}],
                         ids=["policy", "budget", "defaults"])
def test_malicious_changed_kv_policy_or_budget_is_refused_by_the_parties(attack, change: dict) -> None:
    interceptor, client = attack

    def rewrite(request: inference_pb2.GenerateRequest) -> inference_pb2.GenerateRequest:
        for name, value in change.items():
            setattr(request, name, value)
        return request

    interceptor.rewrite_request = rewrite
    with pytest.raises(grpc.RpcError) as refused:
        list(client.generate_ids(PROMPT, TOKENS, model="tiny-llama", kv_policy="h2o", kv_budget=0.25))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "disagree with what the client sealed" in refused.value.details()


def _flip_first_share(events: list[inference_pb2.GenerateEvent]) -> list[inference_pb2.GenerateEvent]:
    share = bytearray(events[1].token_shares[0])
    share[0] ^= 1
    events[1].token_shares[0] = bytes(share)
    return events


def _drop_party1(events: list[inference_pb2.GenerateEvent]) -> list[inference_pb2.GenerateEvent]:
    del events[1].token_shares[1]
    return events


def _swap_parties(events: list[inference_pb2.GenerateEvent]) -> list[inference_pb2.GenerateEvent]:
    shares = list(events[1].token_shares)
    events[1].ClearField("token_shares")
    events[1].token_shares.extend(reversed(shares))
    return events


def _reorder(events: list[inference_pb2.GenerateEvent]) -> list[inference_pb2.GenerateEvent]:
    return [events[0], events[2], events[1]]


def _relabel_steps(events: list[inference_pb2.GenerateEvent]) -> list[inference_pb2.GenerateEvent]:
    events[1].step, events[2].step = events[2].step, events[1].step
    return _reorder(events)


def _stale_share(events: list[inference_pb2.GenerateEvent]) -> list[inference_pb2.GenerateEvent]:
    events[2].token_shares[0] = events[1].token_shares[0]
    return events


def _drop_last_token(events: list[inference_pb2.GenerateEvent]) -> list[inference_pb2.GenerateEvent]:
    return events[:-1]


def _duplicate_token(events: list[inference_pb2.GenerateEvent]) -> list[inference_pb2.GenerateEvent]:
    return events + [events[-1]]


@pytest.mark.parametrize("rewrite", [_flip_first_share, _drop_party1, _swap_parties, _reorder, _relabel_steps,
                                     _stale_share, _drop_last_token, _duplicate_token],
                         ids=lambda f: f.__name__.strip("_"))
def test_malicious_forged_dropped_or_reordered_token_shares(attack, rewrite) -> None:
    interceptor, client = attack
    interceptor.rewrite_events = rewrite
    with pytest.raises(session.OutputIntegrityError):
        list(client.generate_ids(PROMPT, TOKENS, model="tiny-llama"))


def test_malicious_shares_from_another_request_do_not_open(attack) -> None:
    interceptor, client = attack
    recorded: list[inference_pb2.GenerateEvent] = []

    def record(events: list[inference_pb2.GenerateEvent]) -> list[inference_pb2.GenerateEvent]:
        recorded.extend(events)
        return events

    interceptor.rewrite_events = record
    list(client.generate_ids(PROMPT, TOKENS, model="tiny-llama"))
    interceptor.rewrite_events = lambda events: [recorded[i] for i in range(len(events))]
    with pytest.raises(session.OutputIntegrityError):
        list(client.generate_ids(PROMPT, TOKENS, model="tiny-llama"))
