"""The client SDK: private generation against a running pinfer service.

Why the client does this work itself: it is the only node allowed to see the prompt and the output,
and it trusts the orchestrator with neither. Before it seals anything it verifies what the
deployment CA signed (:mod:`pinfer.keys.trust`): the party set and each party's envelope key, and the model
card (tokenizer, vocabulary, end-of-sequence ids); nothing the orchestrator says on its own is used.
It tokenizes locally, one-hot encodes the prompt, splits it into additive shares over Z_2^64 (party 0
dense, the others a seed), and seals to party *i* its share with the session's parameters and a fresh
reply secret (:mod:`pinfer.keys.session`). Each step it requires every party's share of the new token,
each authenticated under that party's reply key, adds them and detokenizes.

    client = pinfer.Client("localhost:7000", token, "keys/ca/ca.crt")
    print(client.generate("Hello", max_new_tokens=16))
    print(client.generate("Hello", max_new_tokens=16, kv_policy="mpcache", kv_budget=0.1))

Errors of trust are typed: :class:`pinfer.keys.trust.UntrustedStatementError` (the served deployment or
card is not what the pinned CA signed) and :class:`pinfer.keys.session.OutputIntegrityError` (a token
share forged, dropped, reordered or from another request, or the stream cut short).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from pinfer.keys import envelope, session, trust
from pinfer.proto import inference_pb2, inference_pb2_grpc


@dataclass(frozen=True)
class StepCost:
    """One party's public cost of one step, as that party reported it (authenticated with its share)."""

    party: int
    seconds: float
    bytes_sent: int
    rounds: int
    dealer_bytes: int


@dataclass(frozen=True)
class Token:
    """One generated token with its step's public cost as each party reported it."""

    step: int
    token_id: int
    phase: str
    costs: tuple[StepCost, ...]


@dataclass(frozen=True)
class KVPolicyOffer:
    """A KV-cache policy the service offers, with the kept fraction of the prompt it defaults to."""

    name: str
    default_budget: float
    description: str


@dataclass(frozen=True)
class VerifiedModel:
    """A served model as the pinned CA vouches for it: its card and the party set to seal to.

    ``max_new_tokens``, ``kv_policy`` (the default) and ``kv_policies`` are the orchestrator's public
    serving parameters, not signed: the parties enforce the model's context whatever they say, and run
    only the KV policy and budget the client sealed to them.
    """

    card: session.ModelCard
    deployment: trust.Deployment
    max_new_tokens: int
    kv_policy: str
    kv_policies: tuple[KVPolicyOffer, ...] = ()

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def tokenizer(self) -> str:
        return self.card.tokenizer

    @property
    def parties(self) -> int:
        return self.deployment.parties

    @property
    def config(self) -> Any:
        return self.card.config()

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return tuple(self.config.eos_token_ids)

    def kv_choice(self, policy: str | None = None, budget: float | None = None) -> tuple[str, float]:
        """The KV policy and budget a request seals: ``None`` takes the service's default policy, and
        that policy's default budget. Raises ``ValueError`` for a policy the service does not offer or
        a budget outside (0, 1]."""
        if not self.kv_policies:  # a service from before kv_policies runs its one policy
            if policy is None and budget is None:
                return "", 0.0
            raise ValueError("the service offers no choice of KV policy")
        offers = {offer.name: offer for offer in self.kv_policies}
        name = self.kv_policy if policy is None else policy
        if name not in offers:
            raise ValueError(f"the service offers no KV policy {name!r}; offered: {', '.join(offers) or 'none'}")
        chosen = offers[name].default_budget if budget is None else float(budget)
        if not 0.0 < chosen <= 1.0:
            raise ValueError(f"a KV budget is the kept fraction of the prompt, in (0, 1]; not {budget}")
        return name, chosen


def verify_model(info: inference_pb2.ModelInfo, ca: x509.Certificate) -> VerifiedModel:
    """Check a served ``ModelInfo``'s signed deployment and card against the pinned CA."""
    deployment = trust.verify_deployment(ca, info.deployment)
    card = session.verify_card(ca, info.card, deployment)
    if card.name != info.name:
        raise trust.UntrustedStatementError(f"the service named model {info.name!r} but served the card of {card.name!r}")
    offers = tuple(KVPolicyOffer(p.name, p.default_budget, p.description) for p in info.kv_policies)
    return VerifiedModel(card, deployment, info.max_new_tokens, info.kv_policy, offers)


