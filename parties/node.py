"""A party or dealer node: the orchestrator's gRPC control service, one worker process per session.

Why this split: the node is long-lived and holds no session state beyond its slots and its opened
weight shares (:mod:`pinfer.parties.weight_cache`, opened once, lent to every worker); each session's
MPC runs in a worker process (:mod:`pinfer.parties.session_worker`, :mod:`pinfer.parties.dealer_node`)
that the node kills when the session's control stream ends for any reason (done, cancelled, the
orchestrator gone). So a dead peer or orchestrator never leaves an orphan worker behind, and the
node keeps serving the next session.

Only the orchestrator may call a node: the server requires a client certificate from the deployment
CA, and every call re-checks that its role is ``orchestrator`` (:func:`pinfer.keys.check_peer_role`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
from multiprocessing import forkserver
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from pinfer import keys
from pinfer.keys import envelope, grpc_tls, session
from pinfer.parties.replay import ReplayMemoryFull, ServedRequests
from pinfer.proto import node_pb2, node_pb2_grpc

if TYPE_CHECKING:  # the dealer node never loads torch or the share store
    from pinfer.parties.weight_cache import SharedShares, WeightCache

log = logging.getLogger("pinfer.node")

WORKER_START_TIMEOUT_S = 120.0
_POLL_S = 0.2
_MP = mp.get_context("forkserver")
_PRELOAD = ["pinfer.parties.session_worker", "pinfer.parties.dealer_node", "pinfer.protocols.tls",
            "pinfer.protocols.dealer", "pinfer.parties.worker"]


@dataclass(frozen=True)
class NodeConfig:
    """A node's identity and resources. ``shares_root`` holds ``<model>/model.json`` and its share file."""

    role: str
    key_root: str
    parties: int = 2
    shares_root: str | None = None
    slots: int = 2
    advertise_host: str = "127.0.0.1"
    mesh_listen_host: str = "127.0.0.1"
    link: str = "loopback"

    @property
    def is_dealer(self) -> bool:
        return self.role == keys.DEALER

    def models(self) -> list[str]:
        """Provisioned models whose share file for this party is present (none for the dealer)."""
        if self.is_dealer or self.shares_root is None:
            return []
        index = keys.party_index(self.role)
        root = Path(self.shares_root)
        return sorted(p.parent.name for p in root.glob(f"*/party{index}.shares") if (p.parent / "model.json").is_file())


