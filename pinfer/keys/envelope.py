"""Sealed envelopes: byte payloads (and tensor shares) encrypted to one recipient with RFC 9180 HPKE.

Why: the client's input shares and the parties' weight shares travel through the orchestrator and
across disks that the threat model treats as untrusted, so each is sealed to the one node that may
read it. The construction is HPKE base mode (single shot) from ``cryptography``, not a home-made one;
``tests/service/test_hpke_vectors.py`` pins that library to the RFC's known answers.

Suites (KDF HKDF-SHA256 and AEAD ChaCha20-Poly1305 in both):

* ``Kem.MLKEM768_X25519`` (default): the hybrid post-quantum KEM, so a prompt recorded today stays
  private if X25519 falls to a future quantum computer while ML-KEM-768 holds (and vice versa).
  Costs 1,088 more bytes per envelope and, measured by ``pinfer bench envelope`` on this project's
  2-core host, 0.03 ms more to seal a seed and 1.04x the time to seal a 128-token SmolLM2 input.
* ``Kem.X25519``: DHKEM(X25519, HKDF-SHA256), for deployments that want the smaller keys.

``context`` binds the envelope to its use (session id, party index, purpose) through HPKE's ``info``:
an envelope replayed into another session, sent to another party or used for another purpose does
not open. The sender is anonymous (base mode); who may send is settled elsewhere (the client's
sealed request, the parties' reply keys, :mod:`pinfer.keys.session`).

Wire format, version 2 (integers big-endian)::

    offset size  field
    0      4     magic b"PENV"
    4      1     version = 2
    5      1     KEM code (1 X25519, 2 MLKEM768-X25519)
    6      2     reserved, must be 0
    8      8     length n of the HPKE ciphertext (encapsulated key || AEAD ciphertext || 16-byte tag)
    16     n     HPKE ciphertext

The 16 header bytes are part of HPKE's ``info`` too, so a relabelled header does not open. The parser
checks the header and the exact length before any cryptography runs: malformed, truncated and
oversized input each fail fast with their own exception, none of which carries key or plaintext bytes.

Recipient keys travel as ``KEM code || raw key`` (:meth:`PublicKey.encode`); an X25519 public key is 32
raw bytes after the code, a hybrid one the ML-KEM-768 encapsulation key (1,184 bytes) then X25519's 32.
A private key file holds the code, then the 32-byte X25519 key or the 64-byte ML-KEM seed and the
X25519 key.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

import numpy as np
import torch
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from pinfer.tensor_codes import DTYPE_CODES as _DTYPE_CODES
from pinfer.tensor_codes import DTYPES as _DTYPES

MAGIC = b"PENV"
VERSION = 2
HEADER = struct.Struct(">4sBBHQ")
HEADER_SIZE = HEADER.size  # 16
TAG_SIZE = 16
X25519_KEY_SIZE = 32
MLKEM768_PUBLIC_SIZE = 1184
MLKEM768_SEED_SIZE = 64
# cryptography's AEADs take at most 2**31 - 1 bytes per call; a share larger than this must be split
# by the caller (weights are sealed per tensor, far below it).
MAX_PAYLOAD = 2**31 - 1 - TAG_SIZE
DEFAULT_MAX_PAYLOAD = 1 << 30
_LABEL = b"pinfer envelope v2"

# Tensor payload (inside the ciphertext): b"PTEN", dtype code, ndim, ndim x u64 dims, raw little-endian data.
TENSOR_MAGIC = b"PTEN"
MAX_TENSOR_DIMS = 8
_TENSOR_HEAD = struct.Struct(">4sBB")
TENSOR_OVERHEAD_2D = _TENSOR_HEAD.size + 8 * 2
"""Bytes a 2-D tensor payload adds to its data (relays bound envelope sizes with it)."""

MAX_MESSAGE_BYTES = 256 << 20
"""Largest gRPC message any pinfer link accepts (client, orchestrator, nodes). With two parties a
prompt travels as DPF keys, 288 bytes per SmolLM2 token and party, so the model's context bounds a
prompt long before this does; with three, party 0's one-hot share rows take 8 bytes per vocabulary
entry per token and 256 MiB holds about 680 SmolLM2 prompt tokens. A larger request is refused with
RESOURCE_EXHAUSTED before any work starts."""


class EnvelopeError(Exception):
    """Base class: an envelope could not be sealed or opened. Messages never contain secret bytes."""


class MalformedEnvelopeError(EnvelopeError):
    """The bytes are not a well-formed envelope (magic, version, KEM, reserved field, length, payload)."""


class TruncatedEnvelopeError(EnvelopeError):
    """The envelope is shorter than its header says."""


class OversizedEnvelopeError(EnvelopeError):
    """The envelope or payload exceeds the size the caller accepts."""


class EnvelopeAuthError(EnvelopeError):
    """Authentication failed: wrong recipient key, different context, or tampered bytes.

    The AEAD cannot tell these apart, and telling an attacker which one it was would only help them.
    """


class Kem(enum.IntEnum):
    """The HPKE KEM of an envelope; its value is the code in headers and key encodings."""

    X25519 = 1
    MLKEM768_X25519 = 2

    @property
    def hpke(self) -> hpke.KEM:
        return {Kem.X25519: hpke.KEM.X25519, Kem.MLKEM768_X25519: hpke.KEM.MLKEM768_X25519}[self]

    @property
    def encapsulated_size(self) -> int:
        return self.hpke.enc_length()

    @property
    def public_key_size(self) -> int:
        return X25519_KEY_SIZE + (MLKEM768_PUBLIC_SIZE if self is Kem.MLKEM768_X25519 else 0)

    @property
    def private_key_size(self) -> int:
        return X25519_KEY_SIZE + (MLKEM768_SEED_SIZE if self is Kem.MLKEM768_X25519 else 0)

    @property
    def label(self) -> str:
        return {Kem.X25519: "X25519", Kem.MLKEM768_X25519: "MLKEM768-X25519"}[self]

    @classmethod
    def from_label(cls, label: str) -> Kem:
        for kem in cls:
            if kem.label == label:
                return kem
        raise ValueError(f"unknown KEM {label!r}; one of {', '.join(k.label for k in cls)}")


DEFAULT_KEM = Kem.MLKEM768_X25519


def _kem_from_code(code: int) -> Kem:
    try:
        return Kem(code)
    except ValueError:
        raise MalformedEnvelopeError(f"unsupported KEM code {code}") from None


def _suite(kem: Kem) -> hpke.Suite:
    return hpke.Suite(kem.hpke, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


@dataclass(frozen=True)
class PublicKey:
    """A recipient's public key: what key statements carry and envelopes are sealed to."""

    kem: Kem
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != self.kem.public_key_size:
            raise MalformedEnvelopeError(
                f"a {self.kem.label} public key is {self.kem.public_key_size} bytes, got {len(self.raw)}")
        if self.kem is Kem.X25519 and self.raw == bytes(X25519_KEY_SIZE):
            raise MalformedEnvelopeError("an all-zero X25519 public key is a low-order point")

    def encode(self) -> bytes:
        return bytes([self.kem]) + self.raw

    @classmethod
    def decode(cls, data: bytes) -> PublicKey:
        """Parse :meth:`encode`'s bytes; raises :class:`MalformedEnvelopeError` on anything else."""
        if len(data) < 1:
            raise MalformedEnvelopeError("an encoded public key is at least one byte")
        return cls(_kem_from_code(data[0]), bytes(data[1:]))

    def _hpke_key(self) -> X25519PublicKey | hpke.MLKEM768X25519PublicKey:
        try:
            if self.kem is Kem.X25519:
                return X25519PublicKey.from_public_bytes(self.raw)
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(self.raw[:MLKEM768_PUBLIC_SIZE]),
                X25519PublicKey.from_public_bytes(self.raw[MLKEM768_PUBLIC_SIZE:]))
        except ValueError:
            raise MalformedEnvelopeError(f"not a valid {self.kem.label} public key") from None


