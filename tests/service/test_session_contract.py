"""The session contract on its own: sealed inputs, reply keys, signed statements, replay memory."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinfer import keys
from pinfer.keys import envelope, session, trust
from pinfer.parties.replay import ReplayMemoryFull, ServedRequests

PARTY = envelope.PrivateKey.generate()
PARAMS = session.SessionParameters("ab" * 16, "tiny-llama", 2, 1, 5, 3)
NOW = 1_800_000_000


def _sealed(parameters: session.SessionParameters = PARAMS, issued_at: int = NOW, share: bytes = b"s" * 32) -> bytes:
    return session.seal_input(parameters, issued_at, bytes(range(32)), share, PARTY.public_key())


def _open(sealed: bytes, expected: session.SessionParameters = PARAMS, now: float = NOW,
          not_before: float = NOW - 100) -> session.OpenedInput:
    return session.open_input(sealed, PARTY, expected, now=now, not_before=not_before, max_share_bytes=64)


def test_a_sealed_input_opens_with_its_parameters_share_and_secret() -> None:
    opened = _open(_sealed())
    assert opened.parameters == PARAMS and opened.share == b"s" * 32 and opened.reply_secret == bytes(range(32))
    assert "reply_secret=" not in repr(opened) and "share=" not in repr(opened)
    with_kv = session.SessionParameters(**{**vars(PARAMS), "kv_policy": "mpcache", "kv_budget": 0.1})
    assert _open(_sealed(with_kv), with_kv).parameters == with_kv


@pytest.mark.parametrize("field", ["request_id", "model", "parties", "party", "prompt_tokens", "max_new_tokens",
                                   "kv_policy", "kv_budget"])
def test_every_disagreeing_parameter_is_refused_by_name(field: str) -> None:
    other = {"request_id": "cd" * 16, "model": "gpt2-base", "parties": 3, "party": 0, "prompt_tokens": 6,
             "max_new_tokens": 4, "kv_policy": "mpcache", "kv_budget": 0.1}[field]
    expected = session.SessionParameters(**{**vars(PARAMS), field: other})
    # request id and party are in the HPKE context: such an input does not even open
    error = envelope.EnvelopeAuthError if field in ("request_id", "party") else session.SessionContractError
    with pytest.raises(error) as info:
        _open(_sealed(), expected)
    if error is session.SessionContractError:
        assert field in str(info.value)


def test_replay_window_and_node_start() -> None:
    with pytest.raises(session.SessionContractError, match="issued more than"):
        _open(_sealed(issued_at=NOW - session.REPLAY_WINDOW_S - 1))
    with pytest.raises(session.SessionContractError, match="issued more than"):
        _open(_sealed(issued_at=NOW + session.REPLAY_WINDOW_S + 1))
    with pytest.raises(session.SessionContractError, match="before this node started"):
        _open(_sealed(issued_at=NOW - 10), not_before=NOW - 5)


def test_a_share_beyond_the_bound_is_refused_before_decryption() -> None:
    with pytest.raises(envelope.OversizedEnvelopeError):
        _open(_sealed(share=bytes(64 + session.SEALED_INPUT_OVERHEAD)))


@settings(max_examples=30, deadline=None)
@given(id_share=st.integers(-(2**63), 2**63 - 1), step=st.integers(0, 2**20))
def test_reply_key_round_trip_and_binding(id_share: int, step: int) -> None:
    secret = os.urandom(32)
    share = session.TokenShare(id_share, 0.25, 10, 3, 7)
    sealed = session.ReplyKey(secret, PARAMS.request_id, 1).seal(step, share)
    assert session.ReplyKey(secret, PARAMS.request_id, 1).open(step, sealed) == share
    for other in (session.ReplyKey(secret, PARAMS.request_id, 0), session.ReplyKey(secret, "cd" * 16, 1),
                  session.ReplyKey(os.urandom(32), PARAMS.request_id, 1)):
        with pytest.raises(session.OutputIntegrityError):
            other.open(step, sealed)
    with pytest.raises(session.OutputIntegrityError):
        session.ReplyKey(secret, PARAMS.request_id, 1).open(step + 1, sealed)


def test_statements_verify_only_with_their_ca_and_kind(key_dir, foreign_key_dir) -> None:
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(keys.KeyDir(key_dir).ca_cert.read_bytes())
    statement = keys.load_deployment_statement(key_dir)
    deployment = trust.verify_deployment(ca, statement)
    assert deployment.parties == 3 and all(k.kem is envelope.DEFAULT_KEM for k in deployment.party_keys)
    foreign = x509.load_pem_x509_certificate(keys.KeyDir(foreign_key_dir).ca_cert.read_bytes())
    for bad_ca, blob, kind in ((foreign, statement, trust.DEPLOYMENT), (ca, statement, trust.MODEL_CARD),
                               (ca, b"{not json", trust.DEPLOYMENT), (ca, statement[:-5], trust.DEPLOYMENT)):
        with pytest.raises(trust.UntrustedStatementError):
            trust.verify_statement(bad_ca, kind, blob)


def test_replay_memory_is_bounded_in_time_and_size() -> None:
    now = [0.0]
    served = ServedRequests(capacity=2, retention_s=10, clock=lambda: now[0])
    assert served.admit("a") and not served.admit("a")
    assert served.admit("b")
    with pytest.raises(ReplayMemoryFull):
        served.admit("c")
    now[0] = 11.0  # past the retention, an id can no longer pass the issue-time check: forgotten
    assert served.admit("c") and len(served) == 1


def test_session_ids_are_scoped_to_the_caller() -> None:
    alice, bob = session.token_digest("alice-token"), session.token_digest("bob-token")
    request = "ab" * 16
    ids = {session.session_id(alice, request), session.session_id(bob, request),
           session.session_id(alice, "cd" * 16)}
    assert len(ids) == 3 and all(session.REQUEST_ID.match(i) for i in ids)
    assert session.session_id(alice, request) == session.session_id(session.token_digest("alice-token"), request)
    # An envelope sealed under one caller's session id does not open under another's.
    sealed = _sealed(session.SessionParameters(session.session_id(alice, request), "tiny-llama", 2, 1, 5, 3))
    with pytest.raises(envelope.EnvelopeAuthError):
        _open(sealed, session.SessionParameters(session.session_id(bob, request), "tiny-llama", 2, 1, 5, 3))
