"""``pinfer serve-openai``: an OpenAI-compatible HTTP endpoint on this machine, client of a pinfer service.

Programs written for the OpenAI API (its Python client, curl, anything that speaks it) talk to this
process over local HTTP; it is the pinfer client, so prompts leave it only as sealed shares
(:mod:`pinfer.service.openai_api`). It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve-openai", help="OpenAI-compatible HTTP endpoint (/v1/chat/completions, "
                                                        "/v1/completions, /v1/models) in front of a pinfer service")
    parser.add_argument("--endpoint", required=True, help="orchestrator host:port (what `pinfer up` prints)")
    parser.add_argument("--token", help="bearer token for the orchestrator (prefer --token-file or PINFER_TOKEN)")
    parser.add_argument("--token-file", help="file holding the orchestrator's bearer token")
    parser.add_argument("--ca", required=True, help="deployment CA certificate the orchestrator's certificate chains to")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: prompts reach this process in the clear)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free port)")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--api-key-file", help="require `Authorization: Bearer <the key in this file>` on every request")
    parser.set_defaults(func=run)


def _read_secret(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def run(args: argparse.Namespace) -> int:
    token = _read_secret(args.token_file) if args.token_file else args.token or os.environ.get("PINFER_TOKEN")
    if not token:
        print("pinfer serve-openai: needs the orchestrator's token (--token-file, --token or PINFER_TOKEN)",
              file=sys.stderr)
        return 2
    try:
        import uvicorn

        from pinfer.service.openai_api import OpenAIEndpoint
    except ImportError as exc:
        print(f"pinfer serve-openai: {exc.name} is not installed; install the http extra: "
              "pip install -e '.[http]'", file=sys.stderr)
        return 2
    import grpc

    from pinfer.cli.node import clear_port_file, write_port_file
    from pinfer.keys.trust import UntrustedStatementError
    from pinfer.service.client import Client

    logging.basicConfig(level=logging.INFO, format="%(asctime)s serve-openai %(levelname)s %(message)s")
    clear_port_file(args.port_file)
    if not _is_loopback(args.host):
        print(f"pinfer serve-openai: warning: listening on {args.host}; prompts and answers cross that network "
              "unencrypted between the HTTP caller and this process", file=sys.stderr)
    with Client(args.endpoint, token, args.ca) as client:
        try:
            models = client.models()  # reachable and trusted before anything is accepted
        except (grpc.RpcError, UntrustedStatementError) as exc:
            reason = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)
            print(f"pinfer serve-openai: the service at {args.endpoint} is not usable: {reason}", file=sys.stderr)
            return 1
        api_key = _read_secret(args.api_key_file) if args.api_key_file else None
        app = OpenAIEndpoint(client, api_key).app()
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((args.host, args.port))
        except OSError as exc:
            print(f"pinfer serve-openai: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
            return 1
        port = listener.getsockname()[1]
        host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
        print(f"openai api : http://{host}:{port}/v1  (models: {', '.join(m.name for m in models)})")
        print(f"try        : curl http://{host}:{port}/v1/chat/completions -H 'Content-Type: application/json' "
              f"-d '{{\"model\": \"{models[0].name if models else 'MODEL'}\", \"messages\": "
              "[{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 8}'", flush=True)
        listener.listen()
        write_port_file(args.port_file, port)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        server.run(sockets=[listener])
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