@dataclass(frozen=True)
class PreparedRequest:
    """A sealed ``GenerateRequest`` and what opens its answer: one reply key per pinned party.

    ``session_id`` is what the parties run it under (the request id scoped to the caller's token,
    :func:`pinfer.keys.session.session_id`); the request carries only the caller's own ``request_id``.
    """

    request: inference_pb2.GenerateRequest
    vocab_size: int
    reply_keys: tuple[session.ReplyKey, ...] = field(repr=False)
    session_id: str = ""

    def open(self, event: inference_pb2.GenerateEvent, expected_step: int) -> Token:
        """Open every party's share of this step's token and add them (mod 2^64).

        Raises :class:`~pinfer.keys.session.OutputIntegrityError` unless the event is step ``expected_step``
        and carries exactly one authentic share from each pinned party.
        """
        from pinfer.protocols.sharing import SCALE

        if event.step != expected_step:
            raise session.OutputIntegrityError(f"expected token {expected_step}, the service sent token {event.step}")
        if len(event.token_shares) != len(self.reply_keys):
            raise session.OutputIntegrityError(
                f"token {event.step} carries {len(event.token_shares)} shares; every one of the "
                f"{len(self.reply_keys)} pinned parties must send one")
        shares = [key.open(event.step, item) for key, item in zip(self.reply_keys, event.token_shares)]
        total = sum(s.id_share for s in shares) % (1 << 64)
        total = (total + (1 << 63)) % (1 << 64) - (1 << 63)
        token_id = round(total / SCALE)
        if not 0 <= token_id < self.vocab_size:
            raise session.OutputIntegrityError(f"token {event.step} opened outside the vocabulary")
        costs = tuple(StepCost(i, s.seconds, s.bytes_sent, s.rounds, s.dealer_bytes) for i, s in enumerate(shares))
        return Token(event.step, token_id, "prefill" if event.step == 0 else "decode", costs)

    def open_stream(self, events: Iterable[inference_pb2.GenerateEvent]) -> Iterator[Token]:
        """Every token of the answer, in order; a stream that ends before the last token is an error."""
        received = 0
        for event in events:
            if received == self.request.max_new_tokens:
                raise session.OutputIntegrityError("the service sent more tokens than were asked for")
            yield self.open(event, received)
            received += 1
        if received != self.request.max_new_tokens:
            raise session.OutputIntegrityError(
                f"the stream ended after {received} of {self.request.max_new_tokens} tokens")


def prepare_request(model: VerifiedModel, prompt_ids: list[int], max_new_tokens: int, token: str, *,
                    request_id: str | None = None, kv_policy: str = "", kv_budget: float = 0.0) -> PreparedRequest:
    """Share the prompt (:mod:`pinfer.protocols.token_input`: DPF keys for two parties); seal party *i*'s
    payload, the session parameters and a reply secret to party *i*.

    ``kv_policy`` and ``kv_budget`` go into the request and every sealed input as given (empty and 0
    leave them to the parties' defaults; :meth:`VerifiedModel.kv_choice` resolves them here instead).

    ``token`` is the bearer token the request will be sent with: the parties run it under the request
    id scoped to that token (:func:`pinfer.keys.session.session_id`), which the orchestrator derives
    from the token it authenticates; sent with another token, the parties refuse it. ``request_id``
    defaults to a fresh random one; a caller's id runs once (a second use is ``ALREADY_EXISTS``).
    """
    from pinfer.protocols.token_input import share_prompt

    vocab_size = model.config.vocab_size
    if not prompt_ids or min(prompt_ids) < 0 or max(prompt_ids) >= vocab_size:
        raise ValueError("prompt ids must be non-empty and inside the model's vocabulary")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    request_id = request_id or session.new_request_id()
    if not session.REQUEST_ID.match(request_id):
        raise ValueError("a request id is 16 to 64 lowercase hex characters")
    session_id = session.session_id(session.token_digest(token), request_id)
    issued_at = int(time.time())
    payloads = share_prompt(prompt_ids, vocab_size, model.parties)
    sealed, reply_keys = [], []
    for party, (payload, recipient) in enumerate(zip(payloads, model.deployment.party_keys)):
        parameters = session.SessionParameters(session_id, model.name, model.parties, party, len(prompt_ids),
                                               max_new_tokens, kv_policy, kv_budget)
        secret = os.urandom(session.REPLY_SECRET_BYTES)
        sealed.append(session.seal_input(parameters, issued_at, secret, envelope.encode_tensor(payload), recipient))
        reply_keys.append(session.ReplyKey(secret, session_id, party))
    request = inference_pb2.GenerateRequest(
        model=model.name, request_id=request_id, input_shares=sealed, prompt_tokens=len(prompt_ids),
        max_new_tokens=max_new_tokens, kv_policy=kv_policy, kv_budget=kv_budget)
    return PreparedRequest(request, vocab_size, tuple(reply_keys), session_id)


def text_pieces(tokenizer: Any, stop_ids: Iterable[int], tokens: Iterable[Token]) -> Iterator[str]:
    """Detokenize ``tokens`` as they arrive, yielding each new piece of text; the text ends at a stop id.

    A piece is held back while it ends inside a multi-byte character (the tokenizer's U+FFFD).
    """
    stop = set(stop_ids)
    ids: list[int] = []
    shown = ""
    stopped = False
    for token in tokens:
        if stopped or token.token_id in stop:
            stopped = True  # the parties run the public count; the text ends here
            continue
        ids.append(token.token_id)
        text = tokenizer.decode(ids)
        if text.startswith(shown) and not text.endswith("\ufffd"):
            piece, shown = text[len(shown):], text
            if piece:
                yield piece
    rest = tokenizer.decode(ids)[len(shown):] if ids else ""
    if rest:
        yield rest


