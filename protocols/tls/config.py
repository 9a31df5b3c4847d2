"""What a rank needs to join the mesh: where every rank listens, its credentials, the data plane's limits.

Limits. A frame announcing more than ``max_message_bytes`` (:data:`MAX_MESSAGE_BYTES`) is refused from its
header, before anything is allocated; a link whose program has not taken its frames stops reading at
``max_inbox_messages`` frames or ``max_message_bytes`` bytes, so a flooding peer is held back by TCP.

Link emulation (benchmarks): with a :class:`LinkEmulation`, a sender holds each message until an emulated
link of the given bandwidth would have finished serializing it, and the receiver delivers it no earlier
than ``one_way_delay_s`` after it arrived. Configure every rank with the same emulation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pinfer import keys

DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_RECV_TIMEOUT_S = 120.0
# Largest payload one frame may announce; a bigger announcement fails the link (MessageTooLargeError)
# before a byte is allocated. Sized from the largest frames SmolLM2-135M really sends, both in prefill
# (measured on tiny-llama, scaled by heads, prompt length T and vocabulary V):
#   - the dealer's correction for a softmax over the attention scores: about 24 B x 9 heads x T^2;
#   - the opened one-hot prompt rows of the embedding product: T x V x 8 B = T x 384 KiB;
#   - (set-up) the embedding table's opened mask: V x 576 x 8 B = 216 MiB.
# The service admits prompts whose party-0 input share fits its 1 GiB envelope cap, T <= 2,730 tokens,
# where the softmax correction is 1.5 GiB; 2 GiB covers that with a third to spare, and covers a
# local (PrivateModel) prefill of up to 3,150 tokens. Raise TlsCommConfig.max_message_bytes for longer.
MAX_MESSAGE_BYTES = 1 << 31
# Frames a link holds received but not yet taken by the program. Beyond this (or beyond
# max_message_bytes of buffered frames) the link stops reading, so a peer that floods is held back by
# TCP flow control instead of growing this process. MPC traffic keeps a handful outstanding (party 0
# reads the dealer's replies a round late); 4,096 small frames cost a few MB of bookkeeping.
MAX_INBOX_MESSAGES = 4096


@dataclass(frozen=True)
class LinkEmulation:
    """An emulated link: sender-side bandwidth (bits/s, None = unlimited) and receiver-side one-way delay."""

    bandwidth_bps: float | None = None
    one_way_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.bandwidth_bps is not None and self.bandwidth_bps <= 0:
            raise ValueError("bandwidth_bps must be positive")
        if self.one_way_delay_s < 0:
            raise ValueError("one_way_delay_s must be non-negative")


LAN = LinkEmulation(bandwidth_bps=3e9, one_way_delay_s=0.0001)
WAN = LinkEmulation(bandwidth_bps=100e6, one_way_delay_s=0.040)


@dataclass(frozen=True)
class TlsCommConfig:
    """Where every rank listens, who this process is, and the data plane's limits.

    ``endpoints`` maps every rank of the mesh (parties, plus the dealer when ``with_dealer``) to the
    ``(host, port)`` it listens on. ``listen`` overrides the local bind address (``("0.0.0.0", port)``
    in a container). ``session_id`` must be the same on every rank: a worker of another session that
    dials the same port is refused. Host names in certificates are checked only with
    ``verify_hostname``; the peer's identity is its certificate role either way.
    """

    rank: int
    world_size: int
    endpoints: Mapping[int, tuple[str, int]]
    credentials: keys.NodeCredentials
    session_id: str
    with_dealer: bool = False
    listen: tuple[str, int] | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    recv_timeout_s: float = DEFAULT_RECV_TIMEOUT_S
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_inbox_messages: int = MAX_INBOX_MESSAGES
    emulation: LinkEmulation | None = None
    verify_hostname: bool = False

    @property
    def mesh_size(self) -> int:
        return self.world_size + (1 if self.with_dealer else 0)

    def role_of(self, rank: int) -> str:
        """The certificate role that rank ``rank`` must present."""
        if 0 <= rank < self.world_size:
            return keys.party_role(rank)
        if self.with_dealer and rank == self.world_size:
            return keys.DEALER
        raise ValueError(f"rank {rank} is not in this mesh")

    def validate(self) -> None:
        """Refuse a configuration that could only fail later, or join the wrong mesh (raises ValueError)."""
        if not keys.MIN_PARTIES <= self.world_size <= keys.MAX_PARTIES:
            raise ValueError(f"world_size must be in [{keys.MIN_PARTIES}, {keys.MAX_PARTIES}]")
        if not 0 <= self.rank < self.mesh_size:
            raise ValueError(f"rank {self.rank} outside a mesh of {self.mesh_size}")
        missing = set(range(self.mesh_size)) - set(self.endpoints)
        if missing:
            raise ValueError(f"no endpoint for ranks {sorted(missing)}")
        if self.credentials.role != self.role_of(self.rank):
            raise ValueError(f"rank {self.rank} needs {self.role_of(self.rank)} credentials, got {self.credentials.role}")
        if len(self.session_id.encode()) > 0xFFFF:
            raise ValueError("session id too long")
        if self.connect_timeout_s <= 0 or self.recv_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_message_bytes < 1 or self.max_inbox_messages < 1:
            raise ValueError("message and inbox limits must be positive")
