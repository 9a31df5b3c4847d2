"""The client SDK: private generation against a running pinfer service.

Why the client does this work itself: it is the only node allowed to see the prompt and the output.
It tokenizes locally, one-hot encodes the prompt, splits it into additive shares over Z_2^64 (party 0
dense, the others a seed, as :mod:`pinfer.protocols.sharing` does), seals share *i* to party *i*'s
X25519 key under a fresh request id, and sends the envelopes with a fresh ephemeral public key. Each
step, every party's share of the new token id comes back sealed to that ephemeral key; the client
opens and adds them, and detokenizes.

    client = pinfer.Client("localhost:7000", token, "keys/ca/ca.crt")
    print(client.generate("Hello", max_new_tokens=16))
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pinfer import envelope
from pinfer.parties.session_worker import input_context, token_context
from pinfer.proto import inference_pb2, inference_pb2_grpc



@dataclass(frozen=True)
class Token:
    """One generated token with its step's public cost as each party reported it."""

    step: int
    token_id: int
    phase: str
    costs: tuple[inference_pb2.StepCost, ...]


@dataclass(frozen=True)
class PreparedRequest:
    """A sealed ``GenerateRequest`` and the ephemeral key that opens its token shares."""

    request: inference_pb2.GenerateRequest
    ephemeral: X25519PrivateKey

    def open(self, event: inference_pb2.GenerateEvent) -> Token:
        """Open every party's sealed share of this step's token and add them (mod 2^64)."""
        total = 0
        for party, item in enumerate(event.token_shares):
            share = envelope.open_tensor(item, self.ephemeral, token_context(self.request.request_id, party, event.step),
                                         expected_shape=(1,))
            total += int(share[0])
        total = (total + (1 << 63)) % (1 << 64) - (1 << 63)
        return Token(event.step, round(total / event.scale), event.phase, tuple(event.costs))


def prepare_request(info: inference_pb2.ModelInfo, prompt_ids: list[int], max_new_tokens: int) -> PreparedRequest:
    """Share the one-hot prompt, seal share *i* to party *i* under a fresh request id and ephemeral key."""
    from pinfer.generation import one_hot
    from pinfer.protocols.sharing import share

    if not prompt_ids or min(prompt_ids) < 0 or max(prompt_ids) >= info.vocab_size:
        raise ValueError("prompt ids must be non-empty and inside the model's vocabulary")
    request_id = secrets.token_hex(16)
    ephemeral = X25519PrivateKey.generate()
    bundles = share({"tokens": one_hot(prompt_ids, info.vocab_size)}, info.parties)
    party_keys = {k.party: envelope.load_public_key(k.x25519_public_key) for k in info.party_keys}
    sealed = []
    for party, bundle in enumerate(bundles):
        payload = bundle.dense["tokens"] if bundle.seed is None else torch.frombuffer(bytearray(bundle.seed), dtype=torch.uint8)
        sealed.append(envelope.seal_tensor(payload, party_keys[party], input_context(request_id, party)))
    request = inference_pb2.GenerateRequest(
        model=info.name, request_id=request_id, client_public_key=envelope.public_key_bytes(ephemeral.public_key()),
        input_shares=sealed, prompt_tokens=len(prompt_ids), max_new_tokens=max_new_tokens)
    return PreparedRequest(request, ephemeral)


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
    """A connection to a pinfer orchestrator, authenticated with a bearer token over TLS.

    ``ca`` is the deployment CA certificate (a path or PEM bytes) that the orchestrator's certificate
    must chain to. ``server_name`` overrides the name checked against that certificate (default: the
    ``orchestrator`` role name, which only the CA can grant).
    """

    def __init__(self, address: str, token: str, ca: str | Path | bytes, *, server_name: str = "orchestrator",
                 timeout_s: float | None = None) -> None:
        root = ca if isinstance(ca, bytes) else Path(ca).read_bytes()
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
        self._timeout_s = timeout_s
        self._tokenizers: dict[str, Any] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def models(self) -> list[inference_pb2.ModelInfo]:
        return list(self._stub.ListModels(inference_pb2.ListModelsRequest(), timeout=self._timeout_s).models)

    def model_info(self, model: str | None = None) -> inference_pb2.ModelInfo:
        """The named model's card, or the only model served when ``model`` is None."""
        if model is not None:
            return self._stub.GetModel(inference_pb2.GetModelRequest(model=model), timeout=self._timeout_s)
        models = self.models()
        if len(models) != 1:
            raise ValueError(f"the service serves {len(models)} models; name one of {[m.name for m in models]}")
        return models[0]

    def tokenizer(self, info: inference_pb2.ModelInfo) -> Any:
        """The model's public tokenizer, resolved locally (registry name or checkpoint directory)."""
        if info.tokenizer not in self._tokenizers:
            from pinfer.models.registry import resolve
            from pinfer.models.tokenizer import load_tokenizer

            self._tokenizers[info.tokenizer] = load_tokenizer(resolve(info.tokenizer))
        return self._tokenizers[info.tokenizer]

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int, model: str | None = None) -> Iterator[Token]:
        """Private greedy generation from token ids; yields each new token as soon as it is opened.

        Raises ``grpc.RpcError`` with the service's status code (for example ``INVALID_ARGUMENT``
        for a prompt over the context, ``UNAVAILABLE`` when a party is lost).
        """
        info = self.model_info(model)
        yield from self._generate(info, prompt_ids, max_new_tokens)

    def _generate(self, info: inference_pb2.ModelInfo, prompt_ids: list[int], max_new_tokens: int) -> Iterator[Token]:
        prepared = prepare_request(info, prompt_ids, max_new_tokens)
        for event in self._stub.Generate(prepared.request, timeout=self._timeout_s):
            yield prepared.open(event)

    def stream(self, prompt: str, max_new_tokens: int = 16, model: str | None = None, raw: bool = False) -> Iterator[str]:
        """Yield the generated text piece by piece as tokens arrive (cut at the first stop token)."""
        from pinfer.commands.generate import prompt_ids as encode_prompt

        info = self.model_info(model)
        tokenizer = self.tokenizer(info)
        tokens = self._generate(info, encode_prompt(tokenizer, prompt, raw), max_new_tokens)
        yield from text_pieces(tokenizer, info.eos_token_ids, tokens)

    def generate(self, prompt: str, max_new_tokens: int = 16, model: str | None = None, raw: bool = False) -> str:
        """The whole generated text (see :meth:`stream`)."""
        return "".join(self.stream(prompt, max_new_tokens, model, raw))
