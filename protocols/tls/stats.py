"""Traffic statistics: framed application bytes, messages and rounds, per link and in total.

Besides CrypTen's own ``comm_rounds``/``comm_bytes``/``comm_time`` (kept by CrypTen's ``_logging``
decorator exactly as in ``DistributedCommunicator`` when ``cfg.communicator.verbose``), the communicator
always counts framed application bytes and messages per link, and rounds: one round per communicator call
that touched the network, and per link the number of such calls that used that link.
:meth:`~pinfer.protocols.tls.communicator.TlsCommunicator.stats` snapshots them; snapshots subtract to
give the cost of a phase.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LinkStats:
    """Traffic on one link as seen by this rank: framed bytes, messages, and calls that used the link."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    rounds: int = 0

    def __sub__(self, other: LinkStats) -> LinkStats:
        return LinkStats(
            self.bytes_sent - other.bytes_sent,
            self.bytes_received - other.bytes_received,
            self.messages_sent - other.messages_sent,
            self.messages_received - other.messages_received,
            self.rounds - other.rounds,
        )


@dataclass(frozen=True)
class CommStats:
    """A snapshot of this rank's traffic: per peer rank, plus rounds (communicating calls) in total."""

    links: Mapping[int, LinkStats] = field(default_factory=dict)
    rounds: int = 0

    @property
    def bytes_sent(self) -> int:
        return sum(s.bytes_sent for s in self.links.values())

    @property
    def bytes_received(self) -> int:
        return sum(s.bytes_received for s in self.links.values())

    @property
    def messages_sent(self) -> int:
        return sum(s.messages_sent for s in self.links.values())

    @property
    def messages_received(self) -> int:
        return sum(s.messages_received for s in self.links.values())

    def __sub__(self, other: CommStats) -> CommStats:
        return CommStats(
            {peer: s - other.links.get(peer, LinkStats()) for peer, s in self.links.items()},
            self.rounds - other.rounds,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for benchmark reports."""
        return {
            "rounds": self.rounds,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "links": {str(peer): dataclasses.asdict(s) for peer, s in sorted(self.links.items())},
        }


class LinkCounters:
    """Mutable per-link counters, touched only by the caller's thread.

    ``last_op`` is the communicator call that last used the link, so a call counts one round per link
    however many frames it moves.
    """

    __slots__ = ("bytes_sent", "bytes_received", "messages_sent", "messages_received", "rounds", "last_op")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.bytes_sent = self.bytes_received = self.messages_sent = self.messages_received = self.rounds = 0
        self.last_op = -1

    def snapshot(self) -> LinkStats:
        return LinkStats(self.bytes_sent, self.bytes_received, self.messages_sent, self.messages_received, self.rounds)
