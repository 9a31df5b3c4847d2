"""The float64-limb ring product equals torch's int64 ``matmul`` (exact mod 2^64) everywhere it is used.

torch's int64 kernel wraps mod 2^64, so it is the reference. The limb path must agree bit for bit on
full-range operands, on the values whose limbs all sit at the extreme of their range (the largest
float64 partial sums the method allows), at the largest inner dimensions the models use (one-hot
rows over a vocabulary, the MLP's down projection) and on every broadcast shape the protocols pass.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pinfer.protocols.ring_matmul import (
    EXACT_TERMS,
    LIMB_MIN_MACS,
    LIMB_MIN_ROWS,
    WIDTHS,
    limb_matmul,
    limbs_faster,
    ring_matmul,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
GPT2_VOCAB, SMOLLM2_VOCAB = 50_257, 49_152


def ring(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(INT64_MIN, INT64_MAX, shape, dtype=torch.int64, generator=generator)


def extreme(widths: tuple[int, ...], sign: int = -1) -> int:
    """The int64 whose balanced limbs are all ``-2^(w - 1)`` (``sign`` -1) or all ``2^(w - 1) - 1``
    (``sign`` 1): every limb product, and the Karatsuba sums' product, is then at its largest."""
    value, offset = 0, 0
    for width in widths:
        value += (-(1 << (width - 1)) if sign < 0 else (1 << (width - 1)) - 1) << offset
        offset += width
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def test_full_range_operands():
    a, b = ring(33, 700, seed=1), ring(700, 45, seed=2)
    assert torch.equal(limb_matmul(a, b), torch.matmul(a, b))


@pytest.mark.parametrize("inner", [EXACT_TERMS - 1, EXACT_TERMS, EXACT_TERMS + 1, 3072])
@pytest.mark.parametrize("signs", [(-1, -1), (-1, 1), (1, 1)])
def test_extreme_limbs_at_and_across_the_exact_chunk(inner, signs):
    # every product at its maximum magnitude, all of one sign: the float64 sums come closest to 2^53
    a = torch.full((3, inner), extreme(WIDTHS, signs[0]), dtype=torch.int64)
    b = torch.full((inner, 4), extreme(WIDTHS, signs[1]), dtype=torch.int64)
    assert torch.equal(limb_matmul(a, b), torch.matmul(a, b))


def test_int64_edge_values():
    edges = torch.tensor([INT64_MIN, INT64_MAX, -1, 0, 1, INT64_MIN + 1, extreme(WIDTHS, -1), extreme(WIDTHS, 1)])
    pick = torch.Generator().manual_seed(3)
    a = edges[torch.randint(0, len(edges), (9, 3072), generator=pick)]
    b = edges[torch.randint(0, len(edges), (3072, 11), generator=pick)]
    assert torch.equal(limb_matmul(a, b), torch.matmul(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("vocab", [SMOLLM2_VOCAB, GPT2_VOCAB])
def test_embedding_product_over_the_vocabulary(vocab):
    # MpcOps.embed: the opened (masked, so full-range) one-hot rows times the embedding's shares
    a, b = ring(2, vocab, seed=4), ring(vocab, 24, seed=5)
    assert torch.equal(limb_matmul(a, b), torch.matmul(a, b))


def test_mlp_down_projection_inner_dimension():
    a, b = ring(4, 3072, seed=6), ring(3072, 96, seed=7)
    assert torch.equal(limb_matmul(a, b), torch.matmul(a, b))


@pytest.mark.parametrize(
    "left, right",
    [
        ((5, 7), (7, 3)),
        ((7,), (7, 3)),
        ((5, 7), (7,)),
        ((7,), (7,)),
        ((3, 5, 7), (3, 7, 4)),  # attention: heads as a batch
        ((2, 3, 5, 7), (3, 7, 4)),
        ((5, 7), (2, 7, 4)),  # batch dimensions only on the right
        ((3, 1, 5, 7), (1, 2, 7, 4)),
        ((7,), (2, 7, 4)),
        ((4, 0), (0, 3)),
        ((0, 5), (5, 2)),
    ],
)
def test_broadcast_shapes_match_torch(left, right):
    a, b = ring(*left, seed=8), ring(*right, seed=9)
    expected = torch.matmul(a, b)
    got = limb_matmul(a, b)
    assert got.shape == expected.shape and got.dtype == torch.int64
    assert torch.equal(got, expected)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), max_size=2),
    rows=st.integers(1, 9),
    inner=st.integers(1, 40),
    cols=st.integers(1, 9),
    seed=st.integers(0, 2**31),
    right_batched=st.booleans(),
)
def test_random_shapes(batch, rows, inner, cols, seed, right_batched):
    a = ring(*batch, rows, inner, seed=seed)
    b = ring(*(batch if right_batched else []), inner, cols, seed=seed + 1)
    assert torch.equal(limb_matmul(a, b), torch.matmul(a, b))


