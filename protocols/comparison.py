"""One interface for ``[x < 0]`` on shares, by function secret sharing or by a packed carry tree.

=============  ========================================  ======  ====================  =================
method         how                                       rounds  online B / compare    dealer B / compare
=============  ========================================  ======  ====================  =================
``fss``        open x + r, evaluate a DCF on the low     1       8                     16 + 16 w(k-1)
               k-1 bits (keys from the dealer)
``carry-tree`` bit-sliced carry into the top bit, then   ~log2 k + 2   ~1.5 k/8 + 1    ~k/8 + 1
               a packed B2A (:func:`packed_bits.ltz`)
=============  ========================================  ======  ====================  =================

(k: lane width; w(n) = ``dcf.correction_words(n)`` 64-bit words, each sent to both parties.)
``fss`` needs two parties and a provider that makes DCF keys (the dealer); ``carry-tree`` works with
any provider that makes Beaver triples, which is what a dealer-free mode has. ``auto`` (the default)
takes ``fss`` where it can, for calls up to ``FSS_AUTO_MAX_TESTS`` tests (a decode step's and a
128-token prefill's; larger calls take the carry tree, whose correlations take less memory).
:func:`using` pins the method for a block, which the benchmark uses to run both side by side.

The sign test reads ``x`` mod 2^k: the result is ``[x < 0]`` whenever ``|x| < 2^(k-1)`` in encoding
units. Correctness of the FSS path: with ``y = x mod 2^k`` and the opened ``c = y + r mod 2^k``,
``y``'s top bit is ``c_top XOR r_top XOR [c_low < r_low]`` (the borrow of ``c - r`` into the top bit);
the DCF's output is weighted so the parties get shares of ``r_top XOR borrow`` directly, and the XOR
with the public ``c_top`` is local.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numba
import numpy as np
import torch

from . import crypten_compat  # noqa: F401  (must precede every crypten import)
import crypten
import crypten.communicator as comm
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import ArithmeticSharedTensor

from . import packed_bits
from .share_wrap import wrap_share
from .fss import dcf

Method = Literal["auto", "fss", "carry-tree"]
METHODS: tuple[Method, ...] = ("auto", "fss", "carry-tree")

_method: contextvars.ContextVar[Method] = contextvars.ContextVar("pinfer_comparison_method", default="auto")


class ComparisonUnavailableError(RuntimeError):
    """The pinned method cannot run in this world (e.g. ``fss`` without a dealer or with 3 parties)."""


@contextlib.contextmanager
def using(method: Method) -> Iterator[None]:
    """Run the block's comparisons with ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown comparison method {method!r}; choose one of {', '.join(METHODS)}")
    token = _method.set(method)
    try:
        yield
    finally:
        _method.reset(token)


def fss_available() -> bool:
    """Whether this world can make DCF keys: two parties and a provider with ``sign_keys``."""
    provider = crypten.mpc.get_default_provider()
    return comm.get().get_world_size() == 2 and callable(getattr(provider, "sign_keys", None))


FSS_AUTO_MAX_TESTS = 1 << 21
"""``auto`` takes ``fss`` for calls of at most this many sign tests (values tested; a value's
thresholds share its key). FSS is also the faster path at a prefill's sizes: a GPT-2-base 128-token
prefill (``pinfer bench generate --models gpt2-base --lengths 128``) spent 55 s and 2.7 GB per party
in its GeLUs with carry-tree comparisons there, 32 s and 468 MiB with FSS; a GeLU costs 4 rounds
instead of 10 and 1,656 dealer B/value instead of 680 (``pinfer bench nonlinear``). The bound is
memory: a call's keys are held at once, about 460 B per test at each party, so a call at the bound
holds about 1 GB of keys; larger calls (long prompts in one piece) take the carry tree, whose
triples take less than half that. The choice depends only on public shapes, so every party makes
the same one."""


def active_method(tests: int = 0) -> Method:
    """The method a call of ``tests`` sign tests uses now (``auto`` resolved)."""
    method = _method.get()
    if method == "auto":
        return "fss" if fss_available() and tests <= FSS_AUTO_MAX_TESTS else "carry-tree"
    if method == "fss" and not fss_available():
        raise ComparisonUnavailableError("fss comparisons need two parties and a dealer that makes DCF keys")
    return method


def ltz(x: MPCTensor, bits: int = packed_bits.WORD) -> MPCTensor:
    """``[x < 0]`` as scale-1 0/1 shares shaped like x, for ``|x| < 2^(bits-1)`` in encoding units."""
    return ltz_many([(x, bits)])[0]


