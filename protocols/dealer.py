"""Correlated randomness from a dealer (CrypTen's TTP role), with masks reusable for fixed operands.

The dealer shares one AES-CTR seed with each party. Every party expands its own shares of every tuple
from its stream; the dealer expands all parties' streams in the same order, computes the correlated
value and sends party 0 only the correction that makes the shares add up. Parties other than 0 send
the dealer nothing after set-up; they only receive the correction words of FSS keys (common to both
keys of a pair), pushed in the order of party 0's requests. The dealer never sees an opened value,
so it learns nothing but its own randomness.

Beyond CrypTen's tuples the dealer keeps masks for *fixed operands* (weights, cached keys and values):
a mask ``B`` is drawn once when the operand is registered (or extended by new cache rows), the parties
open ``W - B`` once, and each later product ``X @ W`` needs only a fresh ``A`` and the correction for
``A @ B``. See :mod:`pinfer.protocols.fixed_operand`.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from . import crypten_compat  # noqa: F401
import crypten.communicator as comm
from crypten.common.util import count_wraps
from crypten.encoder import FixedPointEncoder
from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor
from crypten.mpc.provider.provider import TupleProvider

from . import truncation
from .channel import Channel, Message
from .csprng import AesCtrStream, fresh_seed
from .fss import dcf
from .ring_matmul import FixedRight, ring_matmul

# A tuple's product in the ring; matmul through float64 limbs where that is faster (exact either way).
_TUPLE_PRODUCTS = {"mul": torch.mul, "matmul": ring_matmul}
_SUPPORTED_OPS = tuple(_TUPLE_PRODUCTS)


MAX_PLAN_OPERANDS = 64
MAX_PLAN_MONOMIALS = 256
"""Bounds on one multi-operand product plan, so a malformed request cannot make the dealer loop."""


class DealerProtocolError(RuntimeError):
    """A request the dealer cannot serve (unknown kind, operand or shape)."""


def output_shape(op: str, size0: tuple[int, ...], size1: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of ``op(a, b)`` without computing it."""
    if op not in _SUPPORTED_OPS:
        raise DealerProtocolError(f"unsupported tuple operation {op!r}")
    a = torch.empty(size0, device="meta")
    b = torch.empty(size1, device="meta")
    return tuple(getattr(torch, op)(a, b).shape)


def _shape(value: object) -> tuple[int, ...]:
    return tuple(int(v) for v in value)  # type: ignore[union-attr]


