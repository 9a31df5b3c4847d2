"""``pinfer.protocols.comparison``: ``[x < 0]`` exact against plaintext on both methods over the whole
documented range ``|x| < 2^(k-1)``, one round on the FSS path, and the dealer's keys counted as dealer
traffic."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinfer.protocols.world import LocalWorld

MPC = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WIDTHS = (2, 16, 21, 28, 32, 43, 64)


def job_ltz(ctx, encodings: torch.Tensor, width: int, method: str):
    import crypten
    import crypten.communicator as comm

    from pinfer.protocols import comparison
    from pinfer.protocols.sharing import SCALE

    x = crypten.cryptensor(encodings.double() / SCALE, src=0)
    assert torch.equal(x._tensor.reveal(), encodings), "test inputs must be exact encodings"
    stats = comm.get()
    dealer = ctx.provider.channel.stats
    before = (stats.comm_bytes, stats.comm_rounds, dealer.bytes_received)
    with comparison.using(method):
        negative = comparison.ltz(x, width)
        used = comparison.active_method()
    costs = {"bytes": stats.comm_bytes - before[0], "rounds": stats.comm_rounds - before[1],
             "dealer_bytes": dealer.bytes_received - before[2]}
    return {"ltz": negative._tensor.reveal(), "method": used, **costs}


def job_bits(ctx, encodings: torch.Tensor, positions: list[int], method: str):
    import crypten
    import crypten.communicator as comm

    from pinfer.protocols import comparison
    from pinfer.protocols.sharing import SCALE

    x = crypten.cryptensor(encodings.double() / SCALE, src=0)
    stats = comm.get()
    before = stats.comm_rounds
    with comparison.using(method):
        bits = comparison.ltz_many([(x, i + 1) for i in positions] + [(x, 64)])
    rounds = stats.comm_rounds - before
    return {"bits": [b._tensor.reveal() for b in bits], "rounds": rounds}


def job_thresholds(ctx, encodings: torch.Tensor, width: int, thresholds: list[int], method: str):
    import crypten
    import crypten.communicator as comm

    from pinfer.protocols import comparison
    from pinfer.protocols.sharing import SCALE

    x = crypten.cryptensor(encodings.double() / SCALE, src=0)
    stats, dealer = comm.get(), ctx.provider.channel.stats
    before = (stats.comm_rounds, dealer.bytes_received)
    with comparison.using(method):
        below, sign = comparison.ltz_many([(x, width, thresholds), (x, width)])
    costs = {"rounds": stats.comm_rounds - before[0], "dealer_bytes": dealer.bytes_received - before[1]}
    return {"below": below._tensor.reveal(), "sign": sign._tensor.reveal(), **costs}


def job_min(ctx, encodings: torch.Tensor, width: int, method: str):
    import crypten
    import crypten.communicator as comm

    from pinfer.protocols import comparison
    from pinfer.protocols.sharing import SCALE

    x = crypten.cryptensor(encodings.double() / SCALE, src=0)
    stats = comm.get()
    before = stats.comm_rounds
    with comparison.using(method):
        below, low = comparison.ltz_with_min(x, width)
    rounds = stats.comm_rounds - before
    return {"below": below._tensor.reveal(), "min": low._tensor.reveal(), "rounds": rounds}


def job_masks(ctx, count: int, bits: int):
    from crypten.mpc.primitives import ArithmeticSharedTensor

    keys = ctx.provider.sign_keys(count, bits)
    return ArithmeticSharedTensor.from_shares(keys.mask(), precision=0).reveal()


def job_auto_by_size(ctx, sizes: list[int]):
    import crypten
    import crypten.communicator as comm

    from pinfer.protocols import comparison

    default, comparison.FSS_AUTO_MAX_TESTS = comparison.FSS_AUTO_MAX_TESTS, 100
    stats = comm.get()
    rounds = []
    try:
        for size in sizes:
            x = crypten.cryptensor(torch.arange(size, dtype=torch.float64) - size / 2, src=0)
            before = stats.comm_rounds
            comparison.ltz(x, 32)
            rounds.append(stats.comm_rounds - before)
    finally:
        comparison.FSS_AUTO_MAX_TESTS = default
    return rounds


def job_pinned_fss(ctx):
    import crypten

    from pinfer.protocols import comparison

    with comparison.using("fss"):
        comparison.ltz(crypten.cryptensor(torch.zeros(3)), 16)


def encodings_within(width: int, count: int):
    top = min(2 ** (width - 1) - 1, 2**52)
    edges = [0, 1, -1, top, -top, -min(2 ** (width - 1), 2**52)]
    return st.lists(st.integers(-top, top), min_size=count, max_size=count).map(
        lambda v: torch.tensor(edges + v, dtype=torch.int64))


@pytest.mark.parametrize("method", ["fss", "carry-tree"])
@pytest.mark.parametrize("width", WIDTHS)
@given(data=st.data())
@MPC
def test_ltz_is_exact_on_both_methods(world, method, width, data):
    encodings = data.draw(encodings_within(width, 40))
    out = world.run(job_ltz, encodings, width, method)[0]
    assert out["method"] == method
    assert torch.equal(out["ltz"], (encodings < 0).long())


@pytest.mark.parametrize("method", ["fss", "carry-tree"])
@given(data=st.data())
@MPC
def test_ltz_many_reads_any_bit_and_the_sign_together(world, method, data):
    encodings = data.draw(st.lists(st.integers(-2**52, 2**52), min_size=1, max_size=50)
                          .map(lambda v: torch.tensor(v, dtype=torch.int64)))
    positions = data.draw(st.lists(st.integers(1, 53), min_size=1, max_size=6))
    out = world.run(job_bits, encodings, positions, method)[0]
    for i, bits in zip(positions, out["bits"]):
        assert torch.equal(bits, (encodings >> i) & 1), i
    assert torch.equal(out["bits"][-1], (encodings < 0).long())
    if method == "fss":
        assert out["rounds"] == 1


@pytest.mark.parametrize("method", ["fss", "carry-tree"])
@pytest.mark.parametrize("width", (4, 12, 21, 40))
@given(data=st.data())
@MPC
def test_thresholds_share_one_opening_and_one_key(world, method, width, data):
    """``[x < p]`` for many public p, with |x - p| < 2^(width-1) at every one: exact on both
    methods; with FSS one round and one key per value (dealer bytes of a single-point test)."""
    half = 2 ** (width - 2) - 1
    thresholds = data.draw(st.lists(st.integers(-half, half), min_size=1, max_size=33))
    encodings = data.draw(st.lists(st.integers(-half + 1, half - 1), min_size=1, max_size=40)
                          .map(lambda v: torch.tensor(v + [thresholds[0]], dtype=torch.int64)))
    out = world.run(job_thresholds, encodings, width, thresholds, method)[0]
    expected = (encodings.unsqueeze(-1) < torch.tensor(thresholds)).long()
    assert torch.equal(out["below"], expected)
    assert torch.equal(out["sign"], (encodings < 0).long())
    if method == "fss":
        assert out["rounds"] == 1
        one = world.run(job_thresholds, encodings, width, thresholds[:1], method)[0]
        assert out["dealer_bytes"] == one["dealer_bytes"]  # one key per value, whatever the thresholds


@pytest.mark.parametrize("method", ["fss", "carry-tree"])
@pytest.mark.parametrize("width", (2, 21, 32, 64))
@given(data=st.data())
@MPC
def test_ltz_with_min_gives_the_sign_and_min_x_0(world, method, width, data):
    encodings = data.draw(encodings_within(width, 30))
    out = world.run(job_min, encodings, width, method)[0]
    assert torch.equal(out["below"], (encodings < 0).long())
    assert torch.equal(out["min"], encodings.clamp(max=0))
    assert out["rounds"] == (1 if method == "fss" else out["rounds"])


def test_sign_key_masks_cover_the_whole_ring(world):
    """The opened x + r must hide x's high bits too: r is uniform over Z_2^64, not only below 2^bits."""
    masks = world.run(job_masks, 4000, 16)[0]
    for bit in (16, 40, 63):
        share_set = float(((masks >> bit) & 1).double().mean())
        assert abs(share_set - 0.5) < 0.05, bit