Test = tuple[MPCTensor, int] | tuple[MPCTensor, int, Sequence[int]]
"""``(x, bits)``: ``[x < 0]``; ``(x, bits, thresholds)``: ``[x < p]`` for each public ``p`` (encoding
units), stacked on a new last axis. Every ``x - p`` must satisfy ``|x - p| < 2^(bits-1)``."""


def ltz_many(tests: Sequence[Test]) -> list[MPCTensor]:
    """The sign tests of every entry, all in the rounds of one sign test.

    Reading ``x mod 2^bits`` makes this a bit extractor too: ``ltz(y, i + 1)`` is bit ``i`` of y's
    encoding. With ``fss`` every value's masked opening travels in one message, and a value's
    thresholds share one key and one opening (the key is evaluated at ``x + r - p`` for each p); the
    carry tree tests every ``x - p`` and moves each sign to the top of the widest lane (a local
    shift), one tree for all.
    """
    for test in tests:
        if not 2 <= test[1] <= packed_bits.WORD:
            raise ValueError(f"lane width {test[1]} must lie in 2..{packed_bits.WORD}")
    if not tests:
        return []
    keys = sum(test[0].share.numel() for test in tests)
    if active_method(keys) == "carry-tree":
        return _carry_tree_ltz_many(tests)
    return _fss_ltz_many(tests)


def _carry_tree_ltz_many(tests: Sequence[Test]) -> list[MPCTensor]:
    bits = max(test[1] for test in tests)  # each sign moves up to bit bits-1: x 2^(bits-width)
    flat = [(_shifted_by_thresholds(test) << (bits - test[1])).reshape(-1) for test in tests]
    joined = wrap_share(tests[0][0], torch.cat(flat), 0)
    signs = packed_bits.ltz(joined, bits).share
    return _split(signs, tests)


def _shifted_by_thresholds(test: Test) -> torch.Tensor:
    """Shares of ``x`` or, for thresholds, of ``x - p`` for each p on a new last axis."""
    x = test[0].share
    if len(test) == 2:
        return x
    own = torch.tensor(list(test[2]), dtype=torch.long) if comm.get().get_rank() == 0 else \
        torch.zeros(len(test[2]), dtype=torch.long)
    return x.unsqueeze(-1) - own


def _fss_ltz_many(tests: Sequence[Test], product: bool = False) -> list[MPCTensor]:
    """Sign shares of every test and, with ``product`` (single-point tests only), the shares of
    ``x * [x < 0]`` after them: ``s x = s z - s r`` for the opened ``z = x + r``, and ``s r`` comes
    from the keys' second payload and the dealer's shares of ``r_top r``, so nothing but the opening
    is sent."""
    provider = crypten.mpc.get_default_provider()
    groups: dict[int, list[int]] = {}  # tests of one value share its mask and its opening
    for i, test in enumerate(tests):
        groups.setdefault(i if product else id(test[0]), []).append(i)
    keys: list[Any] = [None] * len(tests)
    for members in groups.values():
        count = tests[members[0]][0].share.numel()
        if len(members) == 1:
            keys[members[0]] = provider.sign_keys(count, tests[members[0]][1], product)
        else:
            for i, key in zip(members, provider.shared_sign_keys(count, [tests[i][1] for i in members])):
                keys[i] = key
    masked = torch.cat([tests[m[0]][0].share.reshape(-1) + keys[m[0]].mask() for m in groups.values()])
    opened = ArithmeticSharedTensor.from_shares(masked, precision=0).reveal()
    values: dict[int, torch.Tensor] = {}
    offset = 0
    for members in groups.values():
        count = tests[members[0]][0].share.numel()
        for i in members:
            values[i] = opened[offset : offset + count]
        offset += count
    rank = comm.get().get_rank()
    signs, products = [], []
    for i, (test, k) in enumerate(zip(tests, keys)):
        x, bits = test[0], test[1]
        if len(test) == 3:
            signs.append(wrap_share(x, _threshold_signs(rank, k, values[i], test[2], bits).reshape(
                x.share.shape + (len(test[2]),)), 0))
            continue
        z = values[i]
        lane = z & ((1 << bits) - 1) if bits < packed_bits.WORD else z
        top = (lane >> (bits - 1)) & 1
        low = lane & ((1 << (bits - 1)) - 1)
        weighted = torch.from_numpy(dcf.evaluate(rank, k.root, k.corrections(), low.numpy().view(np.uint64)).view(np.int64))
        flip = 1 - 2 * top  # weighted: shares of borrow (1 - 2 r_top) [and of it times r]
        flipped = k.top() + (weighted if not product else weighted[:, 0])  # shares of r_top XOR borrow
        sign = flipped * flip + (top if rank == 0 else 0)
        signs.append(wrap_share(x, sign.reshape(x.share.shape), 0))
        if product:
            sign_times_mask = top * k.mask() + flip * (k.top_times_mask() + weighted[:, 1])
            products.append(wrap_share(x, (sign * z - sign_times_mask).reshape(x.share.shape),
                                       x.encoder.scale.bit_length() - 1))
    return signs + products