class DealerServer:
    """The dealer's side: mirrors every party's stream and answers party 0's requests."""

    def __init__(self, channels: list[Channel]) -> None:
        self._channels = channels
        self._streams: list[AesCtrStream] = []
        self._fixed_masks: dict[int, FixedRight] = {}

    def distribute_seeds(self) -> None:
        for channel in self._channels:
            seed = fresh_seed()
            self._streams.append(AesCtrStream(seed))
            channel.send(Message("seed", tensors=[torch.frombuffer(bytearray(seed), dtype=torch.int64)]))

    def serve(self) -> None:
        """Answer requests from party 0 until it says goodbye."""
        requests = self._channels[0]
        while True:
            message = requests.recv()
            if message.kind == "close":
                return
            handler = getattr(self, f"_on_{message.kind}", None)
            if handler is None:
                raise DealerProtocolError(f"unknown request {message.kind!r}")
            reply = handler(**message.params)
            if reply is not None:
                requests.send(Message(message.kind, tensors=[reply]))

    def _sum_ring(self, shape: tuple[int, ...], skip_first: bool = False) -> torch.Tensor:
        streams = self._streams[1:] if skip_first else self._streams
        total = torch.zeros(shape, dtype=torch.int64)
        for stream in streams:
            total += stream.ring_elements(shape)
        return total

    def _draw_each(self, shape: tuple[int, ...]) -> list[torch.Tensor]:
        return [stream.ring_elements(shape) for stream in self._streams]

    def _correction(self, value: torch.Tensor) -> torch.Tensor:
        """Party 0's share of ``value`` given the other parties' stream shares drawn now."""
        return value - self._sum_ring(tuple(value.shape), skip_first=True)

    def _on_triple(self, op: str, size0: list[int], size1: list[int]) -> torch.Tensor:
        product = _TUPLE_PRODUCTS.get(op)
        if product is None:
            raise DealerProtocolError(f"unsupported tuple operation {op!r}")
        a_parts, b_parts = [], []
        for stream in self._streams:
            a_parts.append(stream.ring_elements(_shape(size0)))
            b_parts.append(stream.ring_elements(_shape(size1)))
        c = product(sum(a_parts), sum(b_parts))
        return self._correction(c)

    def _on_square(self, size: list[int]) -> torch.Tensor:
        r = sum(self._draw_each(_shape(size)))
        return self._correction(r * r)

    def _on_binary(self, size0: list[int], size1: list[int]) -> torch.Tensor:
        a = torch.zeros(_shape(size0), dtype=torch.int64)
        b = torch.zeros(_shape(size1), dtype=torch.int64)
        for stream in self._streams:
            a ^= stream.bits(_shape(size0), 64)
            b ^= stream.bits(_shape(size1), 64)
        c = a & b
        for stream in self._streams[1:]:
            c ^= stream.bits(tuple(c.shape), 64)
        return c

    def _on_wraps(self, size: list[int]) -> torch.Tensor:
        theta = count_wraps(self._draw_each(_shape(size)))
        return self._correction(theta)

    def _on_b2a(self, size: list[int]) -> torch.Tensor:
        bit = torch.zeros(_shape(size), dtype=torch.int64)
        for stream in self._streams:
            bit ^= stream.bits(_shape(size), 1)
        return self._correction(bit)

    def _on_truncation_masks(self, size: list[int], bits: int) -> torch.Tensor:
        """Party 0's shares of ``r >> bits`` (logical) and of ``r``'s top bit, joined, for a mask ``r``
        every party draws first (see :mod:`pinfer.protocols.truncation`)."""
        try:
            truncation.check_bits(bits)
        except ValueError as exc:
            raise DealerProtocolError(str(exc)) from exc
        r = sum(self._draw_each(_shape(size)))
        high, top = truncation.logical_shift(r, bits), truncation.top_bit(r)
        return torch.cat([self._correction(high).reshape(-1), self._correction(top).reshape(-1)])

    def _on_sign_keys(self, count: int, bits: int, product: bool = False) -> torch.Tensor:
        """DCF keys for ``count`` sign tests of ``bits``-bit values (see :class:`SignKeys`).

        Party 1's correction words are pushed on its own channel now; party 0's come back in the
        reply with its shares of the mask, of the mask's top bit and, for ``product`` keys, of the
        top bit times the mask."""
        if len(self._streams) != 2:
            raise DealerProtocolError("FSS keys need exactly two parties")
        if not 2 <= bits <= dcf.MAX_BITS or count < 0:
            raise DealerProtocolError(f"cannot make {count} sign keys of {bits} bits")
        root0 = _seeds(self._streams[0], count)
        shares1 = [self._streams[1].ring_elements((count,)) for _ in range(3 if product else 2)]
        root1 = _seeds(self._streams[1], count)
        # uniform over the whole ring: the opened x + r must say nothing about x's high bits either
        mask = torch.from_numpy(np.frombuffer(os.urandom(8 * count), dtype=np.int64).copy())
        lane = mask & ((1 << bits) - 1) if bits < 64 else mask
        top = (lane >> (bits - 1)) & 1
        low = (lane & ((1 << (bits - 1)) - 1)).numpy().view(np.uint64)
        weight = 1 - 2 * top
        payload = [weight] + ([weight * mask] if product else [])
        beta = torch.stack(payload, dim=1).numpy().view(np.uint64)
        words = torch.from_numpy(dcf.generate(low, beta, bits - 1, root0, root1).to_words().view(np.int64))
        self._channels[1].send(Message("sign_keys", tensors=[words]))
        secrets = [mask, top] + ([top * mask] if product else [])
        return torch.cat([(v - s1)[:, None] for v, s1 in zip(secrets, shares1)] + [words], dim=1)

    def _on_shared_sign_keys(self, count: int, lanes: list[int]) -> torch.Tensor:
        """Sign keys for ``count`` values tested on several lane widths with one mask r, so each value
        is opened once (:meth:`DealerProvider.shared_sign_keys`). Party 0's reply: per lane, rows of
        [mask share, top share, correction words], flattened and joined; party 1's push: the words."""
        if len(self._streams) != 2:
            raise DealerProtocolError("FSS keys need exactly two parties")
        if not lanes or len(lanes) > MAX_PLAN_OPERANDS or count < 0 or \
                any(not 2 <= bits <= dcf.MAX_BITS for bits in lanes):
            raise DealerProtocolError(f"cannot make {count} sign keys on lanes {lanes}")
        root0 = [_seeds(self._streams[0], count) for _ in lanes]
        mask1 = self._streams[1].ring_elements((count,))
        tops1 = [self._streams[1].ring_elements((count,)) for _ in lanes]
        root1 = [_seeds(self._streams[1], count) for _ in lanes]
        mask = torch.from_numpy(np.frombuffer(os.urandom(8 * count), dtype=np.int64).copy())
        pushed, replies = [], []
        for bits, r0, r1, top1 in zip(lanes, root0, root1, tops1):
            lane = mask & ((1 << bits) - 1) if bits < 64 else mask
            top = (lane >> (bits - 1)) & 1
            low = (lane & ((1 << (bits - 1)) - 1)).numpy().view(np.uint64)
            beta = (1 - 2 * top)[:, None].numpy().view(np.uint64)
            words = torch.from_numpy(dcf.generate(low, beta, bits - 1, r0, r1).to_words().view(np.int64))
            pushed.append(words.reshape(-1))
            replies.append(torch.cat([(mask - mask1)[:, None], (top - top1)[:, None], words], dim=1).reshape(-1))
        self._channels[1].send(Message("sign_keys", tensors=[torch.cat(pushed)]))
        return torch.cat(replies)

    def _on_mask_monomials(self, sizes: list[list[int]], monomials: list[list[int]]) -> torch.Tensor:
        """Party 0's shares of products of operand masks (see :mod:`pinfer.protocols.multi_beaver`),
        flattened and joined in the order asked: every party draws its operands' masks from its
        stream first, the other parties then their monomial shares (each of its factors' broadcast
        shape)."""
        if not 1 <= len(sizes) <= MAX_PLAN_OPERANDS or not monomials or len(monomials) > MAX_PLAN_MONOMIALS:
            raise DealerProtocolError(f"cannot plan {len(sizes)} operands with {len(monomials)} monomials")
        if any(len(m) < 2 or any(not 0 <= j < len(sizes) for j in m) for m in monomials):
            raise DealerProtocolError("a mask monomial needs two or more operands of the plan")
        shapes = [_shape(size) for size in sizes]
        try:
            for m in monomials:
                torch.broadcast_shapes(*(shapes[j] for j in m))
        except RuntimeError as exc:
            raise DealerProtocolError("a mask monomial's operands do not broadcast") from exc
        masks = [torch.zeros(shape, dtype=torch.int64) for shape in shapes]
        for stream in self._streams:
            for mask in masks:
                mask += stream.ring_elements(tuple(mask.shape))
        corrections = []
        for monomial in monomials:
            value = masks[monomial[0]]
            for j in monomial[1:]:
                value = value * masks[j]
            corrections.append(self._correction(value).reshape(-1))
        return torch.cat(corrections)

    def _on_fixed_new(self, handle: int, shape: list[int]) -> None:
        if handle in self._fixed_masks:
            raise DealerProtocolError(f"fixed operand {handle} already exists")
        self._fixed_masks[handle] = FixedRight(sum(self._draw_each(_shape(shape))))

    def _on_fixed_extend(self, handle: int, shape: list[int], dim: int) -> None:
        self._fixed_mask(handle).extend(sum(self._draw_each(_shape(shape))), dim)

    def _on_fixed_matmul(self, handle: int, size: list[int], transposed: bool = False) -> torch.Tensor:
        a = sum(self._draw_each(_shape(size)))
        return self._correction(ring_matmul(a, self._fixed_mask(handle).right(bool(transposed))))

    def _on_fixed_drop(self, handle: int) -> None:
        self._fixed_mask(handle)
        del self._fixed_masks[handle]

    def _fixed_mask(self, handle: int) -> FixedRight:
        try:
            return self._fixed_masks[handle]
        except KeyError:
            raise DealerProtocolError(f"unknown fixed operand {handle}") from None


