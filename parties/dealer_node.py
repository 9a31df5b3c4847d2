"""The dealer's session worker: correlated randomness for one session's parties over its TLS mesh.

Why a worker per session, like the parties': a dealer's streams are keyed to one session's seeds, and
the dealer must die with the session when a party vanishes. The dealer node is the same control
service as a party node (:mod:`pinfer.parties.node`) run with the ``dealer`` role; this module is
what differs, the worker. The dealer joins the mesh as rank ``n`` (CrypTen's TTP slot), hands each
party its seed and answers party 0's requests (:class:`~pinfer.protocols.dealer.DealerServer`). It
never receives an input, weight or activation share.
"""

from __future__ import annotations

from multiprocessing.connection import Connection

import torch

from pinfer.parties.session_worker import WorkerPipe, WorkerSpec, endpoints_of, mesh_config
from pinfer.proto import node_pb2

DEALER_RECV_TIMEOUT_S = 600.0


def dealer_worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of the dealer's session worker (run in a child process of the dealer node)."""
    from pinfer.parties.failure_log import set_up_worker_process

    set_up_worker_process(spec.role, spec.session_id)
    torch.set_num_threads(1)
    pipe = WorkerPipe(conn)
    try:
        _serve_dealer_session(spec, pipe)
    except BaseException as exc:  # reported by type only
        from pinfer.parties.failure_log import log_worker_failure

        log_worker_failure(spec.role, spec.session_id, exc)
        pipe.send(failed=type(exc).__name__)
    finally:
        pipe.close()


def _serve_dealer_session(spec: WorkerSpec, pipe: WorkerPipe) -> None:
    from dataclasses import replace

    from pinfer.protocols import tls
    from pinfer.protocols.channel import Channel
    from pinfer.protocols.dealer import DealerServer

    listener = tls.bind_listener(spec.listen_host, 0)
    pipe.send(ready_port=listener.getsockname()[1])
    start = pipe.receive_start()
    # The dealer idles while party 0 computes between requests, so it waits longer than a party.
    config = replace(mesh_config(spec, spec.parties, endpoints_of(start)), recv_timeout_s=DEALER_RECV_TIMEOUT_S)
    mesh = tls.TlsCommunicator.connect(config, listener=listener)
    try:
        server = DealerServer([Channel(mesh.transport(rank)) for rank in range(spec.parties)])
        server.distribute_seeds()
        server.serve()
    finally:
        mesh.close()
    pipe.send(done=node_pb2.SessionDone())
