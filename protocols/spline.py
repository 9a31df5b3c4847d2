"""Piecewise polynomials on shares: segments picked by sign tests, the polynomial in the offset.

A :class:`Spline` approximates ``fn`` on ``[lo, lo + 2^index_bits * width)`` by one polynomial per
segment of width ``width = 2^width_log2``, in the offset ``f = x - start_j`` from the segment's start;
below ``lo`` it is 0, above the last segment 0 or ``x`` itself (SiLU and GeLU tend to relu).

Evaluation (:func:`evaluate`), for ``y = x - lo``:

1. ``y`` is truncated locally to ``SELECT_FRAC_BITS`` fractional bits (``yt``); one
   :func:`comparison.ltz_many` call then reads the segment index bits of ``yt`` and the range tests
   ``[y < 0]`` and ``[y < top]``: one round with FSS keys, on DCFs of only ``SELECT_FRAC_BITS +
   width_log2 + i`` levels for bit i because the low bits were dropped.
2. The index bits give the segment start exactly (a local sum of shifted bit shares), so
   ``f = y - start`` is exact; the local truncation's error of one unit of ``yt`` (and its failure
   probability of about ``|yt| / 2^63``) only moves the segment choice across a boundary, where each
   polynomial is fitted with a margin of one such unit on either side.
3. The one-hot of the segment (gated by the range tests) and the powers of ``f`` are built in the
   same Beaver rounds; the last round multiplies the selected coefficients with the powers.

Cost for ``m >= 2`` index bits and degree ``d`` (two parties), with g = ceil((m + 1) / 2) bit groups:
the sign tests (1 round with FSS keys), the pair products (1), ceil(log2(g - 1)) joins, the
coefficient selection (1) and the final products (1), and never fewer than ``ceil(log2 d) + 2``: 5
rounds for m = 5, d = 4. Dealer keys for m + 2 sign tests (m + 1 when the caller guarantees
``x >= floor``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import crypten_compat  # noqa: F401  (must precede every crypten import)
import crypten
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import beaver
from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

from . import comparison, packed_bits
from .share_wrap import wrap_share
from .sharing import FRACTIONAL_BITS

FRAC_BITS = FRACTIONAL_BITS

SELECT_FRAC_BITS = 4
"""Fractional bits kept for choosing the segment: a choice off by one unit (1/16) lands in a
neighbouring segment, whose polynomial is fitted that far past its ends."""

_FIT_NODES = 96


@dataclass(frozen=True)
class Spline:
    """One polynomial per segment: ``coeffs[j, i]`` multiplies ``f^i`` on segment j."""

    lo: float
    width_log2: int
    index_bits: int
    coeffs: torch.Tensor  # (2^index_bits, degree + 1) float64: f^0 on a 2^-32 grid, the rest on 2^-16
    above_is_identity: bool
    floor: float  # the output is 0 below this: lo, or a point clear of lo by two selection units

    @property
    def degree(self) -> int:
        return self.coeffs.shape[1] - 1

    @property
    def top(self) -> float:
        """The end of the last segment."""
        return self.lo + 2.0 ** (self.width_log2 + self.index_bits)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The spline in float64 on plaintext (segments chosen exactly)."""
        x = x.to(torch.float64)
        width = 2.0**self.width_log2
        index = torch.floor((x - self.lo) / width).clamp(0, 2**self.index_bits - 1).long()
        f = x - self.lo - index * width
        value = (self.coeffs[index] * torch.stack([f**i for i in range(self.degree + 1)], dim=-1)).sum(-1)
        above = x if self.above_is_identity else torch.zeroswrap_share(x)
        return torch.where(x < self.floor, torch.zeroswrap_share(x), torch.where(x >= self.top, above, value))