def _seeds(stream: AesCtrStream, count: int) -> np.ndarray:
    """``count`` 128-bit DCF root seeds from a stream, as (count, 2) uint64."""
    return stream.random_array(16 * count).view(np.uint64).reshape(count, 2)


@dataclass
class SignKeys:
    """One party's material for ``count`` one-round sign tests of ``bits``-bit values.

    The dealer draws a mask r uniform over Z_2^64 and makes DCF keys for the borrow
    ``[y_low < r_low]`` of the low ``bits - 1`` bits of ``r mod 2^bits``, weighted ``1 - 2 r_top``, so
    that adding the shares of ``r_top`` gives shares of ``r_top XOR borrow`` (see
    :mod:`pinfer.protocols.comparison`). ``product`` keys carry a second payload word, ``(1 - 2 r_top)
    r``, and shares of ``r_top r``: with them the sign's product with the tested value is local too.
    Party 0's shares arrive with the dealer's reply, read only when first needed.
    """

    bits: int
    product: bool
    root: np.ndarray  # (count, 2) uint64, this party's root seeds
    _words: Correction  # party 0: [mask, top, (top * mask), correction words...] per row; others: the words
    _own: list[torch.Tensor] | None = None  # parties other than 0: shares of mask, top (, top * mask)

    def _secret(self, index: int) -> torch.Tensor:
        return self._words.get()[:, index] if self._own is None else self._own[index]

    def mask(self) -> torch.Tensor:
        return self._secret(0)

    def top(self) -> torch.Tensor:
        return self._secret(1)

    def top_times_mask(self) -> torch.Tensor:
        if not self.product:
            raise ValueError("these sign keys carry no product material")
        return self._secret(2)

    def corrections(self) -> dcf.Corrections:
        words = self._words.get()
        if self._own is None:
            words = words[:, 3 if self.product else 2 :]
        return dcf.Corrections.from_words(words.numpy().view(np.uint64), self.bits - 1,
                                          2 if self.product else 1)


