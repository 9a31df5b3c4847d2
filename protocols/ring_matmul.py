"""Exact matrix products in the ring Z_2^64 through float64 BLAS.

Shares are int64 tensors whose arithmetic wraps mod 2^64, and torch's int64 ``matmul`` has no BLAS
kernel: on one thread of a 2-core AVX2 host it runs at 0.2-0.35 GMAC/s while float64 GEMM runs near
20 GMAC/s. :func:`ring_matmul` splits each operand into three signed limbs small enough that every
limb product, summed over the inner dimension, is an integer float64 holds exactly, multiplies the
limbs with float64 GEMMs and recombines the integer results with wrapping shifts and adds.

Limbs are *balanced*: a limb of ``w`` bits lies in ``[-2^(w-1), 2^(w-1))`` (the top limb keeps the
value's sign), so ``x = sum_i x_i 2^(o_i) mod 2^64``. Both operands take widths (22, 21, 21) at
offsets (0, 22, 43). Limb pairs whose offsets sum to 64 or more vanish mod 2^64, which leaves

    a b = a0 b0 + 2^22 (a0 b1 + a1 b0) + 2^43 (a0 b2 + a2 b0) + 2^44 a1 b1      (mod 2^64)

and Karatsuba's ``a0 b1 + a1 b0 = (a0 + a1)(b0 + b1) - a0 b0 - a1 b1`` takes the middle term from
products needed anyway: five GEMMs in all (six without Karatsuba, ten with sixteen-bit limbs). The
largest term is ``(a0 + a1)(b0 + b1)``, at most ``(3 * 2^20)^2 = 9 * 2^40`` in magnitude, so a float64
sum of up to :data:`EXACT_TERMS` = 910 terms, in any order, stays among the integers of magnitude at
most 2^53 that float64 represents exactly. Longer inner dimensions are cut into chunks of at most
that many terms, each product converted to int64 before the chunks are added in the ring.

Which path is faster depends on the host, not on the shape alone: torch's int64 kernel ran at
0.1-0.35 GMAC/s on one 2-core host type and at 5-10 GMAC/s on another (one with AVX-512's 64-bit
multiply), where it beats the five float64 GEMMs by 3-5x (``pinfer bench ringmm``). So the first
product large enough for the limb path times both on a small product, once per process and device,
and keeps the faster one (:func:`limbs_faster`); the two give identical results, so the parties need
not agree on the choice.
"""

from __future__ import annotations

import functools
import time

import torch

WIDTHS = (22, 21, 21)
OFFSETS = (0, 22, 43)
# (a0 + a1)(b0 + b1) terms reach 9 * 2^40: 910 of them sum to less than 2^53.
EXACT_TERMS = (1 << 53) // (9 << 40)
# Operands are split block by block, about this many elements at a time (a few MB of limbs, in
# buffers reused from block to block), with blocks at least MIN_SPAN rows or columns wide: narrower
# GEMMs run well below BLAS speed.
BLOCK_ELEMENTS = 1 << 18
MIN_SPAN = 256
# Where the limb path wins, measured on one thread of a 2-core AVX2 host (``pinfer bench ringmm``):
# splitting the right operand and its five GEMMs cost about as much as three rows' int64 products
# (1 x 576 x 1536: 5.5 ms against 2.6 ms; 3 rows: 7.0 against 7.9), and the path's fixed cost (some
# thirty small tensor operations) about as much as 2^18 int64 multiply-adds.
LIMB_MIN_ROWS = 3
LIMB_MIN_MACS = 1 << 18
# The product :func:`limbs_faster` times both paths on: large enough for BLAS to reach its speed,
# small enough to cost at most tens of milliseconds on a host with a slow int64 kernel.
CALIBRATION_SHAPE = (64, 512, 256)


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


class FixedRight:
    """A fixed right operand of ring products (a weight, a cache block, a dealer's mask for one),
    laid out for products with few rows.

    torch's int64 kernel multiplies a few rows by a column-major right operand 3-17x faster than by a
    row-major one on an AVX2 host (1 x 49152 x 576: 46 against 790 ms; 1 x 1536 x 576: 1.4 against
    7.3 ms, one thread), so :meth:`right` hands out ``W`` (or ``W^T``) as a column-major view. An
    operand used one way is stored once, in that way's layout; one used both ways (a tied embedding:
    token rows in, logits out) keeps both layouts.
    """

    def __init__(self, value: torch.Tensor) -> None:
        self._value = value
        self._layouts: dict[bool, torch.Tensor] = {}

    @property
    def value(self) -> torch.Tensor:
        return self._value

    def extend(self, part: torch.Tensor, dim: int) -> None:
        """Append ``part`` along ``dim``."""
        self._value = torch.cat([self._value, part], dim=dim)
        self._layouts.clear()

    def right(self, transposed: bool = False) -> torch.Tensor:
        """``W`` (``W^T`` when ``transposed``) over its last two dims, column-major."""
        laid = self._layouts.get(transposed)
        if laid is None:
            # W^T column-major is W row-major
            laid = self._value.contiguous() if transposed else _column_major(self._value)
            self._layouts[transposed] = laid
            if len(self._layouts) == 1:
                self._value = laid  # the only layout asked for so far: drop the other copy
        return laid.transpose(-1, -2) if transposed else laid


def _column_major(x: torch.Tensor) -> torch.Tensor:
    if x.dim() >= 2 and x.transpose(-1, -2).is_contiguous():
        return x
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


