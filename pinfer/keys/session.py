"""The session contract the client and the parties both follow, through an orchestrator neither trusts.

Why one module: each rule here has two sides (the client seals, a party opens; a party seals, the
client opens), and the two sides must never drift apart.

* **Input.** The client seals to party *i* (HPKE, its pinned key) a :class:`SealedInput`: its prompt
  share plus every session parameter the party must act on (request id, model, party count, its own
  index, prompt length, token count, KV-cache policy and budget, issue time) and a fresh 32-byte
  *reply secret*. The party runs only what the client sealed: a ``StartSession`` that disagrees with
  it is refused, so an orchestrator cannot give two parties different policies either.
* **Output.** Party *i* seals each token's share, with the step's cost, under a ChaCha20-Poly1305 key
  derived (HKDF-SHA256) from its reply secret, with the request id, party and step as associated
  data. Only the client and party *i* know that secret, so the orchestrator can neither read a share
  nor forge, reorder or move one between parties, steps or requests: the reply key is bound into what
  the client sealed, and there is no reply key on the wire to swap.
* **Replay.** A node refuses a session id it has already run, and a request issued outside
  ``REPLAY_WINDOW_S`` of its clock or before the node started, so it needs to remember ids only for a
  bounded time.
* **Ids are per caller.** The id the parties run a request under (and every envelope and reply key is
  bound to) is :func:`session_id`: the client's request id scoped to the caller's bearer token. The
  orchestrator derives it from the token it authenticated, the client from the token it holds. So
  one client's request ids never collide with another's, at the orchestrator or in a node's replay
  memory, and no answer tells a caller whether someone else used an id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pinfer.keys import envelope, trust
from pinfer.proto import session_pb2

REQUEST_ID = re.compile(r"^[0-9a-f]{16,64}$")
REPLY_SECRET_BYTES = 32
REPLAY_WINDOW_S = 600
"""How far a request's issue time may be from a node's clock (either way) before the node refuses it."""
SEALED_INPUT_OVERHEAD = 512
"""Bound on a SealedInput's bytes beyond its share (ids, names, counts, secret): what relays allow."""
_REPLY_LABEL = b"pinfer reply v1"


class SessionContractError(ValueError):
    """A sealed message that opened but breaks the contract (wrong request, party or parameters)."""


class OutputIntegrityError(Exception):
    """A token share is missing, forged, reordered or from another request: the output cannot be trusted."""


@dataclass(frozen=True)
class ModelCard:
    """The public description of a provisioned model (``model.json``), signed by the CA as ``model.card``."""

    name: str
    tokenizer: str
    hf_config: dict[str, Any]
    norm_shifts: dict[str, dict[str, int]]
    parties: int
    provision_id: str
    party_key_sha256: tuple[str, ...]

    def config(self) -> Any:
        """The :class:`~pinfer.model.config.ModelConfig` the forward needs."""
        from pinfer.model.config import ModelConfig

        return ModelConfig.from_hf_dict(self.hf_config)

    def to_json(self) -> str:
        data = dict(vars(self))
        data["party_key_sha256"] = list(self.party_key_sha256)
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        data["party_key_sha256"] = tuple(data["party_key_sha256"])
        return cls(**data)


def verify_card(ca: x509.Certificate, statement: bytes, deployment: trust.Deployment) -> ModelCard:
    """The model card the pinned CA signed, provisioned for exactly ``deployment``'s party keys."""
    body = trust.verify_statement(ca, trust.MODEL_CARD, statement)
    try:
        card = ModelCard.from_json(body.decode())
    except (ValueError, KeyError, TypeError):
        raise trust.UntrustedStatementError("model card body is malformed") from None
    expected = tuple(trust.key_fingerprint(k) for k in deployment.party_keys)
    if card.parties != deployment.parties or tuple(card.party_key_sha256) != expected:
        raise trust.UntrustedStatementError(f"model card {card.name!r} was provisioned for another party set")
    return card


def new_request_id() -> str:
    return os.urandom(16).hex()


def token_digest(token: str) -> str:
    """SHA-256 hex of a bearer token: how the orchestrator knows a caller (it stores no token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()


_SESSION_LABEL = b"pinfer session v1"


def session_id(caller: str, request_id: str) -> str:
    """The id the parties know request ``request_id`` of caller ``caller`` (its :func:`token_digest`) by.

    Why scoped: a request id is the client's choice, and the parties remember every id they ran. With
    bare ids, any token holder could submit another client's id and learn from the refusal that it was
    in use (and, at the parties, that it ran in the last ``2 * REPLAY_WINDOW_S``). Scoped, two callers'
    ids never meet; a replay of a recorded request still carries its original caller's session id
    (sealed into every envelope) and is refused. 64 lowercase hex characters, so a :data:`REQUEST_ID`.
    """
    return hashlib.sha256(b"\n".join((_SESSION_LABEL, caller.encode(), request_id.encode()))).hexdigest()


def input_context(request_id: str, party: int) -> envelope.EnvelopeContext:
    """HPKE context of party ``party``'s sealed input (the client seals and the party opens under it)."""
    return envelope.EnvelopeContext(request_id, party, "input-share")