def fit(fn: Callable[[torch.Tensor], torch.Tensor], lo: float, width_log2: int, index_bits: int,
        degree: int, above_is_identity: bool, floor: float | None = None) -> Spline:
    """Least squares on Chebyshev nodes (near-minimax) per segment, over the segment widened by one
    selection unit (``2^-SELECT_FRAC_BITS``) at each end. The coefficients of f^1.. are rounded to the
    16-bit encoding they are used in, and the constant is then refitted to their rounding on a 2^-32
    grid, so that a segment's error has no bias of up to half an ulp (a softmax adds thousands of
    exponentials). ``floor`` (default ``lo``) is where the output drops to 0; one above ``lo`` is
    tested exactly, which lets an input at ``floor`` itself (softmax's gap 0) sit clear of the
    segment choice's error."""
    width = 2.0**width_log2
    margin = 2.0**-SELECT_FRAC_BITS
    if margin > width / 4:
        raise ValueError(f"segments of width {width} are too narrow for the selection resolution {margin}")
    floor = lo if floor is None else floor
    if floor != lo and floor < lo + 2 * margin:
        raise ValueError(f"a floor above lo must clear it by two selection units ({2 * margin})")
    unit = (1 - torch.cos(torch.linspace(0, math.pi, _FIT_NODES, dtype=torch.float64))) / 2
    offsets = -margin + unit * (width + 2 * margin)
    powers = torch.vander(offsets, degree + 1, increasing=True)
    rows = []
    for j in range(2**index_bits):
        target = fn(lo + j * width + offsets)
        row = torch.linalg.lstsq(powers, target.unsqueeze(-1)).solution.squeeze(-1)
        row[1:] = torch.round(row[1:] * 2.0**FRAC_BITS) / 2.0**FRAC_BITS
        row[0] = torch.round((target - powers[:, 1:] @ row[1:]).mean() * 2.0 ** (2 * FRAC_BITS)) / 2.0 ** (2 * FRAC_BITS)
        rows.append(row)
    return Spline(lo, width_log2, index_bits, torch.stack(rows), above_is_identity, floor)


def evaluate(x: MPCTensor, spline: Spline, bound: float, at_least_floor: bool = False) -> MPCTensor:
    """The spline at x (default 16-bit encoding) for ``|x| < bound``; ``at_least_floor`` promises
    ``x >= floor`` (and ``floor >= lo + 2^-SELECT_FRAC_BITS``), which saves the test ``[x < floor]``."""
    if at_least_floor and spline.floor == spline.lo:
        raise ValueError("only a floor clear of lo can be promised")
    if FRAC_BITS + spline.width_log2 < SELECT_FRAC_BITS:
        raise ValueError("segments narrower than the selection resolution")
    y = x - spline.lo
    yt = wrap_share(y, y.share.clone(), FRAC_BITS)
    yt._tensor.div_(2 ** (FRAC_BITS - SELECT_FRAC_BITS))
    yt._tensor.encoder = FixedPointEncoder(precision_bits=SELECT_FRAC_BITS)
    span = bound + abs(spline.lo) + abs(spline.top)
    lanes = math.ceil(math.log2(span)) + SELECT_FRAC_BITS + 2
    if lanes > packed_bits.WORD:
        raise ValueError(f"inputs up to {bound} do not fit the 64-bit encoding")
    first = SELECT_FRAC_BITS + spline.width_log2  # bit of yt where the segment index starts
    tests = [(yt, first + i + 1) for i in range(spline.index_bits)]
    tests.append((yt - (spline.top - spline.lo), lanes))
    if not at_least_floor and spline.floor == spline.lo:
        tests.append((yt, lanes))
    elif not at_least_floor:
        tests.append((x - spline.floor, lanes - SELECT_FRAC_BITS + FRAC_BITS))
    signs = comparison.ltz_many(tests)
    bits, below_top = signs[: spline.index_bits], signs[spline.index_bits]
    inside = below_top if at_least_floor else below_top - signs[-1]

    start = sum(b.share << (FRAC_BITS + spline.width_log2 + i) for i, b in enumerate(bits))
    f = wrap_share(y, y.share - start, FRAC_BITS)
    selected, powers = _selected_coefficients_and_powers(bits, inside, f, spline)
    pairs = [(selected[i], powers[i - 1]) for i in range(1, spline.degree + 1)]
    if spline.above_is_identity:
        pairs.append((1 - below_top, x))
    raw = _products(pairs)
    total = selected[0].share + sum(p.share for p in raw[: spline.degree])  # all at 2^-32
    out = wrap_share(x, total, 2 * FRAC_BITS)
    out._tensor.div_(1 << FRAC_BITS)
    out._tensor.encoder = FixedPointEncoder(precision_bits=FRAC_BITS)
    if spline.above_is_identity:
        out = out + wrap_share(x, raw[-1].share, FRAC_BITS)
    return out


