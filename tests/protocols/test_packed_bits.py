"""Packed sign tests (``pinfer.protocols.packed_bits``): exact against plaintext, for every lane width
and 2 or 3 parties, and cheaper than CrypTen's comparison."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinfer.protocols.packed_bits import LANE_WIDTHS, WORD, lane_width
from pinfer.protocols.world import LocalWorld

MPC = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WIDTHS = (*LANE_WIDTHS, WORD)


def job_bits(ctx, encodings: torch.Tensor, width: int):
    import crypten
    import crypten.communicator as comm

    from pinfer.protocols import packed_bits
    from pinfer.protocols.sharing import SCALE

    x = crypten.cryptensor(encodings.double() / SCALE, src=0)
    assert torch.equal(x._tensor.reveal(), encodings), "test inputs must be exact encodings"
    stats = comm.get()
    before = stats.comm_bytes
    negative = packed_bits.ltz(x, width)
    packed_bytes = stats.comm_bytes - before
    before = stats.comm_bytes
    x._ltz()
    crypten_bytes = stats.comm_bytes - before
    return {"ltz": negative._tensor.reveal(), "packed_bytes": packed_bytes, "crypten_bytes": crypten_bytes}


def encodings_within(width: int, count: int):
    """Integer encodings with |X| < 2^(width-1), edges included (for 64 bits, up to what a float64
    input encodes exactly)."""
    top = min(2 ** (width - 1) - 1, 2**52)
    edges = [0, 1, -1, top, -top, -top - 1]
    return st.lists(st.integers(-top, top), min_size=count, max_size=count).map(
        lambda v: torch.tensor(edges + v, dtype=torch.int64))


@pytest.mark.parametrize("width", WIDTHS)
@given(data=st.data())
@MPC
def test_sign_is_exact(world, width, data):
    encodings = data.draw(encodings_within(width, data.draw(st.integers(0, 300))))
    out = world.run(job_bits, encodings, width)[0]
    assert torch.equal(out["ltz"], (encodings < 0).long())


def test_three_parties_agree_with_plaintext():
    encodings = torch.randint(-2**31, 2**31, (257,))
    with LocalWorld(n_parties=3) as w:
        outs = w.run(job_bits, encodings, 32)
    for out in outs:
        assert torch.equal(out["ltz"], (encodings < 0).long())


def test_narrow_lanes_cost_less_than_crypten(world):
    """Bytes per comparison on 4096 values: 64-bit words carry 2 (32-bit lanes) to 4 (16-bit) values."""
    costs = {}
    for width in (16, 32, 64):
        out = world.run(job_bits, torch.randint(-2**15, 2**15, (4096,)), width)[0]
        costs[width] = out["packed_bytes"] / out["crypten_bytes"]
    assert costs[64] < 1.0
    assert costs[32] < 0.45
    assert costs[16] < 0.3


def test_lane_width_needs_a_bound_that_fits():
    assert lane_width(None, 16) == WORD
    assert lane_width(2.0**11, 16) == 32  # softmax scores: 2^27 units need a sign bit too
    assert lane_width(100.0, 0) == 16
    assert lane_width(2.0**20, 16) == WORD
