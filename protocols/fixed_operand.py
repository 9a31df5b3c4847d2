"""Products with a fixed secret right operand whose Beaver mask is opened once.

A weight matrix (or a cached key/value block) ``W`` is multiplied by a fresh secret ``X`` at every
step. Plain Beaver multiplication would reopen ``W - B`` every time, so each token would cost as many
bytes as the model has weights. Here the parties open ``F = W - B`` once when the operand is
registered (or when rows are appended), keep their shares ``b_i`` of ``B``, and for each product open
only ``E = X - A`` for a fresh dealer mask ``A``:

    X @ W = E @ F + E @ B + A @ F + A @ B

``E @ F`` is public (party 0 adds it), ``E @ b_i`` and ``a_i @ F`` are local, and ``A @ B`` comes from
the dealer as a correlated share. Online traffic per product is the size of ``X``; the opened ``F`` is
uniformly random to anyone who does not know ``B`` (the dealer, who knows ``B``, never sees ``F``).
"""

from __future__ import annotations

import torch

from . import crypten_compat  # noqa: F401
import crypten.communicator as comm
from crypten.mpc import MPCTensor

from .dealer import DealerProvider
from .ring_matmul import FixedRight, ring_matmul
from .sharing import FRACTIONAL_BITS, SCALE
from .truncation import truncate


def _open(share: torch.Tensor) -> torch.Tensor:
    # contiguous: the all-reduce sums storage in memory order, which must agree across parties.
    return comm.get().all_reduce(share.contiguous().clone())


class OpeningQueue:
    """Masked parts of fixed operands waiting to be opened in the round of the next product that
    reads any operand of the queue: a decode step's new key and value rows are opened together with
    the query of the score product, one round instead of three. Every party queues and opens in the
    same program order, so the joined message lines up."""

    def __init__(self) -> None:
        self._parts: list[tuple[FixedOperand, torch.Tensor, torch.Tensor, int | None]] = []

    def add(self, operand: FixedOperand, masked: torch.Tensor, mask: torch.Tensor, dim: int | None) -> None:
        self._parts.append((operand, masked, mask, dim))

    def drop(self, operand: FixedOperand) -> None:
        self._parts = [part for part in self._parts if part[0] is not operand]

    def open_with(self, masked: torch.Tensor) -> torch.Tensor:
        """Open every queued part and ``masked`` in one round; returns ``masked`` opened."""
        shares = [part[1] for part in self._parts] + [masked]
        opened = _open(torch.cat([share.reshape(-1) for share in shares]))
        offset = 0
        for operand, part, mask, dim in self._parts:
            operand._absorb(opened[offset : offset + part.numel()].reshape(part.shape), mask, dim)
            offset += part.numel()
        self._parts = []
        return opened[offset:].reshape(masked.shape)


class FixedOperand:
    """A secret right operand of matrix products, shared with a once-opened mask."""

    def __init__(self, provider: DealerProvider, value: MPCTensor, scale: int = SCALE,
                 queue: OpeningQueue | None = None) -> None:
        """Register ``value`` (this party's shares) with the dealer and open its masked form, at once
        or, with a ``queue``, in the round of the queue's next product."""
        self._provider = provider
        self.scale = scale
        self._queue = queue
        self._shape = list(value.share.shape)
        self._own: FixedRight | None = None
        self._opened: FixedRight | None = None
        self.handle, mask = provider.new_fixed_mask(tuple(value.share.shape))
        self._register(value.share - mask, mask, None)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._shape)

    def extend(self, value: MPCTensor, dim: int) -> None:
        """Append ``value`` along ``dim`` (new cache rows), opening only the new part's mask."""
        mask = self._provider.extend_fixed_mask(self.handle, tuple(value.share.shape), dim)
        self._shape[dim] += value.share.shape[dim]
        self._register(value.share - mask, mask, dim)

    def _register(self, masked: torch.Tensor, mask: torch.Tensor, dim: int | None) -> None:
        if self._queue is None:
            self._absorb(_open(masked), mask, dim)
        else:
            self._queue.add(self, masked, mask, dim)

    def _absorb(self, opened: torch.Tensor, mask: torch.Tensor, dim: int | None) -> None:
        # E @ F + E @ b_0 = E @ (F + b_0): party 0 keeps the sum so each product is two matmuls.
        own = mask + opened if comm.get().get_rank() == 0 else mask
        if dim is None:
            self._own, self._opened = FixedRight(own), FixedRight(opened)
        else:
            assert self._own is not None and self._opened is not None
            self._opened.extend(opened, dim)
            self._own.extend(own, dim)

    def rmatmul(self, x: MPCTensor, transposed: bool = False, exact: bool = False) -> MPCTensor:
        """``x @ W`` (``x @ W^T`` when ``transposed``) as a fixed-point value at scale :data:`SCALE`.

        ``x`` may carry any encoding scale (comparison results and one-hot rows carry scale 1, in which
        case no truncation is needed). The transposed product uses the same opened mask, so an operand
        multiplied from both sides (a selection one-hot) is opened once. ``exact`` truncates the
        product with :func:`pinfer.protocols.truncation.truncate` (one more round, no failure)
        instead of locally.
        """
        right = torch.empty(self._shape, device="meta")
        out_shape = tuple(torch.matmul(torch.empty(x.share.shape, device="meta"),
                                       right.transpose(-1, -2) if transposed else right).shape)
        a, c = self._provider.fixed_product_tuple(self.handle, tuple(x.share.shape), out_shape, transposed)
        e = _open(x.share - a) if self._queue is None else self._queue.open_with(x.share - a)
        assert self._own is not None and self._opened is not None
        own, opened = self._own.right(transposed), self._opened.right(transposed)
        z = ring_matmul(e, own) + ring_matmul(a, opened) + c.get()
        excess = x.encoder.scale * self.scale // SCALE
        if exact and excess == SCALE:
            return MPCTensor.from_shares(truncate(z, FRACTIONAL_BITS, self._provider), precision=FRACTIONAL_BITS)
        result = MPCTensor.from_shares(z, precision=FRACTIONAL_BITS)
        if excess > 1:
            result = result.div(excess)
        return result

    def release(self) -> None:
        """Tell the dealer it may forget this operand's mask."""
        if self._queue is not None:
            self._queue.drop(self)
        self._provider.drop_fixed_mask(self.handle)
