"""Envelopes: known-answer vector, round trips, and a typed error for every malformed, truncated,
oversized, wrong-key, wrong-context or tampered input."""

from __future__ import annotations

import struct

import pytest
import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinfer import envelope as env

RECIPIENT = X25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = X25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
CTX = env.EnvelopeContext("session-0001", 1, "input-share")

# Sealed with ephemeral private key bytes(range(32, 64)) to RECIPIENT under CTX, plaintext b"pinfer test vector".
VECTOR = bytes.fromhex(
    "50454e5601010000358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd16625400000000000000224c"
    "259330fb4c941e915943c29e59fb811c0b410cbe495f86de84aa46efbeae8ce341"
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_vector_matches_an_independent_implementation_of_the_documented_format() -> None:
    eph = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    context = b"\x00\x0csession-0001" + b"\x00\x00\x00\x01" + b"\x00\x0binput-share"
    assert CTX.encode() == context
    plaintext = b"pinfer test vector"
    okm = HKDF(hashes.SHA256(), 44, _raw(eph) + _raw(RECIPIENT), b"pinfer envelope v1" + context).derive(
        eph.exchange(RECIPIENT.public_key())
    )
    header = b"PENV\x01\x01\x00\x00" + _raw(eph) + struct.pack(">Q", len(plaintext) + 16)
    rebuilt = header + ChaCha20Poly1305(okm[:32]).encrypt(okm[32:], plaintext, header + context)
    assert rebuilt == VECTOR
    assert env.open_envelope(VECTOR, RECIPIENT, CTX) == plaintext


def test_fresh_ephemeral_key_per_envelope() -> None:
    a = env.seal(b"same", RECIPIENT.public_key(), CTX)
    b = env.seal(b"same", RECIPIENT.public_key(), CTX)
    assert a[8:40] != b[8:40] and a != b


@FAST
@given(payload=st.binary(max_size=4096), session=st.text(max_size=40), party=st.integers(0, 7), purpose=st.text(max_size=20))
def test_round_trip(payload: bytes, session: str, party: int, purpose: str) -> None:
    ctx = env.EnvelopeContext(session, party, purpose)
    sealed = env.seal(payload, RECIPIENT.public_key(), ctx)
    assert len(sealed) == env.HEADER_SIZE + len(payload) + env.TAG_SIZE
    assert env.open_envelope(sealed, RECIPIENT, ctx) == payload
    assert env.open_envelope(memoryview(bytearray(sealed)), RECIPIENT, ctx) == payload


@FAST
@given(payload=st.binary(max_size=256), data=st.data())
def test_every_truncation_is_reported_as_truncated(payload: bytes, data: st.DataObject) -> None:
    sealed = env.seal(payload, RECIPIENT.public_key(), CTX)
    cut = data.draw(st.integers(0, len(sealed) - 1))
    with pytest.raises(env.TruncatedEnvelopeError):
        env.open_envelope(sealed[:cut], RECIPIENT, CTX)


@FAST
@given(payload=st.binary(max_size=256), data=st.data())
def test_every_single_byte_tamper_raises_the_right_error(payload: bytes, data: st.DataObject) -> None:
    sealed = bytearray(env.seal(payload, RECIPIENT.public_key(), CTX))
    index = data.draw(st.integers(0, len(sealed) - 1))
    flip = data.draw(st.integers(1, 255))
    sealed[index] ^= flip
    if index < 8:  # magic, version, suite, reserved
        expected: type[env.EnvelopeError] | tuple[type[env.EnvelopeError], ...] = env.MalformedEnvelopeError
    elif index < 40:  # ephemeral public key
        expected = env.EnvelopeAuthError
    elif index < 48:  # length field: now longer (truncated), shorter (trailing bytes) or huge (oversized)
        expected = (env.TruncatedEnvelopeError, env.MalformedEnvelopeError, env.OversizedEnvelopeError)
    else:
        expected = env.EnvelopeAuthError
    with pytest.raises(expected):
        env.open_envelope(bytes(sealed), RECIPIENT, CTX)


@FAST
@given(payload=st.binary(max_size=64), extra=st.binary(min_size=1, max_size=32))
def test_trailing_bytes_are_malformed(payload: bytes, extra: bytes) -> None:
    sealed = env.seal(payload, RECIPIENT.public_key(), CTX)
    with pytest.raises(env.MalformedEnvelopeError):
        env.open_envelope(sealed + extra, RECIPIENT, CTX)


@pytest.mark.parametrize(
    "other",
    [
        env.EnvelopeContext("session-0002", 1, "input-share"),
        env.EnvelopeContext("session-0001", 0, "input-share"),
        env.EnvelopeContext("session-0001", 1, "token-share"),
    ],
)
def test_context_is_bound(other: env.EnvelopeContext) -> None:
    sealed = env.seal(b"share", RECIPIENT.public_key(), CTX)
    with pytest.raises(env.EnvelopeAuthError):
        env.open_envelope(sealed, RECIPIENT, other)


def test_wrong_key_is_an_auth_error_without_secrets_in_the_message() -> None:
    secret = b"very secret plaintext share"
    sealed = env.seal(secret, RECIPIENT.public_key(), CTX)
    with pytest.raises(env.EnvelopeAuthError) as info:
        env.open_envelope(sealed, OTHER, CTX)
    text = str(info.value) + repr(info.value)
    private = OTHER.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    assert secret.hex() not in text and secret.decode() not in text and private.hex() not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_low_order_ephemeral_point_is_an_auth_error() -> None:
    sealed = bytearray(env.seal(b"x", RECIPIENT.public_key(), CTX))
    sealed[8:40] = bytes(32)  # the all-zero point has order 1
    with pytest.raises(env.EnvelopeAuthError):
        env.open_envelope(bytes(sealed), RECIPIENT, CTX)


def test_size_limits() -> None:
    with pytest.raises(env.OversizedEnvelopeError):
        env.seal(bytes(101), RECIPIENT.public_key(), CTX, max_payload=100)
    sealed = env.seal(bytes(101), RECIPIENT.public_key(), CTX)
    with pytest.raises(env.OversizedEnvelopeError):
        env.open_envelope(sealed, RECIPIENT, CTX, max_payload=100)
    header = bytearray(sealed[: env.HEADER_SIZE])
    header[40:48] = struct.pack(">Q", 2**63)  # a relay must not allocate what the header claims
    with pytest.raises(env.OversizedEnvelopeError):
        env.parse_header(bytes(header))


@pytest.mark.parametrize(
    ("header_patch", "error"),
    [
        ({0: 0x51}, env.MalformedEnvelopeError),  # magic
        ({4: 2}, env.MalformedEnvelopeError),  # version
        ({5: 9}, env.MalformedEnvelopeError),  # suite
        ({7: 1}, env.MalformedEnvelopeError),  # reserved
    ],
)
def test_header_fields_are_checked(header_patch: dict[int, int], error: type[env.EnvelopeError]) -> None:
    sealed = bytearray(VECTOR)
    for index, value in header_patch.items():
        sealed[index] = value
    with pytest.raises(error):
        env.parse_header(bytes(sealed))


def test_tag_shorter_than_16_is_malformed() -> None:
    sealed = bytearray(VECTOR[: env.HEADER_SIZE] + bytes(8))
    sealed[40:48] = struct.pack(">Q", 8)
    with pytest.raises(env.MalformedEnvelopeError):
        env.open_envelope(bytes(sealed), RECIPIENT, CTX)


def test_public_key_parsing() -> None:
    assert env.load_public_key(_raw(RECIPIENT)).public_bytes_raw() == _raw(RECIPIENT)
    with pytest.raises(env.MalformedEnvelopeError):
        env.load_public_key(bytes(31))


@FAST
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_tensor_share_round_trip(shape: list[int], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    share = torch.randint(-(2**63), 2**63 - 1, tuple(shape), dtype=torch.int64, generator=generator)
    sealed = env.seal_tensor(share, RECIPIENT.public_key(), CTX)
    opened = env.open_tensor(sealed, RECIPIENT, CTX, expected_shape=tuple(shape))
    assert opened.dtype == torch.int64 and opened.shape == share.shape and torch.equal(opened, share)


def test_tensor_non_contiguous_and_other_dtypes() -> None:
    share = torch.arange(24, dtype=torch.int64).reshape(4, 6).t()
    assert torch.equal(env.open_tensor(env.seal_tensor(share, RECIPIENT.public_key(), CTX), RECIPIENT, CTX), share)
    floats = torch.randn(3, 2)
    opened = env.open_tensor(env.seal_tensor(floats, RECIPIENT.public_key(), CTX), RECIPIENT, CTX, expected_dtype=None)
    assert opened.dtype == torch.float32 and torch.equal(opened, floats)


def test_tensor_expectations_and_malformed_payloads() -> None:
    share = torch.zeros(2, 3, dtype=torch.int64)
    sealed = env.seal_tensor(share, RECIPIENT.public_key(), CTX)
    with pytest.raises(env.MalformedEnvelopeError):
        env.open_tensor(sealed, RECIPIENT, CTX, expected_shape=(3, 2))
    with pytest.raises(env.MalformedEnvelopeError):
        env.open_tensor(sealed, RECIPIENT, CTX, expected_dtype=torch.int32)
    payload = env.encode_tensor(share)
    for bad in (payload[:5], b"XXXX" + payload[4:], payload[:-1], payload + b"\x00", payload[:4] + b"\x63" + payload[5:],
                payload[:5] + b"\x09" + payload[6:]):
        with pytest.raises(env.MalformedEnvelopeError):
            env.decode_tensor(bad)
    # an authentic envelope whose payload is not a tensor is still refused, typed
    with pytest.raises(env.MalformedEnvelopeError):
        env.open_tensor(env.seal(b"not a tensor", RECIPIENT.public_key(), CTX), RECIPIENT, CTX)