def limbs_win(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether :func:`ring_matmul` takes the limb path for these operands."""
    rows = a.shape[-2] if a.dim() > 1 else 1
    return rows >= LIMB_MIN_ROWS and _macs(a, b) >= LIMB_MIN_MACS and limbs_faster(a.device)


@functools.cache
def limbs_faster(device: torch.device) -> bool:
    """Whether the limb path beats torch's int64 kernel on this host and device, timed once (best of
    three each, after a warm-up) on a :data:`CALIBRATION_SHAPE` product."""
    rows, inner, cols = CALIBRATION_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-(1 << 62), 1 << 62, (rows, inner), dtype=torch.int64, generator=generator).to(device)
    b = torch.randint(-(1 << 62), 1 << 62, (inner, cols), dtype=torch.int64, generator=generator).to(device)

    def best(product) -> float:
        product(a, b)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            product(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return min(times)

    return best(limb_matmul) < best(torch.matmul)


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
    span = max(MIN_SPAN, BLOCK_ELEMENTS // chunk)
    left_space, right_space = _Workspace(a.device), _Workspace(a.device)
    for r0 in range(0, rows, span):
        for k0 in range(0, inner, chunk):
            block = a[..., r0:r0 + span, k0:k0 + chunk]
            left = _limb_stack(block, left_space)
            left = left.view((left.shape[0],) + missing + tuple(block.shape))
            for c0 in range(0, cols, span):
                right = _limb_stack(b[..., k0:k0 + chunk, c0:c0 + span], right_space)
                out[..., r0:r0 + span, c0:c0 + span] += _limb_products(left, right)
    if squeeze_rows:
        out = out.squeeze(-2)
    if squeeze_cols:
        out = out.squeeze(-1)
    return out


def _limb_products(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The ring product of two :func:`_limb_stack` stacks over at most :data:`EXACT_TERMS` terms."""
    # a0 b0 and a2 b0 in one GEMM: torch folds the stack dimension of a 2-D left operand into its rows
    by_b0 = torch.matmul(left[:2], right[0])
    a1b1 = torch.matmul(left[2], right[2])
    sums = torch.matmul(left[3], right[3])
    a0b2 = torch.matmul(left[0], right[1])
    exact = lambda v: v.to(torch.int64)  # noqa: E731  (integers of magnitude <= 2^53: exact)
    a0b0, a1b1 = exact(by_b0[0]), exact(a1b1)
    out = (exact(sums) - a0b0 - a1b1) << OFFSETS[1]
    out += a0b0
    out += (exact(a0b2) + exact(by_b0[1])) << OFFSETS[2]
    out += a1b1 << (2 * OFFSETS[1])
    return out


class _Workspace:
    """One operand's block buffers, allocated for the first (largest) block of a product and reused
    for the others: fresh multi-MB tensors per block would be faulted in page by page each time."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._ints = torch.empty(0, dtype=torch.int64, device=device)
        self._floats = torch.empty(0, dtype=torch.float64, device=device)

    def buffers(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two int64 tensors of ``shape`` and a float64 one of ``(4, *shape)``."""
        count = 1
        for size in shape:
            count *= size
        if self._ints.numel() < 2 * count:
            self._ints = torch.empty(2 * count, dtype=torch.int64, device=self._device)
            self._floats = torch.empty(4 * count, dtype=torch.float64, device=self._device)
        return (self._ints[:count].view(shape), self._ints[count:2 * count].view(shape),
                self._floats[:4 * count].view((4,) + shape))


def _limb_stack(x: torch.Tensor, workspace: _Workspace) -> torch.Tensor:
    """float64 ``(x0, x2, x1, x0 + x1)`` stacked along a new first dimension, for the balanced limbs
    ``x_i`` in ``[-2^(w_i - 1), 2^(w_i - 1))`` with ``x = sum_i x_i 2^(o_i) mod 2^64``.

    Adding ``h = 2^21 + 2^42`` (``2^(o_i + w_i - 1)`` over the lower limbs) makes each balanced digit
    ``x_i`` the plain digit ``x_i + 2^(w_i - 1)`` of ``x + h``; flipping that digit's top bit (``^ h``)
    makes its two's-complement reading ``x_i`` itself, which a left and an arithmetic right shift
    extract. The order puts each operand's factors of one GEMM next to each other.
    """
    bias = sum(1 << (o + w - 1) for o, w in zip(OFFSETS[:-1], WIDTHS[:-1]))
    flipped, digit, stack = workspace.buffers(tuple(x.shape))
    torch.add(x, bias, out=flipped).bitwise_xor_(bias)
    for slot, offset, width in ((0, OFFSETS[0], WIDTHS[0]), (2, OFFSETS[1], WIDTHS[1])):
        torch.bitwise_left_shift(flipped, 64 - offset - width, out=digit).bitwise_right_shift_(64 - width)
        stack[slot].copy_(digit)
    stack[1].copy_(torch.bitwise_right_shift(flipped, OFFSETS[2], out=digit))
    torch.add(stack[0], stack[2], out=stack[3])
    return stack


def _check_inner(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() == 0 or b.dim() == 0 or a.shape[-1] != b.shape[-2 if b.dim() > 1 else 0]:
        raise ValueError(f"inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)}")


def _macs(a: torch.Tensor, b: torch.Tensor) -> int:
    rows = a.shape[-2] if a.dim() > 1 else 1
    cols = b.shape[-1] if b.dim() > 1 else 1
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]).numel() if a.dim() > 2 or b.dim() > 2 else 1
    return batch * rows * a.shape[-1] * cols
