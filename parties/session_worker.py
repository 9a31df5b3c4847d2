"""One session's worker process on a party node: one CrypTen world, torn down with the process.

Why a process per session: CrypTen keeps its communicator, generators and provider in module
globals, so two sessions cannot share a process; and killing the process is the one clean way to
stop a session whose peer vanished. The worker talks to its node over a local pipe (a child of the
node, never a network link) and to the other party's worker and the dealer over the session's
mutual-TLS mesh. The pipe carries protobuf messages only (:class:`WorkerPipe`): the orchestrator's
``StartSession`` as the node received it, and the worker's ``WorkerEvent`` replies; shares only ever
leave the worker sealed.

Sequence: bind a free data-plane port and report it; map this party's weight shares, which the node
opened once for all its sessions (:mod:`pinfer.parties.weight_cache`); wait for the session's
endpoints and sealed input; open it and check that the client sealed exactly this session's
parameters (:func:`pinfer.keys.session.open_input`, the KV policy and budget among them; a bad envelope
or a disagreement is reported as ``invalid`` before any peer is contacted); join the mesh; run greedy
generation on shares with the request's KV policy; report
every new token's id share sealed under the reply key the client sealed to this party.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import torch

from pinfer.keys import envelope, session
from pinfer.proto import node_pb2

if TYPE_CHECKING:
    from pinfer.parties.weight_cache import SharedShares
    from pinfer.protocols.sharing import ShareBundle
    from pinfer.protocols.tls import LinkEmulation, TlsCommConfig

WORKER_RECV_TIMEOUT_S = 300.0
MESH_CONNECT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a node tells a new worker: who it is and where its material lives.

    No secret travels in it: ``weights`` (parties only) pickles as a duplicate descriptor of the
    node's write-sealed memory holding this party's weight shares.
    """

    role: str
    key_root: str
    session_id: str
    parties: int
    listen_host: str
    weights: SharedShares | None = None
    link: str = "loopback"
    not_before: float = 0.0
    """The node's start time: requests issued before it may be replays the node no longer remembers."""


class WorkerPipe:
    """The worker's end of its node's pipe: typed messages (``pinfer.v1`` protobuf), never pickles."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def receive_start(self) -> node_pb2.StartSession:
        """The session's start, as the node forwarded it from the orchestrator."""
        return node_pb2.StartSession.FromString(self._conn.recv_bytes())

    def send(self, **event: Any) -> None:
        """One ``WorkerEvent`` with the given field set (``ready_port=``, ``token=``, ``invalid=`` ...)."""
        self._conn.send_bytes(node_pb2.WorkerEvent(**event).SerializeToString())

    def close(self) -> None:
        self._conn.close()


def endpoints_of(start: node_pb2.StartSession) -> dict[int, tuple[str, int]]:
    """Every rank's data-plane endpoint (the node checked that each rank appears once)."""
    return {e.rank: (e.host, e.port) for e in start.endpoints}


def mesh_config(spec: WorkerSpec, rank: int, endpoints: dict[int, tuple[str, int]]) -> TlsCommConfig:
    """The TLS communicator configuration of this session's mesh (parties 0..n-1, dealer as rank n)."""
    from pinfer import keys
    from pinfer.protocols import tls

    return tls.TlsCommConfig(
        rank=rank, world_size=spec.parties, endpoints=endpoints,
        credentials=keys.load_node_credentials(spec.key_root, spec.role), session_id=spec.session_id,
        with_dealer=True, connect_timeout_s=MESH_CONNECT_TIMEOUT_S, recv_timeout_s=WORKER_RECV_TIMEOUT_S,
        emulation=link_emulation(spec.link),
    )


LINKS = ("loopback", "lan", "wan")


def link_emulation(link: str) -> LinkEmulation | None:
    """The data plane's emulated link for benchmarks: none, LAN (3 Gbit/s, 0.1 ms) or WAN (100 Mbit/s, 40 ms).

    Every rank of a mesh must use the same one, so it is a node setting that each worker inherits.
    """
    from pinfer.protocols import tls

    presets = {"loopback": None, "lan": tls.LAN, "wan": tls.WAN}
    if link not in presets:
        raise ValueError(f"unknown link {link!r}; one of {', '.join(LINKS)}")
    return presets[link]


