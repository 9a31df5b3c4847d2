"""The orchestrator: pinfer's client-facing gRPC service, which coordinates parties and the dealer.

Why it can be untrusted: it holds no key that opens an envelope. It authenticates clients (bearer
token), validates what is public (model, sizes, parameters, envelope framing), admits sessions into
a bounded number of worker slots with a bounded queue behind them, opens one control stream per
node for each session, forwards each party its sealed input share, and relays the parties' sealed
token shares to the client as they arrive, with each step's public cost. Whatever goes wrong on a
node ends the session on every node (its control streams are cancelled, which kills the workers).

Status codes: ``UNAUTHENTICATED`` (no or wrong token), ``NOT_FOUND`` (unknown model),
``INVALID_ARGUMENT`` (bad sizes or parameters, a KV policy not served or a budget outside (0, 1], a
prompt over the context, an envelope that is malformed here or does not open at its party),
``ALREADY_EXISTS`` (the caller's own request id is in flight, or the parties already ran it),
``RESOURCE_EXHAUSTED`` (slots and queue full), ``UNAVAILABLE`` (a node down or lost mid-session),
``CANCELLED`` (``Cancel`` or client gone).

Request ids are per caller: sessions are keyed by (token digest, request id), and the parties run a
request under :func:`pinfer.keys.session.session_id` of the two, so no answer (``ALREADY_EXISTS``
here or from a node's replay memory, ``Cancel``'s) depends on another token's requests.
"""

from __future__ import annotations

import collections
import hmac
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from pinfer import keys
from pinfer.keys import envelope, grpc_tls
from pinfer.kvcache import serving as kv_serving
from pinfer.parties.share_store import SIGNED_CARD_FILE, ModelCard, load_card, signed_card
from pinfer.keys.session import REQUEST_ID, SEALED_INPUT_OVERHEAD, session_id, token_digest
from pinfer.proto import inference_pb2, inference_pb2_grpc, node_pb2, node_pb2_grpc
from pinfer.protocols import token_input

log = logging.getLogger("pinfer.service.orchestrator")

STEP_TIMEOUT_S = 600.0
"""Longest wait for the next event of a running session before it is declared lost (UNAVAILABLE)."""
_WAITER_POLL_S = 0.5
"""How often a queued caller checks whether its client is still there."""
HEALTH_INTERVAL_S = 2.0
"""How often the orchestrator asks every node to ``Describe`` itself; its health status follows."""
HEALTH_DEADLINE_S = 1.5


class _SessionFailed(Exception):
    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class OrchestratorConfig:
    """Where nodes are, which models are served, who may call, and how many sessions run at once.

    ``nodes`` maps each role (``party0``, ``party1``, ``dealer``) to its control address; the
    orchestrator checks each node's certificate against the CA with the role as the expected host
    name, which only that node's certificate carries.
    ``models_root`` holds the public ``<model>/model.json`` cards from ``pinfer provision`` (the
    orchestrator needs no share file). ``token_sha256`` holds the SHA-256 of each accepted bearer
    token, so the orchestrator's configuration never contains a token itself.
    """

    key_root: str
    nodes: Mapping[str, str]
    models_root: str
    token_sha256: frozenset[str]
    slots: int = 1
    queue: int = 4
    max_new_tokens: int = 256
    parties: int = 2


@dataclass(eq=False)
class _Ticket:
    """A queued caller's place: ``admitted`` is set when a slot is handed to it."""

    still_wanted: Callable[[], bool]
    admitted: threading.Event = field(default_factory=threading.Event)