class _Worker:
    """A session's worker process and the node's end of its pipe."""

    def __init__(self, config: NodeConfig, session_id: str, weights: SharedShares | None, not_before: float) -> None:
        from pinfer.parties.dealer_node import dealer_worker_main
        from pinfer.parties.session_worker import WorkerSpec, party_worker_main

        spec = WorkerSpec(config.role, config.key_root, session_id, config.parties, config.mesh_listen_host, weights,
                          config.link, not_before)
        self.session_id = session_id
        self.conn, theirs = _MP.Pipe()
        target = dealer_worker_main if config.is_dealer else party_worker_main
        self.process = _MP.Process(target=target, args=(spec, theirs), name=f"pinfer-{config.role}-{session_id[:8]}",
                                   daemon=True)
        self._stop_lock = threading.Lock()
        self._stopped = False
        self.process.start()
        theirs.close()

    def next_event(self, context: grpc.ServicerContext, timeout_s: float | None = None) -> node_pb2.WorkerEvent:
        """The worker's next message, or an abort if it died, the stream ended, or the timeout passed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if not context.is_active():
                raise _StreamGone()
            try:
                if self.conn.poll(_POLL_S):
                    return node_pb2.WorkerEvent.FromString(self.conn.recv_bytes())
            except (EOFError, OSError):
                self._exited(context)
            if not self.process.is_alive() and not self.conn.poll(0):
                self._exited(context)
            if deadline is not None and time.monotonic() > deadline:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "session worker did not start in time")

    def _exited(self, context: grpc.ServicerContext) -> None:
        if not context.is_active():  # the stream ended first, and its callback killed the worker
            raise _StreamGone()
        log.warning("session %s: worker exited (code %s) without reporting", self.session_id[:8],
                    self.process.exitcode)
        context.abort(grpc.StatusCode.UNAVAILABLE, "session worker exited")

    def stop(self) -> None:
        """Kill the worker (idempotent; called both by the stream's end and by its cancellation)."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            self.process.kill()
            self.process.join(timeout=10)
            self.conn.close()


class _StreamGone(Exception):
    """The control stream ended (cancelled or the orchestrator vanished): stop the worker quietly."""


class NodeService(node_pb2_grpc.NodeServicer):
    """The control service. Sessions beyond ``slots`` are refused with ``RESOURCE_EXHAUSTED``."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._started = time.time()
        self._served = ServedRequests()
        # Workers fork from a server that imported torch and CrypTen once, so a session starts fast.
        _MP.set_forkserver_preload(_PRELOAD)
        forkserver.ensure_running()
        self._ca = keys.load_node_credentials(config.key_root, config.role).ca_certificate()
        self._lock = threading.Lock()
        self._active: dict[str, _Worker] = {}
        self._weights: WeightCache | None = None
        if not config.is_dealer and config.shares_root is not None:
            from pinfer.parties.weight_cache import WeightCache

            private_key = keys.load_envelope_private_key(config.key_root, config.role)
            self._weights = WeightCache(config.shares_root, keys.party_index(config.role), private_key)
            # Open the held models now, so that even the first session finds its shares in memory.
            threading.Thread(target=self._weights.warm, args=(config.models(),), name="pinfer-weights",
                             daemon=True).start()

    def _check_caller(self, context: grpc.ServicerContext) -> None:
        certs = context.auth_context().get("x509_pem_cert") or []
        try:
            if not certs:
                raise keys.PeerCertificateError("no client certificate")
            keys.check_peer_role(certs[0], keys.ORCHESTRATOR, self._ca)
        except keys.PeerCertificateError as exc:
            log.warning("refused a control call: %s", type(exc).__name__)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "only the orchestrator may call a node")

    def Describe(self, request: node_pb2.DescribeRequest, context: grpc.ServicerContext) -> node_pb2.NodeDescription:
        self._check_caller(context)
        return node_pb2.NodeDescription(role=self.config.role, models=self.config.models(), slots=self.config.slots,
                                        active_sessions=self.active_sessions())

    def active_sessions(self) -> int:
        with self._lock:
            return len(self._active)

    def Session(self, request_iterator: Iterator[node_pb2.SessionControl],
                context: grpc.ServicerContext) -> Iterator[node_pb2.SessionEvent]:
        self._check_caller(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("control") != "open":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with an open message")
        open_ = first.open
        if not session.REQUEST_ID.match(open_.session_id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session id must be 16 to 64 lowercase hex characters")
        if open_.parties != self.config.parties:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"this node runs {self.config.parties}-party sessions")
        weights = None
        card = None
        if not self.config.is_dealer:
            if self._weights is None or open_.model not in self.config.models():
                context.abort(grpc.StatusCode.NOT_FOUND, f"no weight shares for model {open_.model!r}")
            from pinfer.parties.share_store import ShareFileError

            try:
                weights = self._weights.get(open_.model)
                card = weights.card
            except ShareFileError as exc:
                log.warning("weight shares of %s: %s", open_.model, exc)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"weight shares: {exc}")
        with self._lock:
            if open_.session_id in self._active:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "session id in use")
            if len(self._active) >= self.config.slots:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "all worker slots are busy")
            try:
                fresh = self._served.admit(open_.session_id)
            except ReplayMemoryFull:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many recent requests to remember")
            if not fresh:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "this request id was already run (a replay)")
            worker = _Worker(self.config, open_.session_id, weights, self._started)
            self._active[open_.session_id] = worker
        context.add_callback(worker.stop)
        log.info("session %s: worker %d started", open_.session_id[:8], worker.process.pid)
        outcome = "cancelled"
        try:
            yield from self._drive(worker, request_iterator, context, card)
            outcome = "done"
        except _StreamGone:
            pass
        except Exception as exc:  # context.abort raises a bare Exception: the status code says more
            code = context.code()
            outcome = f"ended with {code.name}" if isinstance(code, grpc.StatusCode) else type(exc).__name__
            raise
        finally:
            log.info("session %s: %s", open_.session_id[:8], outcome)
            worker.stop()
            with self._lock:
                self._active.pop(open_.session_id, None)

    def _drive(self, worker: _Worker, requests: Iterator[node_pb2.SessionControl], context: grpc.ServicerContext,
               card: session.ModelCard | None) -> Iterator[node_pb2.SessionEvent]:
        event = worker.next_event(context, WORKER_START_TIMEOUT_S)
        if event.WhichOneof("event") != "ready_port":
            context.abort(grpc.StatusCode.INTERNAL, f"session worker failed to start ({event.failed or 'no port'})")
        yield node_pb2.SessionEvent(ready=node_pb2.WorkerReady(host=self.config.advertise_host, port=event.ready_port))
        control = _next_control(requests, context)
        if control is None or control.WhichOneof("control") != "start":
            raise _StreamGone()
        start = control.start
        problem = self._check_start(start, card)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        worker.conn.send_bytes(start.SerializeToString())
        while True:
            event = worker.next_event(context)
            kind = event.WhichOneof("event")
            if kind == "token":
                yield node_pb2.SessionEvent(token=event.token)
            elif kind == "done":
                yield node_pb2.SessionEvent(done=node_pb2.SessionDone())
                return
            elif kind == "invalid":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, event.invalid)
            else:  # the worker logged its exception's type and frames on this node's stderr
                log.warning("session %s: worker failed (%s)", worker.session_id[:8], event.failed or kind)
                context.abort(grpc.StatusCode.UNAVAILABLE, f"session worker failed ({event.failed or kind})")

    def _check_start(self, start: node_pb2.StartSession, card: session.ModelCard | None) -> str | None:
        """Why this node will not run ``start`` (None if it will): the orchestrator is not trusted to check."""
        ranks = sorted(e.rank for e in start.endpoints)
        if ranks != list(range(self.config.parties + 1)):
            return f"endpoints must name ranks 0..{self.config.parties} (the parties and the dealer) once each"
        if any(not 0 < e.port < 65536 or not e.host for e in start.endpoints):
            return "every endpoint needs a host and a port in 1..65535"
        if start.prompt_tokens < 1 or start.max_new_tokens < 1:
            return "a session needs at least one prompt token and one new token"
        if card is not None:
            context_length = card.config().max_positions
            if start.prompt_tokens + start.max_new_tokens > context_length:
                return f"prompt plus new tokens exceed the model's context of {context_length}"
            if not start.input_share:
                return "a party session needs its sealed input"
            from pinfer.kvcache.serving import KVRequestError, resolve

            try:
                resolve(start.kv_policy, start.kv_budget)
            except KVRequestError as exc:
                return str(exc)
        elif start.input_share:
            return "the dealer takes no input"
        return None


def _next_control(requests: Iterator[node_pb2.SessionControl],
                  context: grpc.ServicerContext) -> node_pb2.SessionControl | None:
    """The next control message, or None once the stream ends or is cancelled (never blocks past that)."""
    box: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            box.put(next(requests, None))
        except Exception:  # the stream was cancelled while we waited
            box.put(None)

    threading.Thread(target=read, daemon=True).start()
    while context.is_active():
        try:
            return box.get(timeout=_POLL_S)
        except queue.Empty:
            continue
    return None


def server_credentials(key_root: str, role: str) -> grpc.ServerCredentials:
    """Mutual TLS with the deployment CA: callers must present a certificate the CA issued."""
    creds = keys.load_node_credentials(key_root, role)
    return grpc.ssl_server_credentials([(creds.private_key_pem(), creds.certificate_pem())],
                                       root_certificates=creds.ca_pem(), require_client_auth=True)


def serve(config: NodeConfig, address: str) -> tuple[grpc.Server, int, NodeService]:
    """Start the node's gRPC server on ``address`` (``host:port``, port 0 picks one); return it and the port.

    The port must refuse TLS 1.2 (:func:`pinfer.keys.grpc_tls.check_tls13_only`; the process must have
    called :func:`~pinfer.keys.grpc_tls.require_tls13` before importing grpc), else it raises
    :class:`~pinfer.keys.grpc_tls.GrpcTlsError`.
    """
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    service = NodeService(config)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2 * config.slots + 8),
                         options=[("grpc.max_receive_message_length", envelope.MAX_MESSAGE_BYTES),
                                  ("grpc.max_send_message_length", envelope.MAX_MESSAGE_BYTES)])
    node_pb2_grpc.add_NodeServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port(address, server_credentials(config.key_root, config.role))
    server.start()
    try:  # TLS 1.3 only, seen from the outside (grpcio has no minimum-version setting to trust instead)
        grpc_tls.check_tls13_only(address, port, keys.load_node_credentials(config.key_root, config.role))
    except grpc_tls.GrpcTlsError:
        server.stop(0)
        raise
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("%s node listening on port %d", config.role, port)
    return server, port, service
