"""``pinfer orchestrator``: run the client-facing service in front of the party and dealer nodes."""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("orchestrator", help="run the orchestrator (client API)")
    parser.add_argument("--keys", required=True, help="key directory (orchestrator certificate, manifest)")
    parser.add_argument("--models", required=True, help="provisioned models directory (only model.json is read)")
    parser.add_argument("--node", action="append", default=[], metavar="ROLE=HOST:PORT",
                        help="a node's control address, for party0, party1 (party2) and dealer")
    parser.add_argument("--tokens-sha256", required=True,
                        help="file of accepted bearer tokens' SHA-256 hex digests, one per line")
    parser.add_argument("--listen", default="127.0.0.1:7000")
    parser.add_argument("--slots", type=int, default=1, help="sessions run at once")
    parser.add_argument("--queue", type=int, default=4, help="sessions that may wait for a slot")
    parser.add_argument("--parties", type=int, choices=(2, 3), default=2)
    parser.add_argument("--port-file", help="write the bound port here once serving")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pinfer.keys.grpc_tls import require_tls13

    require_tls13()  # before anything imports grpc: gRPC reads its TLS settings once, at import
    from pinfer import keys
    from pinfer.cli.node import clear_port_file, wait_for_signal, write_port_file
    from pinfer.service.orchestrator import OrchestratorConfig, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s orchestrator %(levelname)s %(message)s")
    clear_port_file(args.port_file)
    nodes = dict(item.split("=", 1) for item in args.node)
    needed = {keys.party_role(i) for i in range(args.parties)} | {keys.DEALER}
    if set(nodes) != needed:
        print(f"pinfer orchestrator: give --node for exactly {sorted(needed)}", file=sys.stderr)
        return 2
    with open(args.tokens_sha256, encoding="utf-8") as f:
        digests = frozenset(line.strip().lower() for line in f if line.strip())
    config = OrchestratorConfig(key_root=args.keys, nodes=nodes, models_root=args.models, token_sha256=digests,
                                slots=args.slots, queue=args.queue, parties=args.parties)
    server, port, service = serve(config, args.listen)
    write_port_file(args.port_file, port)
    wait_for_signal()
    service.close()
    server.stop(grace=2).wait()
    return 0
