"""``pinfer bench service``: the service's data plane and its per-token latency over emulated links.

Two parts. (1) Data plane: the cost of one exchange round (each party sends a tensor of 8 int64
values, or 64 KiB, and receives the peer's) between two party processes over plain TCP, a bare TLS
socket and the TLS mesh (:mod:`pinfer.bench.plane`); and one-way throughput of a bulk tensor between
two :class:`TlsCommunicator` ends next to a plain TCP socket pair, both ends as threads of this
process. (2) Service:
``pinfer up``'s processes (:class:`~pinfer.service.local_service.LocalService`) with every worker's mesh on
loopback, emulated LAN (3 Gbit/s, 0.1 ms one way) or WAN (100 Mbit/s, 40 ms); per link, one
generation's prefill and per-token decode latency as the client sees them, and the parties' own step
costs; on loopback also ``--concurrency`` sessions at once versus total tokens per second.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from pinfer.bench import plane as round_bench
from pinfer.bench.report import machine, table, write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("service", help="data-plane throughput/latency (TLS vs TCP), service per-token latency")
    parser.add_argument("--out", type=Path, required=True, help="directory for service.json")
    parser.add_argument("--model", default="smollm2-135m", help="registry name or checkpoint directory")
    parser.add_argument("--links", nargs="+", default=["loopback", "lan", "wan"], choices=("loopback", "lan", "wan"))
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=4, help="new tokens per generation")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 2], help="sessions at once (loopback)")
    parser.add_argument("--bulk-mib", type=int, default=64, help="bulk transfer size of the data-plane test")
    parser.add_argument("--rounds", type=int, default=500, help="exchange rounds per path, size and repeat")
    parser.add_argument("--round-repeats", type=int, default=5, help="repeats of the round test (median reported)")
    parser.add_argument("--data-plane-only", action="store_true", help="skip the service runs (no model needed)")
    parser.set_defaults(func=run)


def _both(fn0: Any, fn1: Any) -> tuple[Any, Any]:
    """Run two ends concurrently (threads); re-raise the first failure."""
    results: list[Any] = [None, None]
    errors: list[BaseException] = []

    def call(i: int, fn: Any) -> None:
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i, fn)) for i, fn in enumerate((fn0, fn1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results[0], results[1]


def tls_data_plane(bulk_bytes: int) -> dict[str, float]:
    """One-way throughput (Gbit/s) between two TLS communicator ends on loopback."""
    from pinfer import keys
    from pinfer.protocols import tls

    with tempfile.TemporaryDirectory(prefix="pinfer-bench-keys-") as tmp:
        keys.init_keys(Path(tmp), parties=2)
        listeners = [tls.bind_listener("127.0.0.1", 0) for _ in range(2)]
        endpoints = {r: ("127.0.0.1", s.getsockname()[1]) for r, s in enumerate(listeners)}

        def connect(rank: int) -> tls.TlsCommunicator:
            config = tls.TlsCommConfig(rank=rank, world_size=2, endpoints=endpoints, session_id="bench",
                                       credentials=keys.load_node_credentials(tmp, keys.party_role(rank)))
            return tls.TlsCommunicator.connect(config, listener=listeners[rank])

        comms = _both(lambda: connect(0), lambda: connect(1))
        bulk = torch.zeros(bulk_bytes // 8, dtype=torch.int64)
        token = torch.zeros(1, dtype=torch.int64)

        def sender() -> float:
            start = time.perf_counter()
            comms[0].send(bulk, 1)
            comms[0].recv(token, 1)
            return time.perf_counter() - start

        def receiver() -> None:
            comms[1].recv(torch.empty_like(bulk), 0)
            comms[1].send(token, 0)

        seconds, _ = _both(sender, receiver)
        for comm in comms:
            comm.close()
    return {"gbit_per_s": bulk.numel() * 8 * 8 / seconds / 1e9}


def tcp_data_plane(bulk_bytes: int) -> dict[str, float]:
    """The same throughput over a plain loopback TCP connection (no TLS, no framing)."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    for sock in (client, peer):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = bytes(bulk_bytes)

    def recv_exactly(sock: socket.socket, size: int) -> None:
        buffer = bytearray(min(size, 1 << 20))
        while size:
            size -= sock.recv_into(buffer, min(size, len(buffer)))

    def sender() -> float:
        start = time.perf_counter()
        client.sendall(payload)
        recv_exactly(client, 8)
        return time.perf_counter() - start

    def receiver() -> None:
        recv_exactly(peer, bulk_bytes)
        peer.sendall(bytes(8))

    seconds, _ = _both(sender, receiver)
    for sock in (client, peer, server):
        sock.close()
    return {"gbit_per_s": bulk_bytes * 8 / seconds / 1e9}


