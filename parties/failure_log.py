"""Why a session worker failed, in a form safe for a node's log: exception types and code locations.

Why not ``log.exception``: an exception's message and its frames' locals are built from the values at
hand, and in a worker those are shares, seeds, keys or sizes derived from them; a traceback printer
would write them out. Type names and (file, line, function) triples come from the code alone, which is
public, so they tell an operator where a session broke and nothing about what it computed.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
import threading
import traceback

log = logging.getLogger("pinfer.worker")

_MAX_CHAIN = 8  # a cause chain is a handful deep; the bound only guards against cycles


def describe_failure(exc: BaseException) -> str:
    """``Type at file:line in function <- ...`` for ``exc`` and its causes, each innermost frame first."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < _MAX_CHAIN:
        seen.add(id(current))
        kind = type(current)
        frames = " <- ".join(f"{f.filename}:{f.lineno} in {f.name}"
                             for f in reversed(traceback.extract_tb(current.__traceback__)))
        parts.append(f"{kind.__module__}.{kind.__qualname__} at {frames or 'no frame'}")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "; caused by ".join(parts)


def log_worker_failure(role: str, session_id: str, exc: BaseException) -> None:
    """Log on the node that ``role``'s worker of ``session_id`` failed with ``exc``: types and frames only."""
    log.error("%s worker of session %s failed: %s", role, session_id[:8], describe_failure(exc))


def worker_format(role: str, session_id: str) -> str:
    """A worker's log line format: its node's (time, role, level, message) plus the session."""
    return f"%(asctime)s {role} worker {session_id[:8]} %(levelname)s %(message)s"


def install_worker_logging(role: str, session_id: str) -> None:
    """Set up a worker process's logging: lines in its node's log format, stray exceptions as types and frames.

    Why: a worker is a forkserver child, which starts with no logging configured, so without this its
    lines reach the node's stderr only through logging's last-resort handler (no time, role or level),
    and an exception in one of its threads, or one raised where Python can only report it (a
    finaliser), would be printed by Python's default hooks with its message. Both hooks here log
    :func:`describe_failure` instead (never the message, the thread's target or the object involved).
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(worker_format(role, session_id)))
        root.addHandler(handler)
        root.setLevel(logging.INFO)

    def thread_failed(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        log.error("%s worker of session %s: thread %s failed: %s", role, session_id[:8], name,
                  describe_failure(args.exc_value) if args.exc_value is not None else args.exc_type.__name__)

    def unraisable(args: sys.UnraisableHookArgs) -> None:
        log.error("%s worker of session %s: unraisable exception: %s", role, session_id[:8],
                  describe_failure(args.exc_value) if args.exc_value is not None else args.exc_type.__name__)

    threading.excepthook = thread_failed
    sys.unraisablehook = unraisable


def set_up_worker_process(role: str, session_id: str) -> None:
    """:func:`install_worker_logging` in a worker process; nothing when a worker main runs in its caller."""
    if mp.parent_process() is not None:
        install_worker_logging(role, session_id)