class Admission:
    """Worker slots with a bounded first-come, first-served queue behind them.

    Why slots are handed over rather than taken: a freed slot goes straight to the head of the queue
    (never back into a pool that a newcomer or a faster-waking waiter could grab first), so the order
    of admission is the order of arrival. A waiter that left is skipped at hand-over and removes
    itself within ``_WAITER_POLL_S``, so it neither stalls the queue nor keeps a slot.
    """

    def __init__(self, slots: int, queue_size: int) -> None:
        self._free = slots
        self._queue_size = queue_size
        self._queue: collections.deque[_Ticket] = collections.deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """Callers queued for a slot now."""
        with self._lock:
            return len(self._queue)

    def enter(self, still_wanted: Callable[[], bool]) -> bool:
        """Take a slot (True), or False if the queue is full or the caller left while queued."""
        with self._lock:
            if self._free > 0:  # a free slot implies an empty queue: leave() hands slots to waiters first
                self._free -= 1
                return True
            if len(self._queue) >= self._queue_size:
                return False
            ticket = _Ticket(still_wanted)
            self._queue.append(ticket)
        while not ticket.admitted.wait(_WAITER_POLL_S):
            if not still_wanted():
                with self._lock:
                    if not ticket.admitted.is_set():
                        if ticket in self._queue:  # else a hand-over already skipped it
                            self._queue.remove(ticket)
                        return False
                # Handed a slot just as it left: pass the slot on rather than leak it.
                self.leave()
                return False
        return True

    def leave(self) -> None:
        """Give back a slot: to the first queued caller still waiting, else to the pool."""
        with self._lock:
            while self._queue:
                ticket = self._queue.popleft()
                if ticket.still_wanted():
                    ticket.admitted.set()
                    return
            self._free += 1


@dataclass
class _NodeStream:
    """One node's control stream of one session: requests go in through a queue."""

    role: str
    call: grpc.Call
    requests: queue.Queue = field(default_factory=queue.Queue)


class _Session:
    """One generation across the nodes; ``cancel`` ends every node's stream (and so its worker).

    ``owner`` is the SHA-256 of the bearer token that started it; ``session_id`` is the id the nodes
    run it under, derived from the owner and its request id.
    """

    def __init__(self, owner: str, request_id: str) -> None:
        self.owner = owner
        self.session_id = session_id(owner, request_id)
        self.streams: list[_NodeStream] = []
        self.cancelled = threading.Event()
        self._lock = threading.Lock()

    def add(self, stream: _NodeStream) -> None:
        with self._lock:
            self.streams.append(stream)
            if self.cancelled.is_set():
                stream.call.cancel()

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            for stream in self.streams:
                stream.requests.put(None)
                stream.call.cancel()


def _requests(q: queue.Queue) -> Iterator[node_pb2.SessionControl]:
    while True:
        item = q.get()
        if item is None:
            return
        yield item