@dataclass(frozen=True)
class PrivateKey:
    """A recipient's private key. ``repr`` never shows the key bytes."""

    kem: Kem
    _secret: bytes = field(repr=False)

    @classmethod
    def generate(cls, kem: Kem = DEFAULT_KEM) -> PrivateKey:
        import os

        key = cls(kem, os.urandom(kem.private_key_size))
        key._hpke_key()  # every 32-byte string is an X25519 scalar and every 64-byte one an ML-KEM seed
        return key

    def encode(self) -> bytes:
        """The key file's bytes (secret: write them 0600 only)."""
        return bytes([self.kem]) + self._secret

    @classmethod
    def decode(cls, data: bytes) -> PrivateKey:
        if len(data) < 1:
            raise MalformedEnvelopeError("an encoded private key is at least one byte")
        kem = _kem_from_code(data[0])
        if len(data) - 1 != kem.private_key_size:
            raise MalformedEnvelopeError(f"a {kem.label} private key is {kem.private_key_size} bytes")
        return cls(kem, bytes(data[1:]))

    def _x25519(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self._secret[-X25519_KEY_SIZE:])

    def _hpke_key(self) -> X25519PrivateKey | hpke.MLKEM768X25519PrivateKey:
        if self.kem is Kem.X25519:
            return self._x25519()
        return hpke.MLKEM768X25519PrivateKey(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(self._secret[:MLKEM768_SEED_SIZE]), self._x25519())

    def public_key(self) -> PublicKey:
        from cryptography.hazmat.primitives import serialization

        x_pub = self._x25519().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if self.kem is Kem.X25519:
            return PublicKey(self.kem, x_pub)
        seed = mlkem.MLKEM768PrivateKey.from_seed_bytes(self._secret[:MLKEM768_SEED_SIZE])
        return PublicKey(self.kem, seed.public_key().public_bytes_raw() + x_pub)


