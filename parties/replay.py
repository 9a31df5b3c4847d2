"""A node's memory of the request ids it has run, bounded in time and size.

Why: a recorded request replayed later would make the parties run it again. The client seals its
issue time, and a worker refuses a request issued more than ``REPLAY_WINDOW_S`` from its clock or
before the node started (:func:`pinfer.keys.session.open_input`). So an id needs remembering only while a
replay of it could still pass that check: ``2 * REPLAY_WINDOW_S`` after the node first saw it covers a
client clock up to a window ahead. Past ``capacity`` ids still inside that time, the node refuses
new sessions rather than forget one.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from pinfer.keys.session import REPLAY_WINDOW_S

DEFAULT_CAPACITY = 65536


class ReplayMemoryFull(Exception):
    """Every remembered id is still inside its window; admitting more would mean forgetting one."""


class ServedRequests:
    """``admit(id)`` is True once per id; False for an id seen within its retention time."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, retention_s: float = 2 * REPLAY_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = capacity
        self._retention_s = retention_s
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, request_id: str) -> bool:
        """Remember ``request_id``; False if it was already run. Raises :class:`ReplayMemoryFull`."""
        now = self._clock()
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - self._retention_s:
                self._seen.popitem(last=False)
            if request_id in self._seen:
                return False
            if len(self._seen) >= self._capacity:
                raise ReplayMemoryFull(f"{self._capacity} request ids are inside their replay window")
            self._seen[request_id] = now
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)