class Orchestrator(inference_pb2_grpc.InferenceServicer):
    """The ``pinfer.v1.Inference`` service."""

    def __init__(self, config: OrchestratorConfig) -> None:
        self.config = config
        creds = keys.load_node_credentials(config.key_root, keys.ORCHESTRATOR)
        self._channels = {}
        self._health_channels = {}
        for role, address in config.nodes.items():
            channel_creds = grpc.ssl_channel_credentials(
                root_certificates=creds.ca_pem(), private_key=creds.private_key_pem(),
                certificate_chain=creds.certificate_pem())
            # The node's certificate must carry its role as a DNS name (only the CA can grant it).
            options = [
                ("grpc.ssl_target_name_override", role),
                ("grpc.max_send_message_length", envelope.MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", envelope.MAX_MESSAGE_BYTES),
                # A restarted node must be usable (and reported healthy) within seconds, not after
                # gRPC's default reconnect backoff, which grows to minutes while a node is down.
                ("grpc.max_reconnect_backoff_ms", 2000),
            ]
            self._channels[role] = grpc.secure_channel(address, channel_creds, options=options)
            # Health probes get a connection of their own (a local subchannel pool, or gRPC would share
            # one between channels of equal settings): probing a dead node leaves a connection in
            # reconnect backoff, which must not fail the first session after the node is back.
            self._health_channels[role] = grpc.secure_channel(
                address, channel_creds, options=[*options, ("grpc.use_local_subchannel_pool", 1)])
        self._stubs = {role: node_pb2_grpc.NodeStub(ch) for role, ch in self._channels.items()}
        self._health_stubs = {role: node_pb2_grpc.NodeStub(ch) for role, ch in self._health_channels.items()}
        self._admission = Admission(config.slots, config.queue)
        self._sessions: dict[tuple[str, str], _Session] = {}  # by (owner, request id)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._unreachable: list[str] | None = None
        self._watcher: threading.Thread | None = None

    # -- model catalogue ---------------------------------------------------------------------------
    def _cards(self) -> dict[str, ModelCard]:
        root = Path(self.config.models_root)
        cards = (load_card(p.parent) for p in sorted(root.glob("*/model.json")) if (p.parent / SIGNED_CARD_FILE).is_file())
        return {card.name: card for card in cards if card.parties == self.config.parties}

    def _max_new_tokens(self, config: Any) -> int:
        """The serving limit on new tokens: the configured one, within the model's context."""
        return min(self.config.max_new_tokens, config.max_positions - 1)

    def _info(self, card: ModelCard) -> inference_pb2.ModelInfo:
        """The public description; the client trusts only its two CA-signed statements."""
        config = card.config()
        return inference_pb2.ModelInfo(
            name=card.name, architecture=config.family, tokenizer=card.tokenizer, vocab_size=config.vocab_size,
            context_length=config.max_positions, max_new_tokens=self._max_new_tokens(config),
            kv_policy=kv_serving.DEFAULT_POLICY, kv_budget=config.max_positions,
            deployment=keys.load_deployment_statement(self.config.key_root),
            card=signed_card(Path(self.config.models_root) / card.name),
            kv_policies=[inference_pb2.KVPolicyInfo(name=p.name, default_budget=p.default_budget,
                                                    description=p.description) for p in kv_serving.SERVED],
        )

    def _authenticate(self, context: grpc.ServicerContext) -> str:
        """The caller's token digest, or an abort with UNAUTHENTICATED."""
        supplied = dict(context.invocation_metadata()).get("authorization", "")
        scheme, _, token = supplied.partition(" ")
        digest = token_digest(token) if scheme.lower() == "bearer" and token else ""
        if not any(hmac.compare_digest(digest, known) for known in self.config.token_sha256):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")
        return digest

    def _card(self, name: str, context: grpc.ServicerContext) -> ModelCard:
        card = self._cards().get(name)
        if card is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}")
        return card

    def ListModels(self, request, context):
        self._authenticate(context)
        return inference_pb2.ListModelsResponse(models=[self._info(c) for c in self._cards().values()])

    def GetModel(self, request, context):
        self._authenticate(context)
        return self._info(self._card(request.model, context))

    def Cancel(self, request, context):
        """Cancel a running or queued generation started with the caller's own token.

        Another token's request is answered exactly as an unknown id (``cancelled=false``), not with
        PERMISSION_DENIED: a distinct answer would let any token holder probe which request ids are
        in flight. Sessions are looked up by (caller, request id), so another token's never matches.
        """
        caller = self._authenticate(context)
        with self._lock:
            session = self._sessions.get((caller, request.request_id))
        if session is None:
            return inference_pb2.CancelResponse(cancelled=False)
        session.cancel()
        return inference_pb2.CancelResponse(cancelled=True)

    # -- generation --------------------------------------------------------------------------------
    def _validate(self, request: inference_pb2.GenerateRequest, card: ModelCard, context: grpc.ServicerContext) -> None:
        config = card.config()
        limit = self._max_new_tokens(config)

        def invalid(detail: str) -> None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail)

        if not REQUEST_ID.match(request.request_id):
            invalid("request_id must be 16 to 64 lowercase hex characters")
        if not 1 <= request.max_new_tokens <= limit:
            invalid(f"max_new_tokens must be in [1, {limit}]")
        if request.prompt_tokens < 1:
            invalid("the prompt is empty")
        if request.prompt_tokens + request.max_new_tokens > config.max_positions:
            invalid(f"prompt ({request.prompt_tokens} tokens) plus {request.max_new_tokens} new tokens exceeds "
                    f"the model's context of {config.max_positions}")
        try:
            kv_serving.resolve(request.kv_policy, request.kv_budget)
        except kv_serving.KVRequestError as exc:
            invalid(str(exc))
        if len(request.input_shares) != card.parties:
            invalid(f"expected {card.parties} input shares, one per party")
        # What each party's envelope may hold for this prompt length (DPF keys for two parties).
        shares = [token_input.payload(party, card.parties, request.prompt_tokens, config.vocab_size).nbytes
                  for party in range(card.parties)]
        limits = [envelope.TENSOR_OVERHEAD_2D + size + SEALED_INPUT_OVERHEAD for size in shares]
        for party, (sealed, limit) in enumerate(zip(request.input_shares, limits)):
            try:
                envelope.parse_header(sealed, max_payload=limit)
            except envelope.EnvelopeError as exc:
                invalid(f"input share for party {party}: {type(exc).__name__}")

    def Generate(self, request, context):
        owner = self._authenticate(context)
        card = self._card(request.model, context)
        self._validate(request, card, context)
        session = _Session(owner, request.request_id)
        key = (owner, request.request_id)
        with self._lock:
            if key in self._sessions:  # only the caller's own ids: another token's never match
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "request_id in use")
            self._sessions[key] = session
        context.add_callback(session.cancel)
        try:
            if not self._admission.enter(lambda: context.is_active() and not session.cancelled.is_set()):
                if session.cancelled.is_set() or not context.is_active():
                    context.abort(grpc.StatusCode.CANCELLED, "cancelled while queued")
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "all worker slots and the queue are full")
            try:
                yield from self._run(session, request, card)
            except _SessionFailed as exc:
                session.cancel()
                code = grpc.StatusCode.CANCELLED if session.cancelled.is_set() and exc.code == grpc.StatusCode.CANCELLED else exc.code
                context.abort(code, exc.detail)
            finally:
                session.cancel()
                self._admission.leave()
        finally:
            with self._lock:
                self._sessions.pop(key, None)

    def _open(self, session: _Session, role: str, model: str, parties: int) -> _NodeStream:
        stream = _NodeStream(role, None)  # type: ignore[arg-type]
        stream.requests.put(node_pb2.SessionControl(open=node_pb2.OpenSession(
            session_id=session.session_id, model=model, parties=parties)))
        stream.call = self._stubs[role].Session(_requests(stream.requests))
        session.add(stream)
        return stream

    def _run(self, session: _Session, request: inference_pb2.GenerateRequest,
             card: ModelCard) -> Iterator[inference_pb2.GenerateEvent]:
        roles = [keys.party_role(i) for i in range(card.parties)] + [keys.DEALER]
        streams = [self._open(session, role, card.name, card.parties) for role in roles]
        endpoints = []
        for rank, stream in enumerate(streams):
            event = self._next(session, stream)
            if event is None or event.WhichOneof("event") != "ready":
                raise _SessionFailed(grpc.StatusCode.UNAVAILABLE, f"{stream.role} did not start a worker")
            endpoints.append(node_pb2.Endpoint(rank=rank, host=event.ready.host, port=event.ready.port))
        for rank, stream in enumerate(streams):
            share = request.input_shares[rank] if rank < card.parties else b""
            stream.requests.put(node_pb2.SessionControl(start=node_pb2.StartSession(
                endpoints=endpoints, input_share=share, prompt_tokens=request.prompt_tokens,
                max_new_tokens=request.max_new_tokens, kv_policy=request.kv_policy, kv_budget=request.kv_budget)))
        events: queue.Queue = queue.Queue()
        readers = [threading.Thread(target=self._pump, args=(session, stream, events), daemon=True) for stream in streams]
        for reader in readers:
            reader.start()
        pending: dict[int, dict[int, node_pb2.TokenShare]] = {}
        finished: set[str] = set()
        step = 0
        while step < request.max_new_tokens or len(finished) < len(streams):
            try:
                role, item = events.get(timeout=STEP_TIMEOUT_S)
            except queue.Empty:
                raise _SessionFailed(grpc.StatusCode.UNAVAILABLE, "the nodes stopped reporting progress") from None
            if isinstance(item, _SessionFailed):
                raise item
            if item is None:
                finished.add(role)
                continue
            party = keys.party_index(role)
            pending.setdefault(item.step, {})[party] = item
            while len(pending.get(step, {})) == card.parties:
                shares = pending.pop(step)
                yield inference_pb2.GenerateEvent(
                    step=step, phase=shares[0].phase, token_shares=[shares[i].envelope for i in range(card.parties)])
                step += 1

    def _next(self, session: _Session, stream: _NodeStream) -> node_pb2.SessionEvent | None:
        try:
            return next(stream.call, None)
        except grpc.RpcError as exc:
            raise _failure(session, stream.role, exc) from None

    def _pump(self, session: _Session, stream: _NodeStream, events: queue.Queue) -> None:
        try:
            for event in stream.call:
                kind = event.WhichOneof("event")
                if kind == "token":
                    events.put((stream.role, event.token))
                elif kind == "done":
                    stream.requests.put(None)
                    events.put((stream.role, None))
                    return
            events.put((stream.role, _SessionFailed(grpc.StatusCode.UNAVAILABLE, f"{stream.role} ended the session early")))
        except grpc.RpcError as exc:
            events.put((stream.role, _failure(session, stream.role, exc)))

    # -- node health -----------------------------------------------------------------------------
    def unreachable_nodes(self) -> list[str]:
        """Roles of the nodes that did not answer ``Describe`` within ``HEALTH_DEADLINE_S`` (asked at once)."""
        calls = {role: stub.Describe.future(node_pb2.DescribeRequest(), timeout=HEALTH_DEADLINE_S)
                 for role, stub in self._health_stubs.items()}
        down = []
        for role, call in calls.items():
            try:
                call.result()
            except grpc.RpcError:
                down.append(role)
        return down

    def watch_nodes(self, report: Callable[[bool], None]) -> None:
        """Report whether every node answers, now and then every ``HEALTH_INTERVAL_S`` until :meth:`close`.

        Why every node: a session needs each party and the dealer, so with any one of them down
        every request fails, and a load balancer should be told so rather than see SERVING.
        The first check runs before this returns, so the status is right from the start.
        """
        self._check_nodes(report)
        self._watcher = threading.Thread(target=self._watch_nodes, args=(report,), name="pinfer-node-health",
                                         daemon=True)
        self._watcher.start()

    def _watch_nodes(self, report: Callable[[bool], None]) -> None:
        while not self._closed.wait(HEALTH_INTERVAL_S):
            self._check_nodes(report)

    def _check_nodes(self, report: Callable[[bool], None]) -> None:
        down = self.unreachable_nodes()
        if self._closed.is_set() or down == self._unreachable:
            return
        if down:
            log.warning("unreachable: %s; health NOT_SERVING", ", ".join(down))
        else:
            log.info("every node answers; health SERVING")
        self._unreachable = down
        report(not down)

    def close(self) -> None:
        self._closed.set()
        if self._watcher is not None:
            self._watcher.join()  # a check in flight ends within HEALTH_DEADLINE_S; then its channels can close
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.cancel()
        for channel in [*self._channels.values(), *self._health_channels.values()]:
            channel.close()


