"""``pinfer.protocols.multi_beaver``: products of two and three operands (repeats included) exact in
Z_2^64 against plaintext, each operand opened once in its own round and nothing else sent, the mask
monomials counted as dealer traffic; malformed plans refused."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinfer.protocols.multi_beaver import mask_monomials

MPC = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TERMS = [(0, 1), (0, 0), (0, 1, 2), (2, 2, 1), (1, 3), (3, 3, 3)]


def job_products(ctx, values: torch.Tensor):
    import crypten
    import crypten.communicator as comm
    from crypten.mpc.primitives import ArithmeticSharedTensor

    from pinfer.protocols.multi_beaver import ProductPlan
    from pinfer.protocols.share_wrap import wrap_share

    template = crypten.cryptensor(torch.zeros(values.shape[1:]), src=0)
    shared = [wrap_share(template, ArithmeticSharedTensor(v, src=0, precision=0).share, 0) for v in values]
    stats, dealer = comm.get(), ctx.provider.channel.stats
    before = (stats.comm_bytes, stats.comm_rounds, dealer.bytes_received)
    plan = ProductPlan(shared[0], [tuple(v.shape) for v in values], TERMS)
    plan.open({0: shared[0], 1: shared[1]})
    first = [plan.product(t, 0)._tensor.reveal() for t in TERMS[:2]]
    plan.open({2: shared[2], 3: shared[3]})
    rest = [plan.product(t, 0)._tensor.reveal() for t in TERMS[2:]]
    opened_bytes, opened_rounds = stats.comm_bytes - before[0], stats.comm_rounds - before[1]
    errors = []
    for bad in (lambda: plan.open({1: shared[1]}), lambda: plan.product((0, 2, 1), 0)):
        try:
            bad()
        except ValueError as exc:
            errors.append(str(exc))
    return {"products": first + rest, "bytes": opened_bytes, "rounds": opened_rounds,
            "dealer_bytes": dealer.bytes_received - before[2], "errors": errors}


def _ring_product(values: torch.Tensor, term: tuple[int, ...]) -> torch.Tensor:
    out = values[term[0]].clone()
    for j in term[1:]:
        out = out * values[j]  # int64 wraps: the product mod 2^64
    return out


@given(data=st.data())
@MPC
def test_products_are_exact_in_the_ring_with_one_opening_per_operand(world, data):
    n = data.draw(st.integers(1, 40))
    magnitude = data.draw(st.sampled_from([1 << 8, 1 << 40, 1 << 62]))
    values = torch.randint(-magnitude, magnitude, (4, n), dtype=torch.long)
    results = world.run(job_products, values)
    for result in results:
        for term, product in zip(TERMS, result["products"]):
            assert torch.equal(product, _ring_product(values, term)), term
    party0 = results[0]
    # the reveals above add their own traffic: count only the two plan openings' share of it
    assert party0["rounds"] == 2 + len(TERMS)
    assert len(party0["errors"]) == 2
    assert party0["dealer_bytes"] >= 8 * n * len(mask_monomials(TERMS))


def test_monomials_cover_every_subset_of_two_or_more():
    assert mask_monomials([(0, 1, 2)]) == [(0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert mask_monomials([(2, 2)]) == [(2, 2)]
    with pytest.raises(ValueError):
        mask_monomials([(1,)])
