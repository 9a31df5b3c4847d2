"""Forming the mesh: TLS contexts, the hello, and the builder that links every pair of ranks.

Every pair of ranks shares one persistent TLS 1.3 connection with client certificates from the deployment
CA (:mod:`pinfer.keys`), and each side checks that the peer's certificate carries the role of the rank it
claims. The higher rank dials the lower one, so a rank listens only if a higher rank exists. Set-up dials
every lower rank at once and authenticates every accepted connection at once, dropping one that has not
authenticated within a few seconds, so strangers who connect to a listening port cannot keep the real
peers out.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pinfer import keys

from .codec import WIRE_VERSION
from .config import TlsCommConfig
from .errors import CommTimeoutError, PeerAuthError, PeerDisconnectedError

log = logging.getLogger(__name__)

_HANDSHAKE_TIMEOUT_S = 10.0  # a dialler's TLS handshake and hello (the listener may still be starting up)
# A listener drops an accepted connection that has not authenticated (TLS handshake, role, hello) within
# this long. A real peer needs milliseconds even over a WAN; one it drops just dials again.
_ACCEPT_HANDSHAKE_S = 3.0
# Accepted connections mid-handshake at once (file descriptors held for strangers at most).
_MAX_PENDING_HANDSHAKES = 64
_ACCEPT_POLL_S = 0.1  # how often the acceptor looks at build()'s stop flag
_LISTEN_BACKLOG = 128
# Hello exchanged right after the TLS handshake: magic, wire version, claimed rank, session id.
_HELLO = struct.Struct(">4sBIH")
_HELLO_MAGIC = b"PMSH"


def server_context(credentials: keys.NodeCredentials) -> ssl.SSLContext:
    """A listener's TLS 1.3 context: this node's certificate, and a certificate from the CA required of peers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(credentials.cert_path, credentials.key_path)
    context.load_verify_locations(cafile=str(credentials.ca_path))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(credentials: keys.NodeCredentials, verify_hostname: bool) -> ssl.SSLContext:
    """A dialler's TLS 1.3 context: this node's certificate, and the listener's verified against the CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(credentials.cert_path, credentials.key_path)
    context.load_verify_locations(cafile=str(credentials.ca_path))
    context.check_hostname = verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _tune(sock: socket.socket) -> None:
    """No Nagle delay (MPC rounds are small and latency-bound); keepalive probes so that a peer host that
    vanishes without closing its sockets is noticed within about half a minute even on an idle link."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _hello(rank: int, session: bytes) -> bytes:
    return _HELLO.pack(_HELLO_MAGIC, WIRE_VERSION, rank, len(session)) + session


def _send_hello(sock: ssl.SSLSocket, rank: int, session: bytes) -> None:
    sock.sendall(_hello(rank, session))


def _parse_hello_head(head: bytes, session: bytes) -> tuple[int, int]:
    """(claimed rank, session length) from a hello's fixed part; refuses a foreign version or session."""
    magic, version, rank, length = _HELLO.unpack(head)
    if magic != _HELLO_MAGIC or version != WIRE_VERSION:
        raise PeerAuthError("peer does not speak this data-plane version")
    if length != len(session):
        raise PeerAuthError("peer belongs to another session")
    return rank, length


def _recv_exact(sock: ssl.SSLSocket, count: int) -> bytes:
    buffer = bytearray(count)
    view, filled = memoryview(buffer), 0
    while filled < count:
        got = sock.recv_into(view[filled:])
        if got == 0:
            raise PeerDisconnectedError("peer closed the connection during the hello")
        filled += got
    return bytes(buffer)


def _recv_hello(sock: ssl.SSLSocket, session: bytes) -> int:
    rank, length = _parse_hello_head(_recv_exact(sock, _HELLO.size), session)
    if _recv_exact(sock, length) != session:
        raise PeerAuthError("peer belongs to another session")
    return rank


