"""Process-side code for the TLS communicator tests: each function runs as one rank in its own process.

Kept in a plain module (not a test file) so forkserver children can import it by name. Results go back
to the launcher through a multiprocessing queue; that pipe links only the test to its own children.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pinfer import keys
from pinfer.protocols import tls
from pinfer.protocols.channel import Channel, Message

_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["pinfer.protocols.tls"])


def make_config(key_dir: Path, rank: int, world_size: int, ports: list[int], with_dealer: bool = False,
                **overrides: Any) -> tls.TlsCommConfig:
    role = keys.party_role(rank) if rank < world_size else keys.DEALER
    credentials = keys.load_node_credentials(overrides.pop("credentials_dir", key_dir), overrides.pop("role", role))
    return tls.TlsCommConfig(
        rank=rank,
        world_size=world_size,
        endpoints={r: ("127.0.0.1", p) for r, p in enumerate(ports)},
        credentials=credentials,
        session_id=overrides.pop("session_id", "test-session"),
        with_dealer=with_dealer,
        **{"connect_timeout_s": 20.0, "recv_timeout_s": 20.0, **overrides},
    )


def _entry(target: Callable[..., Any], rank: int, queue: Any, args: tuple) -> None:
    torch.set_num_threads(1)
    try:
        queue.put((rank, "ok", target(rank, *args)))
    except BaseException as exc:  # reported to the launcher
        queue.put((rank, "error", (type(exc).__name__, str(exc), traceback.format_exc())))


def launch(target: Callable[..., Any], ranks: list[int], args: tuple, timeout: float = 60.0) -> dict[int, tuple[str, Any]]:
    """Run ``target(rank, *args)`` in one process per rank; return {rank: (status, value)}."""
    queue = _CTX.Queue()
    processes = [_CTX.Process(target=_entry, args=(target, rank, queue, args), daemon=True) for rank in ranks]
    for process in processes:
        process.start()
    results: dict[int, tuple[str, Any]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < len(ranks):
            rank, status, value = queue.get(timeout=max(0.1, deadline - time.monotonic()))
            results[rank] = (status, value)
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
    return results


def start(target: Callable[..., Any], rank: int, args: tuple) -> tuple[Any, Any]:
    """Start one rank in the background; returns (process, queue)."""
    queue = _CTX.Queue()
    process = _CTX.Process(target=_entry, args=(target, rank, queue, args), daemon=True)
    process.start()
    return process, queue


# ---------------------------------------------------------------------------------------------------
# Rank programs


def _values(rank: int, n: int = 6) -> torch.Tensor:
    # values near the int64 edges so the sum wraps around Z_2^64, as shares do
    base = torch.tensor([2**62, -(2**63), 2**63 - 1, 7, -5, 123456789], dtype=torch.int64)[:n]
    return base * (rank + 1) + rank


def collectives(rank: int, key_dir: Path, world_size: int, ports: list[int], with_dealer: bool) -> dict[str, Any]:
    """Every collective the MPC layer uses; returns values and stats for the launcher to check."""
    config = make_config(key_dir, rank, world_size, ports, with_dealer)
    out: dict[str, Any] = {}
    dealer = world_size
    with tls.TlsCommunicator.connect(config) as comm:
        if rank == dealer:
            # CrypTen's TTP layout: party 0 asks over ttp_group, the dealer answers to (0, dealer).
            request = comm.recv_obj(0, comm.ttp_group)
            result = torch.arange(6, dtype=torch.int64) * request["scale"]
            comm.send_obj(result.size(), 0, comm.ttp_group)
            comm.broadcast(result, dealer, comm.ttp_comm_group)
            transports = [comm.transport(p) for p in range(world_size)]
            for transport in transports:
                transport.send_bytes(b"seed-for-party-%d" % transport.peer)
                # the MPC core's typed dealer channel runs unchanged over the mesh
                Channel(transport).send(Message("correction", {"party": transport.peer}, [torch.arange(3) * transport.peer]))
            comm.barrier(comm.ttp_group)
            out["stats"] = comm.stats().as_dict()
            return out
        mine = _values(rank)
        out["all_reduce"] = comm.all_reduce(mine).tolist()
        out["all_reduce_xor"] = comm.all_reduce(mine, op=torch.distributed.ReduceOp.BXOR).tolist()
        out["all_reduce_batched"] = [t.tolist() for t in comm.all_reduce([mine, mine[:2] * 3], batched=True)]
        seed = torch.tensor([100 + rank], dtype=torch.int64)
        out["broadcast"] = comm.broadcast(seed, 1).tolist()
        out["broadcast_in_place"] = seed.tolist()
        reduced = comm.reduce(mine, 0)
        out["reduce"] = None if reduced is None else reduced.tolist()
        gathered = comm.gather(mine, world_size - 1)
        out["gather"] = [None if g is None else g.tolist() for g in gathered]
        out["all_gather"] = [g.tolist() for g in comm.all_gather(mine)]
        out["scatter"] = comm.scatter([torch.full((2, 2), 10 * r, dtype=torch.int64) for r in range(world_size)], 0).tolist()
        # point to point, CrypTen's ring pattern (isend to next, irecv from prev, then wait)
        prev_buffer = torch.zeros(3, dtype=torch.int64)
        send = comm.isend(torch.full((3,), rank, dtype=torch.int64), (rank + 1) % world_size)
        recv = comm.irecv(prev_buffer, src=(rank - 1) % world_size)
        send.wait()
        recv.wait()
        out["ring"] = prev_buffer.tolist()
        if rank == 0:
            comm.send(torch.arange(4, dtype=torch.int64).reshape(2, 2), 1)
        elif rank == 1:
            out["recv"] = comm.recv(torch.zeros(2, 2, dtype=torch.int64), 0).tolist()
        obj = {"size": torch.Size([2, 3]), "ops": ("matmul", None, True), "x": [1.5, -(2**70), b"\x00\xff"]}
        out["broadcast_obj"] = repr(comm.broadcast_obj(obj if rank == 0 else None, 0))
        comm.barrier()
        # stats of one isolated all_reduce of 1000 int64s
        before = comm.stats()
        comm.all_reduce(torch.zeros(1000, dtype=torch.int64))
        delta = comm.stats() - before
        out["delta"] = delta.as_dict()
        if with_dealer:
            if rank == 0:
                comm.send_obj({"function": "additive", "scale": 3}, dealer, comm.ttp_group)
                size = comm.recv_obj(dealer, comm.ttp_group)
                result = torch.empty(size, dtype=torch.long)
                comm.broadcast(result, dealer, comm.ttp_comm_group)
                out["ttp"] = result.tolist()
            out["dealer_bytes"] = comm.transport(dealer).recv_bytes()
            message = Channel(comm.transport(dealer)).recv()
            out["dealer_message"] = (message.kind, message.params, [t.tolist() for t in message.tensors])
            comm.barrier(comm.ttp_group)
        out["stats"] = comm.stats().as_dict()
        out["crypten_rounds"] = comm.comm_rounds
        comm.reset_communication_stats()
        after = comm.stats()
        out["after_reset"] = (after.rounds, after.bytes_sent, after.bytes_received, after.messages_sent)
    return out


def crypten_arithmetic(rank: int, key_dir: Path, ports: list[int], world_size: int) -> dict[str, Any]:
    """CrypTen sharing, addition, public scaling and reveal over the TLS mesh (no triples needed)."""
    import crypten
    import crypten.communicator as comm

    from pinfer.protocols import crypten_rng
    from pinfer.protocols.csprng import SEED_BYTES, fresh_seed

    communicator = tls.TlsCommunicator.connect(make_config(key_dir, rank, world_size, ports))
    tls.install(communicator)
    assert comm.get() is communicator and crypten.is_initialized()
    crypten.cfg["communicator.verbose"] = True  # the form that also works with pinfer's config cache
    crypten.reset_communication_stats()

    def as_tensor(seed: bytes) -> torch.Tensor:
        return torch.frombuffer(bytearray(seed), dtype=torch.int64).clone()

    next_seed, local_seed, common_seed = fresh_seed(), fresh_seed(), fresh_seed()
    prev = torch.zeros(SEED_BYTES // 8, dtype=torch.int64)
    send = comm.get().isend(as_tensor(next_seed), (rank + 1) % world_size)
    recv = comm.get().irecv(prev, src=(rank - 1) % world_size)
    send.wait()
    recv.wait()
    common = comm.get().broadcast(as_tensor(common_seed), 0)
    crypten_rng.install(crypten_rng.PartySeeds(prev.numpy().tobytes(), next_seed, local_seed, common.numpy().tobytes()))

    # x: the other party learns the size through broadcast_obj (a torch.Size over the typed codec)
    x = crypten.cryptensor(torch.tensor([1.5, -2.0, 3.25]) if rank == 0 else torch.empty(0), src=0, broadcast_size=True)
    y = crypten.cryptensor(torch.tensor([0.25, 4.0, -1.0]) if rank == 1 else torch.zeros(3), src=1)
    z = (x + y) * 2 - 1
    plain = z.get_plain_text()
    private = x.get_plain_text(dst=1)
    stats = communicator.stats()
    result = {
        "plain": plain.tolist(),
        "private": None if private is None else private.tolist(),
        "share_differs": not torch.equal(z.share, torch.zeros_like(z.share)),
        "crypten_rounds": comm.get().comm_rounds,
        "crypten_bytes": comm.get().comm_bytes,
        "rounds": stats.rounds,
        "bytes_sent": stats.bytes_sent,
    }
    crypten.uninit()
    result["restored"] = comm.get is not tls.TlsCommunicator.get
    return result


def recv_with_timeout(rank: int, key_dir: Path, ports: list[int]) -> dict[str, Any]:
    """Rank 0 waits for a message rank 1 never sends; rank 1 waits until rank 0 has timed out."""
    with tls.TlsCommunicator.connect(make_config(key_dir, rank, 2, ports, recv_timeout_s=0.5 if rank == 0 else 20.0)) as comm:
        if rank == 0:
            start = time.monotonic()
            try:
                comm.recv(torch.zeros(1, dtype=torch.int64), 1)
            except tls.CommTimeoutError as exc:
                elapsed = time.monotonic() - start
                comm.send_obj("done", 1)
                return {"error": type(exc).__name__, "elapsed": elapsed}
            return {"error": None}
        return {"got": comm.recv_obj(0)}


def exit_abruptly(rank: int, key_dir: Path, ports: list[int]) -> dict[str, Any]:
    """Rank 1 dies without a word; rank 0's pending receive fails fast, not at its timeout."""
    comm = tls.TlsCommunicator.connect(make_config(key_dir, rank, 2, ports, recv_timeout_s=30.0))
    if rank == 1:
        comm.barrier()
        import os

        os._exit(0)
    comm.barrier()
    start = time.monotonic()
    try:
        comm.recv(torch.zeros(1, dtype=torch.int64), 1)
    except tls.PeerDisconnectedError as exc:
        return {"error": type(exc).__name__, "elapsed": time.monotonic() - start}
    return {"error": None}