def _failure(session: _Session, role: str, exc: grpc.RpcError) -> _SessionFailed:
    code = exc.code()
    if code == grpc.StatusCode.CANCELLED or session.cancelled.is_set():
        return _SessionFailed(grpc.StatusCode.CANCELLED, "session cancelled")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.ALREADY_EXISTS):
        return _SessionFailed(code, f"{role}: {exc.details()}")
    log.warning("session failed at %s: %s", role, code.name)
    return _SessionFailed(grpc.StatusCode.UNAVAILABLE, f"{role} is unavailable ({code.name})")


def serve(config: OrchestratorConfig, address: str,
          interceptors: Iterable[grpc.ServerInterceptor] = ()) -> tuple[grpc.Server, int, Orchestrator]:
    """Start the orchestrator (TLS with its ``orchestrator`` certificate, health, reflection) on ``address``.

    Health is SERVING only while every node answers (:meth:`Orchestrator.watch_nodes`). The port must
    refuse TLS 1.2 (:func:`pinfer.keys.grpc_tls.check_tls13_only`; the process must have called
    :func:`~pinfer.keys.grpc_tls.require_tls13` before importing grpc), else it raises
    :class:`~pinfer.keys.grpc_tls.GrpcTlsError`.
    """
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    service = Orchestrator(config)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4 * (config.slots + config.queue) + 8),
                         interceptors=list(interceptors),
                         options=[("grpc.max_receive_message_length", envelope.MAX_MESSAGE_BYTES),
                                  ("grpc.max_send_message_length", envelope.MAX_MESSAGE_BYTES)])
    inference_pb2_grpc.add_InferenceServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server)
    creds = keys.load_node_credentials(config.key_root, keys.ORCHESTRATOR)
    port = server.add_secure_port(address, grpc.ssl_server_credentials([(creds.private_key_pem(), creds.certificate_pem())]))
    server.start()
    try:  # TLS 1.3 only, seen from the outside (grpcio has no minimum-version setting to trust instead)
        grpc_tls.check_tls13_only(address, port, creds)
    except grpc_tls.GrpcTlsError:
        server.stop(0)
        service.close()
        raise

    def report(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", "pinfer.v1.Inference"):
            health_servicer.set(name, status)

    service.watch_nodes(report)
    log.info("orchestrator listening on port %d", port)
    return server, port, service
