"""The data plane's cost per round: two party processes exchange one tensor each way, as a CrypTen
``all_gather`` does, over plain TCP, over a bare TLS 1.3 socket, through the TLS link engine, and over
the mutual-TLS mesh.

Each party is its own process (as in ``pinfer up``), so the rows compare transports rather than two
threads taking turns at one interpreter lock. A round is timed on rank 0 from the call until the peer's
tensor is in hand; every path moves the same framed bytes. The TCP and bare-TLS rows are blocking
``sendall``/``recv_into`` loops: the floor the mesh is measured against. The engine row sends a framed
tensor and waits for the peer's through the communicator's link engine alone (frame codec, link,
progress engine). The mesh row goes through :meth:`TlsCommunicator.all_gather` with the communicator
activated as a party activates it (CrypTen's statistics on), so it adds CrypTen's logging wrapper and the
collective's own bookkeeping. Next to each round's wall time, the benchmark keeps rank 0's CPU time per
round: on a host shared with other work the wall time of a round is mostly each party's CPU time plus
the wait for a core, so the CPU time is the part of the cost that belongs to the path.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

PATHS = ("tcp", "tls socket", "tls engine", "tls mesh")
DEFAULT_SIZES = (64, 64 << 10)  # 8 int64 values, and 64 KiB
_HEADER_BYTES = 20  # the mesh's frame header plus one dimension: the other paths send as many bytes


def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < view.nbytes:
        count = sock.recv_into(view[got:])
        if count == 0:
            raise ConnectionError("peer closed the benchmark connection")
        got += count


def _timed(exchange: Callable[[], None], rounds: int) -> tuple[list[int], int]:
    """Each round's wall time (ns), and this thread's CPU time over all of them (ns)."""
    samples = []
    cpu_start = time.thread_time_ns()
    for _ in range(rounds):
        start = time.perf_counter_ns()
        exchange()
        samples.append(time.perf_counter_ns() - start)
    return samples, time.thread_time_ns() - cpu_start


def _connect(rank: int, key_dir: str, control: Connection, sockets: list[socket.socket]) -> Any:
    """This rank's ends of the three paths: plain TCP and bare TLS (appended to ``sockets``), and the mesh
    (returned, installed into CrypTen as a party installs it). Rank 0 listens and passes its ports on."""
    from pinfer import keys
    from pinfer.protocols import tls
    from pinfer.protocols.world import activate_communicator

    credentials = keys.load_node_credentials(key_dir, keys.party_role(rank))
    mesh_listener = None
    if rank == 0:
        listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
        mesh_listener = tls.bind_listener("127.0.0.1", 0)
        ports = [s.getsockname()[1] for s in (*listeners, mesh_listener)]
        control.send(("ports", ports))
        raw = [listener.accept()[0] for listener in listeners]
        for listener in listeners:
            listener.close()
    else:
        ports = control.recv()
        raw = [socket.create_connection(("127.0.0.1", port)) for port in ports[:2]]
    for sock in raw:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sockets.append(raw[0])
    if rank == 0:
        sockets.append(tls.server_context(credentials).wrap_socket(raw[1], server_side=True))
    else:
        sockets.append(tls.client_context(credentials, False).wrap_socket(raw[1]))
    endpoints = {0: ("127.0.0.1", ports[2]), 1: ("127.0.0.1", 0)}  # rank 1 dials, never listens
    config = tls.TlsCommConfig(rank=rank, world_size=2, endpoints=endpoints, session_id="bench-plane",
                               credentials=credentials)
    mesh = tls.TlsCommunicator.connect(config, listener=mesh_listener)
    activate_communicator(mesh)
    return mesh


def _measure(mesh: Any, tcp: socket.socket, tls: socket.socket, sizes: Sequence[int], rounds: int,
             repeats: int) -> dict[str, dict[int, dict[str, list[float]]]]:
    """Per path and size, each repeat's median wall ms per round and its CPU ms per round."""
    import torch

    def socket_exchange(sock: socket.socket, size: int) -> Callable[[], None]:
        outgoing = bytes(_HEADER_BYTES + size)
        incoming = memoryview(bytearray(_HEADER_BYTES + size))

        def exchange() -> None:
            sock.sendall(outgoing)
            _recv_exactly(sock, incoming)

        return exchange

    peer = 1 - mesh.get_rank()

    def engine_exchange(size: int) -> Callable[[], None]:
        tensor = torch.zeros(size // 8, dtype=torch.int64)

        def exchange() -> None:
            sent = mesh._send_tensor(tensor, peer)
            mesh._post_tensor(peer).wait()
            sent.wait()

        return exchange

    def mesh_exchange(size: int) -> Callable[[], None]:
        tensor = torch.zeros(size // 8, dtype=torch.int64)

        def exchange() -> None:
            mesh.all_gather(tensor)

        return exchange

    results: dict[str, dict[int, dict[str, list[float]]]] = {
        path: {size: {"wall": [], "cpu": []} for size in sizes} for path in PATHS
    }
    for _ in range(repeats):  # paths interleaved, so a burst of load on a shared host hits all of them
        for size in sizes:
            exchanges = (socket_exchange(tcp, size), socket_exchange(tls, size), engine_exchange(size),
                         mesh_exchange(size))
            for path, exchange in zip(PATHS, exchanges):
                _timed(exchange, max(1, rounds // 10))  # warm-up
                samples, cpu_ns = _timed(exchange, rounds)
                results[path][size]["wall"].append(statistics.median(samples) / 1e6)
                results[path][size]["cpu"].append(cpu_ns / rounds / 1e6)
    return results


def _party(rank: int, key_dir: str, sizes: Sequence[int], rounds: int, repeats: int, control: Connection) -> None:
    import torch

    from pinfer.protocols import tls

    torch.set_num_threads(1)  # as a party process runs
    sockets: list[socket.socket] = []
    try:
        mesh = _connect(rank, key_dir, control, sockets)
        control.send(("ok", _measure(mesh, sockets[0], sockets[1], sizes, rounds, repeats)))
    except BaseException as exc:
        control.send(("error", f"rank {rank}: {type(exc).__name__}: {exc}"))
        raise
    finally:
        tls.uninstall()
        for sock in sockets:
            sock.close()


def round_costs(sizes: Sequence[int] = DEFAULT_SIZES, rounds: int = 500, repeats: int = 5,
                timeout_s: float = 300.0) -> dict[str, Any]:
    """Median milliseconds per exchange round for each path and payload size (bytes, multiples of 8).

    Each repeat times ``rounds`` rounds per path and size and keeps their median; the reported value is
    the median over repeats, and ``repeat_medians_ms`` keeps every repeat's so the spread shows.
    ``cpu_ms`` is the median over repeats of rank 0's CPU time per round (``repeat_cpu_ms`` each repeat's).
    """
    if any(size <= 0 or size % 8 for size in sizes):
        raise ValueError("payload sizes must be positive multiples of 8 bytes (int64 values)")
    from pinfer import keys

    ctx = mp.get_context("spawn")  # fresh interpreters: nothing of this process's threads is copied
    with tempfile.TemporaryDirectory(prefix="pinfer-bench-plane-") as key_dir:
        keys.init_keys(Path(key_dir), parties=2)
        pipes = [ctx.Pipe() for _ in range(2)]
        processes = [ctx.Process(target=_party, args=(rank, key_dir, tuple(sizes), rounds, repeats, pipes[rank][1]),
                                 name=f"bench-plane-{rank}", daemon=True) for rank in range(2)]
        for process in processes:
            process.start()
        try:
            deadline = time.monotonic() + timeout_s
            control = [pipe[0] for pipe in pipes]
            if not control[0].poll(timeout_s):
                raise TimeoutError("the benchmark's rank 0 did not start")
            status, value = control[0].recv()
            if status != "ports":
                raise RuntimeError(value)
            control[1].send(value)
            outcomes = []
            for conn in control:
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"the data-plane benchmark did not finish within {timeout_s:.0f}s")
                outcomes.append(conn.recv())
        finally:
            for process in processes:
                process.join(timeout=10)
                if process.is_alive():
                    process.terminate()
    for status, value in outcomes:
        if status != "ok":
            raise RuntimeError(value)
    measured = outcomes[0][1]
    return {
        "rounds_per_repeat": rounds,
        "repeats": repeats,
        "sizes_bytes": list(sizes),
        "paths": {
            path: {str(size): {"median_ms": statistics.median(values["wall"]), "repeat_medians_ms": values["wall"],
                               "cpu_ms": statistics.median(values["cpu"]), "repeat_cpu_ms": values["cpu"]}
                   for size, values in by_size.items()}
            for path, by_size in measured.items()
        },
    }


def size_label(size: int) -> str:
    return f"{size >> 10} KiB" if size >= 1024 and size % 1024 == 0 else f"{size // 8} int64"


def round_rows(costs: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Table headers and rows: per size, ms per round, its multiple of plain TCP, and rank 0's CPU ms per round."""
    sizes = costs["sizes_bytes"]
    headers = ["round path"]
    for s in sizes:
        headers += [f"{size_label(s)} ms", f"{size_label(s)} x tcp", f"{size_label(s)} cpu ms"]
    tcp = costs["paths"]["tcp"]
    rows = []
    for path, by_size in costs["paths"].items():
        row: list[Any] = [path]
        for s in sizes:
            cost = by_size[str(s)]
            row += [cost["median_ms"], cost["median_ms"] / tcp[str(s)]["median_ms"], cost["cpu_ms"]]
        rows.append(row)
    return headers, rows
