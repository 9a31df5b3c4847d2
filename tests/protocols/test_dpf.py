"""DPF keys (``pinfer.protocols.fss.dpf``): both expansions add up to ``beta [x == alpha]`` exactly over
the evaluated domain, for every width; the domain expansion equals the slow path walk point by point;
one key alone does not show where its point is in an obvious way; the key layout is pinned."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinfer.protocols.fss import dpf


def _roots(count: int) -> np.ndarray:
    return np.frombuffer(os.urandom(16 * count), dtype=np.uint64).reshape(count, 2).copy()


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 12), data=st.data())
def test_shares_add_up_to_the_point_function(bits: int, data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 12))
    size = data.draw(st.integers(1, 1 << bits))
    alpha = np.array(data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=count, max_size=count)),
                     dtype=np.uint64)
    beta = np.array(data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=count, max_size=count)), dtype=np.uint64)
    key0, key1 = dpf.generate(alpha, beta, bits, _roots(count), _roots(count))
    total = dpf.evaluate_domain(0, key0, bits, size) + dpf.evaluate_domain(1, key1, bits, size)
    expected = np.zeros((count, size), dtype=np.uint64)
    inside = alpha < np.uint64(size)
    expected[np.flatnonzero(inside), alpha[inside].astype(np.int64)] = beta[inside]
    np.testing.assert_array_equal(total, expected)


@settings(max_examples=10, deadline=None)
@given(bits=st.integers(1, 10), alpha=st.integers(0, 2**10 - 1), data=st.data())
def test_domain_expansion_equals_the_path_walk(bits: int, alpha: int, data: st.DataObject) -> None:
    alpha %= 1 << bits
    keys = dpf.generate(np.array([alpha], dtype=np.uint64), np.array([7], dtype=np.uint64), bits, _roots(1), _roots(1))
    points = sorted({alpha, 0, (1 << bits) - 1, *data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=6))})
    for party in (0, 1):
        domain = dpf.evaluate_domain(party, keys[party], bits, 1 << bits)[0]
        assert [int(domain[x]) for x in points] == [dpf.evaluate_point(party, keys[party][0], bits, x) for x in points]


def test_a_vocabulary_sized_domain_is_cut_at_its_size() -> None:
    """SmolLM2's 49,152 ids on a 16-bit tree: the last id is a point like any other, and chunks of
    keys (more keys than one expansion step takes) join in order."""
    count = 70
    alpha = np.array([0, 49_151, *range(100, 100 + 68)], dtype=np.uint64)
    key0, key1 = dpf.generate(alpha, np.ones(count, dtype=np.uint64), 16, _roots(count), _roots(count))
    total = dpf.evaluate_domain(0, key0, 16, 49_152) + dpf.evaluate_domain(1, key1, 16, 49_152)
    assert total.shape == (count, 49_152)
    np.testing.assert_array_equal(total.argmax(axis=1), alpha.astype(np.int64))
    assert int(total.sum()) == count
    assert dpf.key_words(16) * 8 == 288


def test_one_share_looks_the_same_wherever_the_point_is() -> None:
    """Party 0's share at a fixed x is pseudo-random whether x is the point or not: its low bit is
    balanced (a sanity check of the masking, not a security proof)."""
    count = 20000
    root0 = _roots(count)
    for alpha_value in (5, 6):
        key0, _ = dpf.generate(np.full(count, alpha_value, dtype=np.uint64), np.ones(count, dtype=np.uint64), 8,
                               root0, _roots(count))
        low_bits = dpf.evaluate_domain(0, key0, 8, 8)[:, 5] & np.uint64(1)
        assert abs(float(low_bits.mean()) - 0.5) < 0.02


def test_keys_are_pinned() -> None:
    """The keys of fixed roots: a layout change would break keys made by another version."""
    alpha = np.array([0, 1, 1000, 2**16 - 1], dtype=np.uint64)
    beta = np.arange(4, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    roots = np.arange(8, dtype=np.uint64).reshape(4, 2)
    key0, key1 = dpf.generate(alpha, beta, 16, roots, roots + np.uint64(100))
    assert hashlib.sha256(key0.tobytes() + key1.tobytes()).hexdigest() == PINNED_KEY_DIGEST


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="below 2\\^4"):
        dpf.generate(np.array([16], dtype=np.uint64), np.ones(1, dtype=np.uint64), 4, _roots(1), _roots(1))
    with pytest.raises(ValueError, match="1..32"):
        dpf.generate(np.zeros(1, dtype=np.uint64), np.ones(1, dtype=np.uint64), 0, _roots(1), _roots(1))
    with pytest.raises(ValueError, match="same number"):
        dpf.generate(np.zeros(2, dtype=np.uint64), np.ones(1, dtype=np.uint64), 4, _roots(2), _roots(2))
    key0, _ = dpf.generate(np.zeros(2, dtype=np.uint64), np.ones(2, dtype=np.uint64), 8, _roots(2), _roots(2))
    with pytest.raises(ValueError, match="parties 0 and 1"):
        dpf.evaluate_domain(2, key0, 8, 256)
    with pytest.raises(ValueError, match="key words"):
        dpf.evaluate_domain(0, key0[:, :-1], 8, 256)
    with pytest.raises(ValueError, match="1..2\\^8"):
        dpf.evaluate_domain(0, key0, 8, 257)


PINNED_KEY_DIGEST = "76a97254d3c316152ec28c423186c8acb98ae3e22626addb6595717a9d36c697"
