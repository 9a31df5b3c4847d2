"""Products of two or more shared operands, each operand opened once whatever the products it enters.

Plain Beaver multiplication opens both factors of every product: a spline that squares ``f``, then
multiplies ``f^2`` by ``f`` and by itself, opens ``f^2`` three times. Here every operand ``v_j`` gets one
mask ``a_j`` for the whole computation and is opened once, ``e_j = v_j - a_j``, in the round where it
becomes known. A product of operands ``j_1 .. j_k`` (repeats allowed) is then local:

    prod_m (e_m + a_m) = sum over subsets S of the factors of  prod_(m not in S) e_m * A_S

``A_S`` is 1 for the empty set (party 0 adds that public term), the party's own mask share for a
single factor, and, for two or more, a share of the mask monomial ``prod_(m in S) a_m`` from the
dealer. Products of three factors (a coefficient, a gate bit and a power) thus cost no round of their
own.

Cost for ``n`` operands and ``M`` mask monomials, per element: ``n`` words opened in total (each in
its own round), no other online traffic; the dealer sends party 0 ``M`` words. The masks come from
each party's stream (nothing sent); one dealer request at planning time covers every monomial, so
the plan's later rounds never wait for it. The products are exact in Z_2^64 and untruncated: their
scale bits add up.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch

from . import crypten_compat  # noqa: F401  (must precede every crypten import)
import crypten
import crypten.communicator as comm
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import ArithmeticSharedTensor

from .share_wrap import wrap_share

Term = tuple[int, ...]
"""A product: the indices of its factors among the plan's operands (two or more, repeats allowed)."""


def mask_monomials(terms: Sequence[Term]) -> list[Term]:
    """The mask monomials (sorted factor multisets of two or more) that ``terms``' products need."""
    needed: set[Term] = set()
    for term in terms:
        if len(term) < 2:
            raise ValueError(f"a product needs two or more factors, got {term}")
        for size in range(2, len(term) + 1):
            needed.update(tuple(sorted(subset)) for subset in itertools.combinations(term, size))
    return sorted(needed, key=lambda monomial: (len(monomial), monomial))


class ProductPlan:
    """Masks for operands of the given shapes and the dealer's monomials for ``terms``.

    Operands of a term broadcast against each other (a per-row gate times a row's entries): the
    product and every monomial take the broadcast shape. Every party builds the same plan at the same
    point of the protocol (the plan draws from the parties' streams), then calls :meth:`open` once per
    round with the operands that became known and :meth:`product` for any term whose factors are all
    open.
    """

    def __init__(self, like: MPCTensor, shapes: Sequence[Sequence[int]], terms: Sequence[Term]) -> None:
        if any(not 0 <= j < len(shapes) for term in terms for j in term):
            raise ValueError(f"a term names an operand outside 0..{len(shapes) - 1}")
        self._like = like
        self._shapes = [tuple(int(d) for d in shape) for shape in shapes]
        self._terms = list(terms)
        monomials = mask_monomials(terms)
        provider = crypten.mpc.get_default_provider()
        self._masks, shares = provider.mask_monomials(self._shapes, monomials)
        self._monomials = dict(zip(monomials, shares))
        self._opened: dict[int, torch.Tensor] = {}
        self._rank = comm.get().get_rank()

    def open(self, values: Mapping[int, MPCTensor]) -> None:
        """Open ``values`` (operand index -> its value, of the operand's shape) in one round."""
        if any(j in self._opened for j in values):
            raise ValueError("an operand is opened once")
        order = sorted(values)
        for j in order:
            if tuple(values[j].share.shape) != self._shapes[j]:
                raise ValueError(f"operand {j} has shape {tuple(values[j].share.shape)}, not {self._shapes[j]}")
        masked = torch.cat([(values[j].share - self._masks[j]).reshape(-1) for j in order])
        opened = ArithmeticSharedTensor.from_shares(masked, precision=0).reveal()
        offset = 0
        for j in order:
            size = math.prod(self._shapes[j])
            self._opened[j] = opened[offset : offset + size].reshape(self._shapes[j])
            offset += size

    def product(self, term: Term, scale_bits: int) -> MPCTensor:
        """The shares of the product of ``term``'s operands, read with ``scale_bits`` fractional bits."""
        if term not in self._terms:
            raise ValueError(f"{term} is not a term of this plan")
        missing = [j for j in term if j not in self._opened]
        if missing:
            raise ValueError(f"operands {missing} are not open yet")
        total = torch.zeros(torch.broadcast_shapes(*(self._shapes[j] for j in term)), dtype=torch.long)
        positions = range(len(term))
        for size in range(0, len(term) + 1):
            for subset in itertools.combinations(positions, size):
                public = [self._opened[term[m]] for m in positions if m not in subset]
                if size == 0:
                    if self._rank == 0:
                        total += math.prod(public[1:], start=public[0])
                    continue
                masked = self._masks[term[subset[0]]] if size == 1 else \
                    self._monomials[tuple(sorted(term[m] for m in subset))].get()
                total += masked if not public else math.prod(public[1:], start=public[0]) * masked
        return wrap_share(self._like, total, scale_bits)
