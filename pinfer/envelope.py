"""Sealed envelopes: byte payloads (and tensor shares) encrypted to one recipient's X25519 key.

Why: the client's input shares and the parties' output shares travel through the orchestrator, which the
threat model treats as untrusted for confidentiality. Each share is sealed to the one node that may read
it, so the orchestrator relays bytes it cannot open or undetectably alter.

Construction (HPKE base mode in spirit, kept small and fixed so it can be audited and re-implemented):

* the sender draws a fresh ephemeral X25519 key per envelope and computes ``dh = X25519(eph, recipient)``;
* ``key || nonce = HKDF-SHA256(ikm=dh, salt=eph_pub || recipient_pub, info=LABEL || context, L=44)``;
* ``ciphertext = ChaCha20-Poly1305(key).encrypt(nonce, plaintext, aad=header || context)``.

The ephemeral key makes every envelope's key unique, so a derived nonce is safe. ``context`` binds the
envelope to its use (session id, party index, purpose): an envelope replayed into another session, sent
to another party or reused for another purpose fails authentication. The sender is anonymous (as in HPKE
base mode); who may send is decided by the authenticated channel the envelope arrives on.

Wire format, version 1 (all integers big-endian)::

    offset size  field
    0      4     magic b"PENV"
    4      1     version = 1
    5      1     suite   = 1 (X25519, HKDF-SHA256, ChaCha20-Poly1305)
    6      2     reserved, must be 0
    8      32    ephemeral X25519 public key
    40     8     ciphertext length n (plaintext length + 16-byte tag)
    48     n     ciphertext || tag

The parser checks the header and that the envelope is exactly ``48 + n`` bytes before any cryptography
runs, so malformed, truncated and oversized input each fail fast with their own exception, none of which
carries key or plaintext bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pinfer.tensor_codes import DTYPE_CODES as _DTYPE_CODES
from pinfer.tensor_codes import DTYPES as _DTYPES

MAGIC = b"PENV"
VERSION = 1
SUITE_X25519_HKDF_SHA256_CHACHA20POLY1305 = 1
HEADER = struct.Struct(">4sBBH32sQ")
HEADER_SIZE = HEADER.size  # 48
TAG_SIZE = 16
PUBLIC_KEY_SIZE = 32
# ChaCha20Poly1305 in `cryptography` takes at most 2**31 - 1 bytes per call; a share larger than this
# must be split by the caller (weights are sealed per tensor, far below it).
MAX_PAYLOAD = 2**31 - 1 - TAG_SIZE
DEFAULT_MAX_PAYLOAD = 1 << 30
_LABEL = b"pinfer envelope v1"

# Tensor payload (inside the ciphertext): b"PTEN", dtype code, ndim, ndim x u64 dims, raw little-endian data.
TENSOR_MAGIC = b"PTEN"
MAX_TENSOR_DIMS = 8
_TENSOR_HEAD = struct.Struct(">4sBB")

MAX_MESSAGE_BYTES = 256 << 20
"""Largest gRPC message any pinfer link accepts (client, orchestrator, nodes). A prompt travels as
one-hot share rows, 8 bytes per vocabulary entry per token: 256 MiB holds about 680 SmolLM2 prompt
tokens; a larger request is refused with RESOURCE_EXHAUSTED before any work starts."""


class EnvelopeError(Exception):
    """Base class: an envelope could not be sealed or opened. Messages never contain secret bytes."""


class MalformedEnvelopeError(EnvelopeError):
    """The bytes are not a well-formed envelope (magic, version, suite, reserved field, length, payload)."""


class TruncatedEnvelopeError(EnvelopeError):
    """The envelope is shorter than its header says."""


class OversizedEnvelopeError(EnvelopeError):
    """The envelope or payload exceeds the size the caller accepts."""


class EnvelopeAuthError(EnvelopeError):
    """Authentication failed: wrong recipient key, different context, or tampered bytes.

    The AEAD cannot tell these apart, and telling an attacker which one it was would only help them.
    """


@dataclass(frozen=True)
class EnvelopeContext:
    """What an envelope is for; bound as associated data so it cannot be replayed elsewhere.

    ``session_id`` names the generation session, ``party`` the party index the share belongs to, and
    ``purpose`` the kind of payload (for example ``"input-share"``, ``"token-share"``, ``"weights/<name>"``).
    """

    session_id: str
    party: int
    purpose: str

    def encode(self) -> bytes:
        """Unambiguous length-prefixed encoding (no two contexts encode alike)."""
        session = self.session_id.encode()
        purpose = self.purpose.encode()
        if len(session) > 0xFFFF or len(purpose) > 0xFFFF:
            raise ValueError("session id and purpose must each encode to at most 65535 bytes")
        if not 0 <= self.party <= 0xFFFFFFFF:
            raise ValueError("party index out of range")
        return struct.pack(">H", len(session)) + session + struct.pack(">I", self.party) + struct.pack(">H", len(purpose)) + purpose


def public_key_bytes(key: X25519PublicKey) -> bytes:
    """The raw 32-byte form of ``key`` (what manifests and protocol messages carry)."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(raw: bytes) -> X25519PublicKey:
    """Parse a raw 32-byte X25519 public key; raises :class:`MalformedEnvelopeError` otherwise."""
    if len(raw) != PUBLIC_KEY_SIZE:
        raise MalformedEnvelopeError(f"an X25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
    return X25519PublicKey.from_public_bytes(bytes(raw))


def _derive(shared: bytes, eph_pub: bytes, recipient_pub: bytes, context: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=44, salt=eph_pub + recipient_pub, info=_LABEL + context).derive(shared)
    return okm[:32], okm[32:]


def _check_limit(max_payload: int) -> None:
    if not 0 <= max_payload <= MAX_PAYLOAD:
        raise ValueError(f"max_payload must be in [0, {MAX_PAYLOAD}]")


def seal(
    plaintext: bytes | bytearray | memoryview,
    recipient: X25519PublicKey,
    context: EnvelopeContext,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> bytes:
    """Encrypt ``plaintext`` so only the holder of ``recipient``'s private key can open it under ``context``."""
    _check_limit(max_payload)
    size = memoryview(plaintext).nbytes
    if size > max_payload:
        raise OversizedEnvelopeError(f"payload of {size} bytes exceeds the limit of {max_payload}")
    ephemeral = X25519PrivateKey.generate()
    eph_pub = public_key_bytes(ephemeral.public_key())
    recipient_pub = public_key_bytes(recipient)
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError:
        raise EnvelopeError("recipient public key is not usable (low-order point)") from None
    encoded = context.encode()
    key, nonce = _derive(shared, eph_pub, recipient_pub, encoded)
    header = HEADER.pack(MAGIC, VERSION, SUITE_X25519_HKDF_SHA256_CHACHA20POLY1305, 0, eph_pub, size + TAG_SIZE)
    return header + ChaCha20Poly1305(key).encrypt(nonce, bytes(plaintext), header + encoded)


def parse_header(envelope: bytes | bytearray | memoryview, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[bytes, int]:
    """Validate an envelope's framing without keys; return (ephemeral public key, ciphertext length).

    Relays (the orchestrator) use this to reject garbage early and to enforce size limits on bytes they
    cannot decrypt.
    """
    _check_limit(max_payload)
    view = memoryview(envelope)
    if view.nbytes < HEADER_SIZE:
        if view.nbytes >= 4 and bytes(view[:4]) != MAGIC:
            raise MalformedEnvelopeError("not a pinfer envelope (bad magic)")
        raise TruncatedEnvelopeError(f"envelope of {view.nbytes} bytes is shorter than its {HEADER_SIZE}-byte header")
    magic, version, suite, reserved, eph_pub, length = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise MalformedEnvelopeError("not a pinfer envelope (bad magic)")
    if version != VERSION:
        raise MalformedEnvelopeError(f"unsupported envelope version {version}")
    if suite != SUITE_X25519_HKDF_SHA256_CHACHA20POLY1305:
        raise MalformedEnvelopeError(f"unsupported cipher suite {suite}")
    if reserved != 0:
        raise MalformedEnvelopeError("reserved header field is not zero")
    if length < TAG_SIZE:
        raise MalformedEnvelopeError("ciphertext length is shorter than the authentication tag")
    if length - TAG_SIZE > max_payload:
        raise OversizedEnvelopeError(f"envelope declares {length - TAG_SIZE} payload bytes, limit is {max_payload}")
    actual = view.nbytes - HEADER_SIZE
    if actual < length:
        raise TruncatedEnvelopeError(f"envelope body has {actual} of its {length} bytes")
    if actual > length:
        raise MalformedEnvelopeError(f"{actual - length} trailing bytes after the envelope")
    return eph_pub, length


def open_envelope(
    envelope: bytes | bytearray | memoryview,
    private_key: X25519PrivateKey,
    context: EnvelopeContext,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> bytes:
    """Decrypt an envelope sealed to ``private_key``'s public half under the same ``context``."""
    view = memoryview(envelope)
    eph_pub, _ = parse_header(view, max_payload=max_payload)
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError:
        # a low-order ephemeral point: only a forged envelope has one
        raise EnvelopeAuthError("envelope failed authentication") from None
    encoded = context.encode()
    key, nonce = _derive(shared, eph_pub, public_key_bytes(private_key.public_key()), encoded)
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, bytes(view[HEADER_SIZE:]), bytes(view[:HEADER_SIZE]) + encoded)
    except InvalidTag:
        raise EnvelopeAuthError("envelope failed authentication (wrong key, wrong context or tampered)") from None


def encode_tensor(tensor: torch.Tensor) -> bytes:
    """Serialize a CPU tensor as header (dtype, shape) plus raw little-endian data; never pickle."""
    if tensor.dtype not in _DTYPE_CODES:
        raise ValueError(f"unsupported tensor dtype {tensor.dtype}")
    if tensor.dim() > MAX_TENSOR_DIMS:
        raise ValueError(f"tensors of more than {MAX_TENSOR_DIMS} dimensions are not supported")
    code = _DTYPE_CODES[tensor.dtype]
    data = tensor.detach().cpu().contiguous().numpy().astype(_DTYPES[code][1], copy=False)
    head = _TENSOR_HEAD.pack(TENSOR_MAGIC, code, tensor.dim()) + struct.pack(f">{tensor.dim()}Q", *tensor.shape)
    return head + data.tobytes()


def decode_tensor(
    payload: bytes | bytearray | memoryview,
    *,
    expected_dtype: torch.dtype | None = torch.int64,
    expected_shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Parse :func:`encode_tensor` output, checking every length before allocating anything."""
    view = memoryview(payload)
    if view.nbytes < _TENSOR_HEAD.size:
        raise MalformedEnvelopeError("tensor payload is shorter than its header")
    magic, code, ndim = _TENSOR_HEAD.unpack_from(view)
    if magic != TENSOR_MAGIC:
        raise MalformedEnvelopeError("payload is not a tensor")
    if code not in _DTYPES:
        raise MalformedEnvelopeError(f"unknown tensor dtype code {code}")
    if ndim > MAX_TENSOR_DIMS:
        raise MalformedEnvelopeError(f"tensor has {ndim} dimensions, at most {MAX_TENSOR_DIMS} allowed")
    offset = _TENSOR_HEAD.size + 8 * ndim
    if view.nbytes < offset:
        raise MalformedEnvelopeError("tensor shape is truncated")
    shape = struct.unpack_from(f">{ndim}Q", view, _TENSOR_HEAD.size)
    torch_dtype, np_dtype = _DTYPES[code]
    count = 1
    for dim in shape:
        count *= dim
    if view.nbytes - offset != count * np_dtype.itemsize:
        raise MalformedEnvelopeError("tensor data length does not match its shape")
    if expected_dtype is not None and torch_dtype != expected_dtype:
        raise MalformedEnvelopeError(f"tensor has dtype {torch_dtype}, expected {expected_dtype}")
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise MalformedEnvelopeError(f"tensor has shape {tuple(shape)}, expected {tuple(expected_shape)}")
    array = np.frombuffer(view[offset:], dtype=np_dtype).astype(np_dtype.newbyteorder("="), copy=True)
    return torch.from_numpy(array).reshape(shape)


def seal_tensor(
    tensor: torch.Tensor,
    recipient: X25519PublicKey,
    context: EnvelopeContext,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> bytes:
    """Seal a tensor share (typically int64 over Z_2^64) with its dtype and shape, no pickle."""
    return seal(encode_tensor(tensor), recipient, context, max_payload=max_payload)


def open_tensor(
    envelope: bytes | bytearray | memoryview,
    private_key: X25519PrivateKey,
    context: EnvelopeContext,
    *,
    expected_dtype: torch.dtype | None = torch.int64,
    expected_shape: tuple[int, ...] | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> torch.Tensor:
    """Open a :func:`seal_tensor` envelope; the tensor header is only trusted after authentication."""
    payload = open_envelope(envelope, private_key, context, max_payload=max_payload)
    return decode_tensor(payload, expected_dtype=expected_dtype, expected_shape=expected_shape)