def test_the_calibration_picks_a_path_once_per_device():
    limbs_faster.cache_clear()
    choice = limbs_faster(torch.device("cpu"))
    assert isinstance(choice, bool) and limbs_faster(torch.device("cpu")) is choice
    assert limbs_faster.cache_info().hits == 1


def test_dispatch_agrees_on_both_sides_of_the_thresholds():
    small = (ring(4, 16), ring(16, 8))
    few_rows = (ring(LIMB_MIN_ROWS - 1, 512), ring(512, 512))
    large = (ring(64, 128), ring(128, 64))
    assert 4 * 16 * 8 < LIMB_MIN_MACS <= 64 * 128 * 64
    for a, b in (small, few_rows, large):
        assert torch.equal(ring_matmul(a, b), torch.matmul(a, b))


def test_ring_matmul_refuses_non_ring_operands():
    with pytest.raises(TypeError, match="int64"):
        ring_matmul(torch.ones(2, 2), torch.ones(2, 2))


def test_mismatched_inner_dimensions_are_a_value_error():
    with pytest.raises(ValueError, match="inner dimensions"):
        limb_matmul(ring(2, 3), ring(4, 2))


# ---- on shares: the products the parties and the dealer take above the limb threshold -----------

def job_products_above_the_threshold(ctx, x, w):
    import crypten

    from pinfer.protocols import ring_matmul as products
    from pinfer.protocols.fixed_operand import FixedOperand

    measured = products.limbs_faster
    products.limbs_faster = lambda device: True  # the limb path, whichever path this host measures faster
    try:
        operand = FixedOperand(ctx.provider, crypten.cryptensor(w, src=0))
        shared_x = crypten.cryptensor(x, src=1)
        return {
            "fixed": operand.rmatmul(shared_x).get_plain_text(),
            "transposed": operand.rmatmul(crypten.cryptensor(x @ w, src=1), transposed=True).get_plain_text(),
            "beaver": (shared_x @ crypten.cryptensor(w, src=0)).get_plain_text(),
        }
    finally:
        products.limbs_faster = measured


@pytest.mark.slow
def test_fixed_operand_and_beaver_products_take_the_limb_path_exactly(world):
    generator = torch.Generator().manual_seed(10)
    x = torch.rand(16, 192, generator=generator) * 2 - 1
    w = torch.rand(192, 128, generator=generator) * 2 - 1
    assert 16 * 192 * 128 >= LIMB_MIN_MACS and 16 >= LIMB_MIN_ROWS
    out = world.run(job_products_above_the_threshold, x, w)[0]
    # a wrong ring product would be off by a random ring element, not by fixed-point rounding
    assert torch.allclose(out["fixed"], x @ w, atol=0.05)
    assert torch.allclose(out["beaver"], x @ w, atol=0.05)
    assert torch.allclose(out["transposed"], (x @ w) @ w.T, atol=0.5)


def test_fixed_right_hands_out_column_major_views_of_the_same_values():
    from pinfer.protocols.ring_matmul import FixedRight

    w = torch.randint(-(1 << 62), 1 << 62, (2, 5, 3), dtype=torch.int64)
    fixed = FixedRight(w.clone())
    for transposed in (False, True, False):
        right = fixed.right(transposed)
        assert torch.equal(right, w.transpose(-1, -2) if transposed else w)
        assert right.transpose(-1, -2).is_contiguous()
    more = torch.randint(-(1 << 62), 1 << 62, (2, 2, 3), dtype=torch.int64)
    fixed.extend(more, dim=-2)
    w = torch.cat([w, more], dim=-2)
    assert torch.equal(fixed.right(True), w.transpose(-1, -2)) and torch.equal(fixed.value, w)
    x = torch.randint(-(1 << 62), 1 << 62, (2, 1, 7), dtype=torch.int64)
    assert torch.equal(torch.matmul(x, fixed.right(False)), torch.matmul(x, w))
