"""Why a session worker failed, in a form safe for a node's log: exception types and code locations.

Why not ``log.exception``: an exception's message and its frames' locals are built from the values at
hand, and in a worker those are shares, seeds, keys or sizes derived from them; a traceback printer
would write them out. Type names and (file, line, function) triples come from the code alone, which is
public, so they tell an operator where a session broke and nothing about what it computed.
"""

from __future__ import annotations

import logging
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
