"""Exact matrix products in the ring Z_2^64 through float64 BLAS.

Shares are int64 tensors whose arithmetic wraps mod 2^64, and torch's int64 ``matmul`` has no BLAS
kernel: on a 2-core AVX2 host it runs at about 0.1 GMAC/s while float64 GEMM runs near 8 GMAC/s.
:func:`ring_matmul` splits each operand into three signed limbs small enough that every limb
product, summed over the inner dimension, is an integer float64 holds exactly, multiplies the limbs
with float64 GEMMs and recombines the integer results with wrapping shifts and adds.

Limbs are *balanced*: a limb of ``w`` bits lies in ``[-2^(w-1), 2^(w-1))`` (the top limb keeps the
value's sign), so ``x = sum_i x_i 2^(o_i) mod 2^64``. The left operand's limbs have widths (21, 21, 22)
at offsets (0, 21, 42) and the right operand's (22, 21, 21) at offsets (0, 22, 43). Only limb pairs
whose offsets sum below 64 contribute mod 2^64, and these widths leave six of the nine:

    offset 0: a0 b0    21: a1 b0    22: a0 b1    42: a2 b0    43: a0 b2 + a1 b1

(sixteen-bit limbs need ten products; no split into three limbs per side leaves fewer than six). A
pair's term is at most 2^(wa + wb - 2) <= 2^42 in magnitude, so a float64 sum of up to
:data:`EXACT_TERMS` = 2^11 terms, in any order, never leaves the integers below 2^53 that float64
represents exactly; longer inner dimensions are cut into chunks of that many terms, each converted to
int64 before the chunks are added (in the ring).
"""

from __future__ import annotations

import torch

LEFT_WIDTHS = (21, 21, 22)
RIGHT_WIDTHS = (22, 21, 21)
# Largest pair term 2^(22 + 22 - 2) = 2^42 (a2 b0): 2^11 such terms sum to at most 2^53.
EXACT_TERMS = 1 << 11
# Operand blocks of at most this many elements: their int64 and float64 temporaries (a few MB) are
# reused from the heap on the next block instead of being mapped and faulted in afresh.
BLOCK_ELEMENTS = 1 << 17
# Where the limb path wins, measured on one thread of a 2-core AVX2 host (``pinfer bench ringmm``):
# splitting the right operand costs about as much as four of its rows' int64 products, and the
# path's fixed cost (some twenty small tensor operations) as much as 2^18 int64 multiply-adds.
LIMB_MIN_ROWS = 4
LIMB_MIN_MACS = 1 << 18


def ring_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(a, b)`` of int64 tensors, exact mod 2^64, with the same broadcasting.

    Uses float64 limb products when the product is large enough to gain from BLAS (see
    :data:`LIMB_MIN_ROWS`, :data:`LIMB_MIN_MACS`) and torch's int64 kernel otherwise; both give
    identical results.
    """
    if a.dtype != torch.int64 or b.dtype != torch.int64:
        raise TypeError(f"ring products take int64 tensors, not {a.dtype} and {b.dtype}")
    _check_inner(a, b)
    return limb_matmul(a, b) if limbs_win(a, b) else torch.matmul(a, b)


def limbs_win(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether :func:`ring_matmul` takes the limb path for these operands."""
    rows = a.shape[-2] if a.dim() > 1 else 1
    return rows >= LIMB_MIN_ROWS and _macs(a, b) >= LIMB_MIN_MACS


