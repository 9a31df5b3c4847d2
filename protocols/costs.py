"""Per-party cost accounting: wall time, bytes and rounds by phase and operator class.

Costs are *exclusive*: time and traffic spent inside a nested section are charged to the innermost
one, so the classes of one phase add up to the phase total. Party-to-party traffic comes from the
communicator's counters; dealer traffic (correlated randomness, the offline material) is counted
separately from its channel.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

OPERATOR_CLASSES = ("embed", "linear", "attention", "softmax", "norm", "activation", "kv-select", "argmax", "other")


@dataclass
class Cost:
    seconds: float = 0.0
    bytes_sent: int = 0
    rounds: int = 0
    dealer_bytes: int = 0

    def add(self, other: Cost) -> None:
        self.seconds += other.seconds
        self.bytes_sent += other.bytes_sent
        self.rounds += other.rounds
        self.dealer_bytes += other.dealer_bytes

    def minus(self, other: Cost) -> Cost:
        return Cost(
            self.seconds - other.seconds,
            self.bytes_sent - other.bytes_sent,
            self.rounds - other.rounds,
            self.dealer_bytes - other.dealer_bytes,
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "seconds": round(self.seconds, 6),
            "bytes": self.bytes_sent,
            "rounds": self.rounds,
            "dealer_bytes": self.dealer_bytes,
        }


@dataclass
class _Frame:
    operator: str
    start: Cost
    children: Cost = field(default_factory=Cost)


class CostMeter:
    """Charges costs to (phase, operator class) buckets; ``reading`` returns cumulative counters."""

    def __init__(self, reading: Callable[[], Cost]) -> None:
        self._reading = reading
        self._stack: list[_Frame] = []
        self.phase = "setup"
        self.buckets: dict[str, dict[str, Cost]] = defaultdict(lambda: defaultdict(Cost))

    def reading(self) -> Cost:
        """The cumulative counters now (subtract two readings for the cost of what ran between)."""
        return self._reading()

    @contextmanager
    def section(self, operator: str) -> Iterator[None]:
        if operator not in OPERATOR_CLASSES:
            raise ValueError(f"unknown operator class {operator!r}")
        frame = _Frame(operator, self._reading())
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            total = self._reading().minus(frame.start)
            self.buckets[self.phase][operator].add(total.minus(frame.children))
            if self._stack:
                self._stack[-1].children.add(total)

    @contextmanager
    def in_phase(self, phase: str) -> Iterator[None]:
        previous, self.phase = self.phase, phase
        try:
            with self.section("other"):
                yield
        finally:
            self.phase = previous

    def phase_total(self, phase: str) -> Cost:
        total = Cost()
        for cost in self.buckets.get(phase, {}).values():
            total.add(cost)
        return total

    def report(self) -> dict[str, dict[str, dict[str, float | int]]]:
        return {
            phase: {op: cost.as_dict() for op, cost in sorted(ops.items())}
            for phase, ops in self.buckets.items()
        }