def service_run(model: str, link: str, prompt_tokens: int, tokens: int, concurrency: int) -> dict[str, Any]:
    """Start the local service on ``link``; ``concurrency`` clients generate at once; latencies and throughput."""
    import pinfer
    from pinfer.service.local_service import LocalService

    with tempfile.TemporaryDirectory(prefix="pinfer-bench-service-") as tmp, \
            LocalService(tmp, model=model, slots=concurrency, node_slots=concurrency, link=link) as service, \
            pinfer.Client(service.endpoint, service.token, service.ca_path) as client:
        info = client.model_info(None)
        prompt = [(7 * i + 3) % info.config.vocab_size for i in range(prompt_tokens)]
        arrivals: list[list[float]] = [[] for _ in range(concurrency)]
        party_decode: list[float] = []
        start = time.perf_counter()

        def one(i: int) -> None:
            for token in client.generate_ids(prompt, tokens, model=info.name):
                arrivals[i].append(time.perf_counter())
                if token.phase == "decode":
                    party_decode.append(token.costs[0].seconds)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    gaps = [b - a for times in arrivals for a, b in zip(times, times[1:])]
    return {
        "link": link, "concurrency": concurrency, "tokens_per_session": tokens, "prompt_tokens": prompt_tokens,
        "first_token_s": statistics.median(times[0] - start for times in arrivals),
        "decode_per_token_s": statistics.median(gaps) if gaps else None,
        "party_decode_step_s": statistics.median(party_decode) if party_decode else None,
        "tokens_per_s": sum(len(t) for t in arrivals) / wall,
        "wall_s": wall,
    }


def run(args: argparse.Namespace) -> int:
    rounds = round_bench.round_costs(rounds=args.rounds, repeats=args.round_repeats)
    print(table(*round_bench.round_rows(rounds)))
    plane = {
        "tls": tls_data_plane(args.bulk_mib << 20),
        "tcp": tcp_data_plane(args.bulk_mib << 20),
    }
    print()
    print(table(["bulk transfer", "Gbit/s"], [[name, m["gbit_per_s"]] for name, m in plane.items()]))
    runs = []
    if not args.data_plane_only:
        runs = [service_run(args.model, link, args.prompt_tokens, args.tokens, 1) for link in args.links]
        if "loopback" in args.links:
            runs += [service_run(args.model, "loopback", args.prompt_tokens, args.tokens, c)
                     for c in args.concurrency if c != 1]
        print()
        print(table(["link", "sessions", "first token s", "decode s/token", "party step s", "tokens/s"],
                    [[r["link"], r["concurrency"], r["first_token_s"], r["decode_per_token_s"],
                      r["party_decode_step_s"], r["tokens_per_s"]] for r in runs]))
    info = machine()
    print(f"\nmachine: {info['cpu']} ({info['cores']} cores), device: {info['device']}")
    path = write_json(args.out, "service.json", {"machine": info, "model": args.model,
                                                   "data_plane": {**plane, "rounds": rounds}, "service": runs})
    print(f"wrote {path}")
    return 0
