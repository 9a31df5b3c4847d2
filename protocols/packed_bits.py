"""Sign tests of bounded secret values at a fraction of CrypTen's cost: 64 values per word.

CrypTen turns an arithmetic sharing into a binary one (A2B) with a 64-bit adder on every value, and
turns a bit back (B2A) by opening one 64-bit word per bit. When a value is publicly known to satisfy
``|x| < 2^(bits-1)`` (in encoding units), its low ``bits`` bits already decide its sign and
magnitude, and they are the sum of the parties' shares reduced mod ``2^bits``, a local step. So:

* :func:`ltz` bit-slices the reduced shares and computes only the carry into the top bit: ``[x < 0]``
  for 32-bit lanes costs about a ninth of ``MPCTensor._ltz``; the sign bits come back as arithmetic
  shares through one B2A that opens the masked bits 64 to a word.
* :func:`lane_width` picks the narrowest lane for a public bound.

Everything opened is a value masked by a fresh dealer triple or bit, so the packing changes what is
sent, not what is learnt. A value outside the stated bound gives a wrong result, not an error (the
bound is public and the callers' ranges are measured; see docs/approximations.md).
"""

from __future__ import annotations

import torch

from . import crypten_compat  # noqa: F401  (must precede every crypten import)
import crypten
import crypten.communicator as comm
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor
from crypten.mpc.primitives.binary import BinarySharedTensor

from .share_wrap import wrap_share

WORD = 64


def _binary(share: torch.Tensor) -> BinarySharedTensor:
    out = BinarySharedTensor(src=crypten.mpc.primitives.binary.SENTINEL)
    out.share = share
    out.encoder = FixedPointEncoder(precision_bits=0)
    return out


LANE_WIDTHS = (16, 21, 32)


def lane_width(bound: float | None, frac_bits: int) -> int:
    """The narrowest lane that holds values of magnitude below ``bound`` (real units) with their
    sign, or 64 (no assumption) when there is no bound or it does not fit 32 bits."""
    if bound is None:
        return WORD
    units = bound * 2.0**frac_bits
    return next((w for w in LANE_WIDTHS if units < 2.0 ** (w - 1)), WORD)


def _bit_planes(values: torch.Tensor, bits: int) -> torch.Tensor:
    """``(n,)`` int64 -> ``(bits, ceil(n / 64))`` words: plane j packs bit j of every value, 64 to a word."""
    words = -(-values.numel() // WORD)
    padded = torch.zeros(WORD * words, dtype=torch.int64)
    padded[: values.numel()] = values.reshape(-1)
    planes = (padded[None, :] >> torch.arange(bits)[:, None]) & 1  # (bits, 64 words)
    # Disjoint bits: the wrapping int64 sum is their OR.
    return (planes.reshape(bits, WORD, words) << torch.arange(WORD)[None, :, None]).sum(dim=1)


def _carry_into_top(x: BinarySharedTensor, y: BinarySharedTensor) -> BinarySharedTensor:
    """Carry out of adding the bit planes ``x`` and ``y`` (plane 0 least significant): a tree of
    (generate, propagate) pairs, halving the planes each round, so every AND word is full."""
    g = x & y
    p = x ^ y
    while g.size(0) > 1:
        lowest = None
        if g.size(0) % 2:  # the least significant group waits one round unpaired
            lowest, g, p = (g[:1], p[:1]), g[1:], p[1:]
        lo_g, hi_g, lo_p, hi_p = g[0::2], g[1::2], p[0::2], p[1::2]
        if g.size(0) == 2 and lowest is None:  # the last group needs no propagate
            g = hi_g ^ (hi_p & lo_g)
            break
        both = BinarySharedTensor.stack([hi_p, hi_p]) & BinarySharedTensor.stack([lo_g, lo_p])
        g, p = hi_g ^ both[0], both[1]
        if lowest is not None:
            g, p = BinarySharedTensor.cat([lowest[0], g]), BinarySharedTensor.cat([lowest[1], p])
    return g[0]


def _public_zero_like(x: BinarySharedTensor) -> BinarySharedTensor:
    return _binary(torch.zeros_like(x.share))


def ltz(x: MPCTensor, bits: int = WORD) -> MPCTensor:
    """``[x < 0]`` as scale-1 0/1 shares, for ``|x| < 2^(bits-1)`` in encoding units.

    The sign of ``x mod 2^bits`` is the top bit of the parties' reduced shares added together. The
    shares are bit-sliced (plane j packs bit j of 64 values), so only the carry into the top bit is
    computed, by a tree whose rounds AND ever fewer full words: about 1.5 AND words per value for
    32-bit lanes, against 13 for CrypTen's 64-bit adder. With more than two parties, carry-save
    additions first reduce the operands to two. The sign bits come out packed, ready for the packed
    B2A opening.
    """
    share = x.share
    mine = _bit_planes(share, bits)
    operands = [BinarySharedTensor(mine, src=src) for src in range(comm.get().get_world_size())]
    while len(operands) > 2:
        a, b, c = operands.pop(), operands.pop(), operands.pop()
        half = a ^ b
        ands = BinarySharedTensor.stack([a, c]) & BinarySharedTensor.stack([b, half])
        carry = ands[0] ^ ands[1]  # majority(a, b, c), worth one plane up
        shifted = BinarySharedTensor.cat([_public_zero_like(carry[:1]), carry[:-1]])
        operands += [half ^ c, shifted]
    a, b = operands
    sign = a[bits - 1] ^ b[bits - 1] ^ _carry_into_top(a[: bits - 1], b[: bits - 1])
    return _packed_bits_to_arithmetic(sign, share.size(), x)


def _packed_bits_to_arithmetic(packed: BinarySharedTensor, shape: torch.Size, like: MPCTensor) -> MPCTensor:
    """Bits packed 64 to a word (value i at bit i % 64 of word i // 64) as 0/1 arithmetic shares of
    ``shape`` in ``like``'s wrapper (scale 1): masked by dealer bits, opened packed, unmasked locally."""
    provider = crypten.mpc.get_default_provider()
    r_arith, r_bin = provider.B2A_rng(shape)
    mask = _bit_planes(r_bin.share & 1, 1)[0]
    z = _bit_planes_unpack(_binary(packed.share ^ mask).reveal(), shape.numel()).reshape(shape)
    arith = r_arith * (1 - 2 * z) + z
    return wrap_share(like, arith.share, 0)


def _bit_planes_unpack(words: torch.Tensor, count: int) -> torch.Tensor:
    return ((words[None, :] >> torch.arange(WORD)[:, None]) & 1).reshape(-1)[:count]
