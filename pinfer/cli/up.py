"""``pinfer up``: the embedded default deployment - orchestrator, parties and dealer as local processes."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="start orchestrator, parties and dealer locally; print the endpoint")
    parser.add_argument("--model", default="smollm2-135m", help="registry name or checkpoint directory to serve")
    parser.add_argument("--dir", help="state directory: keys, shares, token, logs (default: a fresh temporary one)")
    parser.add_argument("--parties", type=int, choices=(2, 3), default=2)
    parser.add_argument("--slots", type=int, default=1, help="sessions run at once")
    parser.add_argument("--queue", type=int, default=4, help="sessions that may wait for a slot")
    parser.add_argument("--openai-port", type=int, metavar="PORT",
                        help="also serve the OpenAI-compatible HTTP endpoint (`pinfer serve-openai`) on "
                             "127.0.0.1:PORT (0: any free port)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pinfer.cli.serve_openai import ServiceUnusable, http_available
    from pinfer.service.local_service import LocalService, ServiceError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s up %(levelname)s %(message)s")  # restarts, on stderr
    if args.openai_port is not None and not http_available("up"):
        return 2
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pinfer-up-"))
    service = LocalService(root, model=args.model, parties=args.parties, slots=args.slots, queue=args.queue)
    http: _HTTPThread | None = None
    # SIGTERM (a script's clean-up, a container's stop) interrupts like Ctrl-C, also while the nodes
    # are still starting, so every process started so far is stopped instead of orphaned.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        endpoint = service.start()
        token_file = root / "client.token"
        print(f"endpoint : {endpoint}")
        print(f"ca       : {service.ca_path}")
        print(f"token    : {token_file}  (bearer token, keep it private)")
        print(f"logs     : {root}/<role>.log")
        print(f"try      : pinfer generate --endpoint {endpoint} --token-file {token_file} --ca {service.ca_path} "
              f"--model {args.model} --prompt 'Hello'")
        if args.openai_port is not None:
            http = _HTTPThread(endpoint, service.token, service.ca_path, args.openai_port)
        print("A process that exits is restarted; Ctrl-C stops every process.", flush=True)
        while True:
            signal.pause()
    except (ServiceError, FileNotFoundError, ServiceUnusable) as exc:  # a node that failed, a model not there
        print(f"pinfer up: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the HTTP port
        print(f"pinfer up: cannot listen on 127.0.0.1:{args.openai_port}: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the shutdown short
        if http is not None:
            http.stop()
        service.stop()


class _HTTPThread:
    """The OpenAI-compatible endpoint as a client of the service just started, served on a thread."""

    def __init__(self, endpoint: str, token: str, ca: Path, port: int) -> None:
        from pinfer.cli.serve_openai import listen
        from pinfer.service.client import Client

        self._client = Client(endpoint, token, ca)
        try:
            self._server, listener = listen(self._client, "127.0.0.1", port, None, None)
        except BaseException:
            self._client.close()
            raise
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [listener]},
                                        name="pinfer-openai-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._client.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
