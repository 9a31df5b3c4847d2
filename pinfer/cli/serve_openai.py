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
from typing import Any


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
    if not http_available("serve-openai"):
        return 2
    from pinfer.cli.node import clear_port_file
    from pinfer.service.client import Client

    logging.basicConfig(level=logging.INFO, format="%(asctime)s serve-openai %(levelname)s %(message)s")
    clear_port_file(args.port_file)
    api_key = _read_secret(args.api_key_file) if args.api_key_file else None
    with Client(args.endpoint, token, args.ca) as client:
        try:
            server, listener = listen(client, args.host, args.port, api_key, args.port_file)
        except ServiceUnusable as exc:
            print(f"pinfer serve-openai: the service at {args.endpoint} is not usable: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"pinfer serve-openai: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
            return 1
        server.run(sockets=[listener])  # until SIGINT or SIGTERM
    return 0


def http_available(command: str) -> bool:
    """Whether the http extra is installed; says how to install it if not."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"pinfer {command}: {exc.name} is not installed; install the http extra: pip install -e '.[http]'",
              file=sys.stderr)
        return False
    return True


class ServiceUnusable(RuntimeError):
    """The pinfer service cannot be reached, or is not what the pinned CA vouches for."""


def listen(client: Any, host: str, port: int, api_key: str | None, port_file: str | None) -> tuple[Any, socket.socket]:
    """Check that the service answers and is trusted, bind the HTTP port and announce it.

    Returns the uvicorn server and its listening socket, to run with ``server.run(sockets=[listener])``.
    """
    import grpc
    import uvicorn

    from pinfer.cli.node import write_port_file
    from pinfer.keys.trust import UntrustedStatementError
    from pinfer.service.openai_api import OpenAIEndpoint

    try:
        models = client.models()  # reachable and trusted before anything is accepted
    except grpc.RpcError as exc:
        raise ServiceUnusable(f"{exc.code().name}: {exc.details()}") from None
    except UntrustedStatementError as exc:
        raise ServiceUnusable(str(exc)) from None
    if not _is_loopback(host):
        print(f"serve-openai: warning: listening on {host}; prompts and answers cross that network unencrypted "
              "between the HTTP caller and this process", file=sys.stderr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen()
    except OSError:
        listener.close()
        raise
    bound = listener.getsockname()[1]
    url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{bound}/v1"
    print(f"openai api : {url}  (models: {', '.join(m.name for m in models)})")
    print(f"try        : curl {url}/chat/completions -H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{models[0].name if models else 'MODEL'}\", \"messages\": "
          "[{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 8}'", flush=True)
    write_port_file(port_file, bound)
    app = OpenAIEndpoint(client, api_key).app()
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)), listener


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
