"""``pinfer node``: run a party or dealer node (the orchestrator's control service and its workers)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from pinfer.atomic_file import write_atomic


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("node", help="run a party or dealer node")
    parser.add_argument("--role", required=True, help="party0, party1 (party2) or dealer")
    parser.add_argument("--keys", required=True, help="key directory, or this node's own folder of it")
    parser.add_argument("--shares", help="provisioned models directory (parties): <model>/model.json, party<i>.shares")
    parser.add_argument("--parties", type=int, choices=(2, 3), default=2)
    parser.add_argument("--listen", default="127.0.0.1:7100", help="control address host:port (port 0: any)")
    parser.add_argument("--advertise", default="127.0.0.1", help="host name other workers dial for the data plane")
    parser.add_argument("--mesh-listen", default=None, help="data-plane bind host (default: the --listen host)")
    parser.add_argument("--slots", type=int, default=2, help="sessions run at once")
    parser.add_argument("--link", choices=("loopback", "lan", "wan"), default="loopback",
                        help="emulate the data plane's link (benchmarks; give every node the same)")
    parser.add_argument("--port-file", help="write the bound control port here once serving")
    parser.set_defaults(func=run)


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (a container's stop), so servers can shut down cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def clear_port_file(path: str | None) -> None:
    """Remove a port file left by an earlier run (a restarted container), so it means "serving now"."""
    if path:
        Path(path).unlink(missing_ok=True)


def write_port_file(path: str | None, port: int) -> None:
    """Publish the bound port; the file often sits in a shared /tmp, where a fixed temp name is a trap."""
    if path:
        write_atomic(path, f"{port}\n".encode(), mode=0o644)


def run(args: argparse.Namespace) -> int:
    from pinfer.keys.grpc_tls import require_tls13

    require_tls13()  # before anything imports grpc: gRPC reads its TLS settings once, at import
    from pinfer.parties.node import NodeConfig, serve

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.role} %(levelname)s %(message)s")
    clear_port_file(args.port_file)
    host = args.listen.rsplit(":", 1)[0]
    config = NodeConfig(role=args.role, key_root=args.keys, parties=args.parties, shares_root=args.shares,
                        slots=args.slots, advertise_host=args.advertise, mesh_listen_host=args.mesh_listen or host,
                        link=args.link)
    server, port, _ = serve(config, args.listen)
    write_port_file(args.port_file, port)
    wait_for_signal()
    server.stop(grace=2).wait()
    return 0