@dataclass(frozen=True)
class SessionParameters:
    """What a party runs: the fields of a sealed input (or of the orchestrator's messages) to compare.

    ``request_id`` is the session id the parties run it under (:func:`session_id`), not the caller's own.
    ``kv_policy`` and ``kv_budget`` are the request's public KV-cache policy and kept fraction as sent
    (empty and 0 leave the default to the parties, :func:`pinfer.kvcache.serving.resolve`).
    """

    request_id: str
    model: str
    parties: int
    party: int
    prompt_tokens: int
    max_new_tokens: int
    kv_policy: str = ""
    kv_budget: float = 0.0


@dataclass(frozen=True)
class OpenedInput:
    """A party's opened input: the parameters the client sealed, its share and its reply secret."""

    parameters: SessionParameters
    issued_at: int
    share: bytes = field(repr=False)
    reply_secret: bytes = field(repr=False)


def seal_input(parameters: SessionParameters, issued_at: int, reply_secret: bytes, share: bytes,
               recipient: envelope.PublicKey) -> bytes:
    """The client's envelope for one party."""
    if len(reply_secret) != REPLY_SECRET_BYTES:
        raise ValueError(f"a reply secret is {REPLY_SECRET_BYTES} bytes")
    message = session_pb2.SealedInput(**vars(parameters), issued_at=issued_at, reply_secret=reply_secret, share=share)
    return envelope.seal(message.SerializeToString(), recipient, input_context(parameters.request_id, parameters.party),
                         max_payload=len(share) + SEALED_INPUT_OVERHEAD)


def open_input(sealed: bytes, private_key: envelope.PrivateKey, expected: SessionParameters, *, now: float,
               not_before: float, max_share_bytes: int) -> OpenedInput:
    """Open a party's input and check that it is for exactly the session the party was asked to run.

    Raises :class:`~pinfer.keys.envelope.EnvelopeError` if it does not open, :class:`SessionContractError`
    if the client sealed other parameters than ``expected``, an issue time outside the replay window,
    or one before ``not_before`` (the node's start: ids seen before it are forgotten).
    """
    payload = envelope.open_envelope(sealed, private_key, input_context(expected.request_id, expected.party),
                                     max_payload=max_share_bytes + SEALED_INPUT_OVERHEAD)
    message = session_pb2.SealedInput()
    try:
        message.ParseFromString(payload)
    except Exception:  # protobuf's DecodeError: the client sealed something that is not a SealedInput
        raise SessionContractError("the sealed input is not a SealedInput message") from None
    sealed_parameters = SessionParameters(**{name: getattr(message, name) for name in vars(expected)})
    if sealed_parameters != expected:
        differing = [name for name in vars(expected) if getattr(expected, name) != getattr(sealed_parameters, name)]
        raise SessionContractError(f"the session's {', '.join(differing)} disagree with what the client sealed")
    if abs(now - message.issued_at) > REPLAY_WINDOW_S:
        raise SessionContractError(f"the request was issued more than {REPLAY_WINDOW_S} s from this node's clock")
    if message.issued_at < int(not_before):
        raise SessionContractError("the request was issued before this node started")
    if len(message.reply_secret) != REPLY_SECRET_BYTES:
        raise SessionContractError(f"the reply secret is not {REPLY_SECRET_BYTES} bytes")
    return OpenedInput(sealed_parameters, message.issued_at, message.share, message.reply_secret)


@dataclass(frozen=True)
class TokenShare:
    """One party's opened share of one token, with the cost that party reports for the step."""

    id_share: int
    seconds: float
    bytes_sent: int
    rounds: int
    dealer_bytes: int


class ReplyKey:
    """Party ``party``'s token-share key of one request: both ends derive it from the reply secret."""

    def __init__(self, reply_secret: bytes, request_id: str, party: int) -> None:
        if len(reply_secret) != REPLY_SECRET_BYTES:
            raise ValueError(f"a reply secret is {REPLY_SECRET_BYTES} bytes")
        self._request_id = request_id
        self._party = party
        info = _REPLY_LABEL + envelope.EnvelopeContext(request_id, party, "token-share").encode()
        self._aead = ChaCha20Poly1305(HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(reply_secret))

    def __repr__(self) -> str:
        return f"ReplyKey(party={self._party})"

    def _aad(self, step: int) -> bytes:
        return envelope.EnvelopeContext(self._request_id, self._party, f"token-share/{step}").encode()

    @staticmethod
    def _nonce(step: int) -> bytes:
        # One key per (request, party) and one step number per token: the step is a unique nonce.
        return struct.pack(">IQ", 0, step)

    def seal(self, step: int, share: TokenShare) -> bytes:
        payload = session_pb2.TokenPayload(id_share=share.id_share, seconds=share.seconds, bytes_sent=share.bytes_sent,
                                           rounds=share.rounds, dealer_bytes=share.dealer_bytes)
        return self._aead.encrypt(self._nonce(step), payload.SerializeToString(), self._aad(step))

    def open(self, step: int, sealed: bytes) -> TokenShare:
        """The share this party sealed for ``step``; :class:`OutputIntegrityError` for anything else."""
        try:
            plaintext = self._aead.decrypt(self._nonce(step), bytes(sealed), self._aad(step))
        except InvalidTag:
            raise OutputIntegrityError(
                f"party {self._party}'s share of token {step} is not the one it sealed (forged, reordered or moved)"
            ) from None
        payload = session_pb2.TokenPayload()
        payload.ParseFromString(plaintext)
        return TokenShare(payload.id_share, payload.seconds, payload.bytes_sent, payload.rounds, payload.dealer_bytes)
