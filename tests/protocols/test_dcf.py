"""DCF keys (``pinfer.protocols.fss``): both evaluations add up to ``beta [x < alpha]`` exactly, for
every width, at the boundary points and at random points; the wire form round-trips; one key alone
does not depend on alpha in an obvious way; the PRG's output is pinned."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinfer.protocols.fss import dcf, prg


def _roots(count: int) -> np.ndarray:
    return np.frombuffer(os.urandom(16 * count), dtype=np.uint64).reshape(count, 2).copy()


def _below(bits: int, values: list[int]) -> np.ndarray:
    return np.array([v % (1 << bits) for v in values], dtype=np.uint64)


def _reference(x: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """The plaintext function, element by element (and payload word by word) in Python integers."""
    return np.array([[int(w) if int(v) < int(a) else 0 for w in np.atleast_1d(b)] for v, a, b in zip(x, alpha, beta)],
                    dtype=np.uint64).reshape(beta.shape)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 64), payload=st.integers(0, 3), data=st.data())
def test_shares_add_up_to_the_comparison(bits: int, payload: int, data: st.DataObject) -> None:
    """payload 0: a (count,) beta; m >= 1: (count, m) words."""
    count = data.draw(st.integers(1, 24))
    alpha = _below(bits, data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=count, max_size=count)))
    beta = _below(64, data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=count * max(payload, 1),
                                         max_size=count * max(payload, 1))))
    if payload:
        beta = beta.reshape(count, payload)
    root0, root1 = _roots(count), _roots(count)
    words = dcf.generate(alpha, beta, bits, root0, root1).to_words()
    corrections = dcf.Corrections.from_words(words, bits, max(payload, 1))
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    probes = [alpha, (alpha - np.uint64(1)) & mask, (alpha + np.uint64(1)) & mask,
              np.zeros(count, dtype=np.uint64), np.full(count, mask, dtype=np.uint64),
              _below(bits, data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=count, max_size=count)))]
    for x in probes:
        total = dcf.evaluate(0, root0, corrections, x) + dcf.evaluate(1, root1, corrections, x)
        np.testing.assert_array_equal(total.reshape(beta.shape), _reference(x, alpha, beta))


@settings(max_examples=20, deadline=None)
@given(bits=st.integers(1, 40), payload=st.integers(1, 2), points=st.integers(1, 40), data=st.data())
def test_one_key_evaluates_at_many_points(bits: int, payload: int, points: int, data: st.DataObject) -> None:
    """x of shape (count, P): each key at P points, the shares adding up at every one."""
    count = data.draw(st.integers(1, 9))
    alpha = _below(bits, data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=count, max_size=count)))
    beta = _below(64, data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=count * payload,
                                         max_size=count * payload))).reshape(count, payload)
    x = _below(bits, data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=count * points,
                                        max_size=count * points))).reshape(count, points)
    x[:, 0] = alpha  # the boundary itself
    root0, root1 = _roots(count), _roots(count)
    corrections = dcf.generate(alpha, beta, bits, root0, root1)
    total = dcf.evaluate(0, root0, corrections, x) + dcf.evaluate(1, root1, corrections, x)
    expected = np.stack([_reference(x[:, i], alpha, beta) for i in range(points)], axis=1)
    np.testing.assert_array_equal(total.reshape(expected.shape), expected)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 14), data=st.data())
def test_a_ladder_equals_the_points_it_stands_for(bits: int, data: st.DataObject) -> None:
    """``evaluate_ladder`` gives each party exactly ``evaluate``'s shares at ``x - j 2^s`` for every
    rung j (not only their sum), on a whole ladder and on a window of fewer rungs, with alpha and x
    at the boundaries (and the window wrapping past 0) among the draws."""
    step = data.draw(st.integers(0, bits - 1))
    every = 1 << (bits - step)
    rungs = data.draw(st.one_of(st.just(every), st.integers(1, every)))
    count = data.draw(st.integers(1, 9))
    values = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**bits - 1, 2**bits]))
    alpha = _below(bits, data.draw(st.lists(values, min_size=count, max_size=count)))
    beta = _below(64, data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=count, max_size=count)))
    x = _below(bits, data.draw(st.lists(values, min_size=count, max_size=count)))
    root0, root1 = _roots(count), _roots(count)
    corrections = dcf.generate(alpha, beta, bits, root0, root1)
    offsets = np.arange(rungs, dtype=np.uint64) << np.uint64(step)
    points = (x[:, None] - offsets[None, :]) & np.uint64((1 << bits) - 1)
    shares = [dcf.evaluate_ladder(party, root, corrections, x, step, rungs) for party, root in ((0, root0), (1, root1))]
    for party, root in ((0, root0), (1, root1)):
        np.testing.assert_array_equal(shares[party], dcf.evaluate(party, root, corrections, points))
    expected = np.stack([_reference(points[:, i], alpha, beta) for i in range(rungs)], axis=1)
    np.testing.assert_array_equal(shares[0] + shares[1], expected)


def test_a_window_hashes_the_blocks_it_is_said_to() -> None:
    """The cost figures quoted for the spline's tests: the whole ladder of 8-bit boundaries and the
    window of 33 rungs on a 20-bit lane."""
    assert dcf.ladder_blocks(8, 3, 32) == 285
    assert dcf.ladder_blocks(20, 3, 33) == 375


def test_a_ladder_refuses_what_it_cannot_evaluate() -> None:
    alpha, beta = np.array([3], dtype=np.uint64), np.array([[1, 2]], dtype=np.uint64)
    corrections = dcf.generate(alpha, beta, 4, _roots(1), _roots(1))
    with pytest.raises(ValueError, match="one-word payloads"):
        dcf.evaluate_ladder(0, _roots(1), corrections, np.array([1], dtype=np.uint64), 1)
    single = dcf.generate(alpha, np.array([1], dtype=np.uint64), 4, _roots(1), _roots(1))
    with pytest.raises(ValueError, match="step_bits"):
        dcf.evaluate_ladder(0, _roots(1), single, np.array([1], dtype=np.uint64), 4)
    with pytest.raises(ValueError, match="same number of keys"):
        dcf.evaluate_ladder(0, _roots(1), single, np.array([1, 2], dtype=np.uint64), 1)
    with pytest.raises(ValueError, match="rungs"):
        dcf.evaluate_ladder(0, _roots(1), single, np.array([1], dtype=np.uint64), 1, rungs=9)


def test_wire_form_has_the_documented_size_and_is_read_in_place() -> None:
    for bits, m in ((1, 1), (31, 1), (32, 2), (33, 1), (64, 3)):
        words = dcf.generate(np.zeros(3, dtype=np.uint64), np.ones((3, m), dtype=np.uint64), bits, _roots(3),
                             _roots(3)).to_words()
        assert words.shape == (3, dcf.correction_words(bits, m))
        assert np.shares_memory(dcf.Corrections.from_words(words, bits, m).to_words(), words)
    with pytest.raises(ValueError, match="correction words"):
        dcf.Corrections.from_words(np.zeros((2, 5), dtype=np.uint64), 31)


def test_keys_are_pinned() -> None:
    """The correction words of fixed roots: a layout change would break keys across versions."""
    alpha = np.array([0, 1, 1000, 2**19 - 1], dtype=np.uint64)
    beta = np.arange(8, dtype=np.uint64).reshape(4, 2) * np.uint64(0x9E3779B97F4A7C15)
    roots = np.arange(8, dtype=np.uint64).reshape(4, 2)
    words = dcf.generate(alpha, beta, 20, roots, roots + np.uint64(100)).to_words()
    assert hashlib.sha256(words.tobytes()).hexdigest() == PINNED_KEY_DIGEST


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="below 2\\^4"):
        dcf.generate(np.array([16], dtype=np.uint64), np.ones(1, dtype=np.uint64), 4, _roots(1), _roots(1))
    with pytest.raises(ValueError, match="1..64"):
        dcf.generate(np.zeros(1, dtype=np.uint64), np.ones(1, dtype=np.uint64), 0, _roots(1), _roots(1))
    cw = dcf.generate(np.zeros(2, dtype=np.uint64), np.ones(2, dtype=np.uint64), 8, _roots(2), _roots(2))
    with pytest.raises(ValueError, match="parties 0 and 1"):
        dcf.evaluate(2, _roots(2), cw, np.zeros(2, dtype=np.uint64))


def test_one_share_looks_the_same_for_every_alpha() -> None:
    """Party 0's output share at a fixed x is pseudo-random whatever alpha: its low bit is balanced
    for x below and above alpha alike (a sanity check of the masking, not a security proof)."""
    count = 20000
    root0 = _roots(count)
    x = np.full(count, 1 << 15, dtype=np.uint64)
    for alpha_value in (0, 1 << 16):
        alpha = np.full(count, alpha_value, dtype=np.uint64)
        cw = dcf.generate(alpha, np.ones(count, dtype=np.uint64), 20, root0, _roots(count))
        low_bits = dcf.evaluate(0, root0, cw, x) & np.uint64(1)
        assert abs(float(low_bits.mean()) - 0.5) < 0.02


def test_prg_is_pinned() -> None:
    """Fixed-key AES-MMO: a format change here would silently break keys made by another version."""
    seeds = np.arange(8, dtype=np.uint64).reshape(4, 2)
    e = prg.expand(seeds)
    digest = hashlib.sha256(b"".join(a.tobytes() for a in (e.seed_left, e.bit_left, e.seed_right, e.bit_right,
                                                           e.value_left, e.value_right))).hexdigest()
    assert (e.seed_left[:, 0] & np.uint64(1) == 0).all() and (e.seed_right[:, 0] & np.uint64(1) == 0).all()
    assert digest == PINNED_PRG_DIGEST


PINNED_KEY_DIGEST = "a80e59108d92a257eb682d98c80b7758ea912d125f894373a154892476d6916f"
PINNED_PRG_DIGEST = "d8e39dc7c717738bce77d04efbf369aa318289178319ca60ecea207701637b07"