def _selected_coefficients_and_powers(
    bits: Sequence[MPCTensor], gate: MPCTensor, f: MPCTensor, spline: Spline
) -> tuple[list[MPCTensor], list[MPCTensor]]:
    """The gated segment's coefficients (exact: f^0's at 2^-32, the others at 2^-16) and ``f, .., f^d``.

    Bits go two at a time into one-hots of 4 (one product each), an odd last bit with the gate, else
    the gate as a group of its own. Groups above the lowest are joined by outer products, one round
    per level; the last round multiplies the lowest group's one-hot into the coefficient sums of the
    rest (a local product with the public table), so the full one-hot is never formed. The powers of
    f ride along in the same rounds.
    """
    powers: dict[int, MPCTensor] = {1: f}
    pairs = [(bits[i], bits[i + 1]) for i in range(0, len(bits) - 1, 2)]
    odd = len(bits) % 2 == 1
    if odd:
        pairs.append((bits[-1], gate))
    products = _with_powers(pairs, powers, spline.degree)
    groups = []
    for (a, b), ab in zip(pairs, products):
        if b is gate:
            groups.append(crypten.stack([b - ab, ab], dim=-1))
        else:
            groups.append(crypten.stack([1 - a - b + ab, a - ab, b - ab, ab], dim=-1))
    if not odd:
        groups.append(gate.unsqueeze(-1))
    while len(groups) > 2:
        joins = [(groups[i], groups[i + 1]) for i in range(1, len(groups) - 1, 2)]
        outer = [(low.unsqueeze(-2), high.unsqueeze(-1)) for low, high in joins]
        joined = [j.flatten(-2) for j in _with_powers(outer, powers, spline.degree)]
        groups = [groups[0]] + joined + (groups[-1:] if len(groups) % 2 == 0 else [])
    column_scales = torch.full((spline.degree + 1,), 2.0**FRAC_BITS, dtype=torch.float64)
    column_scales[0] = 2.0 ** (2 * FRAC_BITS)
    coeffs = torch.round(spline.coeffs * column_scales).to(torch.long)
    if len(groups) == 1:
        selected_share = groups[0].share @ coeffs
    else:
        low, high = groups
        table = coeffs.reshape(high.size(-1), low.size(-1), spline.degree + 1)
        sums = wrap_share(high, torch.einsum("...b,bai->...ai", high.share, table), FRAC_BITS)
        (picked,) = _with_powers([(low.unsqueeze(-1), sums)], powers, spline.degree)
        selected_share = picked.share.sum(-2)
    while len(powers) < spline.degree:
        _with_powers([], powers, spline.degree)
    selected = [wrap_share(f, selected_share[..., i], FRAC_BITS if i else 2 * FRAC_BITS) for i in range(spline.degree + 1)]
    return selected, [powers[i] for i in range(1, spline.degree + 1)]


def _with_powers(pairs: Sequence[tuple[MPCTensor, MPCTensor]], powers: dict[int, MPCTensor],
                 degree: int) -> list[MPCTensor]:
    """The products of ``pairs`` in one round, which also raises the known powers of f towards
    ``degree`` (f^(h + k) = f^h f^k for the highest known h); returns the pairs' products."""
    high = max(powers)
    steps = [(high, k) for k in range(1, high + 1) if high + k <= degree]
    out = _products(list(pairs) + [(powers[h], powers[k]) for h, k in steps])
    for (h, k), product in zip(steps, out[len(pairs):]):
        powers[h + k] = _truncated(product)
    return out[: len(pairs)]


def _products(pairs: Sequence[tuple[MPCTensor, MPCTensor]]) -> list[MPCTensor]:
    """Every ``a * b`` (broadcast) in one Beaver round, untruncated: scale bits add up."""
    left, right, shapes = [], [], []
    for a, b in pairs:
        sa, sb = torch.broadcast_tensors(a.share, b.share)
        shapes.append(sa.shape)
        left.append(sa.reshape(-1))
        right.append(sb.reshape(-1))
    product = beaver.mul(
        ArithmeticSharedTensor.from_shares(torch.cat(left), precision=0),
        ArithmeticSharedTensor.from_shares(torch.cat(right), precision=0),
    ).share
    out, offset = [], 0
    for (a, b), shape in zip(pairs, shapes):
        count = math.prod(shape)
        scale = _scale_bits(a) + _scale_bits(b)
        out.append(wrap_share(a, product[offset : offset + count].reshape(shape), scale))
        offset += count
    return out


def _truncated(x: MPCTensor) -> MPCTensor:
    """A product of two 16-bit encodings brought back to 16 fractional bits."""
    out = wrap_share(x, x.share.clone(), 2 * FRAC_BITS)
    out._tensor.div_(1 << FRAC_BITS)
    out._tensor.encoder = FixedPointEncoder(precision_bits=FRAC_BITS)
    return out


def _scale_bits(x: MPCTensor) -> int:
    return int(x.encoder.scale).bit_length() - 1