class Correction:
    """Party 0's correction share for one request, read from the dealer only when first needed.

    Party 0 sends each request at once and keeps computing: a Beaver product needs its correction
    only after the masked operands are opened, so the dealer's answer arrives during that round
    instead of costing a round trip of its own. Replies come in request order.
    """

    def __init__(self, queue: _ReplyQueue | None = None, value: torch.Tensor | None = None,
                 source: tuple[Correction, int, tuple[int, ...]] | None = None) -> None:
        self._queue = queue
        self._value = value
        self._source = source  # a part of another reply: (reply, offset, shape)

    def get(self) -> torch.Tensor:
        if self._value is None and self._source is not None:
            reply, offset, shape = self._source
            self._value = reply.get()[offset : offset + math.prod(shape)].reshape(shape)
        if self._value is None:
            assert self._queue is not None
            self._queue.fill_until(self)
        return self._value  # type: ignore[return-value]

    def fill(self, value: torch.Tensor) -> None:
        self._value = value


class _ReplyQueue:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._waiting: deque[Correction] = deque()

    def expect(self) -> Correction:
        correction = Correction(self)
        self._waiting.append(correction)
        return correction

    def fill_until(self, correction: Correction) -> None:
        while self._waiting:
            head = self._waiting.popleft()
            head.fill(self._channel.recv().tensors[0])
            if head is correction:
                return

    def drain(self) -> None:
        while self._waiting:
            self._waiting.popleft().fill(self._channel.recv().tensors[0])


class _DeferredShare:
    """A shared tensor whose share is a :class:`Correction`, resolved on first access."""

    @property
    def _tensor(self) -> torch.Tensor:
        value = self.__dict__.get("_resolved")
        if value is None:
            value = self.__dict__.pop("_correction").get()
            self.__dict__["_resolved"] = value
        return value

    @_tensor.setter
    def _tensor(self, value: torch.Tensor) -> None:
        self.__dict__.pop("_correction", None)
        self.__dict__["_resolved"] = value


class _DeferredArithmetic(_DeferredShare, ArithmeticSharedTensor):
    pass


class _DeferredBinary(_DeferredShare, BinarySharedTensor):
    pass


def _arithmetic(share: torch.Tensor | Correction) -> ArithmeticSharedTensor:
    if isinstance(share, torch.Tensor):
        return ArithmeticSharedTensor.from_shares(share, precision=0)
    result = _DeferredArithmetic(src=-1)
    result.__dict__["_correction"] = share
    result.encoder = FixedPointEncoder(precision_bits=0)
    return result