def test_fss_costs_one_round_and_its_keys_are_dealer_traffic(world):
    from pinfer.protocols.fss.dcf import correction_words

    encodings = torch.arange(-500, 500)
    count = encodings.numel()
    fss, tree = (world.run(job_ltz, encodings, 32, m) for m in ("fss", "carry-tree"))
    # CrypTen counts an opening as the words sent plus the words received
    assert fss[0]["rounds"] == 1 and fss[0]["bytes"] == 2 * 8 * count
    assert tree[0]["rounds"] > 4 * fss[0]["rounds"]
    key_bytes = 8 * correction_words(31) * count
    assert fss[1]["dealer_bytes"] >= key_bytes  # party 1 receives the correction words only
    assert fss[0]["dealer_bytes"] >= key_bytes + 2 * 8 * count  # party 0 also its mask shares


def test_auto_takes_the_carry_tree_for_large_calls(world):
    small, large = world.run(job_auto_by_size, [100, 101])[0]
    assert small == 1 and large > 1


def test_auto_takes_fss_with_two_parties_and_the_tree_with_three():
    with LocalWorld(n_parties=3) as w:
        encodings = torch.arange(-40, 40)
        out = w.run(job_ltz, encodings, 16, "auto")[0]
        assert out["method"] == "carry-tree" and torch.equal(out["ltz"], (encodings < 0).long())
        with pytest.raises(Exception, match="ComparisonUnavailableError|two parties"):
            w.run(job_pinned_fss)
