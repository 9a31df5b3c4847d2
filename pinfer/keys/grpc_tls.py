"""TLS 1.3 only on pinfer's gRPC servers, although grpcio cannot be told a minimum TLS version.

Why a cipher list: grpcio (1.85) has no minimum-version setting (grpc/grpc#37305). What its TLS
stack (BoringSSL) does read is ``GRPC_SSL_CIPHER_SUITES``, the cipher list of TLS 1.2 and below; TLS
1.3's suites are fixed and unaffected by it. :data:`TLS12_REFUSING_SUITES` names one TLS 1.2 suite
only, a pre-shared-key suite, which a gRPC endpoint can never use (gRPC configures no pre-shared key,
so BoringSSL drops the suite). A TLS 1.2 peer is then left with no suite to agree on and its handshake
fails (``NO_SHARED_CIPHER``), while TLS 1.3 handshakes are untouched. It applies to a process's servers
and its client channels alike.

Why a check at start-up: gRPC reads the variable once, when ``grpc`` is first imported, and a list it
cannot parse makes every secure port fail to bind. So :func:`require_tls13` must run before anything
imports ``grpc`` (the ``pinfer node`` and ``pinfer orchestrator`` commands call it first), and a server
calls :func:`check_tls13_only` on its own port once it listens: a TLS 1.2-only handshake must fail and
a TLS 1.3 one succeed, or it refuses to serve (:class:`GrpcTlsError`). The probe needs no gRPC API,
only Python's ``ssl`` module, so it checks what a peer would meet, not what the settings say.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys

from pinfer.keys.key_dir import NodeCredentials

CIPHER_SUITES_ENV = "GRPC_SSL_CIPHER_SUITES"
TLS12_REFUSING_SUITES = "ECDHE-PSK-CHACHA20-POLY1305"
PROBE_TIMEOUT_S = 5.0


class GrpcTlsError(RuntimeError):
    """A gRPC port accepts TLS 1.2, or cannot be reached over TLS 1.3 to check."""


def require_tls13() -> None:
    """Make this process's gRPC endpoints refuse TLS 1.2; call before ``grpc`` is first imported.

    Raises :class:`GrpcTlsError` if ``grpc`` is already imported without the setting: it would not
    apply any more, and the process's servers would accept TLS 1.2.
    """
    if "grpc" in sys.modules and os.environ.get(CIPHER_SUITES_ENV) != TLS12_REFUSING_SUITES:
        raise GrpcTlsError(f"grpc was imported before {CIPHER_SUITES_ENV} was set; call require_tls13() first")
    os.environ[CIPHER_SUITES_ENV] = TLS12_REFUSING_SUITES


def probe_host(address: str) -> str:
    """The host to dial to reach a server listening on ``address`` (``host:port``; wildcards -> loopback)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "*"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def handshake_version(host: str, port: int, credentials: NodeCredentials, version: ssl.TLSVersion,
                      server_name: str) -> str | None:
    """The TLS version a handshake limited to ``version`` reaches with ``host:port``, or None if it fails.

    It presents ``credentials`` (a CA-issued certificate, which every node's port requires) and offers
    ALPN ``h2`` as a gRPC client does, so only the TLS version decides the outcome.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = version
    context.load_verify_locations(cafile=str(credentials.ca_path))
    context.load_cert_chain(credentials.cert_path, credentials.key_path)
    context.check_hostname = False  # the port's identity is not in question here, only its TLS version
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw:
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                return tls.version()
    except (OSError, ssl.SSLError):  # SSLError is an OSError; both spelled out for the reader
        return None


def check_tls13_only(address: str, port: int, credentials: NodeCredentials) -> None:
    """Raise :class:`GrpcTlsError` unless the gRPC server on ``port`` refuses TLS 1.2 and speaks TLS 1.3."""
    host = probe_host(address)
    if handshake_version(host, port, credentials, ssl.TLSVersion.TLSv1_3, credentials.role) != "TLSv1.3":
        raise GrpcTlsError(f"could not reach port {port} over TLS 1.3 to check its TLS versions")
    if handshake_version(host, port, credentials, ssl.TLSVersion.TLSv1_2, credentials.role) is not None:
        raise GrpcTlsError(f"port {port} accepts TLS 1.2: {CIPHER_SUITES_ENV} was not set before grpc was "
                           "imported (call pinfer.keys.grpc_tls.require_tls13() first)")
