"""What the deployment CA vouches for, in a form the orchestrator relays but cannot forge.

Why: a client must never seal a prompt to a key the orchestrator chose. The deployment CA, whose
certificate the client holds (pinned) before it ever talks to the service, signs two statements:

* the **deployment statement** (``pinfer keys init``): how many parties there are and each party's
  envelope public key, so the client seals share *i* only to party *i* and refuses fewer than two;
* each **model card** (``pinfer provision``): tokenizer, vocabulary, end-of-sequence ids and the
  fingerprints of the party keys the weights were sealed to.

The orchestrator serves both in ``GetModel``; the client checks the signatures against its pinned CA
certificate and takes every parameter that matters from the signed bodies, nothing from the wire.

A statement is JSON ``{"kind", "body", "signature"}`` (body and signature base64). The signature is
ECDSA P-256 / SHA-256 by the CA key over ``b"pinfer statement v1\\n" || kind || b"\\n" || body``, so
a statement of one kind never verifies as another.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from pinfer.keys import envelope

DEPLOYMENT = "deployment"
MODEL_CARD = "model-card"
_DOMAIN = b"pinfer statement v1\n"
_MAX_STATEMENT_BYTES = 1 << 20
MIN_PARTIES = 2
MAX_PARTIES = 3


class UntrustedStatementError(Exception):
    """A statement is malformed, of the wrong kind, or not signed by the pinned deployment CA."""


def _signed_message(kind: str, body: bytes) -> bytes:
    return _DOMAIN + kind.encode() + b"\n" + body


def sign_statement(ca_key: ec.EllipticCurvePrivateKey, kind: str, body: bytes) -> bytes:
    """The statement of ``kind`` over ``body``, signed with the CA's private key."""
    signature = ca_key.sign(_signed_message(kind, body), ec.ECDSA(hashes.SHA256()))
    return json.dumps({"kind": kind, "body": base64.b64encode(body).decode(),
                       "signature": base64.b64encode(signature).decode()}, sort_keys=True).encode()


def verify_statement(ca: x509.Certificate, kind: str, statement: bytes) -> bytes:
    """The body of ``statement`` if the CA signed it as ``kind``; raises :class:`UntrustedStatementError`."""
    if len(statement) > _MAX_STATEMENT_BYTES:
        raise UntrustedStatementError("statement is larger than any pinfer statement")
    try:
        data = json.loads(statement)
        body = base64.b64decode(data["body"], validate=True)
        signature = base64.b64decode(data["signature"], validate=True)
        claimed = data["kind"]
    except (ValueError, KeyError, TypeError):
        raise UntrustedStatementError("statement is malformed") from None
    if claimed != kind:
        raise UntrustedStatementError(f"expected a {kind} statement, got {claimed!r}")
    public = ca.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise UntrustedStatementError("the deployment CA key is not an ECDSA key")
    try:
        public.verify(signature, _signed_message(kind, body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise UntrustedStatementError(f"the {kind} statement is not signed by the pinned deployment CA") from None
    return body


def key_fingerprint(key: envelope.PublicKey) -> str:
    """SHA-256 of an encoded envelope public key (what model cards record)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Deployment:
    """The signed deployment statement: the party set a client may seal to."""

    deployment_id: str
    party_keys: tuple[envelope.PublicKey, ...]

    @property
    def parties(self) -> int:
        return len(self.party_keys)

    def to_body(self) -> bytes:
        return json.dumps({"version": 1, "deployment_id": self.deployment_id,
                           "party_keys": [k.encode().hex() for k in self.party_keys]}, sort_keys=True).encode()

    @classmethod
    def from_body(cls, body: bytes) -> Deployment:
        try:
            data = json.loads(body)
            if data["version"] != 1:
                raise ValueError("version")
            keys = tuple(envelope.PublicKey.decode(bytes.fromhex(k)) for k in data["party_keys"])
            deployment = cls(str(data["deployment_id"]), keys)
        except (ValueError, KeyError, TypeError, envelope.EnvelopeError):
            raise UntrustedStatementError("deployment statement body is malformed") from None
        if not MIN_PARTIES <= deployment.parties <= MAX_PARTIES:
            raise UntrustedStatementError(
                f"the deployment names {deployment.parties} parties; pinfer needs {MIN_PARTIES} to {MAX_PARTIES}")
        return deployment


def verify_deployment(ca: x509.Certificate, statement: bytes) -> Deployment:
    """The deployment the pinned CA vouches for (at least two parties, each with its envelope key)."""
    return Deployment.from_body(verify_statement(ca, DEPLOYMENT, statement))