def _discard(raw: socket.socket | None, sock: ssl.SSLSocket | None) -> None:
    """Close a refused connection (after a handshake the TLS socket owns the file descriptor)."""
    for each in (sock, raw):
        if each is not None:
            try:
                each.close()
            except OSError:
                pass


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket for this rank (port 0 picks a free one: read it with ``getsockname``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Deep enough that a burst of strangers' connects cannot fill the kernel's accept queue and drop the
    # real peer's SYN (a dropped SYN costs a 1 s retransmit) before the acceptor drains it.
    sock.listen(_LISTEN_BACKLOG)
    return sock


class _Handshake:
    """One accepted connection on its way to an authenticated link, driven without blocking:
    TLS handshake, certificate role, our hello out, the peer's hello in."""

    __slots__ = ("sock", "address", "deadline", "stage", "role", "out", "inbuf", "need", "claimed")

    def __init__(self, sock: ssl.SSLSocket, address: str, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.deadline = deadline
        self.stage = "tls"
        self.role = ""
        self.out = memoryview(b"")
        self.inbuf = bytearray()
        self.need = _HELLO.size
        self.claimed = -1

    def advance(self, builder: MeshBuilder, roles: Mapping[str, int]) -> int | None:
        """Move as far as the socket allows; the rank once authenticated, None while more I/O is needed.

        Raises on any refusal; waiting on the socket surfaces as ``ssl.SSLWantReadError`` /
        ``ssl.SSLWantWriteError``, which the caller turns into the events to watch.
        """
        while True:
            if self.stage == "tls":
                self.sock.do_handshake()
                self.role = keys.check_peer_role(self.sock.getpeercert(binary_form=True) or b"", set(roles), builder.ca)
                self.out = memoryview(_hello(builder.config.rank, builder.session))
                self.stage = "send"
            elif self.stage == "send":
                self.out = self.out[self.sock.send(self.out) :]
                if not self.out:
                    self.stage = "recv"
            else:
                chunk = self.sock.recv(self.need - len(self.inbuf))
                if not chunk:
                    raise PeerDisconnectedError("peer closed the connection during the hello")
                self.inbuf += chunk
                if len(self.inbuf) < self.need:
                    continue
                if self.claimed < 0:
                    self.claimed, length = _parse_hello_head(bytes(self.inbuf[: _HELLO.size]), builder.session)
                    self.need += length
                    if length:
                        continue
                if bytes(self.inbuf[_HELLO.size :]) != builder.session:
                    raise PeerAuthError("peer belongs to another session")
                if self.role not in roles:  # another connection of the same role got there first
                    raise PeerAuthError(f"a second {self.role} connection")
                if self.claimed != roles[self.role]:
                    raise PeerAuthError(f"a {self.role} certificate claimed rank {self.claimed}")
                return roles[self.role]


class MeshBuilder:
    """Dials lower ranks and accepts higher ranks, all at once, until every link is authenticated or time
    runs out.

    Each lower rank is dialled from its own thread and one acceptor thread drives every accepted
    connection's handshake without blocking, so nothing waits on anything else: a stranger's idle or
    slow connection holds a slot for at most ``_ACCEPT_HANDSHAKE_S`` and never delays the real peer.
    """

    def __init__(self, config: TlsCommConfig, listener: socket.socket | None) -> None:
        self.config = config
        self.session = config.session_id.encode()
        self.ca = config.credentials.ca_certificate()
        self.links: dict[int, ssl.SSLSocket] = {}
        self.errors: list[str] = []
        self.deadline = time.monotonic() + config.connect_timeout_s
        self.listener = listener
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self._wake = threading.Event()

    def build(self) -> dict[int, ssl.SSLSocket]:
        config = self.config
        higher = set(range(config.rank + 1, config.mesh_size))
        if higher and self.listener is None:
            self.listener = bind_listener(*(config.listen or config.endpoints[config.rank]))
        workers = [threading.Thread(target=self._guarded, args=(self._dial, peer), daemon=True, name=f"dial-{peer}")
                   for peer in range(config.rank)]
        acceptor = None
        if higher:
            acceptor = threading.Thread(target=self._guarded, args=(self._accept_all, higher), daemon=True,
                                        name="accept")
            workers.append(acceptor)
        try:
            for worker in workers:
                worker.start()
            # Every worker has the same deadline; the grace second lets one finish a handshake it began.
            while any(w.is_alive() for w in workers) and time.monotonic() < self.deadline + 1.0:
                with self.lock:
                    failure = self.failure
                if failure is not None:
                    raise failure
                self._wake.wait(0.05)
                self._wake.clear()
            with self.lock:
                failure = self.failure
            if failure is not None:
                raise failure
        except BaseException:
            self.stop.set()
            self._close_all()
            raise
        finally:
            self.stop.set()
            if acceptor is not None:
                acceptor.join(1.0)  # it polls the stop flag at least every _ACCEPT_POLL_S
            if self.listener is not None:
                self.listener.close()
        with self.lock:
            missing = sorted(set(range(config.mesh_size)) - set(self.links) - {config.rank})
        if missing:
            self._close_all()
            detail = f" (refused: {'; '.join(self.errors[-3:])})" if self.errors else ""
            raise CommTimeoutError(
                f"rank {config.rank}: no authenticated link to ranks {missing} within {config.connect_timeout_s:.1f}s{detail}"
            )
        return self.links

    def _guarded(self, work: Callable[[Any], None], arg: Any) -> None:
        """Run one worker; its first exception is what build() raises."""
        try:
            work(arg)
        except BaseException as exc:
            with self.lock:
                if self.failure is None:
                    self.failure = exc
        finally:
            self._wake.set()

    def _add(self, peer: int, sock: ssl.SSLSocket) -> None:
        sock.settimeout(None)
        with self.lock:
            # A dial that finishes after build() gave up must not leave an open link behind.
            if self.stop.is_set():
                sock.close()
                return
            self.links[peer] = sock

    def _close_all(self) -> None:
        with self.lock:
            for sock in self.links.values():
                sock.close()
            self.links.clear()

    def _pause(self, pause: float) -> float:
        """Back off before the next dial (cut short when build() stops); returns the next pause."""
        self.stop.wait(min(pause, max(0.0, self.deadline - time.monotonic())))
        return min(pause * 2, 0.5)

    def _dial(self, peer: int) -> None:
        config = self.config
        host, port = config.endpoints[peer]
        context = client_context(config.credentials, config.verify_hostname)
        pause = 0.02
        while not self.stop.is_set():
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return  # reported as missing by build()
            try:
                raw = socket.create_connection((host, port), timeout=min(remaining, _HANDSHAKE_TIMEOUT_S))
            except OSError:
                pause = self._pause(pause)
                continue
            _tune(raw)
            sock: ssl.SSLSocket | None = None
            try:
                sock = context.wrap_socket(raw, server_hostname=host)
                keys.check_peer_role(sock.getpeercert(binary_form=True) or b"", config.role_of(peer), self.ca)
                _send_hello(sock, config.rank, self.session)
                if _recv_hello(sock, self.session) != peer:
                    raise PeerAuthError(f"the node at rank {peer}'s address answered as another rank")
            except keys.PeerCertificateError as exc:
                _discard(raw, sock)
                raise PeerAuthError(f"rank {peer} at {host}:{port} refused: {exc}") from None
            except ssl.SSLCertVerificationError as exc:
                _discard(raw, sock)
                raise PeerAuthError(f"rank {peer} at {host}:{port} failed certificate verification: {exc.verify_message}") from None
            except ssl.SSLError as exc:
                _discard(raw, sock)
                reason = str(exc.reason or "")
                if "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason:
                    raise PeerAuthError(f"rank {peer} at {host}:{port} does not speak TLS 1.3 ({reason})") from None
                if "ALERT" in reason:  # the listener rejected this node's certificate
                    raise PeerAuthError(f"rank {peer} at {host}:{port} rejected this node's certificate ({reason})") from None
                self.errors.append(f"rank {peer}: {type(exc).__name__}")
                pause = self._pause(pause)
                continue
            except PeerAuthError:
                _discard(raw, sock)
                raise
            except (OSError, PeerDisconnectedError) as exc:
                # The listener closed on us (it refused our role, dropped a handshake that took too long,
                # or raced a restart); keep trying until the deadline, remembering why.
                _discard(raw, sock)
                self.errors.append(f"rank {peer}: {type(exc).__name__}")
                pause = self._pause(pause)
                continue
            self._add(peer, sock)
            return

    def _refuse(self, handshake: _Handshake, reason: str) -> None:
        # A stranger (foreign CA, wrong role, other session, idle or too slow) is refused; the mesh keeps
        # waiting for the real peer. Only the reason's type is logged, never certificate contents.
        _discard(None, handshake.sock)
        detail = f"{handshake.address}: {reason}"
        self.errors.append(detail)
        log.warning("rank %d refused a data-plane connection from %s", self.config.rank, detail)

    def _accept_all(self, expected: set[int]) -> None:
        config = self.config
        context = server_context(config.credentials)
        roles = {config.role_of(r): r for r in expected}
        listener = self.listener
        assert listener is not None
        listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, None)
        pending: dict[int, _Handshake] = {}  # by file descriptor, oldest first

        def drop(handshake: _Handshake, reason: str) -> None:
            selector.unregister(handshake.sock)
            del pending[handshake.sock.fileno()]
            self._refuse(handshake, reason)

        def step(handshake: _Handshake) -> None:
            try:
                rank = handshake.advance(self, roles)
            except ssl.SSLWantReadError:
                selector.modify(handshake.sock, selectors.EVENT_READ, handshake)
                return
            except ssl.SSLWantWriteError:
                selector.modify(handshake.sock, selectors.EVENT_WRITE, handshake)
                return
            except (keys.PeerCertificateError, PeerAuthError, PeerDisconnectedError, ssl.SSLError, OSError,
                    struct.error) as exc:
                drop(handshake, type(exc).__name__)
                return
            assert rank is not None
            selector.unregister(handshake.sock)
            del pending[handshake.sock.fileno()]
            handshake.sock.setblocking(True)
            self._add(rank, handshake.sock)
            del roles[handshake.role]

        try:
            while roles and not self.stop.is_set():
                now = time.monotonic()
                if now >= self.deadline:
                    return
                for handshake in [h for h in pending.values() if now >= h.deadline]:
                    drop(handshake, "handshake timeout")
                wake = min([self.deadline, now + _ACCEPT_POLL_S, *(h.deadline for h in pending.values())])
                for key, _ in selector.select(max(0.0, wake - now)):
                    if key.data is None:
                        self._accept_ready(listener, context, selector, pending, drop, step)
                    elif pending.get(key.data.sock.fileno()) is key.data:  # not dropped earlier in this batch
                        step(key.data)
        finally:
            for handshake in list(pending.values()):
                _discard(None, handshake.sock)
            selector.close()

    def _accept_ready(self, listener: socket.socket, context: ssl.SSLContext, selector: selectors.BaseSelector,
                      pending: dict[int, _Handshake], drop: Callable[[_Handshake, str], None],
                      step: Callable[[_Handshake], None]) -> None:
        """Take every connection the kernel has queued and start its handshake."""
        while True:
            try:
                raw, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors: leave the rest queued, and do not spin on the listener
                self.stop.wait(_ACCEPT_POLL_S)
                return
            if len(pending) >= _MAX_PENDING_HANDSHAKES:
                # Evict the oldest: a real peer finishes in milliseconds, so it is never the oldest for long,
                # while refusing newcomers would let a stranger who holds every slot lock the peer out.
                drop(next(iter(pending.values())), "too many pending handshakes")
            try:
                _tune(raw)
                raw.setblocking(False)
                sock = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            except OSError:
                _discard(raw, None)
                continue
            deadline = min(time.monotonic() + _ACCEPT_HANDSHAKE_S, self.deadline)
            handshake = _Handshake(sock, str(address[0]), deadline)
            pending[sock.fileno()] = handshake
            selector.register(sock, selectors.EVENT_READ, handshake)
            step(handshake)  # the ClientHello is often already there


# ----------------------------------------------------------------------------------------------------
