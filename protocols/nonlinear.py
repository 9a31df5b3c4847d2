"""MPC non-linearities on CrypTen shares, built for the activation ranges measured on SmolLM2.

Every function takes and returns :class:`crypten.mpc.MPCTensor` values in CrypTen's default encoding
(Z_2^64, 16 fractional bits) and is deterministic: all approximation parameters are arguments or module
constants, never ``crypten.cfg``, so another component changing CrypTen's global configuration cannot
change these numerics. Domains come from the measured activation ranges (``scripts/activation_ranges.py``) (see ``docs/approximations.md`` for the
measured ranges and the error table):

========================  =====================================  ==========================================
function                  documented domain                      method
========================  =====================================  ==========================================
``exp``                   x <= 0, |x| < 2^45                     spline of e^-w (32 half-unit segments,
                                                                 degree 4), 0 below -15.875
``softmax``               row spread < 2^11; a row needs one     tournament max, the ``exp`` spline,
                          unmasked entry                         ``reciprocal``; masked entries skipped
``reciprocal``            [lo, hi], default [2^-8, 2^16]         MSB range reduction + degree-6 polynomial
``rsqrt``                 [lo, hi], default [2^-12, 2^24]        MSB range reduction + degree-6 polynomial
``silu``                  |x| < 2^15 (error measured on ±20)     spline on [-16, 16) (32 unit segments,
                                                                 degree 4); 0 below, x above
``gelu``                  |x| < 2^15 (error measured on ±20)     spline on [-8, 8) (32 half-unit segments,
                                                                 degree 4); 0 below, x above
``argmax_onehot``         any (narrower lanes with a spread)     comparison tournament + routing back
========================  =====================================  ==========================================

Every choice of a segment, bucket or tournament winner is a sign test (:mod:`comparison`): one round
with the dealer's FSS keys, a packed carry tree otherwise. Why not CrypTen's defaults: its ``exp`` is
``(1 + x/2^n)^(2^n)``, which blows up below ``-2^(n+1)`` and, in 16-bit fixed point, loses n bits of the
input when dividing by ``2^n`` (error ~4e-3 at n = 8); its Newton inverses start from a fixed initial
guess and converge only on a narrow range, while the measured RMSNorm mean squares span 0.006 .. 1.3e6.
Splines (:mod:`spline`) keep every input bit in the polynomial's argument and choose segments exactly
up to one unit of 2^-4, where neighbouring polynomials are fitted to overlap.

Truncation caveat (applies to all CrypTen 2-party code): truncation divides each share locally and
fails, with an error of about 2^32 in real units, with probability |V| / 2^64 for a truncated encoding
V, i.e. |v| * 2^-32 for a product of real value v. Every truncated product below stays at |v| <= 64
(failure <= 2^-26 per element); larger products are exact bit selections or have an exact-zero factor.
``reciprocal`` and ``rsqrt`` divide their input x itself, failing with probability |x| * 2^-48.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import crypten_compat  # noqa: F401  (must precede every crypten import)
import crypten
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor

from . import comparison, multi_beaver, packed_bits, spline
from .share_wrap import truncated_product, wrap_share
from .sharing import FRACTIONAL_BITS

FRAC_BITS = FRACTIONAL_BITS
"""Fractional bits of the fixed-point encoding every function expects (CrypTen's default)."""

_SCALE = 1 << FRAC_BITS

EXP_SPLINE = spline.fit(lambda w: torch.exp(-w), lo=-0.125, width_log2=-1, index_bits=5, degree=4,
                        above_is_identity=False, floor=0.0)
"""e^-w on [0, 15.875) by 32 half-unit segments of degree 4 from -1/8 (fit error 1.4e-6), 0 outside;
segments starting below the floor keep w = 0 (a row's max) clear of the segment choice's error."""

EXP_CUTOFF = EXP_SPLINE.top
"""``exp(x)`` returns 0 for ``x <= -EXP_CUTOFF`` (e^-15.875 = 1.3e-7 is below the 2^-16 resolution)."""

SOFTMAX_SPREAD_LOG2 = 11
"""Within a softmax row, max - min over unmasked scores must be below 2^11 (measured SmolLM2: 82);
``exp`` then folds only 7 high bits for its w >= 16 test (3 rounds instead of 6)."""

RECIPROCAL_RANGE = (2.0**-8, 2.0**16)
"""Default ``reciprocal`` domain: covers softmax denominators [1, T] for T <= 65536."""

RSQRT_RANGE = (2.0**-12, 2.0**24)
"""Default ``rsqrt`` domain: measured norm statistics 6e-4 .. 1.3e6 (GPT-2 LayerNorm, SmolLM2 RMSNorm),
with margin at both ends."""

MANTISSA_DEGREE = 6
"""Degree of the polynomials for m^-1 and m^-1/2 on the mantissa m in [1, 2): relative fit errors
1.0e-5 and 2.1e-6, below the 2^-16 resolution of results in [0.5, 1]; the powers f^2 .. f^6 of
f = m - 1 take 3 rounds."""


def _mantissa_polynomial(power: float) -> torch.Tensor:
    """Coefficients of f^0 .. f^MANTISSA_DEGREE for (1 + f)^power on [0, 1), least squares in relative
    error on Chebyshev nodes."""
    f = (1 - torch.cos(torch.linspace(0, math.pi, 200, dtype=torch.float64))) / 2
    target = (1 + f) ** power
    weighted = torch.vander(f, MANTISSA_DEGREE + 1, increasing=True) / target[:, None]
    return torch.linalg.lstsq(weighted, torch.ones_like(f).unsqueeze(-1)).solution.squeeze(-1)


_RECIPROCAL_POLY = _mantissa_polynomial(-1.0)
_RSQRT_POLY = _mantissa_polynomial(-0.5)

ACTIVATION_BOUND = 2.0**15
"""SiLU and GeLU take |x| < 2^15, 600x the largest input measured (SmolLM2 gate projections: 52):
their range tests then run on 21-bit lanes."""

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


SILU_SPLINE = spline.fit(lambda x: x * torch.sigmoid(x), lo=-16.0, width_log2=0, index_bits=5, degree=4,
                         above_is_identity=True)
GELU_SPLINE = spline.fit(_gelu_tanh, lo=-8.0, width_log2=-1, index_bits=5, degree=4, above_is_identity=True)

ERROR_BOUNDS: dict[str, tuple[float, float]] = {
    "exp": (5e-5, 0.0),
    "reciprocal": (1e-4, 1e-4),
    "rsqrt": (1e-4, 1e-4),
    "silu": (1e-4, 0.0),
    "gelu": (1e-4, 0.0),
    "softmax": (2e-4, 0.0),
    "rms_normalize": (5e-4, 2e-4),
}
"""Documented error bounds over each function's domain: |f_mpc(x) - f(x)| <= abs + rel * |f(x)|, with
f evaluated in float64 on the encoded input. The tests enforce them; docs/approximations.md lists the
measured maxima behind them. ``argmax_onehot`` is exact."""


# --- share-level helpers -------------------------------------------------------------------------


def _require_default_encoding(x: MPCTensor) -> None:
    if x.encoder.scale != _SCALE:
        raise ValueError(f"expected {FRAC_BITS} fractional bits, got scale {x.encoder.scale}")


def _to_fixed(bits: MPCTensor) -> MPCTensor:
    """Re-encode a scale-1 integer tensor at 16 fractional bits (exact: shares times 2^16)."""
    return wrap_share(bits, bits.share * _SCALE, FRAC_BITS)


def _mul_stacked(a: Sequence[MPCTensor], b: Sequence[MPCTensor]) -> list[MPCTensor]:
    """Elementwise products a[i] * b[i] of same-shaped tensors in one Beaver round."""
    prod = crypten.stack(list(a)) * crypten.stack(list(b))
    return [prod[i] for i in range(len(a))]


def _scale_pow2(x: MPCTensor, shifts: torch.Tensor) -> MPCTensor:
    """x.unsqueeze(-1) * 2^shifts, exact for shifts >= 0 and one local truncation otherwise."""
    x = x.unsqueeze(-1)
    up = torch.where(shifts > 0, 2**shifts.clamp(min=0), 1)
    down = torch.where(shifts < 0, 2 ** (-shifts).clamp(min=0), 1)
    out = wrap_share(x, x.share * up, FRAC_BITS)
    if bool((down > 1).any()):
        out._tensor.div_(down)
    return out


# --- range reduction -----------------------------------------------------------------------------


BUCKET_HEADROOM_LOG2 = 8
"""The comparisons of ``_buckets`` stay exact for inputs up to 2^8 times the top of the range (their
lanes are that much wider than ``hi`` needs); beyond that they wrap."""


def _buckets(x: MPCTensor, lo: float, hi: float, log2_base: int) -> tuple[MPCTensor, torch.Tensor]:
    """One-hot (scale 1) over buckets [base^e, base^(e+1)) for e = e_lo .. e_hi, and the exponents.

    Inputs below base^e_lo fall in the first bucket and inputs at or above base^e_hi (up to
    2^BUCKET_HEADROOM_LOG2 hi) in the last, so every element lands in exactly one bucket. Needs
    x >= 0. The bucket edges are thresholds of one test of x (:func:`comparison.ltz_many`): one
    round, one opening and one DCF key per element with FSS keys, whatever the number of edges.
    """
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got [{lo}, {hi}]")
    e_lo = math.floor(math.log2(lo) / log2_base)
    e_hi = max(math.floor(math.log2(hi) / log2_base), e_lo + 1)
    exps = torch.arange(e_lo, e_hi + 1)
    positions = [FRAC_BITS + log2_base * int(e) for e in exps[1:]]
    lanes = math.ceil(math.log2(hi)) + FRAC_BITS + BUCKET_HEADROOM_LOG2 + 2
    if positions[0] < 0 or lanes > packed_bits.WORD:
        raise ValueError(f"range [{lo}, {hi}] does not fit the 64-bit encoding")
    scale = int(x.encoder.scale)
    edges = [int(round(2.0 ** (log2_base * int(e)) * scale)) for e in exps[1:]]  # in x's encoding units
    below = comparison.ltz_many([(x, lanes, edges)])[0]
    ge = 1 - below  # ge[..., j] = [x >= base^e_{j+1}]
    onehot = crypten.cat([1 - ge[..., :1], ge[..., :-1] - ge[..., 1:], ge[..., -1:]], dim=-1)
    return onehot, exps


def _select(onehot: MPCTensor, values: MPCTensor) -> MPCTensor:
    """sum_j onehot[..., j] * values[..., j]; exact because the one-hot has scale 1."""
    return (onehot * values).sum(dim=-1)


def _scaled_selections(onehot: MPCTensor, x: MPCTensor, times: MPCTensor, x_shifts: torch.Tensor,
                       times_shifts: torch.Tensor) -> tuple[MPCTensor, MPCTensor]:
    """``sum_j onehot_j x 2^x_shifts_j`` and ``sum_j onehot_j times 2^times_shifts_j`` in one round
    (x's last dim is 1, ``onehot`` is x's buckets on a new last axis).

    Each operand is opened once (:mod:`multi_beaver`): the bucket one-hot and ``times`` instead of one
    scaled copy of ``times`` per bucket. The products are shifted up to a common scale (exactly), summed
    and truncated once: a zero product of an unselected bucket adds nothing, where truncating each
    would add up to one unit of error per bucket."""
    plan = multi_beaver.ProductPlan(x, [tuple(onehot.share.shape), tuple(x.share.shape) + (1,),
                                        tuple(times.share.shape) + (1,)], [(0, 1), (0, 2)])
    plan.open({0: onehot, 1: x.unsqueeze(-1), 2: times.unsqueeze(-1)})
    return (_aligned_sum(plan.product((0, 1), FRAC_BITS), x_shifts),
            _aligned_sum(plan.product((0, 2), FRAC_BITS), times_shifts))


def _aligned_sum(products: MPCTensor, shifts: torch.Tensor) -> MPCTensor:
    """sum_j products[..., j] 2^shifts_j for 0/1-gated products of which at most one is nonzero: every
    column raised exactly to the highest scale, one truncation after the sum."""
    low = int(shifts.min())
    total = wrap_share(products, (products.share << (shifts - low)).sum(dim=-1), FRAC_BITS)
    if low < 0:
        total._tensor.div_(2**-low)
    elif low > 0:
        total._tensor.share <<= low
    return total


def _linear_int(terms: Sequence[MPCTensor], coeffs: Sequence[float], const: float) -> MPCTensor:
    """const + sum(coeffs[i] * terms[i]) with a single truncation (coefficients kept at 16 bits)."""
    share = sum(t.share * int(round(c * _SCALE)) for t, c in zip(terms, coeffs))
    out = wrap_share(terms[0], share, 2 * FRAC_BITS)
    out = out + const
    out._tensor.div_(_SCALE)
    out._tensor.encoder = FixedPointEncoder(precision_bits=FRAC_BITS)
    return out


def _octave_power(x: MPCTensor, power: float, coeffs: torch.Tensor, lo: float, hi: float,
                  out_scale_log2: int, times: MPCTensor | None = None) -> MPCTensor:
    """x^power * 2^out_scale_log2 for x in [lo, hi], power -1 or -1/2, or ``times * x^power ...``
    for a ``times`` that x broadcasts against along its last dim (x's last dim is 1 then).

    With x = 2^E m, m in [1, 2), a fixed polynomial gives m^power, and the octave's public factor
    2^(E power + out_scale_log2) (an odd E's sqrt(2) applied before its shift) is selected by the same
    one-hot: applied to the result, or, with ``times``, to ``times`` in the mantissa's selection round
    (:func:`_scaled_selections`, whole octave factors only), which saves the round of a separate
    product for one more opened word per entry of ``times`` and one local product per octave.

    Rounds: the bucket edges (1 with FSS keys), the mantissa selection (1), the powers of m - 1 (3),
    the output selection or the product with ``times`` (1)."""
    onehot, exps = _buckets(x, lo, hi, log2_base=1)
    exponent = exps.to(torch.float64) * power + out_scale_log2
    shifts = torch.floor(exponent).long()
    odd = exponent - shifts > 0  # odd octaves of the square root: 2^(1/2) before the shift

    def scaled(v: MPCTensor) -> MPCTensor:
        candidates = _scale_pow2(v, shifts)
        if bool(odd.any()):
            lifted = _scale_pow2(v * math.sqrt(2.0), shifts)
            mask = torch.broadcast_to(odd, candidates.share.shape)
            candidates._tensor.share = torch.where(mask, lifted.share, candidates.share)
        return candidates

    if times is None:
        m = _select(onehot, _scale_pow2(x, -exps))
    else:
        if bool(odd.any()):
            raise ValueError("only whole octave factors can be applied to times")
        m, times_scaled = _scaled_selections(onehot, x, times, -exps, shifts)
    f = m - 1
    f2 = f * f
    f3, f4 = _mul_stacked([f2, f2], [f, f2])
    f5, f6 = _mul_stacked([f4, f4], [f, f2])
    core = _linear_int([f, f2, f3, f4, f5, f6], coeffs[1:].tolist(), float(coeffs[0]))
    if times is None:
        return _select(onehot, scaled(core))
    return times_scaled * core


SOFTMAX_FUSED_MAX_PRODUCTS = 1 << 16
"""Softmax scales its exponentials inside the reciprocal's mantissa round (one round fewer) when
that costs at most this many extra products (entries x octaves): a decode step's 9 x 145 x 12, not
a causal prefill's 9 x 128 x 128 x 12 (57 MB more per layer)."""


# --- public functions ----------------------------------------------------------------------------


def reciprocal(x: MPCTensor, *, lo: float = RECIPROCAL_RANGE[0], hi: float = RECIPROCAL_RANGE[1]) -> MPCTensor:
    """1/x for x in [lo, hi] (public bounds; default [2^-8, 2^16]).

    The most significant bit of x (sign tests against every power of two in the range, in one call)
    selects e with x = 2^e m, m in [1, 2); a degree-6 polynomial gives 1/m (``MANTISSA_DEGREE``), and
    the result is shifted back by 2^-e. Outside [lo, hi] the result is not guaranteed. Output
    resolution is absolute (2^-16), so 1/x has relative error ~ 2^-16 * x for large x.

    Measured (2 parties): max abs error 6.8e-3 at 1/x = 254 (2.7e-5 relative) on [2^-8, 2^16], 4.4e-5
    on [0.5, 128]. Rounds (``pinfer bench nonlinear``, [0.5, 2^16]): 7 with FSS comparisons, 14 with the
    carry tree.
    """
    _require_default_encoding(x)
    return _octave_power(x, -1.0, _RECIPROCAL_POLY, lo, hi, 0)


def rsqrt(
    x: MPCTensor,
    *,
    lo: float = RSQRT_RANGE[0],
    hi: float = RSQRT_RANGE[1],
    out_scale_log2: int = 0,
) -> MPCTensor:
    """x^-1/2 * 2^out_scale_log2 for x in [lo, hi] (default [2^-12, 2^24]).

    Range reduction by the most significant bit (x = 2^e m, m in [1, 2)) leaves a mantissa on which
    a degree-6 polynomial is good to 2e-6 whatever the magnitude; the measured RMSNorm mean squares span
    0.006 .. 1.3e6 (the 1.3e6 belongs to SmolLM2's attention-sink token), far beyond any fixed
    starting guess. The output has absolute resolution 2^-16: rsqrt(1.3e6) = 8.8e-4 is then only
    good to 1.7% relative, so for such inputs ask for ``out_scale_log2`` > 0 (a public power of two the
    caller divides back out after multiplying by x). For norms prefer ``rms_normalize``, which also
    keeps the squares from failing truncation.

    Measured (2 parties): within 1e-4 + 1e-4 |f| on [2^-12, 2^24] (max abs 1.8e-3 at f = 44, i.e.
    4e-5 relative; 7e-5 relative with ``out_scale_log2=8`` on SmolLM2's [0.006, 1.4e6]). Rounds
    (``pinfer bench nonlinear``): 9 with FSS comparisons, 16 with the carry tree.
    """
    _require_default_encoding(x)
    return _octave_power(x, -0.5, _RSQRT_POLY, lo, hi, out_scale_log2)


NORM_EXTRA_BITS = 8
"""Extra fractional bits ``rms_normalize`` keeps in the mean square it hands to ``rsqrt`` (even)."""

NORM_BUDGET_LOG2 = 12
"""``rms_normalize`` keeps d * mean((x 2^-shift)^2) <= 2^NORM_BUDGET_LOG2 when ``shift`` is chosen as
``pinfer.model.norm_plan.norm_shift`` does: the one truncation of the sum of squares then fails with
probability <= 2^(NORM_BUDGET_LOG2 - 32) = 2^-20 per row."""


def rms_normalize(
    x: MPCTensor, eps: float, *, shift: int | torch.Tensor = 0, center: bool = False
) -> MPCTensor:
    """x / sqrt(mean(x^2) + eps) over the last dim: RMSNorm, or LayerNorm with ``center`` (no gain/bias).

    Why not ``x * rsqrt((x * x).mean() + eps)``: every truncation of a value V fails with probability
    |V| / 2^64, and summed over a row the squares' truncations fail with probability d * ms * 2^-32
    however they are grouped: 0.17 for SmolLM2's first token in layers 12-28 (|x| up to 2.7e4,
    ms 1.3e6; measured 17% of such squares fail), about 2e-4 for other tokens with ms ~ 1.6e3. With a
    public ``shift`` s (an int, or a long tensor broadcastable to x without its last dim, e.g. one value
    per row; negative shifts scale up), this computes xs = x 2^-s (local), squares xs exactly (no
    truncation), sums, truncates once, and returns xs * rsqrt(mean(xs^2) + eps 4^-s), whose products
    are bounded by sqrt(d). The truncation keeps NORM_EXTRA_BITS more fractional bits of the mean
    (read as 2^8 * mean by ``rsqrt``, whose ``out_scale_log2`` undoes it), so small scaled statistics
    keep their precision. A good s keeps mean(xs^2) in about [2^-10, 2^12 / d]: the upper end bounds the
    truncation, the lower end keeps 2^14 units; ``pinfer.model.norm_plan`` derives per-layer
    shifts (separately for position 0) from measured ranges.

    Measured (2 parties): max abs error 6.6e-4 (4e-5 relative) on SmolLM2-like rows including a
    first-token row with |x| up to 2.7e4, where the naive formula fails. Rounds: 11 with FSS comparisons, 18 with the carry tree.
    """
    _require_default_encoding(x)
    if center:
        x = x - x.mean(dim=-1, keepdim=True)
    shifts = torch.as_tensor(shift, dtype=torch.long).unsqueeze(-1)
    up = torch.where(shifts < 0, 2 ** (-shifts).clamp(min=0), 1)
    down = torch.where(shifts > 0, 2**shifts.clamp(min=0), 1)
    xs = wrap_share(x, x.share * up, FRAC_BITS)
    if bool((down > 1).any()):
        xs._tensor.div_(down)
    # xs is opened once, for its squares and for the product with the rsqrt (multi_beaver)
    plan = multi_beaver.ProductPlan(xs, [tuple(xs.share.shape), tuple(xs.share.shape[:-1]) + (1,)],
                                    [(0, 0), (0, 1)])
    plan.open({0: xs})
    squares = plan.product((0, 0), 2 * FRAC_BITS).share  # shares of (xs 2^16)^2, not truncated
    total = wrap_share(xs, squares.sum(dim=-1, keepdim=True), 2 * FRAC_BITS)
    # the single truncation: the mean at FRAC_BITS + NORM_EXTRA_BITS fractional bits, read at
    # FRAC_BITS, i.e. as 2^NORM_EXTRA_BITS * mean
    total._tensor.div_(x.size(-1) * (_SCALE >> NORM_EXTRA_BITS))
    total._tensor.encoder = FixedPointEncoder(precision_bits=FRAC_BITS)
    eps_scaled = eps * torch.pow(4.0, -shifts.to(torch.float64)).to(torch.float32) * 2**NORM_EXTRA_BITS
    plan.open({1: rsqrt(total + eps_scaled, out_scale_log2=NORM_EXTRA_BITS // 2)})
    return truncated_product(plan.product((0, 1), 2 * FRAC_BITS))


def exp(x: MPCTensor) -> MPCTensor:
    """e^x for x <= 0; 0 (to one ulp, 2^-16) for x <= -EXP_CUTOFF and for x > 0 (callers subtract
    the max first). A spline of e^-w (``EXP_SPLINE``) on -x: segments chosen by sign tests, so any
    magnitude is accepted and nothing can overflow.

    Measured (2 parties, ``pinfer bench nonlinear``): max abs error 2.4e-5 on [-16, 0]; 4 rounds with
    FSS comparisons, 11 with the carry tree.
    """
    _require_default_encoding(x)
    return spline.evaluate(-x, EXP_SPLINE, bound=2.0**45)


def softmax(x: MPCTensor, dim: int, mask: torch.Tensor | None = None) -> MPCTensor:
    """Softmax along ``dim`` with max subtraction; ``mask`` (public 0/1, broadcastable to x) drops entries.

    The mask is public, so masked entries are skipped rather than computed: the tournament compares
    only pairs of unmasked entries (an unmasked entry beats a masked one by a public decision), and
    ``exp`` runs only on the unmasked entries; masked outputs are exactly 0. A causal mask thus halves
    the comparisons and exponentials of a prefill. Every row must keep at least one unmasked entry,
    and within a row max - min over unmasked scores must stay below 2^11 (measured SmolLM2 spread: 82).
    The denominator lies in [1, n] for rows of n entries, which fixes the reciprocal's domain publicly.

    Measured (2 parties): max abs error 9.7e-5 on 9x128x128 causal scores in [-80, 40]. A decode row
    of 2048 scores per head (``pinfer bench nonlinear``): 22 rounds with FSS comparisons, 112 with the
    carry tree.
    """
    _require_default_encoding(x)
    moved = dim not in (-1, x.dim() - 1)
    valid: torch.Tensor | None = None
    if mask is not None:
        valid = torch.broadcast_to(torch.as_tensor(mask) != 0, x.size())
    if moved:
        x = x.transpose(dim, -1)
        valid = None if valid is None else valid.transpose(dim, -1)
    top, _ = _tournament(x, valid, spread=2.0**SOFTMAX_SPREAD_LOG2)
    w = top - x  # 0 <= w < 2^11 on unmasked entries
    # The exponentials at 2^-32, summed before their truncation: the denominator of a long row then
    # carries one rounding error instead of one per entry (a random walk of sqrt(n) units at 2^-16).
    if valid is None:
        precise = _exp_of_gap(w)
    else:
        precise = wrap_share(w, torch.zeros_like(w.share), 2 * FRAC_BITS)
        if bool(valid.any()):
            precise._tensor.share[valid] = _exp_of_gap(w[valid]).share
    e = truncated_product(precise)
    n = x.size(-1)
    denom = truncated_product(precise.sum(dim=-1, keepdim=True))
    hi = float(max(n, 1))
    octaves = math.floor(math.log2(hi)) - math.floor(math.log2(0.5)) + 1
    if e.share.numel() * octaves <= SOFTMAX_FUSED_MAX_PRODUCTS:
        out = _octave_power(denom, -1.0, _RECIPROCAL_POLY, 0.5, hi, 0, times=e)
    else:
        out = e * reciprocal(denom, lo=0.5, hi=hi)
    if valid is not None:
        out = wrap_share(out, out.share * valid.long(), FRAC_BITS)
    return out.transpose(dim, -1) if moved else out


def _exp_of_gap(w: MPCTensor) -> MPCTensor:
    """e^-w at 2^-32 (untruncated) for a row's gaps to its max, 0 <= w < 2^SOFTMAX_SPREAD_LOG2: no
    test for w below the spline."""
    return spline.evaluate(w, EXP_SPLINE, bound=2.0**SOFTMAX_SPREAD_LOG2, at_least_floor=True, truncated=False)


def _knockout(a: MPCTensor, b: MPCTensor, compare: torch.Tensor | None, default: torch.Tensor | None,
              lanes: int) -> tuple[MPCTensor, MPCTensor]:
    """The decision bits c = [a >= b] (scale 1) and the winners max(a, b) = a - min(a - b, 0).

    Where the public ``compare`` is False, the public ``default`` decides instead and only the
    compared entries pay for a sign test (one round with FSS keys, the winner included).
    ``|a - b| < 2^(lanes-1)`` in encoding units."""
    gap = a - b
    if compare is None:
        below, low = comparison.ltz_with_min(gap, lanes)
        return 1 - below, a - low
    picks = default.long()
    decisions = wrap_share(a, torch.zeros_like(a.share), 0) + picks
    winners = b + gap * picks
    if bool(compare.any()):
        below, low = comparison.ltz_with_min(gap[compare], lanes)
        decisions._tensor.share[compare] = (1 - below).share
        winners._tensor.share[compare] = (a[compare] - low).share
    return decisions, winners


def _tournament(x: MPCTensor, valid: torch.Tensor | None = None,
                spread: float | None = None) -> tuple[MPCTensor, list[MPCTensor]]:
    """Max over the last dim by pairwise knockout (ceil(log2 n) comparison rounds).

    Returns the max (keepdim) and, per round, the scale-1 decision bits c = [a >= b] for the pairs
    (a, b) = (x[2j], x[2j+1]); ties go to the lower index, so the winner is the first maximum. With a
    public ``valid`` mask, invalid entries lose to valid ones without a comparison (the max is that of
    the valid entries; each row needs one). A public ``spread`` (bound on max - min of a row) packs
    the comparisons into narrow lanes.
    """
    lanes = packed_bits.lane_width(spread, FRAC_BITS)
    decisions: list[MPCTensor] = []
    while x.size(-1) > 1:
        n = x.size(-1)
        half = n // 2
        a, b = x[..., 0 : 2 * half : 2], x[..., 1 : 2 * half : 2]
        if valid is None:
            c, win = _knockout(a, b, None, None, lanes)
        else:
            va, vb = valid[..., 0 : 2 * half : 2], valid[..., 1 : 2 * half : 2]
            c, win = _knockout(a, b, va & vb, va & ~vb, lanes)
            valid = torch.cat([va | vb, valid[..., 2 * half :]], dim=-1)
        x = crypten.cat([win, x[..., 2 * half :]], dim=-1) if n % 2 else win
        decisions.append(c)
    return x, decisions


def argmax_onehot(x: MPCTensor, dim: int = -1, spread: float | None = None) -> MPCTensor:
    """One-hot of the maximum along ``dim`` with exactly one 1 per row (the first maximum on ties).

    A knockout tournament records each comparison bit c = [a >= b]. An entry's one-hot is the product,
    over the levels of the bracket, of the factor its path takes at each (c for the left entry of a
    pair, 1 - c for the right one, 1 for an odd entry passed through); the products are taken by
    doubling (factors of levels l and l + k joined along the public ancestor maps, k = 1, 2, 4, ..),
    so ceil(log2 levels) rounds route a single 1 to the winner instead of one round per level.
    Exactly one 1 per row holds by construction, whatever the values. The result uses the default
    16-bit encoding.

    Measured (2 parties, ``pinfer bench nonlinear``): exact; 20 rounds with FSS comparisons for a
    49152-entry row (SmolLM2 logits, spread 2^14), 31 before the doubling (47 before one-round levels).
    """
    _require_default_encoding(x)
    moved = dim not in (-1, x.dim() - 1)
    if moved:
        x = x.transpose(dim, -1)
    if x.size(-1) == 1:  # a single entry is its own maximum
        ones = x * 0 + 1
        return ones.transpose(dim, -1) if moved else ones
    _, decisions = _tournament(x, spread=spread)
    factors = []
    n = x.size(-1)
    for c in decisions:
        pair = crypten.stack([c, 1 - c], dim=-1).flatten(-2)
        if n % 2:
            pair = crypten.cat([pair, c[..., :1] * 0 + 1], dim=-1)  # the passed-through entry
        factors.append(pair)
        n = n // 2 + n % 2
    onehot = _path_products(factors)
    out = _to_fixed(onehot)
    return out.transpose(dim, -1) if moved else out


def _path_products(factors: list[MPCTensor]) -> MPCTensor:
    """prod_l factors[l][i >> l] for every leaf i: the factor its path takes at each level of the
    bracket, whose parent map is i -> i // 2 at every level (an odd last entry included).

    Binary lifting over the levels: at span k, level l (a multiple of 2k) takes the product over its
    next k levels times that of level l + k at its k-th ancestor i >> k. That ancestor is a broadcast
    over blocks of 2^k, so each product is one :class:`multi_beaver.ProductPlan` term whose second
    operand is opened once at its own size (n_l + n_(l+k) words, not 2 n_l); every level's products of
    one span go in one round."""
    levels = len(factors)
    products = dict(enumerate(factors))
    span = 1
    while span < levels:
        starts = [level for level in range(0, levels, 2 * span) if level + span < levels]
        operands: dict[int, MPCTensor] = {}
        for j, level in enumerate(starts):
            parent = products[level + span]
            left = products[level]
            blocks, width = parent.size(-1), 1 << span
            padded = torch.zeros(left.share.shape[:-1] + (blocks * width,), dtype=torch.long)
            padded[..., : left.size(-1)] = left.share
            operands[2 * j] = wrap_share(left, padded.reshape(left.share.shape[:-1] + (blocks, width)), 0)
            operands[2 * j + 1] = wrap_share(parent, parent.share.unsqueeze(-1), 0)
        terms = [(2 * j, 2 * j + 1) for j in range(len(starts))]
        plan = multi_beaver.ProductPlan(factors[0], [tuple(operands[i].share.shape) for i in sorted(operands)], terms)
        plan.open(operands)
        for j, level in enumerate(starts):
            joined = plan.product(terms[j], 0)
            n = products[level].size(-1)
            products[level] = wrap_share(joined, joined.share.flatten(-2)[..., :n], 0)
        span *= 2
    return products[0]


def silu(x: MPCTensor) -> MPCTensor:
    """x * sigmoid(x) by ``SILU_SPLINE``: 0 below -16, x above 16, a degree-4 polynomial on each of
    32 unit segments between (error of the fit 2.8e-5). Domain: |x| < ACTIVATION_BOUND.

    Measured (2 parties, ``pinfer bench nonlinear``): max abs error 4.2e-5 on [-20, 20], exact relu
    beyond +-16 (the tail x sigmoid(-16) = 1.8e-6 dropped); 4 rounds with FSS comparisons, 10 with
    the carry tree.
    """
    _require_default_encoding(x)
    return spline.evaluate(x, SILU_SPLINE, bound=ACTIVATION_BOUND)


def gelu(x: MPCTensor) -> MPCTensor:
    """GeLU, tanh form (GPT-2's ``gelu_new``), by ``GELU_SPLINE``: 0 below -8, x above 8, degree-4
    polynomials on 32 segments of width 1/2 between (fit error 4.2e-6; the dropped tails are below
    1e-13). CrypTen's erf-based GeLU diverges beyond |x| ~ 2 and is not used. Domain: |x| <
    ACTIVATION_BOUND.

    Measured (2 parties, ``pinfer bench nonlinear``): see docs/approximations.md; 4 rounds with FSS
    comparisons, 10 with the carry tree.
    """
    _require_default_encoding(x)
    return spline.evaluate(x, GELU_SPLINE, bound=ACTIVATION_BOUND)
