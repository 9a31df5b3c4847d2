"""``pinfer up``: the embedded default deployment - orchestrator, parties and dealer as local processes."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="start orchestrator, parties and dealer locally; print the endpoint")
    parser.add_argument("--model", default="smollm2-135m", help="registry name or checkpoint directory to serve")
    parser.add_argument("--dir", help="state directory: keys, shares, token, logs (default: a fresh temporary one)")
    parser.add_argument("--parties", type=int, choices=(2, 3), default=2)
    parser.add_argument("--slots", type=int, default=1, help="sessions run at once")
    parser.add_argument("--queue", type=int, default=4, help="sessions that may wait for a slot")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pinfer.service.local_service import LocalService, ServiceError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s up %(levelname)s %(message)s")  # restarts, on stderr
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pinfer-up-"))
    service = LocalService(root, model=args.model, parties=args.parties, slots=args.slots, queue=args.queue)
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
        print("A process that exits is restarted; Ctrl-C stops every process.", flush=True)
        while True:
            signal.pause()
    except (ServiceError, FileNotFoundError) as exc:  # a node that failed, or a model that is not there
        print(f"pinfer up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the shutdown short
        service.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