def connect_only(rank: int, key_dir: Path, ports: list[int], world_size: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Try to join a mesh; report what happened and, if linked, do one all_reduce."""
    try:
        comm = tls.TlsCommunicator.connect(make_config(key_dir, rank, world_size, ports, **overrides))
    except tls.CommError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    with comm:
        return {"error": None, "sum": comm.all_reduce(torch.tensor([rank + 1], dtype=torch.int64)).tolist()}


def connect_timed(rank: int, key_dir: Path, ports: list[int], world_size: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Join a mesh and report how long ``connect()`` took (measured here, without process start-up)."""
    start = time.monotonic()
    try:
        comm = tls.TlsCommunicator.connect(make_config(key_dir, rank, world_size, ports, **overrides))
    except tls.CommError as exc:
        return {"error": type(exc).__name__, "message": str(exc), "elapsed": time.monotonic() - start}
    elapsed = time.monotonic() - start
    with comm:
        return {"error": None, "elapsed": elapsed,
                "sum": comm.all_reduce(torch.tensor([rank + 1], dtype=torch.int64)).tolist()}


def emulated_link(rank: int, key_dir: Path, ports: list[int], bandwidth: float, delay: float) -> dict[str, Any]:
    """Ping-pong (latency) and one bulk tensor (bandwidth) over an emulated link."""
    emulation = tls.LinkEmulation(bandwidth_bps=bandwidth, one_way_delay_s=delay)
    with tls.TlsCommunicator.connect(make_config(key_dir, rank, 2, ports, emulation=emulation)) as comm:
        comm.barrier()
        token = torch.zeros(1, dtype=torch.int64)
        start = time.monotonic()
        for _ in range(3):
            if rank == 0:
                comm.send(token, 1)
                token = comm.recv(token, 1)
            else:
                token = comm.recv(token, 0)
                comm.send(token, 0)
        ping = time.monotonic() - start
        bulk = torch.zeros(125_000, dtype=torch.int64)  # 1 MB = 8 Mbit
        start = time.monotonic()
        if rank == 0:
            comm.send(bulk, 1)
            comm.recv(token, 1)
        else:
            comm.recv(bulk, 0)
            comm.send(token, 0)
        return {"ping": ping, "bulk": time.monotonic() - start}