@dataclass(frozen=True)
class EnvelopeContext:
    """What an envelope is for; bound into HPKE's ``info`` so it cannot be replayed elsewhere.

    ``session_id`` names the generation session, ``party`` the party index the share belongs to, and
    ``purpose`` the kind of payload (for example ``"input-share"``, ``"weights/<name>"``).
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


def _check_limit(max_payload: int) -> None:
    if not 0 <= max_payload <= MAX_PAYLOAD:
        raise ValueError(f"max_payload must be in [0, {MAX_PAYLOAD}]")


def _info(header: bytes, context: EnvelopeContext) -> bytes:
    return _LABEL + header + context.encode()


def sealed_size(payload_size: int, kem: Kem) -> int:
    """The envelope size of a ``payload_size``-byte plaintext (what relays bound requests with)."""
    return HEADER_SIZE + kem.encapsulated_size + payload_size + TAG_SIZE


def seal(
    plaintext: bytes | bytearray | memoryview,
    recipient: PublicKey,
    context: EnvelopeContext,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> bytes:
    """Encrypt ``plaintext`` so only the holder of ``recipient``'s private key can open it under ``context``."""
    _check_limit(max_payload)
    size = memoryview(plaintext).nbytes
    if size > max_payload:
        raise OversizedEnvelopeError(f"payload of {size} bytes exceeds the limit of {max_payload}")
    kem = recipient.kem
    header = HEADER.pack(MAGIC, VERSION, kem, 0, kem.encapsulated_size + size + TAG_SIZE)
    try:
        body = _suite(kem).encrypt(plaintext, recipient._hpke_key(), info=_info(header, context))
    except ValueError:
        raise EnvelopeError("recipient public key is not usable") from None
    return header + body


def parse_header(envelope: bytes | bytearray | memoryview, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[Kem, int]:
    """Validate an envelope's framing without keys; return (KEM, HPKE ciphertext length).

    Relays (the orchestrator) use this to reject garbage early and to enforce size limits on bytes they
    cannot decrypt.
    """
    _check_limit(max_payload)
    view = memoryview(envelope)
    if view.nbytes < HEADER_SIZE:
        if view.nbytes >= 4 and bytes(view[:4]) != MAGIC:
            raise MalformedEnvelopeError("not a pinfer envelope (bad magic)")
        raise TruncatedEnvelopeError(f"envelope of {view.nbytes} bytes is shorter than its {HEADER_SIZE}-byte header")
    magic, version, code, reserved, length = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise MalformedEnvelopeError("not a pinfer envelope (bad magic)")
    if version != VERSION:
        raise MalformedEnvelopeError(f"unsupported envelope version {version}")
    kem = _kem_from_code(code)
    if reserved != 0:
        raise MalformedEnvelopeError("reserved header field is not zero")
    overhead = kem.encapsulated_size + TAG_SIZE
    if length < overhead:
        raise MalformedEnvelopeError("ciphertext is shorter than the encapsulated key and tag")
    if length - overhead > max_payload:
        raise OversizedEnvelopeError(f"envelope declares {length - overhead} payload bytes, limit is {max_payload}")
    actual = view.nbytes - HEADER_SIZE
    if actual < length:
        raise TruncatedEnvelopeError(f"envelope body has {actual} of its {length} bytes")
    if actual > length:
        raise MalformedEnvelopeError(f"{actual - length} trailing bytes after the envelope")
    return kem, length


def open_envelope(
    envelope: bytes | bytearray | memoryview,
    private_key: PrivateKey,
    context: EnvelopeContext,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> bytes:
    """Decrypt an envelope sealed to ``private_key``'s public half under the same ``context``."""
    view = memoryview(envelope)
    kem, _ = parse_header(view, max_payload=max_payload)
    if kem is not private_key.kem:
        raise EnvelopeAuthError("envelope failed authentication (wrong key, wrong context or tampered)")
    header = bytes(view[:HEADER_SIZE])
    try:
        return _suite(kem).decrypt(view[HEADER_SIZE:], private_key._hpke_key(), info=_info(header, context))
    except Exception:  # InvalidTag, or a malformed encapsulated key: both are an envelope that does not open
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
    recipient: PublicKey,
    context: EnvelopeContext,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> bytes:
    """Seal a tensor share (typically int64 over Z_2^64) with its dtype and shape, no pickle."""
    return seal(encode_tensor(tensor), recipient, context, max_payload=max_payload)


def open_tensor(
    envelope: bytes | bytearray | memoryview,
    private_key: PrivateKey,
    context: EnvelopeContext,
    *,
    expected_dtype: torch.dtype | None = torch.int64,
    expected_shape: tuple[int, ...] | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> torch.Tensor:
    """Open a :func:`seal_tensor` envelope; the tensor header is only trusted after authentication."""
    payload = open_envelope(envelope, private_key, context, max_payload=max_payload)
    return decode_tensor(payload, expected_dtype=expected_dtype, expected_shape=expected_shape)