class Client:
    """A connection to a pinfer orchestrator: a bearer token over server-authenticated TLS.

    ``ca`` is the deployment CA certificate (a path or PEM bytes), pinned by the user: the
    orchestrator's certificate must chain to it, and it is the root that the served deployment
    statement and model cards must verify against. ``server_name`` overrides the name checked against
    the orchestrator's certificate (default: the ``orchestrator`` role name, which only the CA can
    grant and no other role's certificate carries).
    """

    def __init__(self, address: str, token: str, ca: str | Path | bytes, *, server_name: str = "orchestrator",
                 timeout_s: float | None = None) -> None:
        root = ca if isinstance(ca, bytes) else Path(ca).read_bytes()
        self._ca = x509.load_pem_x509_certificate(root)
        credentials = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=root),
            grpc.access_token_call_credentials(token),
        )
        self._channel = grpc.secure_channel(address, credentials, options=[
            ("grpc.ssl_target_name_override", server_name),
            ("grpc.max_send_message_length", envelope.MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", envelope.MAX_MESSAGE_BYTES),
        ])
        self._stub = inference_pb2_grpc.InferenceStub(self._channel)
        self._token = token
        self._timeout_s = timeout_s
        self._tokenizers: dict[str, Any] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def models(self) -> list[VerifiedModel]:
        """Every served model, each verified against the pinned CA."""
        served = self._stub.ListModels(inference_pb2.ListModelsRequest(), timeout=self._timeout_s).models
        return [verify_model(info, self._ca) for info in served]

    def model_info(self, model: str | None = None) -> VerifiedModel:
        """The named model as the pinned CA vouches for it, or the only model served when ``model`` is None."""
        if model is not None:
            return verify_model(self._stub.GetModel(inference_pb2.GetModelRequest(model=model), timeout=self._timeout_s),
                                self._ca)
        models = self.models()
        if len(models) != 1:
            raise ValueError(f"the service serves {len(models)} models; name one of {[m.name for m in models]}")
        return models[0]

    def tokenizer(self, info: VerifiedModel) -> Any:
        """The model's public tokenizer, resolved locally (registry name or checkpoint directory)."""
        if info.tokenizer not in self._tokenizers:
            from pinfer.model.registry import resolve
            from pinfer.model.tokenizer import load_tokenizer

            self._tokenizers[info.tokenizer] = load_tokenizer(resolve(info.tokenizer))
        return self._tokenizers[info.tokenizer]

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int, model: str | None = None, *,
                     kv_policy: str | None = None, kv_budget: float | None = None) -> Iterator[Token]:
        """Private greedy generation from token ids; yields each new token as soon as it is opened.

        ``kv_policy`` names one of the model's ``kv_policies`` and ``kv_budget`` is the kept fraction of
        the prompt (None: the service's default policy, the policy's default budget); both are public
        and sealed to every party with its share. Closing the iterator before its end cancels the
        generation on the service. Raises ``ValueError`` for a policy or budget the service does not
        offer, ``grpc.RpcError`` with the service's status code (for example ``INVALID_ARGUMENT`` for
        a prompt over the context, ``UNAVAILABLE`` when a party is lost), and the trust errors of the
        module docstring.
        """
        info = self.model_info(model)
        yield from self._generate(info, prompt_ids, max_new_tokens, kv_policy, kv_budget)

    def _generate(self, info: VerifiedModel, prompt_ids: list[int], max_new_tokens: int, kv_policy: str | None,
                  kv_budget: float | None) -> Iterator[Token]:
        policy, budget = info.kv_choice(kv_policy, kv_budget)
        prepared = prepare_request(info, prompt_ids, max_new_tokens, self._token, kv_policy=policy, kv_budget=budget)
        call = self._stub.Generate(prepared.request, timeout=self._timeout_s)
        try:
            yield from prepared.open_stream(call)
        finally:
            call.cancel()  # a caller that stops reading early (a stop sequence, a client gone) stops the parties too

    def stream(self, prompt: str, max_new_tokens: int = 16, model: str | None = None, raw: bool = False, *,
               kv_policy: str | None = None, kv_budget: float | None = None) -> Iterator[str]:
        """Yield the generated text piece by piece as tokens arrive (cut at the first stop token);
        ``kv_policy`` and ``kv_budget`` as in :meth:`generate_ids`."""
        from pinfer.model.tokenizer import encode_prompt

        info = self.model_info(model)
        tokenizer = self.tokenizer(info)
        tokens = self._generate(info, encode_prompt(tokenizer, prompt, raw), max_new_tokens, kv_policy, kv_budget)
        yield from text_pieces(tokenizer, info.eos_token_ids, tokens)

    def generate(self, prompt: str, max_new_tokens: int = 16, model: str | None = None, raw: bool = False, *,
                 kv_policy: str | None = None, kv_budget: float | None = None) -> str:
        """The whole generated text (see :meth:`stream`)."""
        return "".join(self.stream(prompt, max_new_tokens, model, raw, kv_policy=kv_policy, kv_budget=kv_budget))
