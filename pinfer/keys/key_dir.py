"""A deployment's key directory: what :func:`init_keys` writes, and the loaders each node reads its
credentials with.

Why it looks like this:

* Each party has an HPKE envelope key pair (ML-KEM-768 + X25519 by default, :mod:`pinfer.keys.envelope`)
  next to its TLS key. The CA signs a deployment statement naming every party's public key
  (:mod:`pinfer.keys.trust`), so a client seals its input shares only to keys the CA vouches for,
  never to keys the orchestrator names; the orchestrator relays envelopes without any key that opens them.
* Private keys live on disk only in files created with mode 0600 inside 0700 directories, and the loaders
  refuse a private key file that is a symbolic link or that group or others may access: either means
  someone other than the node's user could read the key or swap it. Nothing in this module logs or
  raises with key bytes.

Directory layout written by :func:`init_keys` (``KeyDir`` knows the paths)::

    DIR/manifest.json           public: roles, certificate fingerprints, party envelope public keys
    DIR/deployment.json         public: the CA-signed deployment statement (copied to orchestrator/)
    DIR/ca/ca.crt               CA certificate (public; every node trusts it)
    DIR/ca/ca.key               CA private key (0600; keep offline, no node needs it)
    DIR/<role>/ca.crt           copy of the CA certificate, so a node's folder is self-contained
    DIR/<role>/node.crt         the node's certificate (role in subject, SANs for its host names)
    DIR/<role>/node.key         the node's TLS private key (0600)
    DIR/party<i>/envelope.key   party i's envelope private key, ``PrivateKey.encode()`` (0600)
    DIR/party<i>/envelope.pub   party i's envelope public key, ``PublicKey.encode()``
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pinfer.atomic_file import write_atomic
from pinfer.keys import envelope, trust
from pinfer.keys.pki import (
    DEFAULT_VALIDITY_DAYS,
    KeyMaterialError,
    certificate_role,
    fingerprint,
    issue_node_certificate,
    make_ca,
    pem_certificate,
    pem_private_key,
)
from pinfer.keys.roles import ORCHESTRATOR, check_party_count, node_roles, party_index, party_role

MANIFEST_VERSION = 1  # of manifest.json; a reader refuses any other


class KeyDirError(KeyMaterialError):
    """The key directory is missing, incomplete, would be overwritten, or exposes a private key."""


@dataclass(frozen=True)
class KeyDir:
    """Paths inside a key directory; one place so writers and readers never disagree."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def deployment(self) -> Path:
        return self.root / "deployment.json"

    def node_dir(self, role: str) -> Path:
        return self.root / role

    def node_ca_cert(self, role: str) -> Path:
        return self.node_dir(role) / "ca.crt"

    def node_cert(self, role: str) -> Path:
        return self.node_dir(role) / "node.crt"

    def node_key(self, role: str) -> Path:
        return self.node_dir(role) / "node.key"

    def envelope_private(self, role: str) -> Path:
        return self.node_dir(role) / "envelope.key"

    def envelope_public(self, role: str) -> Path:
        return self.node_dir(role) / "envelope.pub"


@dataclass(frozen=True)
class NodeCredentials:
    """What a node needs to speak mutual TLS: its role, certificate chain files and the CA to trust.

    Paths are kept (not key bytes) so the private key stays in its 0600 file until a TLS library
    reads it; :meth:`private_key_pem` exists for gRPC, which takes the key as bytes.
    """

    role: str
    cert_path: Path
    key_path: Path
    ca_path: Path

    def certificate_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def private_key_pem(self) -> bytes:
        return self.key_path.read_bytes()

    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()

    def ca_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_pem())