def _threshold_signs(rank: int, key: Any, opened: torch.Tensor, thresholds: Sequence[int], bits: int) -> torch.Tensor:
    """Shares of ``[x < p]`` for every threshold p of one value's key, from the opened ``x + r``:
    ``(count, len(thresholds))``. The borrows come from one ladder walk where the thresholds are
    dense multiples of a power of two, else from one path per threshold."""
    z = opened.numpy().view(np.uint64)
    points = np.asarray(thresholds, dtype=np.int64).view(np.uint64)
    ladder = _ladder_step(thresholds, bits)
    if ladder is None:
        low = (z[:, None] - points[None, :]) & np.uint64((1 << (bits - 1)) - 1)
        borrow = dcf.evaluate(rank, key.root, key.corrections(), low)
    else:
        step, rungs = ladder
        by_rung = dcf.evaluate_ladder(rank, key.root, key.corrections(), z, step, rungs)
        borrow = np.ascontiguousarray(by_rung[:, points >> np.uint64(step)])
    r_top = key.top().numpy().view(np.uint64)
    return torch.from_numpy(_combine_signs(z, points, np.uint64(bits - 1), r_top, borrow, rank == 0).view(np.int64))


@numba.njit(cache=True, nogil=True)
def _combine_signs(z, points, top_bit, r_top, borrow, first):  # pragma: no cover
    """One pass of ``(r_top + borrow share) (1 - 2 c) + [party 0] c``, c the top bit of ``z - p``
    in its lane (mod 2^64, as the shares): what torch would do in eight passes over the array."""
    out = np.empty(borrow.shape, dtype=np.uint64)
    one = np.uint64(1)
    for k in range(z.shape[0]):
        for i in range(points.shape[0]):
            c = ((z[k] - points[i]) >> top_bit) & one
            value = (r_top[k] + borrow[k, i]) * (one - (c << one))
            out[k, i] = value + c if first else value
    return out


def _ladder_step(thresholds: Sequence[int], bits: int) -> tuple[int, int] | None:
    """``(s, rungs)`` when a test's thresholds are multiples of ``2^s`` in ``[0, rungs 2^s)`` dense
    enough that evaluating its key at every such multiple (:func:`dcf.evaluate_ladder`) hashes fewer
    AES blocks than one path per threshold (a spline's segment boundaries); None otherwise."""
    if not thresholds:
        return None
    thresholds, domain = list(thresholds), bits - 1
    if min(thresholds) < 0 or max(thresholds) >= 1 << domain:
        return None
    step = min((p & -p).bit_length() - 1 if p else domain for p in thresholds)
    if step >= domain:
        return None
    rungs = (max(thresholds) >> step) + 1
    return (step, rungs) if dcf.ladder_blocks(domain, step, rungs) < 2 * domain * len(thresholds) else None


def ltz_with_min(x: MPCTensor, bits: int = packed_bits.WORD) -> tuple[MPCTensor, MPCTensor]:
    """``[x < 0]`` (scale 1) and ``min(x, 0) = x [x < 0]`` (x's encoding), for ``|x| < 2^(bits-1)``.

    With ``fss`` both come from the one opening of the sign test (keys with a second payload word);
    the carry tree adds one Beaver product. A tournament's step ``max(a, b) = a - min(a - b, 0)`` is
    thus one round.
    """
    if not 2 <= bits <= packed_bits.WORD:
        raise ValueError(f"lane width {bits} must lie in 2..{packed_bits.WORD}")
    if active_method(x.share.numel()) == "carry-tree":
        sign = packed_bits.ltz(x, bits)
        return sign, sign * x
    sign, product = _fss_ltz_many([(x, bits)], product=True)
    return sign, product


def _split(signs: torch.Tensor, tests: Sequence[Test]) -> list[MPCTensor]:
    out, offset = [], 0
    for test in tests:
        shape = test[0].share.shape if len(test) == 2 else test[0].share.shape + (len(test[2]),)
        count = math.prod(shape)
        out.append(wrap_share(test[0], signs[offset : offset + count].reshape(shape), 0))
        offset += count
    return out
