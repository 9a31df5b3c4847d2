"""Piecewise polynomials on shares: the segment picked by threshold tests, the polynomial in the offset.

A :class:`Spline` approximates ``fn`` on ``[lo, lo + 2^index_bits * width)`` by one polynomial per
segment of width ``width = 2^width_log2``, in the offset ``f = x - start_j`` from the segment's start;
below ``lo`` it is 0, above the last segment 0 or ``x`` itself (SiLU and GeLU tend to relu).

Evaluation (:func:`evaluate`), for ``y = x - lo``:

1. ``y`` is truncated locally to ``SELECT_FRAC_BITS`` fractional bits (``yt``). One
   :func:`comparison.ltz_many` call tests ``yt`` against every segment's start and the range's end
   on a lane wide enough for any input below ``bound`` (one opening and one DCF key for all of them
   with FSS keys, evaluated as one ladder window), and, for a spline whose floor lies above ``lo``,
   ``[x < floor]`` exactly.
2. The tests give, by differences, the one-hot of the piece ``x`` lies in: below ``lo``, one of
   the segments, or above the range. With it, locally (public tables), the piece's coefficients
   (zero below, ``(top, 1, 0, ..)`` above for a spline that tends to x) and its start, so
   ``f = y - start`` is exact. Outside the range ``f`` is large, but every power of it meets a
   coefficient that is exactly 0, so the ring's products vanish whatever they wrap to. The local
   truncation's error of one unit of ``yt`` (and its failure probability of about ``|yt| / 2^63``)
   only moves the choice across a boundary, where each polynomial is fitted with a margin of one
   such unit on either side.
3. Every operand of a product is opened once (:mod:`multi_beaver`): f and the selected
   coefficients c_1 .. c_d (with a floor test also c_0 and the gate ``[x >= floor]``) in the round
   after the tests, then each power of f in the round after it is raised (doubling). A term
   ``c_i f^i`` (``c_i gate f^i``) is a product of opened operands and is local; ``c_0`` is added as
   it is.

Cost for degree ``d`` (two parties): the tests (1 round with FSS keys) and ``ceil(log2 d) + 1``
opening rounds: 4 rounds for d = 4. Online: ``2 d`` words opened per element (``2 d + 2`` with a
floor test) and the tests' masked openings (1, or 2 with a floor test). Dealer: one DCF key per
element (two with a floor test), whatever the number of segments, and ``2 d - 1`` (``5 d``) words
of mask monomials.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import crypten_compat  # noqa: F401  (must precede every crypten import)
import crypten
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor

from . import comparison, multi_beaver, packed_bits
from .share_wrap import truncated_product, wrap_share
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
        above = x if self.above_is_identity else torch.zeros_like(x)
        return torch.where(x < self.floor, torch.zeros_like(x), torch.where(x >= self.top, above, value))


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


def evaluate(x: MPCTensor, spline: Spline, bound: float, at_least_floor: bool = False,
             truncated: bool = True) -> MPCTensor:
    """The spline at x (default 16-bit encoding) for ``|x| < bound``; ``at_least_floor`` promises
    ``x >= floor`` (and ``floor >= lo + 2^-SELECT_FRAC_BITS``), which saves the test ``[x < floor]``.

    ``truncated=False`` returns the value with ``2 * FRAC_BITS`` fractional bits, before its last
    truncation: a caller that sums many values then truncates the sum once, so its rounding errors
    (one unit in the last place per value) do not add up."""
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
    first = SELECT_FRAC_BITS + spline.width_log2  # log2 of a segment's width in units of yt
    segments = 2**spline.index_bits
    tests: list[comparison.Test] = [(yt, lanes, [j << first for j in range(segments + 1)])]
    gated = not at_least_floor and spline.floor != spline.lo
    if gated:
        tests.append((x - spline.floor, lanes - SELECT_FRAC_BITS + FRAC_BITS))
    signs = comparison.ltz_many(tests)
    below = signs[0]  # [yt < start of segment j] for j = 0 .. segments (the last: the range's end)
    one_hot = crypten.cat([below[..., :1], below[..., 1:] - below[..., :-1], 1 - below[..., -1:]], dim=-1)

    column_scales = torch.full((spline.degree + 1,), 2.0**FRAC_BITS, dtype=torch.float64)
    column_scales[0] = 2.0 ** (2 * FRAC_BITS)
    above = torch.zeros(spline.degree + 1, dtype=torch.float64)
    if spline.above_is_identity:  # x = (y - the range's end) + top
        above[0], above[1] = spline.top, 1.0
    pieces = torch.cat([torch.zeros(1, spline.degree + 1, dtype=torch.float64), spline.coeffs, above[None]])
    table = torch.round(pieces * column_scales).to(torch.long)
    starts = torch.arange(-1, segments + 1, dtype=torch.long).clamp(min=0) << (FRAC_BITS + spline.width_log2)
    selected = one_hot.share @ table  # the piece's coefficients (f^0's at 2^-32, the rest 2^-16)
    f = wrap_share(y, y.share - one_hot.share @ starts, FRAC_BITS)

    slots = _Slots(spline.degree, gated)
    plan = multi_beaver.ProductPlan(x, [tuple(x.share.shape)] * slots.count, slots.terms())
    first_round = {slots.power(1): f}
    first_round.update({slots.coefficient(i): wrap_share(f, selected[..., i], 0) for i in slots.opened_coefficients})
    if gated:
        first_round[slots.gate] = 1 - signs[1]
    plan.open(first_round)
    # every term at 2^-32, as c_0
    total = plan.product(slots.constant_term, 2 * FRAC_BITS).share if gated else selected[..., 0]
    fresh = [1]
    for steps in slots.power_rounds():
        for i in fresh:
            total = total + plan.product(slots.term(i), 2 * FRAC_BITS).share
        powers = {h + k: truncated_product(plan.product((slots.power(h), slots.power(k)), 2 * FRAC_BITS))
                  for h, k in steps}
        plan.open({slots.power(i): value for i, value in powers.items()})
        fresh = sorted(powers)
    for i in fresh:
        total = total + plan.product(slots.term(i), 2 * FRAC_BITS).share
    out = wrap_share(x, total, 2 * FRAC_BITS)
    return truncated_product(out) if truncated else out


@dataclass(frozen=True)
class _Slots:
    """The operands of one evaluation's :class:`multi_beaver.ProductPlan`: f, the selected
    coefficients c_1 .. c_d (``gated``: c_0 .. c_d and the gate), and f's powers f^2 .. f^degree.

    Powers are raised by doubling, each round multiplying the highest known power h by every known
    power k (f^(h + k) = f^h f^k); a power's term ``c_i f^i`` (``c_i gate f^i``) is a product of
    opened operands, taken in the round after f^i is computed, with no round of its own."""

    degree: int
    gated: bool

    @property
    def opened_coefficients(self) -> range:
        return range(0 if self.gated else 1, self.degree + 1)

    def coefficient(self, i: int) -> int:
        return 1 + i - self.opened_coefficients.start

    @property
    def gate(self) -> int:
        return self.coefficient(self.degree) + 1

    def power(self, i: int) -> int:
        return 0 if i == 1 else self.coefficient(self.degree) + self.gated + i - 1

    @property
    def count(self) -> int:
        return self.coefficient(self.degree) + self.gated + self.degree

    @property
    def constant_term(self) -> tuple[int, ...]:
        return (self.coefficient(0), self.gate)

    def term(self, i: int) -> tuple[int, ...]:
        return (self.coefficient(i), self.gate, self.power(i)) if self.gated else (self.coefficient(i), self.power(i))

    def power_rounds(self) -> list[list[tuple[int, int]]]:
        """For each round after the first: the products (h, k) that raise the powers."""
        rounds, high = [], 1
        while high < self.degree:
            steps = [(high, k) for k in range(1, high + 1) if high + k <= self.degree]
            rounds.append(steps)
            high += len(steps)
        return rounds

    def terms(self) -> list[tuple[int, ...]]:
        out = [self.constant_term] if self.gated else []
        out += [self.term(i) for i in range(1, self.degree + 1)]
        return out + [(self.power(h), self.power(k)) for steps in self.power_rounds() for h, k in steps]
