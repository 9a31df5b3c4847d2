"""Faithful truncation of arithmetic shares with the dealer's help: one round, no failure.

Local truncation (each party shifts its own share, CrypTen's two-party ``div_``) is free but wrong by
about 2^(64-f) whenever the shares' sum wraps, which for a shared value V happens with probability
|V| / 2^64: |v| 2^-32 for a product of two 16-bit encodings of real value v. Here the dealer deals
shares of a uniform mask r, of r >> f (logical shift) and of r's top bit r_63. The parties open

    c = z + r,   z = V + 2^62

in one round. z lies in [0, 2^63), so z + r passes 2^64 exactly when r_63 = 1 and c_63 = 0; hence

    z >> f = (c >> f) - (r >> f) + r_63 (1 - c_63) 2^(64-f) - [c mod 2^f < r mod 2^f]

with c public. The last term (a borrow) is dropped, so the result is floor(V / 2^f) or one unit more
(faithful), for every |V| < 2^62 with no failure probability; c is uniform, so nothing about V is
revealed. Works for any number of parties.

Cost per element: one round (one opening), 8 bytes sent by each party; the dealer sends party 0
16 bytes (its shares of r >> f and r_63; every share of r and the others' shares come from the
parties' streams).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import crypten_compat  # noqa: F401  (must precede every crypten import)
import crypten.communicator as comm

if TYPE_CHECKING:  # the dealer deals this protocol's masks with the helpers below
    from .dealer import DealerProvider

OFFSET_LOG2 = 62
"""z = V + 2^62 must stay in [0, 2^63): the shared value's bound is |V| < 2^62."""


def check_bits(bits: int) -> None:
    """Refuse a shift the protocol cannot make (0 < bits < OFFSET_LOG2)."""
    if not 0 < bits < OFFSET_LOG2:
        raise ValueError(f"cannot truncate by {bits} bits")


def logical_shift(words: torch.Tensor, bits: int) -> torch.Tensor:
    """``words`` read as unsigned 64-bit integers, shifted right by ``bits`` (0 < bits < 64)."""
    return (words >> bits) & ((1 << (64 - bits)) - 1)


def top_bit(words: torch.Tensor) -> torch.Tensor:
    """Bit 63 of ``words`` (as 0/1 int64)."""
    return (words < 0).long()


def truncate(share: torch.Tensor, bits: int, provider: DealerProvider) -> torch.Tensor:
    """This party's share of floor(V / 2^bits) or one more, for the shared V (|V| < 2^62) of which
    ``share`` is this party's share; 0 < bits < OFFSET_LOG2."""
    check_bits(bits)
    mask, high, top = provider.truncation_masks(tuple(share.shape), bits)
    first = comm.get().get_rank() == 0
    masked = share + mask + (1 << OFFSET_LOG2) if first else share + mask
    # contiguous: the all-reduce sums storage in memory order, which must agree across parties.
    opened = comm.get().all_reduce(masked.contiguous())
    out = top.get() * ((1 - top_bit(opened)) << (64 - bits)) - high.get()
    if first:
        out += logical_shift(opened, bits) - (1 << (OFFSET_LOG2 - bits))
    return out
