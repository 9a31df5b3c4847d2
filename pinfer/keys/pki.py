"""The deployment CA and its role-bearing node certificates, and the one check that turns a presented
certificate into a trusted role (:func:`check_peer_role`).

Why it looks like this:

* The threat model makes the orchestrator and the network untrusted, so a node must know not only
  that a peer holds *a* certificate from the deployment CA, but that it holds the certificate of the
  *role* it claims to be. The CA writes the role into the subject (``OU=<role>`` and ``CN=<role>``).
* Certificates use ECDSA P-256 with SHA-256: every TLS stack pinfer touches (Python's OpenSSL, gRPC's
  BoringSSL) accepts it, which is not yet true of Ed25519 certificates.
* A certificate's DNS names are its role name plus operator-given host names, never another role's
  name and never a name every certificate shares (``localhost``): gRPC checks a server's DNS name, so
  a name only one role's certificate carries makes that check a role check.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import re
from collections.abc import Collection, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pinfer.keys.roles import is_known_role

ORGANIZATION = "pinfer"  # the O= of every subject this CA writes
DEFAULT_VALIDITY_DAYS = 825  # the longest leaf lifetime common TLS clients still accept
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class KeyMaterialError(Exception):
    """Base class of key and certificate failures."""


class PeerCertificateError(KeyMaterialError):
    """A presented certificate is not one this deployment trusts (wrong CA, expired, malformed)."""


class PeerRoleError(PeerCertificateError):
    """A certificate from the deployment CA, but for a role other than the one the link requires."""


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex (what the key manifest records)."""
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
    if not is_known_role(role):
        raise ValueError(f"unknown role {role!r}")
    hostnames = list(hostnames)
    taken = [h for h in hostnames if h.lower() != role and is_known_role(h.lower())]
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
    if str(commons[0].value) != role or not is_known_role(role):
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


def pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: the key file's 0600 mode is its protection, and TLS stacks read it by path."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_certificate(cert: x509.Certificate) -> bytes:
    """The certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)