def _binary(share: torch.Tensor | Correction) -> BinarySharedTensor:
    if isinstance(share, torch.Tensor):
        return BinarySharedTensor.from_shares(share)
    result = _DeferredBinary(src=-1)
    result.__dict__["_correction"] = share
    result.encoder = FixedPointEncoder(precision_bits=None)
    return result


class DealerProvider(TupleProvider):
    """CrypTen's tuple-provider interface backed by a :class:`DealerServer`."""

    NAME = "DEALER"

    def __init__(self, channel: Channel, seed: bytes) -> None:
        super().__init__()
        self.channel = channel
        self.stream = AesCtrStream(seed)
        self._next_handle = 0
        self._replies = _ReplyQueue(channel)
        self._pushes = _ReplyQueue(channel)  # FSS keys the dealer sends parties other than 0 unasked

    @property
    def is_requester(self) -> bool:
        return comm.get().get_rank() == 0

    def request(self, kind: str, **params: object) -> Correction | None:
        """Party 0 asks the dealer; returns the pending correction share, if the request has one."""
        self.channel.send(Message(kind, params=params))
        if kind in ("fixed_new", "fixed_extend", "fixed_drop"):
            return None
        return self._replies.expect()

    def _ring(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self.stream.ring_elements(shape)

    def _correlated(self, kind: str, shape: tuple[int, ...], **params: object) -> torch.Tensor | Correction:
        if self.is_requester:
            return self.request(kind, **params)  # type: ignore[return-value]
        return self._ring(shape)

    def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
        if args or kwargs:
            raise DealerProtocolError("tuple options (convolution arguments) are not supported")
        size0, size1 = _shape(size0), _shape(size1)
        a = self._ring(size0)
        b = self._ring(size1)
        c = self._correlated("triple", output_shape(op, size0, size1), op=op, size0=size0, size1=size1)
        return _arithmetic(a), _arithmetic(b), _arithmetic(c)

    def square(self, size, device=None):
        size = _shape(size)
        r = self._ring(size)
        r2 = self._correlated("square", size, size=size)
        return _arithmetic(r), _arithmetic(r2)

    def generate_binary_triple(self, size0, size1, device=None):
        size0, size1 = _shape(size0), _shape(size1)
        a = self.stream.bits(size0, 64)
        b = self.stream.bits(size1, 64)
        c_shape = tuple(torch.broadcast_shapes(size0, size1))
        if self.is_requester:
            c = self.request("binary", size0=size0, size1=size1)
        else:
            c = self.stream.bits(c_shape, 64)
        return _binary(a), _binary(b), _binary(c)

    def wrap_rng(self, size, device=None):
        size = _shape(size)
        r = self._ring(size)
        theta = self._correlated("wraps", size, size=size)
        return _arithmetic(r), _arithmetic(theta)

    def truncation_masks(self, shape: tuple[int, ...], bits: int) -> tuple[torch.Tensor, Correction, Correction]:
        """This party's shares of a fresh mask ``r``, of ``r >> bits`` and of ``r``'s top bit (the
        last two pending for party 0), for :func:`pinfer.protocols.truncation.truncate`."""
        mask = self._ring(shape)
        if not self.is_requester:
            return mask, Correction(value=self._ring(shape)), Correction(value=self._ring(shape))
        reply = self.request("truncation_masks", size=list(shape), bits=bits)
        assert isinstance(reply, Correction)
        count = math.prod(shape)
        return mask, Correction(source=(reply, 0, shape)), Correction(source=(reply, count, shape))

    def sign_keys(self, count: int, bits: int, product: bool = False) -> SignKeys:
        """Material for ``count`` sign tests of ``bits``-bit values (two parties only); ``product``
        keys also give the sign's product with the tested value (:class:`SignKeys`)."""
        if comm.get().get_world_size() != 2:
            raise DealerProtocolError("FSS keys need exactly two parties")
        if self.is_requester:
            root = _seeds(self.stream, count)
            reply = self.request("sign_keys", count=count, bits=bits, product=product)
            assert isinstance(reply, Correction)
            return SignKeys(bits, product, root, reply)
        own = [self._ring((count,)) for _ in range(3 if product else 2)]
        root = _seeds(self.stream, count)
        return SignKeys(bits, product, root, self._pushes.expect(), own)

    def shared_sign_keys(self, count: int, lanes: list[int]) -> list[SignKeys]:
        """Sign-test material for ``count`` values on each lane width of ``lanes``, all with one mask
        (``mask()`` is the same for every lane), so a value tested on several lanes is opened once.
        Each lane has its own DCF keys: one key alone says nothing of the mask."""
        if comm.get().get_world_size() != 2:
            raise DealerProtocolError("FSS keys need exactly two parties")
        widths = [dcf.correction_words(bits - 1) for bits in lanes]
        if self.is_requester:
            roots = [_seeds(self.stream, count) for _ in lanes]
            reply = self.request("shared_sign_keys", count=count, lanes=list(lanes))
            assert isinstance(reply, Correction)
            keys, offset = [], 0
            for bits, root, width in zip(lanes, roots, widths):
                keys.append(SignKeys(bits, False, root, Correction(source=(reply, offset, (count, 2 + width)))))
                offset += count * (2 + width)
            return keys
        mask = self._ring((count,))
        tops = [self._ring((count,)) for _ in lanes]
        roots = [_seeds(self.stream, count) for _ in lanes]
        pushed = self._pushes.expect()
        keys, offset = [], 0
        for bits, root, top, width in zip(lanes, roots, tops, widths):
            words = Correction(source=(pushed, offset, (count, width)))
            keys.append(SignKeys(bits, False, root, words, [mask, top]))
            offset += count * width
        return keys

    def B2A_rng(self, size, device=None):
        size = _shape(size)
        bit = self.stream.bits(size, 1)
        arithmetic = self._correlated("b2a", size, size=size)
        return _arithmetic(arithmetic), _binary(bit)

    def mask_monomials(self, sizes: list[tuple[int, ...]], monomials: list[tuple[int, ...]]
                       ) -> tuple[list[torch.Tensor], list[Correction]]:
        """This party's shares of fresh masks of the operand shapes ``sizes`` and of the products of
        masks named by ``monomials`` (party 0's pending), for
        :class:`pinfer.protocols.multi_beaver.ProductPlan`."""
        shapes = [_shape(size) for size in sizes]
        masks = [self._ring(shape) for shape in shapes]
        monomial_shapes = [tuple(torch.broadcast_shapes(*(shapes[j] for j in m))) for m in monomials]
        if not self.is_requester:
            return masks, [Correction(value=self._ring(shape)) for shape in monomial_shapes]
        reply = self.request("mask_monomials", sizes=[list(shape) for shape in shapes],
                             monomials=[list(m) for m in monomials])
        assert isinstance(reply, Correction)
        parts, offset = [], 0
        for shape in monomial_shapes:
            parts.append(Correction(source=(reply, offset, shape)))
            offset += math.prod(shape)
        return masks, parts

    # Fixed operands: see pinfer.protocols.fixed_operand.
    def new_fixed_mask(self, shape: tuple[int, ...]) -> tuple[int, torch.Tensor]:
        handle = self._next_handle
        self._next_handle += 1
        mask = self._ring(shape)
        if self.is_requester:
            self.request("fixed_new", handle=handle, shape=list(shape))
        return handle, mask

    def extend_fixed_mask(self, handle: int, shape: tuple[int, ...], dim: int) -> torch.Tensor:
        mask = self._ring(shape)
        if self.is_requester:
            self.request("fixed_extend", handle=handle, shape=list(shape), dim=dim)
        return mask

    def fixed_product_tuple(
        self, handle: int, size: tuple[int, ...], out_shape: tuple[int, ...], transposed: bool = False
    ) -> tuple[torch.Tensor, Correction]:
        """Fresh ``a`` share and the (possibly pending) share of ``a @ B`` (``a @ B^T`` when
        ``transposed``) for the operand's mask ``B``."""
        a = self._ring(size)
        c = self._correlated("fixed_matmul", out_shape, handle=handle, size=list(size), transposed=transposed)
        return a, c if isinstance(c, Correction) else Correction(value=c)

    def drop_fixed_mask(self, handle: int) -> None:
        if self.is_requester:
            self.request("fixed_drop", handle=handle)

    def close(self) -> None:
        if self.is_requester:
            self._replies.drain()
            self.channel.send(Message("close"))
