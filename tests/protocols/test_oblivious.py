"""Oblivious top-k (``pinfer.protocols.oblivious``) with a ranking ``resolution``: each party floors
its own share, so the pairs compare one truncated value per entry in narrower lanes. Rows stay
one-hot on distinct entries; the selected set can differ from the exact top-k only by entries within
the resolution of the k-th largest value; well separated values keep the exact order; fewer bytes."""

from __future__ import annotations

import pytest
import torch

from pinfer.model.plain_ops import PlainOps
from pinfer.protocols.oblivious import pair_lane_width, truncation
from pinfer.protocols.sharing import FRACTIONAL_BITS, share
from pinfer.protocols.world import LocalWorld

SPREAD = 2.0**12
UNIT = 2**FRACTIONAL_BITS


def job_topk(ctx, k, spread, resolution, x):
    import crypten.communicator as comm
    from crypten.mpc import MPCTensor

    from pinfer.protocols.oblivious import ranks, topk_onehot

    shared = MPCTensor.from_shares(x.expand()["x"], precision=FRACTIONAL_BITS)
    stats, dealer = comm.get(), ctx.provider.channel.stats
    # party links and the dealer's: narrower lanes shrink the carry tree's words or the FSS keys
    before = stats.comm_bytes + dealer.bytes_received
    ranks(shared, spread, resolution)
    rank_bytes = stats.comm_bytes + dealer.bytes_received - before
    return {"onehot": topk_onehot(shared, k, spread, resolution).get_plain_text(), "rank_bytes": rank_bytes}


@pytest.fixture(scope="module", params=[2, 3], ids=["2pc", "3pc"])
def world(request):
    with LocalWorld(n_parties=request.param) as w:
        yield w


def run_topk(world, encodings: torch.Tensor, k: int, resolution: float | None, spread: float = SPREAD) -> dict:
    bundles = share({"x": encodings}, world.n_parties, encoded=True)
    return world.run(job_topk, k, spread, resolution, party_kwargs=[{"x": b} for b in bundles])[0]


def near_ties(heads: int, n: int, seed: int) -> torch.Tensor:
    """Encodings on a coarse grid (step 0.25, so many exact ties) plus noise below 0.05 on half the
    entries, spanning almost the whole spread (extremes forced into every row)."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.randint(-8, 9, (heads, n), generator=gen) * (UNIT // 4)
    noise = torch.randint(-UNIT // 20, UNIT // 20 + 1, (heads, n), generator=gen)
    noise *= torch.rand(heads, n, generator=gen) < 0.5
    x = grid + noise
    half = int(SPREAD * UNIT) // 2 - UNIT
    x[:, 0], x[:, -1] = -half, half  # max - min just below the spread bound
    return x


def assert_one_hot_on_distinct_entries(onehot: torch.Tensor, k: int) -> None:
    assert torch.equal(onehot, onehot.round()) and set(onehot.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(onehot.sum(dim=-1), torch.ones(onehot.shape[:-1]))
    picked = onehot.argmax(dim=-1)
    for row in picked:
        assert len(set(row.tolist())) == k


@pytest.mark.parametrize(("n", "k", "resolution"), [(9, 3, 0.5), (33, 5, 0.5), (40, 12, 0.125), (64, 64, 0.5)])
def test_near_ties_change_only_entries_within_resolution_of_the_kth(world, n, k, resolution):
    encodings = near_ties(3, n, seed=n + k)
    values = encodings.double() / UNIT
    onehot = run_topk(world, encodings, k, resolution)["onehot"]
    assert onehot.shape == (3, k, n)
    assert_one_hot_on_distinct_entries(onehot, k)
    expected = PlainOps({}).topk_onehot(values, k)
    kth = values.sort(dim=-1, descending=True).values[:, k - 1]
    for head in range(3):
        got = set(onehot[head].argmax(dim=-1).tolist())
        want = set(expected[head].argmax(dim=-1).tolist())
        for entry in got ^ want:
            assert abs(values[head, entry] - kth[head]) < resolution, (head, entry)
        # Order too: a row's entry is never beaten by a later row's by resolution or more.
        chosen = values[head, onehot[head].argmax(dim=-1)]
        assert torch.all(chosen[1:] - chosen[:-1] < resolution)


@pytest.mark.parametrize(("n", "k"), [(16, 4), (48, 10)])
def test_well_separated_values_select_exactly(world, n, k):
    gen = torch.Generator().manual_seed(n)
    resolution = 0.5
    gaps = (resolution + torch.rand(3, n, generator=gen)) * UNIT  # every gap above the resolution
    levels = gaps.long().cumsum(dim=-1) - int(SPREAD * UNIT) // 4
    encodings = torch.stack([row[torch.randperm(n, generator=gen)] for row in levels])
    expected = PlainOps({}).topk_onehot(encodings.double() / UNIT, k)
    assert torch.equal(run_topk(world, encodings, k, resolution)["onehot"], expected.float())


def test_resolution_halves_the_ranking_bytes(world):
    encodings = near_ties(3, 64, seed=1)
    exact = run_topk(world, encodings, 8, None)["rank_bytes"]
    coarse = run_topk(world, encodings, 8, 0.5)["rank_bytes"]
    assert pair_lane_width(SPREAD, truncation(0.5, world.n_parties), world.n_parties) < 32
    assert coarse < 0.8 * exact


def test_truncation_and_lane_width():
    assert truncation(None, 2) == 0
    assert truncation(2.0**-17, 2) == 0  # below N units: nothing to drop
    assert truncation(0.5, 2) == 14 and truncation(0.5, 3) == 13
    for parties in (2, 3):
        for resolution in (1e-4, 0.1, 0.5, 3.0):
            t = truncation(resolution, parties)
            assert parties * 2**t <= resolution * UNIT or t == 0
            assert parties * 2 ** (t + 1) > resolution * UNIT
    assert pair_lane_width(SPREAD, 14, 2) == 16
    assert pair_lane_width(None, 14, 2) == 50  # no spread: the low 64 - t bits
    with pytest.raises(ValueError):
        truncation(0.0, 2)
