"""Oblivious selection on shares: top-k as one-hot rows, for KV-cache eviction and cluster selection.

Which entries win stays secret: the result is a secret one-hot matrix, and callers gather with a
product (one-hot times cache), never with an index. Only ``n`` and ``k`` are public.

Top-k by ranks, in a constant number of rounds: one batch of comparisons over all pairs gives each
entry's rank (how many entries beat it, ties broken towards the lower index so ranks are a
permutation of 0..n-1), and a second batch compares each rank with 1..k. Row r of the result is
``[rank < r+1] - [rank < r]``, exactly one 1 per row. Cost: n(n-1)/2 + k*n comparisons in two
comparison rounds (packed several to a word when the scores' spread is publicly bounded), against k*log2(n) rounds for k successive arg-maxes; the policies call it on
cluster scores (n = cached tokens / cluster size), where the pairs stay cheap and the rounds matter
on a LAN or WAN.

Narrower lanes by a public ``resolution``: entries closer than it may be ranked either way, entries
further apart are ordered exactly. Each party floors its own share, ``y_i = share_i >> t``; then
``sum_i y_i = floor(x / 2^t) - c (mod 2^(64-t))`` with ``c`` in ``[0, N-1]`` fixed per entry (N
parties), so ``x_a - x_b >= N 2^t`` gives ``y_a > y_b``, and the pairs compare the y's, in lanes
``2^t`` times narrower. The truncation is done once per entry, not inside each pairwise difference:
comparisons of one value per entry are transitive, so ranks stay a permutation and every row a
single 1 (dropping bits per pair could make "beats" cyclic).
"""

from __future__ import annotations

import torch

from . import crypten_compat  # noqa: F401  (must precede every crypten import)
import crypten.communicator as comm
from crypten.mpc import MPCTensor

from . import comparison, packed_bits
from .share_wrap import wrap_share
from .sharing import FRACTIONAL_BITS


def truncation(resolution: float | None, parties: int) -> int:
    """Public low bits ``t`` each party drops from its shares: the largest with
    ``parties * 2^t <= resolution`` (in encoding units), 0 without a resolution."""
    if resolution is None:
        return 0
    if not resolution > 0:
        raise ValueError(f"resolution={resolution} must be positive")
    units = resolution * 2.0**FRACTIONAL_BITS
    t = 0
    while t < packed_bits.WORD - 2 and parties * 2.0 ** (t + 1) <= units:
        t += 1
    return t


def pair_lane_width(spread: float | None, t: int, parties: int) -> int:
    """Lanes for differences of per-entry truncated shares: ``|y_a - y_b| < spread 2^(16-t) + N``,
    and only the low ``64 - t`` bits of the y's sum are meaningful."""
    bound = None if spread is None else spread * 2.0 ** (FRACTIONAL_BITS - t) + parties
    return min(packed_bits.lane_width(bound, 0), packed_bits.WORD - t)


def ranks(x: MPCTensor, spread: float | None = None, resolution: float | None = None) -> MPCTensor:
    """Scale-1 shares of each entry's rank along the last dim (0 = largest; ties: lower index first).

    ``spread``, a public bound on max - min along the last dim, lets the comparisons run in narrow
    packed lanes (``packed_bits``); without it they use all 64 bits. ``resolution`` (public, real
    units) narrows them further: entries closer than it may be ranked either way (ties included),
    entries further apart are ordered exactly; ranks remain a permutation of 0..n-1.
    """
    n = x.size(-1)
    first, second = torch.triu_indices(n, n, offset=1)
    parties = comm.get().get_world_size()
    t = truncation(resolution, parties)
    # One truncated value per entry (local, no traffic), so the pairwise comparisons stay transitive.
    y = x if t == 0 else wrap_share(x, x.share >> t, scale_bits=max(FRACTIONAL_BITS - t, 0))
    # beaten[p] = [y_first < y_second]: the later entry beats the earlier one only when strictly larger.
    lanes = pair_lane_width(spread, t, parties) if t else packed_bits.lane_width(spread, FRACTIONAL_BITS)
    beaten = comparison.ltz(y[..., first] - y[..., second], lanes)
    share = torch.zeros(*beaten.share.shape[:-1], n, dtype=torch.int64)
    share.index_add_(-1, first, beaten.share)
    share.index_add_(-1, second, -beaten.share)
    rank = wrap_share(x, share, scale_bits=0)
    # Each entry m is the second of m pairs, and loses those unless beaten: + m, public.
    return rank + torch.arange(n, dtype=torch.int64).expand(share.shape)


def topk_onehot(
    x: MPCTensor, k: int, spread: float | None = None, resolution: float | None = None
) -> MPCTensor:
    """``(..., n)`` -> ``(..., k, n)`` one-hot rows of the k largest entries, largest first, at 16 bits.

    ``spread`` and ``resolution`` as for :func:`ranks`: with a resolution, an entry may swap places
    with one closer to it than the resolution (so the selected set may differ from the exact top-k
    only by entries within the resolution of the k-th largest value)."""
    n = x.size(-1)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must lie in 1..{n}")
    rank = ranks(x, spread, resolution).unsqueeze(-2)
    thresholds = torch.arange(1, k + 1, dtype=torch.int64)[:, None].expand(k, n)
    # Ranks and thresholds are integers below n at scale 1: their differences fit narrow lanes.
    below = comparison.ltz(rank - thresholds, packed_bits.lane_width(float(n + k), 0))  # [rank < r + 1]
    onehot = below.share.clone()
    onehot[..., 1:, :] -= below.share[..., :-1, :]
    return wrap_share(below, onehot << FRACTIONAL_BITS, scale_bits=FRACTIONAL_BITS)
