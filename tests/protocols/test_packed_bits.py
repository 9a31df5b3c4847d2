"""Packed-lane bit extraction (``pinfer.protocols.packed_bits``): exact against plaintext, for every
lane width and 2 or 3 parties, and cheaper than CrypTen's 64-bit conversion."""

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
    bits = packed_bits.lane_bits(x, width)
    flags = packed_bits.bits_to_arithmetic(bits >> 3, x)
    return {"ltz": negative._tensor.reveal(), "lane": bits.reveal(), "bit3": flags._tensor.reveal(),
            "packed_bytes": packed_bytes, "crypten_bytes": crypten_bytes}


def encodings_within(width: int, count: int):
    """Integer encodings with |X| < 2^(width-1), edges included (for 64 bits, up to what a float64
    input encodes exactly)."""
    top = min(2 ** (width - 1) - 1, 2**52)
    edges = [0, 1, -1, top, -top, -top - 1]
    return st.lists(st.integers(-top, top), min_size=count, max_size=count).map(
        lambda v: torch.tensor(edges + v, dtype=torch.int64))


def expected_lane(encodings: torch.Tensor, width: int) -> torch.Tensor:
    return encodings if width == WORD else encodings & ((1 << width) - 1)


@pytest.mark.parametrize("width", WIDTHS)
@given(data=st.data())
@MPC
def test_sign_lane_bits_and_b2a_are_exact(world, width, data):
    encodings = data.draw(encodings_within(width, data.draw(st.integers(0, 300))))
    out = world.run(job_bits, encodings, width)[0]
    assert torch.equal(out["ltz"], (encodings < 0).long())
    lane = expected_lane(encodings, width)
    assert torch.equal(out["lane"], lane)
    assert torch.equal(out["bit3"], (lane >> 3) & 1)


def test_three_parties_agree_with_plaintext():
    encodings = torch.randint(-2**31, 2**31, (257,))
    with LocalWorld(n_parties=3) as w:
        outs = w.run(job_bits, encodings, 32)
    for out in outs:
        assert torch.equal(out["ltz"], (encodings < 0).long())
        assert torch.equal(out["lane"], encodings & (2**32 - 1))


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
    with pytest.raises(ValueError):
        from pinfer.protocols.packed_bits import _lanes

        _lanes(65)


def _word_prefix_or(b):
    """The baseline any_set replaced: ORs shifted through whole words, 6 rounds of one AND word each."""
    shift = 1
    while shift < WORD:
        b = b | (b >> shift)
        shift *= 2
    return b


def job_any_set(ctx, words: torch.Tensor, ranges: list[tuple[int, int]]):
    import crypten.communicator as comm

    from pinfer.protocols import packed_bits

    x = packed_bits._binary(words if comm.get().get_rank() == 0 else torch.zeros_like(words))
    out, stats = {}, comm.get()
    before = stats.comm_bytes
    _word_prefix_or(x)
    out["word_or_bytes"] = stats.comm_bytes - before
    for low, high in ranges:
        before = stats.comm_bytes
        flags = packed_bits.any_set(x, low, high)
        out[(low, high)] = {"bits": flags.reveal(), "bytes": stats.comm_bytes - before}
    return out


def expected_any(words: torch.Tensor, low: int, high: int) -> torch.Tensor:
    width_mask = -1 if high - low == WORD else (1 << (high - low)) - 1
    return (((words >> low) & width_mask) != 0).long()


RANGES = [(0, 1), (0, 7), (20, 64), (19, 31), (3, 4), (0, 64), (5, 50)]


@given(data=st.data())
@MPC
def test_any_set_is_the_or_of_a_bit_range(world, data):
    """Words with few set bits (so that many ranges are all zero) and the sign bit sometimes set."""
    count = data.draw(st.integers(1, 200))
    bits = st.lists(st.integers(0, 63), max_size=3).map(lambda p: sum(1 << b for b in set(p)))
    values = data.draw(st.lists(bits, min_size=count, max_size=count))
    words = torch.tensor([v - (1 << 64) if v >= 1 << 63 else v for v in values], dtype=torch.int64)
    out = world.run(job_any_set, words.reshape(-1, 1) if count % 2 else words, RANGES)[0]
    for low, high in RANGES:
        assert torch.equal(out[(low, high)]["bits"].reshape(-1), expected_any(words, low, high)), (low, high)


def test_any_set_with_three_parties_and_its_cost():
    words = torch.randint(-2**62, 2**62, (640,)) >> torch.randint(0, 63, (640,))
    with LocalWorld(n_parties=3) as w:
        outs = w.run(job_any_set, words, RANGES)
    for out in outs:
        for low, high in RANGES:
            assert torch.equal(out[(low, high)]["bits"], expected_any(words, low, high)), (low, high)
    # 44 bit planes: 43 AND words per 64 values, against 6 rounds of an AND word per value
    assert outs[0][(20, 64)]["bytes"] < 0.25 * outs[0]["word_or_bytes"]
    with pytest.raises(ValueError):
        from pinfer.protocols.packed_bits import any_set

        any_set(None, 4, 4)