def _open_prompt(spec: WorkerSpec, party: int, start: node_pb2.StartSession, card: session.ModelCard,
                 private_key: envelope.PrivateKey) -> tuple[ShareBundle, session.ReplyKey]:
    """This party's prompt share and reply key, if the client sealed exactly this session to it."""
    import time

    from pinfer.protocols import token_input

    vocab_size = card.config().vocab_size
    expected = session.SessionParameters(spec.session_id, card.name, spec.parties, party, start.prompt_tokens,
                                         start.max_new_tokens, start.kv_policy, start.kv_budget)
    form = token_input.payload(party, spec.parties, start.prompt_tokens, vocab_size)
    opened = session.open_input(start.input_share, private_key, expected, now=time.time(), not_before=spec.not_before,
                                max_share_bytes=envelope.TENSOR_OVERHEAD_2D + form.nbytes)
    reply_key = session.ReplyKey(opened.reply_secret, spec.session_id, party)
    received = envelope.decode_tensor(opened.share, expected_dtype=form.dtype, expected_shape=form.shape)
    return token_input.open_prompt(party, spec.parties, received, start.prompt_tokens, vocab_size), reply_key


def party_worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a party's session worker (run in a child process of the party node)."""
    from pinfer.parties.failure_log import set_up_worker_process

    set_up_worker_process(spec.role, spec.session_id)
    torch.set_num_threads(1)
    pipe = WorkerPipe(conn)
    try:
        _serve_party_session(spec, pipe)
    except BaseException as exc:  # reported by type only: messages may name sizes, never secrets
        from pinfer.parties.failure_log import log_worker_failure

        log_worker_failure(spec.role, spec.session_id, exc)
        pipe.send(failed=type(exc).__name__)
    finally:
        pipe.close()


def _serve_party_session(spec: WorkerSpec, pipe: WorkerPipe) -> None:
    from pinfer import keys
    from pinfer.protocols import tls

    party = keys.party_index(spec.role)
    assert party is not None and spec.weights is not None
    listener = tls.bind_listener(spec.listen_host, 0)
    pipe.send(ready_port=listener.getsockname()[1])
    private_key = keys.load_envelope_private_key(spec.key_root, spec.role)
    card, weights = spec.weights.card, spec.weights.bundle()
    start = pipe.receive_start()
    try:
        prompt, reply_key = _open_prompt(spec, party, start, card, private_key)
    except session.SessionContractError as exc:  # its message names fields and bounds, never values
        pipe.send(invalid=f"input for party {party}: {exc}")
        return
    except (envelope.EnvelopeError, ValueError) as exc:
        pipe.send(invalid=f"input for party {party}: {type(exc).__name__}")
        return
    _run_generation(spec, pipe, party, start, listener, card, weights, prompt, reply_key)


def _run_generation(spec: WorkerSpec, pipe: WorkerPipe, party: int, start: node_pb2.StartSession, listener: Any,
                    card: session.ModelCard, weights: ShareBundle, prompt: ShareBundle,
                    reply_key: session.ReplyKey) -> None:
    from pinfer.kvcache.serving import resolve
    from pinfer.parties.worker import TokenShareStep, load_model_shares, stream_on_shares
    from pinfer.protocols import tls
    from pinfer.protocols.costs import CostMeter
    from pinfer.protocols.sharing import SCALE
    from pinfer.protocols.world import PartyContext, activate_communicator, start_party_protocol

    import crypten

    communicator = tls.TlsCommunicator.connect(mesh_config(spec, party, endpoints_of(start)), listener=listener)
    activate_communicator(communicator)
    provider, reading = start_party_protocol(communicator, party, spec.parties)
    context = PartyContext(party, spec.parties, provider, CostMeter(reading))
    model = load_model_shares(context, card.config(), card.norm_shifts, weights)

    def send_token(step: TokenShareStep) -> None:
        if step.scale != SCALE:  # the client divides by the contract's scale, never by one on the wire
            raise RuntimeError("token share scale differs from the session contract's")
        cost = step.cost
        sealed = reply_key.seal(step.step, session.TokenShare(step.id_share, cost.seconds, cost.bytes_sent, cost.rounds,
                                                              cost.dealer_bytes))
        pipe.send(token=node_pb2.TokenShare(step=step.step, phase=step.phase, envelope=sealed))

    # The node checked the policy; the client sealed it to both parties, so both build the same one.
    kv_policy = resolve(start.kv_policy, start.kv_budget).build()
    stream_on_shares(context, model, start.max_new_tokens, prompt, send_token, kv_policy)
    provider.close()
    crypten.uninit()
    pipe.send(done=node_pb2.SessionDone())