@dataclass(frozen=True)
class KeyManifest:
    """The public summary of a key directory: which roles exist and the parties' envelope keys."""

    parties: int
    roles: tuple[str, ...]
    ca_fingerprint: str
    cert_fingerprints: Mapping[str, str]
    envelope_public_keys: Mapping[str, bytes]
    hostnames: Mapping[str, tuple[str, ...]]

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": MANIFEST_VERSION,
                "parties": self.parties,
                "roles": list(self.roles),
                "ca_sha256": self.ca_fingerprint,
                "cert_sha256": dict(self.cert_fingerprints),
                "envelope_public_keys": {r: k.hex() for r, k in self.envelope_public_keys.items()},
                "hostnames": {r: list(h) for r, h in self.hostnames.items()},
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> KeyManifest:
        try:
            data = json.loads(text)
            if data.get("version") != MANIFEST_VERSION:
                raise KeyDirError(f"unsupported manifest version {data.get('version')!r}")
            return cls(
                parties=int(data["parties"]),
                roles=tuple(data["roles"]),
                ca_fingerprint=data["ca_sha256"],
                cert_fingerprints=dict(data["cert_sha256"]),
                envelope_public_keys={r: bytes.fromhex(k) for r, k in data["envelope_public_keys"].items()},
                hostnames={r: tuple(h) for r, h in data["hostnames"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeyDirError(f"malformed key manifest ({type(exc).__name__})") from None


def _key_folder(path: Path) -> None:
    """Create ``path`` as 0700, or tighten an existing one: whoever may write a key folder may swap its keys."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o700)


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key 0600 from its first byte, never through a link planted at its name."""
    _key_folder(path.parent)
    write_atomic(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    _key_folder(path.parent)
    write_atomic(path, data, mode=0o644)


def _refuse_exposed_key(path: Path, info: os.stat_result) -> None:
    """Raise unless ``info`` shows a regular file that only its owner may access.

    Only permission bits are checked, not the owner: a container may read the key as another uid than
    the one that wrote it (docker-compose hands the key folders to uid 10001).
    """
    if stat.S_ISLNK(info.st_mode):
        raise KeyDirError(f"private key {path} is a symbolic link; put the key file itself there "
                          f"(cp --remove-destination <target> {path}) and chmod 600 {path}")
    if not stat.S_ISREG(info.st_mode):
        raise KeyDirError(f"private key {path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyDirError(f"private key {path} is accessible by group or others "
                          f"(mode {stat.S_IMODE(info.st_mode):04o}); run chmod 600 {path}")


def _read_private_key_file(path: Path) -> bytes:
    """The bytes of a checked private key file, re-checked on the descriptor they are read from."""
    _refuse_exposed_key(path, os.lstat(path))
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # a link swapped in since fails here
    with os.fdopen(fd, "rb") as handle:
        _refuse_exposed_key(path, os.fstat(handle.fileno()))
        return handle.read()


def init_keys(
    out: Path | str,
    parties: int = 2,
    hostnames: Mapping[str, Sequence[str]] | None = None,
    *,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    overwrite: bool = False,
    kem: envelope.Kem = envelope.DEFAULT_KEM,
) -> KeyManifest:
    """Create a complete key directory at ``out`` (layout in the module docstring).

    ``hostnames`` maps a role to extra DNS names / IPs for its certificate (for example the
    docker-compose service or Kubernetes DNS name). An existing key directory is refused unless
    ``overwrite``: silently replacing a CA would cut every deployed node off. ``kem`` is the parties'
    envelope KEM; the CA-signed deployment statement names their public keys.
    """
    check_party_count(parties)
    roles = node_roles(parties)
    extra = dict(hostnames or {})
    unknown = set(extra) - set(roles)
    if unknown:
        raise ValueError(f"host names given for roles not in this deployment: {sorted(unknown)}")
    layout = KeyDir(Path(out))
    if layout.manifest.exists() and not overwrite:
        raise KeyDirError(f"{layout.root} already holds keys; pass overwrite=True (--force) to replace them")
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    ca_key, ca_cert = make_ca(validity_days)
    _write_private(layout.ca_key, pem_private_key(ca_key))
    _write_public(layout.ca_cert, pem_certificate(ca_cert))

    fingerprints: dict[str, str] = {}
    envelope_keys: dict[str, bytes] = {}
    all_hosts: dict[str, tuple[str, ...]] = {}
    for role in roles:
        hosts = tuple(extra.get(role, ()))
        key, cert = issue_node_certificate(role, ca_key, ca_cert, hosts, validity_days)
        _write_private(layout.node_key(role), pem_private_key(key))
        _write_public(layout.node_cert(role), pem_certificate(cert))
        _write_public(layout.node_ca_cert(role), pem_certificate(ca_cert))
        fingerprints[role] = fingerprint(cert)
        all_hosts[role] = hosts
        if party_index(role) is not None:
            private = envelope.PrivateKey.generate(kem)
            public_encoded = private.public_key().encode()
            _write_private(layout.envelope_private(role), private.encode())
            _write_public(layout.envelope_public(role), public_encoded)
            envelope_keys[role] = public_encoded

    manifest = KeyManifest(
        parties=parties,
        roles=roles,
        ca_fingerprint=fingerprint(ca_cert),
        cert_fingerprints=fingerprints,
        envelope_public_keys=envelope_keys,
        hostnames=all_hosts,
    )
    _write_public(layout.manifest, manifest.to_json().encode())
    deployment = trust.Deployment(
        deployment_id=secrets.token_hex(16),
        party_keys=tuple(envelope.PublicKey.decode(envelope_keys[party_role(i)]) for i in range(parties)))
    statement = trust.sign_statement(ca_key, trust.DEPLOYMENT, deployment.to_body())
    _write_public(layout.deployment, statement)
    _write_public(layout.node_dir(ORCHESTRATOR) / layout.deployment.name, statement)
    return manifest


def load_manifest(root: Path | str) -> KeyManifest:
    """Read the public manifest of a key directory."""
    path = KeyDir(Path(root)).manifest
    if not path.exists():
        raise KeyDirError(f"no key manifest at {path}")
    return KeyManifest.from_json(path.read_text())


def load_node_credentials(root: Path | str, role: str) -> NodeCredentials:
    """The TLS credentials of ``role`` from a key directory (or from that node's own folder).

    ``root`` may be the whole key directory or just the node's folder as mounted into its container.
    """
    base = Path(root)
    layout = KeyDir(base)
    candidates = [
        (layout.node_cert(role), layout.node_key(role), layout.node_ca_cert(role)),
        (base / "node.crt", base / "node.key", base / "ca.crt"),
    ]
    for cert, key, ca in candidates:
        if cert.exists() and os.path.lexists(key) and ca.exists():
            loaded = x509.load_pem_x509_certificate(cert.read_bytes())
            if certificate_role(loaded) != role:
                raise KeyDirError(f"{cert} is a certificate for another role")
            _refuse_exposed_key(key, os.lstat(key))  # checked here: TLS libraries read it by path later
            return NodeCredentials(role=role, cert_path=cert, key_path=key, ca_path=ca)
    raise KeyDirError(f"no credentials for role {role!r} under {base}")


def load_envelope_private_key(root: Path | str, role: str) -> envelope.PrivateKey:
    """Party ``role``'s envelope private key (from the key directory or the party's own folder)."""
    base = Path(root)
    for path in (KeyDir(base).envelope_private(role), base / "envelope.key"):
        if os.path.lexists(path):
            try:
                return envelope.PrivateKey.decode(_read_private_key_file(path))
            except envelope.EnvelopeError:
                raise KeyDirError(f"{path} is not a pinfer envelope private key (re-run `pinfer keys init`)") from None
    raise KeyDirError(f"no envelope key for role {role!r} under {base}")


def load_envelope_public_key(root: Path | str, role: str) -> envelope.PublicKey:
    """Party ``role``'s envelope public key from the manifest of a key directory."""
    raw = load_manifest(root).envelope_public_keys.get(role)
    if raw is None:
        raise KeyDirError(f"no envelope public key for role {role!r}")
    try:
        return envelope.PublicKey.decode(raw)
    except envelope.EnvelopeError:
        raise KeyDirError(f"the manifest's key for {role!r} is not a pinfer envelope key") from None


def load_ca_key(root: Path | str) -> ec.EllipticCurvePrivateKey:
    """The deployment CA's private key (only provisioning needs it, to sign model cards)."""
    path = KeyDir(Path(root)).ca_key
    if not path.exists():
        raise KeyDirError(f"no CA key at {path}: model cards are signed where the CA key is kept")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyDirError(f"{path} is not an ECDSA key")
    return key


def load_deployment_statement(root: Path | str) -> bytes:
    """The CA-signed deployment statement the orchestrator serves (key directory or its own folder)."""
    path = KeyDir(Path(root)).deployment
    if path.exists():
        return path.read_bytes()
    raise KeyDirError(f"no deployment statement under {root} (re-run `pinfer keys init`)")