def limb_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The float64 limb path of :func:`ring_matmul`, whatever the size."""
    squeeze_rows, squeeze_cols = a.dim() == 1, b.dim() == 1
    if squeeze_rows:
        a = a.unsqueeze(0)
    if squeeze_cols:
        b = b.unsqueeze(-1)
    _check_inner(a, b)
    rows, inner, cols = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    out = torch.zeros(batch + (rows, cols), dtype=torch.int64, device=a.device)
    # The limb dimension must not meet batch dimensions that only the right operand has.
    missing = (1,) * max(b.dim() - a.dim(), 0)
    chunk = min(EXACT_TERMS, max(inner, 1))
    span = max(1, BLOCK_ELEMENTS // chunk)
    for r0 in range(0, rows, span):
        for k0 in range(0, inner, chunk):
            block = a[..., r0:r0 + span, k0:k0 + chunk]
            left = _balanced_limbs(block, LEFT_WIDTHS)
            left = left.view((left.shape[0],) + missing + tuple(block.shape))
            for c0 in range(0, cols, span):
                right = _balanced_limbs(b[..., k0:k0 + chunk, c0:c0 + span], RIGHT_WIDTHS)
                out[..., r0:r0 + span, c0:c0 + span] += _limb_products(left, right)
    if squeeze_rows:
        out = out.squeeze(-2)
    if squeeze_cols:
        out = out.squeeze(-1)
    return out


def _limb_products(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The ring product of two limb stacks over at most :data:`EXACT_TERMS` inner terms."""
    # One GEMM per right limb, with the left limbs it pairs with along the leading limb dimension
    # (for a 2-D left operand torch folds that dimension into the rows: one BLAS call each).
    by_b0 = torch.matmul(left, right[0])
    by_b1 = torch.matmul(left[:2], right[1])
    by_b2 = torch.matmul(left[0], right[2])
    exact = lambda v: v.to(torch.int64)  # noqa: E731  (integers below 2^53: the conversion is exact)
    out = exact(by_b0[0])
    out += exact(by_b0[1]) << LEFT_OFFSETS[1]
    out += exact(by_b1[0]) << RIGHT_OFFSETS[1]
    out += exact(by_b0[2]) << LEFT_OFFSETS[2]
    out += (exact(by_b1[1]) + exact(by_b2)) << RIGHT_OFFSETS[2]
    return out


def _balanced_limbs(x: torch.Tensor, widths: tuple[int, int, int]) -> torch.Tensor:
    """float64 limbs ``x_i`` in ``[-2^(w_i - 1), 2^(w_i - 1))``, stacked along a new first dimension,
    with ``x = sum_i x_i 2^(o_i) mod 2^64``.

    Adding ``h = sum_i 2^(o_i + w_i - 1)`` over the lower limbs makes each balanced digit ``x_i`` the
    plain digit ``x_i + 2^(w_i - 1)`` of ``x + h``; flipping that digit's top bit (``^ h``) makes its
    two's-complement reading ``x_i`` itself, which a left and an arithmetic right shift extract.
    """
    offsets = _offsets(widths)
    bias = _wrap(sum(1 << (o + w - 1) for o, w in zip(offsets[:-1], widths[:-1])))
    flipped = torch.add(x, bias).bitwise_xor_(bias)
    digit = torch.empty_like(flipped)
    limbs = torch.empty((len(widths),) + tuple(x.shape), dtype=torch.float64, device=x.device)
    for limb, offset, width in zip(limbs, offsets, widths):
        if offset + width < 64:
            torch.bitwise_left_shift(flipped, 64 - offset - width, out=digit).bitwise_right_shift_(64 - width)
        else:
            torch.bitwise_right_shift(flipped, offset, out=digit)
        limb.copy_(digit)
    return limbs


def _offsets(widths: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sum(widths[:i]) for i in range(len(widths)))


LEFT_OFFSETS = _offsets(LEFT_WIDTHS)
RIGHT_OFFSETS = _offsets(RIGHT_WIDTHS)


def _wrap(value: int) -> int:
    """``value`` mod 2^64 as a signed int64 Python integer."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _check_inner(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() == 0 or b.dim() == 0 or a.shape[-1] != b.shape[-2 if b.dim() > 1 else 0]:
        raise ValueError(f"inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)}")


def _macs(a: torch.Tensor, b: torch.Tensor) -> int:
    rows = a.shape[-2] if a.dim() > 1 else 1
    cols = b.shape[-1] if b.dim() > 1 else 1
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]).numel() if a.dim() > 2 or b.dim() > 2 else 1
    return batch * rows * a.shape[-1] * cols
