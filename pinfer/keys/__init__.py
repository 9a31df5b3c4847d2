"""Key material for a pinfer deployment: one CA, role-bearing node certificates, party envelope keys.

This package is the layer every node and the client trust each other through: the submodules hold what
is sealed and signed with this material (:mod:`~pinfer.keys.envelope` HPKE envelopes,
:mod:`~pinfer.keys.trust` the CA's signed statements, :mod:`~pinfer.keys.session` the session contract
between client and parties); it depends on nothing above it.

Why it looks like this:

* Every link in the service is mutual TLS, and the threat model makes the orchestrator and the network
  untrusted. A node must therefore know not only that a peer holds *a* certificate from the deployment
  CA, but that it holds the certificate of the *role* it claims to be (party1, dealer, ...). The role is
  written into the certificate subject (``OU=<role>``, and ``CN=<role>``) by the CA, and
  :func:`check_peer_role` is the one place that turns a presented certificate into a trusted role.
* Certificates use ECDSA P-256 with SHA-256: every TLS stack pinfer touches (Python's OpenSSL, gRPC's
  BoringSSL) accepts it, which is not yet true of Ed25519 certificates.
* Each party also has an HPKE envelope key pair (ML-KEM-768 + X25519 by default, :mod:`pinfer.keys.envelope`).
  The CA signs a deployment statement naming every party's public key (:mod:`pinfer.keys.trust`), so a
  client seals its input shares only to keys the CA vouches for, never to keys the orchestrator names;
  the orchestrator relays envelopes without any key that opens them.
* A certificate's DNS names are its role name plus operator-given host names, never another role's
  name and never a name every certificate shares (``localhost``): gRPC checks a server's DNS name, so
  a name only one role's certificate carries makes that check a role check.
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

import datetime as _dt
import hashlib
import ipaddress
import json
import os
import re
import secrets
import stat
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pinfer.keys import envelope, trust
from pinfer.keys.trust import MAX_PARTIES, MIN_PARTIES
from pinfer.atomic_file import write_atomic

ORCHESTRATOR = "orchestrator"
DEALER = "dealer"
CLIENT = "client"
ORGANIZATION = "pinfer"
MANIFEST_VERSION = 1
DEFAULT_VALIDITY_DAYS = 825  # the longest leaf lifetime common TLS clients still accept

_PARTY_ROLE = re.compile(r"^party([0-9])$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class KeyMaterialError(Exception):
    """Base class of key and certificate failures."""


class PeerCertificateError(KeyMaterialError):
    """A presented certificate is not one this deployment trusts (wrong CA, expired, malformed)."""


class PeerRoleError(PeerCertificateError):
    """A certificate from the deployment CA, but for a role other than the one the link requires."""


class KeyDirError(KeyMaterialError):
    """The key directory is missing, incomplete, would be overwritten, or exposes a private key."""


def party_role(index: int) -> str:
    """The role name of party ``index`` (``party0``, ``party1``, ...)."""
    if not 0 <= index < MAX_PARTIES:
        raise ValueError(f"party index must be in [0, {MAX_PARTIES}), got {index}")
    return f"party{index}"


def party_index(role: str) -> int | None:
    """The party index encoded in ``role``, or None when ``role`` is not a party role."""
    match = _PARTY_ROLE.match(role)
    return int(match.group(1)) if match else None


def node_roles(parties: int) -> tuple[str, ...]:
    """All roles of a deployment with ``parties`` compute parties, in a stable order."""
    _check_parties(parties)
    return (ORCHESTRATOR, *(party_role(i) for i in range(parties)), DEALER, CLIENT)


def _check_parties(parties: int) -> None:
    if not MIN_PARTIES <= parties <= MAX_PARTIES:
        raise ValueError(f"parties must be in [{MIN_PARTIES}, {MAX_PARTIES}], got {parties}")


def _is_known_role(role: str) -> bool:
    return role in (ORCHESTRATOR, DEALER, CLIENT) or party_index(role) is not None


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


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _name(role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, role),
        ]
    )


def _ca_name() -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, "pinfer deployment CA"),
        ]
    )


def _validity(days: int) -> tuple[_dt.datetime, _dt.datetime]:
    # Backdate a little so peers with slightly skewed clocks accept a fresh certificate.
    now = _dt.datetime.now(_dt.timezone.utc)
    return now - _dt.timedelta(minutes=5), now + _dt.timedelta(days=days)


def make_ca(validity_days: int = DEFAULT_VALIDITY_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh self-signed CA that may sign node certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(validity_days)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_ca_name())
        .issuer_name(_ca_name())
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_node_certificate(
    role: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hostnames: Iterable[str] = (),
    validity_days: int = DEFAULT_VALIDITY_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key pair and CA-signed certificate for ``role``.

    The certificate serves both TLS client and server auth (a party both dials and accepts). Its SAN
    is the role name (the docker-compose service name by convention) and ``hostnames``, none of which
    may be another role's name.
    """
    if not _is_known_role(role):
        raise ValueError(f"unknown role {role!r}")
    hostnames = list(hostnames)
    taken = [h for h in hostnames if h.lower() != role and _is_known_role(h.lower())]
    if taken:
        raise ValueError(f"{role}'s certificate cannot carry another role's name ({', '.join(taken)})")
    dns, ips = _split_hosts([role, *hostnames])
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(validity_days)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(role))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([*(x509.DNSName(d) for d in dns), *(x509.IPAddress(i) for i in ips)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _split_hosts(hosts: Iterable[str]) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for host in hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if not _HOSTNAME.match(host):
                raise ValueError(f"not a valid host name: {host!r}") from None
            if host.lower() not in dns:
                dns.append(host.lower())
        else:
            if ip not in ips:
                ips.append(ip)
    return dns, ips


def certificate_role(cert: x509.Certificate) -> str:
    """The role written in ``cert``'s subject; raises if absent or inconsistent (CN vs OU)."""
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    commons = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(units) != 1 or len(commons) != 1:
        raise PeerCertificateError("certificate subject does not carry exactly one role")
    role = str(units[0].value)
    if str(commons[0].value) != role or not _is_known_role(role):
        raise PeerCertificateError("certificate subject carries no valid pinfer role")
    return role


def _as_certificate(cert: x509.Certificate | bytes) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    try:
        if cert.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(cert)
        return x509.load_der_x509_certificate(cert)
    except ValueError:
        raise PeerCertificateError("peer certificate could not be parsed") from None


def check_peer_role(
    cert: x509.Certificate | bytes,
    expected_role: str | Collection[str],
    ca: x509.Certificate,
    *,
    now: _dt.datetime | None = None,
) -> str:
    """Return the peer's role if ``cert`` was issued by ``ca``, is valid now, and has an expected role.

    ``cert`` may be a parsed certificate, DER (what ``ssl.SSLSocket.getpeercert(True)`` gives) or PEM
    (what gRPC's auth context gives). ``expected_role`` is one role or a collection of acceptable ones.
    TLS stacks already check the chain during the handshake; this check is repeated here so that the
    role decision never depends on how a particular stack was configured.

    Raises :class:`PeerCertificateError` (not from ``ca``, expired, not a leaf, no role) or
    :class:`PeerRoleError` (a valid certificate for another role).
    """
    peer = _as_certificate(cert)
    moment = now or _dt.datetime.now(_dt.timezone.utc)
    if not peer.not_valid_before_utc <= moment <= peer.not_valid_after_utc:
        raise PeerCertificateError("peer certificate is outside its validity period")
    # RFC 5280 path validation by cryptography's verifier (signature, validity, CA constraints, key
    # usages), not a home-made chain check; the client profile because every node cert is also a client.
    verifier = verification.PolicyBuilder().store(verification.Store([ca])).time(moment).build_client_verifier()
    try:
        verifier.verify(peer, [])
    except verification.VerificationError:
        raise PeerCertificateError("peer certificate does not chain to the deployment CA") from None
    try:
        constraints = peer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise PeerCertificateError("peer certificate has no basic constraints") from None
    if constraints.ca:
        raise PeerCertificateError("a CA certificate cannot act as a node")
    role = certificate_role(peer)
    allowed = {expected_role} if isinstance(expected_role, str) else set(expected_role)
    if role not in allowed:
        raise PeerRoleError(f"peer has role {role!r}, expected {' or '.join(sorted(allowed))}")
    return role


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


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


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
    _check_parties(parties)
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
    _write_private(layout.ca_key, _pem_key(ca_key))
    _write_public(layout.ca_cert, _pem_cert(ca_cert))

    fingerprints: dict[str, str] = {}
    envelope_keys: dict[str, bytes] = {}
    all_hosts: dict[str, tuple[str, ...]] = {}
    for role in roles:
        hosts = tuple(extra.get(role, ()))
        key, cert = issue_node_certificate(role, ca_key, ca_cert, hosts, validity_days)
        _write_private(layout.node_key(role), _pem_key(key))
        _write_public(layout.node_cert(role), _pem_cert(cert))
        _write_public(layout.node_ca_cert(role), _pem_cert(ca_cert))
        fingerprints[role] = _fingerprint(cert)
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
        ca_fingerprint=_fingerprint(ca_cert),
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
