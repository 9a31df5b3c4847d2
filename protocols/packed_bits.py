"""Bits of bounded secret values at a fraction of CrypTen's cost: several values per 64-bit word.

CrypTen turns an arithmetic sharing into a binary one (A2B) with a 64-bit adder on every value, and
turns a bit back (B2A) by opening one 64-bit word per bit. When a value is publicly known to satisfy
``|x| < 2^(bits-1)`` (in encoding units), its low ``bits`` bits already decide its sign and
magnitude, and they are the sum of the parties' shares reduced mod ``2^bits``, a local step. So:

* :func:`lane_bits` packs ``64 // bits`` reduced shares per word and runs one carry-lookahead adder
  (Kogge-Stone) over the packed words, with public masks that stop carries at lane boundaries:
  ``ceil(log2 bits)`` AND rounds, on ``bits/64`` of the words CrypTen's adder needs.
* :func:`bits_to_arithmetic` opens the masked bits 64 to a word.
* :func:`ltz` bit-slices the reduced shares and computes only the carry into the top bit: ``[x < 0]``
  for 32-bit lanes costs about a ninth of ``MPCTensor._ltz``.

Everything opened is a value masked by a fresh dealer triple or bit, so the packing changes what is
sent, not what is learnt. A value outside the stated bound gives a wrong result, not an error (the
bound is public and the callers' ranges are measured; see docs/approximations.md).
"""

from __future__ import annotations

import functools

import torch

from . import crypten_compat  # noqa: F401  (must precede every crypten import)
import crypten
import crypten.communicator as comm
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor
from crypten.mpc.primitives.binary import BinarySharedTensor

WORD = 64


def _lanes(bits: int) -> int:
    if not 1 <= bits <= WORD:
        raise ValueError(f"lane width {bits} must lie in 1..{WORD}")
    return WORD // bits


@functools.cache
def _lane_mask(bits: int, low: int) -> int:
    """Word mask of the bits whose position inside their lane is >= ``low`` (signed int64 value)."""
    lane = ((1 << bits) - 1) ^ ((1 << low) - 1)
    word = sum(lane << (j * bits) for j in range(_lanes(bits)))
    return word - (1 << WORD) if word >= 1 << (WORD - 1) else word


def _pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Flat ``(n,)`` int64 -> ``(ceil(n / lanes),)`` words; lane j of word w holds value ``j * words + w``."""
    lanes = _lanes(bits)
    words = -(-values.numel() // lanes)
    padded = torch.zeros(lanes * words, dtype=torch.int64)
    padded[: values.numel()] = values.reshape(-1) & ((1 << bits) - 1 if bits < WORD else -1)
    rows = padded.reshape(lanes, words)
    packed = rows[0].clone()
    for j in range(1, lanes):
        packed |= rows[j] << (j * bits)
    return packed


def _unpack(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    lanes = _lanes(bits)
    mask = (1 << bits) - 1 if bits < WORD else -1
    return torch.cat([(words >> (j * bits)) & mask for j in range(lanes)])[:count]


def _binary(share: torch.Tensor) -> BinarySharedTensor:
    out = BinarySharedTensor(src=crypten.mpc.primitives.binary.SENTINEL)
    out.share = share
    out.encoder = FixedPointEncoder(precision_bits=0)
    return out


def _packed_add(x: BinarySharedTensor, y: BinarySharedTensor, bits: int) -> BinarySharedTensor:
    """Lane-wise ``x + y mod 2^bits`` of packed words (Kogge-Stone; no carry crosses a lane)."""
    g = x & y
    p = x ^ y
    total = p.clone()
    shift = 1
    while shift < bits:
        keep = _lane_mask(bits, shift)
        g_in = (g << shift) & keep
        if 2 * shift >= bits:  # the last level needs no group propagate
            g = g ^ (p & g_in)
        else:
            both = BinarySharedTensor.stack([p, p]) & BinarySharedTensor.stack([g_in, (p << shift) & keep])
            g, p = g ^ both[0], both[1]
        shift *= 2
    return total ^ ((g << 1) & _lane_mask(bits, 1))


def lane_bits(x: MPCTensor, bits: int) -> BinarySharedTensor:
    """Binary shares of ``x``'s encoding mod ``2^bits``, one value per element (high bits zero).

    For ``|x| < 2^(bits-1)`` bit ``bits-1`` is the sign and the rest the two's complement, as in
    CrypTen's 64-bit A2B; for ``0 <= x < 2^bits`` the result is x's encoding itself.
    """
    share = x.share
    mine = _pack(share.reshape(-1), bits)
    total: BinarySharedTensor | None = None
    for src in range(comm.get().get_world_size()):
        part = BinarySharedTensor(mine, src=src)  # zero-sharing plus the source's own words: no traffic
        total = part if total is None else _packed_add(total, part, bits)
    assert total is not None
    return _binary(_unpack(total.share, bits, share.numel()).reshape(share.shape))


def bits_to_arithmetic(bits: BinarySharedTensor, like: MPCTensor) -> MPCTensor:
    """Bit 0 of each element of ``bits`` as 0/1 arithmetic shares (scale 1), shaped like ``bits``,
    in ``like``'s wrapper. Each bit is masked by a dealer bit ``r`` (known to the parties in both
    sharings) and the masked bits are opened 64 to a word; then ``x = z + r - 2 z r`` is local."""
    packed = _binary(_bit_planes(bits.share & 1, 1)[0])
    return _packed_bits_to_arithmetic(packed, bits.size(), like)


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


def any_set(x: BinarySharedTensor, low: int, high: int) -> BinarySharedTensor:
    """Bit 0 of each element is the OR of its bits ``low .. high-1`` (the other bits are 0).

    The bits are sliced into planes of 64 values per word and OR-ed as the complement of an AND tree
    over the complemented planes: ``ceil(log2(high - low))`` rounds on about ``(high - low) / 64``
    AND words per value, where shifting ORs through whole 64-bit words costs a word per round.
    """
    if not 0 <= low < high <= WORD:
        raise ValueError(f"bit range [{low}, {high}) must lie in [0, {WORD})")
    count = x.share.numel()
    shifted = x.share.reshape(-1) >> low
    clear = _binary(_bit_planes(shifted, high - low)) ^ -1  # complement: party 0 flips every bit
    while clear.size(0) > 1:
        odd = clear[-1:] if clear.size(0) % 2 else None
        paired = clear.size(0) // 2 * 2
        clear = clear[0:paired:2] & clear[1:paired:2]
        if odd is not None:
            clear = BinarySharedTensor.cat([clear, odd])
    any_plane = clear[0] ^ -1
    return _binary(_bit_planes_unpack(any_plane.share, count).reshape(x.share.shape))


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
    out = like.shallow_copy()
    out._tensor = like._tensor.shallow_copy()
    out._tensor.share = arith.share
    out._tensor.encoder = FixedPointEncoder(precision_bits=0)
    return out


def _bit_planes_unpack(words: torch.Tensor, count: int) -> torch.Tensor:
    return ((words[None, :] >> torch.arange(WORD)[:, None]) & 1).reshape(-1)[:count]
