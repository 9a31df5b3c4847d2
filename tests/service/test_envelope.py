"""Envelopes: the documented HPKE framing against the library directly, round trips for both KEMs,
and a typed error for every malformed, truncated, oversized, wrong-key, wrong-context or tampered
input. (The HPKE primitive itself is pinned to RFC 9180 by tests/service/test_hpke_vectors.py.)"""

from __future__ import annotations

import struct

import pytest
import torch
from cryptography.hazmat.primitives import hpke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinfer.keys import envelope as env

KEYS = {
    env.Kem.X25519: (env.PrivateKey.decode(bytes([1]) + bytes(range(32))),
                     env.PrivateKey.decode(bytes([1]) + bytes(range(100, 132)))),
    env.Kem.MLKEM768_X25519: (env.PrivateKey.decode(bytes([2]) + bytes(range(96))),
                              env.PrivateKey.decode(bytes([2]) + bytes(range(100, 196)))),
}
RECIPIENT, OTHER = KEYS[env.Kem.MLKEM768_X25519]
CTX = env.EnvelopeContext("session-0001", 1, "input-share")
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
both_kems = pytest.mark.parametrize("kem", list(env.Kem))


@both_kems
def test_the_body_is_plain_rfc9180_hpke_over_the_documented_info(kem: env.Kem) -> None:
    recipient = KEYS[kem][0]
    sealed = env.seal(b"pinfer test vector", recipient.public_key(), CTX)
    header = sealed[:16]
    assert header[:4] == b"PENV" and header[4] == 2 and header[5] == kem and header[6:8] == bytes(2)
    assert struct.unpack(">Q", header[8:16])[0] == len(sealed) - 16 == kem.encapsulated_size + 18 + 16
    context = b"\x00\x0csession-0001" + b"\x00\x00\x00\x01" + b"\x00\x0binput-share"
    assert CTX.encode() == context
    suite = hpke.Suite(kem.hpke, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    plain = suite.decrypt(sealed[16:], recipient._hpke_key(), info=b"pinfer envelope v2" + header + context)
    assert plain == b"pinfer test vector"
    assert env.sealed_size(18, kem) == len(sealed)


@both_kems
def test_keys_encode_and_decode(kem: env.Kem) -> None:
    private = env.PrivateKey.generate(kem)
    assert env.PrivateKey.decode(private.encode()) == private
    assert env.PublicKey.decode(private.public_key().encode()) == private.public_key()
    assert private.encode().hex() not in repr(private)
    for bad in (b"", bytes([kem]) + bytes(5), bytes([9]) + bytes(32)):
        with pytest.raises(env.MalformedEnvelopeError):
            env.PublicKey.decode(bad)
        with pytest.raises(env.MalformedEnvelopeError):
            env.PrivateKey.decode(bad)


def test_low_order_x25519_public_key_is_refused() -> None:
    with pytest.raises(env.MalformedEnvelopeError):
        env.PublicKey(env.Kem.X25519, bytes(32))
    one = bytes([1]) + bytes(31)  # the point of order 4 (u = 1): the library refuses the DH result
    with pytest.raises(env.EnvelopeError):
        env.seal(b"x", env.PublicKey(env.Kem.X25519, one), CTX)


def test_fresh_encapsulation_per_envelope() -> None:
    a = env.seal(b"same", RECIPIENT.public_key(), CTX)
    b = env.seal(b"same", RECIPIENT.public_key(), CTX)
    assert a[16:48] != b[16:48] and a != b


@FAST
@given(payload=st.binary(max_size=4096), session=st.text(max_size=40), party=st.integers(0, 7), purpose=st.text(max_size=20),
       kem=st.sampled_from(list(env.Kem)))
def test_round_trip(payload: bytes, session: str, party: int, purpose: str, kem: env.Kem) -> None:
    recipient = KEYS[kem][0]
    ctx = env.EnvelopeContext(session, party, purpose)
    sealed = env.seal(payload, recipient.public_key(), ctx)
    assert len(sealed) == env.sealed_size(len(payload), kem)
    assert env.open_envelope(sealed, recipient, ctx) == payload
    assert env.open_envelope(memoryview(bytearray(sealed)), recipient, ctx) == payload


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
    if index < 8 and index != 5:  # magic, version, reserved
        expected: type[env.EnvelopeError] | tuple[type[env.EnvelopeError], ...] = env.MalformedEnvelopeError
    elif index == 5:  # KEM code: unknown, or the other KEM (whose key this is not)
        expected = (env.MalformedEnvelopeError, env.EnvelopeAuthError)
    elif index < 16:  # length field: now longer (truncated), shorter (trailing bytes) or huge (oversized)
        expected = (env.TruncatedEnvelopeError, env.MalformedEnvelopeError, env.OversizedEnvelopeError)
    else:  # encapsulated key or ciphertext
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
    private = OTHER.encode()[1:]
    assert secret.hex() not in text and secret.decode() not in text and private.hex() not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_low_order_encapsulated_key_is_an_auth_error() -> None:
    recipient = KEYS[env.Kem.X25519][0]
    sealed = bytearray(env.seal(b"x", recipient.public_key(), CTX))
    sealed[16:48] = bytes(32)  # the all-zero point has order 1
    with pytest.raises(env.EnvelopeAuthError):
        env.open_envelope(bytes(sealed), recipient, CTX)


def test_a_key_of_the_other_kem_does_not_open() -> None:
    sealed = env.seal(b"x", RECIPIENT.public_key(), CTX)
    with pytest.raises(env.EnvelopeAuthError):
        env.open_envelope(sealed, KEYS[env.Kem.X25519][0], CTX)


def test_size_limits() -> None:
    with pytest.raises(env.OversizedEnvelopeError):
        env.seal(bytes(101), RECIPIENT.public_key(), CTX, max_payload=100)
    sealed = env.seal(bytes(101), RECIPIENT.public_key(), CTX)
    with pytest.raises(env.OversizedEnvelopeError):
        env.open_envelope(sealed, RECIPIENT, CTX, max_payload=100)
    header = bytearray(sealed[: env.HEADER_SIZE])
    header[8:16] = struct.pack(">Q", 2**63)  # a relay must not allocate what the header claims
    with pytest.raises(env.OversizedEnvelopeError):
        env.parse_header(bytes(header))


@pytest.mark.parametrize(
    ("header_patch", "error"),
    [
        ({0: 0x51}, env.MalformedEnvelopeError),  # magic
        ({4: 1}, env.MalformedEnvelopeError),  # version
        ({5: 9}, env.MalformedEnvelopeError),  # KEM
        ({7: 1}, env.MalformedEnvelopeError),  # reserved
    ],
)
def test_header_fields_are_checked(header_patch: dict[int, int], error: type[env.EnvelopeError]) -> None:
    sealed = bytearray(env.seal(b"x", RECIPIENT.public_key(), CTX))
    for index, value in header_patch.items():
        sealed[index] = value
    with pytest.raises(error):
        env.parse_header(bytes(sealed))


@both_kems
def test_body_shorter_than_encapsulation_and_tag_is_malformed(kem: env.Kem) -> None:
    short = kem.encapsulated_size + 8
    sealed = env.HEADER.pack(env.MAGIC, env.VERSION, kem, 0, short) + bytes(short)
    with pytest.raises(env.MalformedEnvelopeError):
        env.open_envelope(sealed, KEYS[kem][0], CTX)


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
