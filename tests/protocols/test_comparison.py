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


def test_auto_takes_fss_with_two_parties_and_the_tree_with_three():
    with LocalWorld(n_parties=3) as w:
        encodings = torch.arange(-40, 40)
        out = w.run(job_ltz, encodings, 16, "auto")[0]
        assert out["method"] == "carry-tree" and torch.equal(out["ltz"], (encodings < 0).long())
        with pytest.raises(Exception, match="ComparisonUnavailableError|two parties"):
            w.run(job_pinned_fss)
