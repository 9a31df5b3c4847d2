"""A CrypTen communicator over a full mesh of mutual-TLS sockets (replaces torch.distributed/gloo).

Why: CrypTen's ``DistributedCommunicator`` sends shares, PRG seeds and dealer material over gloo in the
clear, and unpickles objects from peers. The threat model puts the network outside the trust boundary,
so every party-to-party and party-to-dealer byte travels here over TLS 1.3 with client certificates from
the deployment CA (:mod:`pinfer.keys`), and each side checks that the peer's certificate carries the role
of the rank it claims. Objects cross a link only through a small typed codec (tensors, numbers, strings,
bytes and containers of them); nothing is pickled.

Layout. Ranks ``0..world_size-1`` are the parties (role ``party<i>``). With ``with_dealer`` an extra rank
``world_size`` is the dealer (role ``dealer``), as CrypTen's TTP layout has it: ``get_world_size()`` still
reports the parties only, ``ttp_group`` spans parties and dealer, ``ttp_comm_group`` is ``(0, dealer)``
and ``main_group`` the parties. Every pair of ranks shares one persistent TLS connection: the higher rank
dials the lower one, so a rank listens only if a higher rank exists. Set-up dials every lower rank at once
and authenticates every accepted connection at once, dropping one that has not authenticated within a few
seconds, so strangers who connect to a listening port cannot keep the real peers out.

Limits. A frame announcing more than ``max_message_bytes`` (:data:`MAX_MESSAGE_BYTES`) is refused from its
header, before anything is allocated; a link whose program has not taken its frames stops reading at
``max_inbox_messages`` frames or ``max_message_bytes`` bytes, so a flooding peer is held back by TCP.

All socket work runs on the caller's thread: whenever a call waits (for a receive, for a send to reach the
kernel), a progress engine reads and writes every link without blocking, as MPI implementations do. There
are no I/O threads, so nothing hands a message from one thread to another on the latency path and no
OpenSSL object is shared between threads; two ranks that send to each other at once never deadlock,
because each keeps reading while it waits. Every wait has a deadline (:class:`CommTimeoutError`, never a
hang). Tensors go on the wire as a small header (kind, dtype, shape, length) followed by their raw
little-endian bytes. A frame whose payload is at most 64 KiB is joined with its header and written with one
TLS write (for a small tensor: one record, one syscall); larger payloads are written from the tensor's
own memory. Each link reads into a 128 KiB staging buffer, so a frame that fits one TLS record costs
one TLS read, and its payload is copied from there into the new tensor; a payload that does not fit is
read straight into the tensor.

Accounting. Besides CrypTen's own ``comm_rounds``/``comm_bytes``/``comm_time`` (kept by CrypTen's
``_logging`` decorator exactly as in ``DistributedCommunicator`` when ``cfg.communicator.verbose``), the
communicator always counts framed application bytes and messages per link, and rounds: one round per
communicator call that touched the network, and per link the number of such calls that used that link.
:meth:`TlsCommunicator.stats` snapshots them; snapshots subtract to give the cost of a phase.

Link emulation (benchmarks): with a :class:`LinkEmulation`, a sender holds each message until an emulated
link of the given bandwidth would have finished serializing it, and the receiver delivers it no earlier
than ``one_way_delay_s`` after it arrived. Configure every rank with the same emulation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torch.distributed import ReduceOp

from pinfer.tensor_codes import DTYPE_CODES as _DTYPE_CODES
from pinfer.tensor_codes import DTYPES as _DTYPES

from . import crypten_compat  # noqa: F401  (before any crypten import)
import crypten.communicator as crypten_comm
from crypten.communicator.communicator import Communicator, _logging

from pinfer import keys

log = logging.getLogger(__name__)

WIRE_VERSION = 1
DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_RECV_TIMEOUT_S = 120.0
# Largest payload one frame may announce; a bigger announcement fails the link (MessageTooLargeError)
# before a byte is allocated. Sized from the largest frames SmolLM2-135M really sends, both in prefill
# (measured on tiny-llama, scaled by heads, prompt length T and vocabulary V):
#   - the dealer's correction for a softmax over the attention scores: about 24 B x 9 heads x T^2;
#   - the opened one-hot prompt rows of the embedding product: T x V x 8 B = T x 384 KiB;
#   - (set-up) the embedding table's opened mask: V x 576 x 8 B = 216 MiB.
# The service admits prompts whose party-0 input share fits its 1 GiB envelope cap, T <= 2,730 tokens,
# where the softmax correction is 1.5 GiB; 2 GiB covers that with a third to spare, and covers a
# local (PrivateModel) prefill of up to 3,150 tokens. Raise TlsCommConfig.max_message_bytes for longer.
MAX_MESSAGE_BYTES = 1 << 31
DEFAULT_MAX_MESSAGE_BYTES = MAX_MESSAGE_BYTES
# Frames a link holds received but not yet taken by the program. Beyond this (or beyond
# max_message_bytes of buffered frames) the link stops reading, so a peer that floods is held back by
# TCP flow control instead of growing this process. MPC traffic keeps a handful outstanding (party 0
# reads the dealer's replies a round late); 4,096 small frames cost a few MB of bookkeeping.
MAX_INBOX_MESSAGES = 4096
MAX_DIMS = 8
MAX_OBJECT_DEPTH = 32
_HANDSHAKE_TIMEOUT_S = 10.0  # a dialler's TLS handshake and hello (the listener may still be starting up)
# A listener drops an accepted connection that has not authenticated (TLS handshake, role, hello) within
# this long. A real peer needs milliseconds even over a WAN; one it drops just dials again.
_ACCEPT_HANDSHAKE_S = 3.0
# Accepted connections mid-handshake at once (file descriptors held for strangers at most).
_MAX_PENDING_HANDSHAKES = 64
_ACCEPT_POLL_S = 0.1  # how often the acceptor looks at build()'s stop flag
_LISTEN_BACKLOG = 128
_CHUNK = 1 << 20  # bytes per TLS write / read call: big enough to amortize, small enough to interleave
_SMALL_PAYLOAD = 1 << 16  # payloads up to this size are written together with their header
# Each link reads into a staging buffer of this size, so one TLS record (16 KiB at most) arrives with one
# read call however many frames it holds; a payload that does not fit is read straight into its tensor.
_RECV_BUFFER = 1 << 17

# Frame: kind, dtype code, ndim, reserved, payload length; then ndim x u64 dims (tensor frames only).
_FRAME = struct.Struct(">BBBBQ")
_DIM = struct.Struct(">Q")
_DIMS = tuple(struct.Struct(">" + "Q" * n) for n in range(MAX_DIMS + 1))
_KIND_TENSOR, _KIND_OBJECT, _KIND_BARRIER, _KIND_BYTES = 1, 2, 3, 4
_KIND_NAMES = {_KIND_TENSOR: "tensor", _KIND_OBJECT: "object", _KIND_BARRIER: "barrier", _KIND_BYTES: "bytes"}
# Hello exchanged right after the TLS handshake: magic, wire version, claimed rank, session id.
_HELLO = struct.Struct(">4sBIH")
_HELLO_MAGIC = b"PMSH"

if np.dtype("<i8") != np.dtype("=i8"):  # raw buffers are sent as they lie in memory
    raise ImportError("the TLS communicator supports little-endian hosts only")


# ----------------------------------------------------------------------------------------------------
# Errors


class CommError(RuntimeError):
    """Base class of data-plane failures. Messages name ranks and sizes, never payload bytes."""


class CommTimeoutError(CommError):
    """A connection or a message did not arrive within its deadline."""


class PeerAuthError(CommError):
    """A peer failed TLS verification, presented the wrong role, or claimed a rank or session it is not."""


class PeerDisconnectedError(CommError):
    """The link to a peer broke or was closed while messages were still expected."""


class CommProtocolError(CommError):
    """A peer sent a frame that does not fit what the local program expects (kind, dtype, size)."""


class MessageTooLargeError(CommProtocolError):
    """A peer announced a frame over ``max_message_bytes`` (or one this host cannot allocate); refused
    from its header, before any memory is set aside for it."""


class UnsupportedObjectError(TypeError):
    """An object handed to send_obj/broadcast_obj contains a type the typed codec does not carry."""


# ----------------------------------------------------------------------------------------------------
# Configuration and statistics


@dataclass(frozen=True)
class LinkEmulation:
    """An emulated link: sender-side bandwidth (bits/s, None = unlimited) and receiver-side one-way delay."""

    bandwidth_bps: float | None = None
    one_way_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.bandwidth_bps is not None and self.bandwidth_bps <= 0:
            raise ValueError("bandwidth_bps must be positive")
        if self.one_way_delay_s < 0:
            raise ValueError("one_way_delay_s must be non-negative")


LAN = LinkEmulation(bandwidth_bps=3e9, one_way_delay_s=0.0001)
WAN = LinkEmulation(bandwidth_bps=100e6, one_way_delay_s=0.040)


@dataclass(frozen=True)
class TlsCommConfig:
    """Where every rank listens, who this process is, and the data plane's limits.

    ``endpoints`` maps every rank of the mesh (parties, plus the dealer when ``with_dealer``) to the
    ``(host, port)`` it listens on. ``listen`` overrides the local bind address (``("0.0.0.0", port)``
    in a container). ``session_id`` must be the same on every rank: a worker of another session that
    dials the same port is refused. Host names in certificates are checked only with
    ``verify_hostname``; the peer's identity is its certificate role either way.
    """

    rank: int
    world_size: int
    endpoints: Mapping[int, tuple[str, int]]
    credentials: keys.NodeCredentials
    session_id: str
    with_dealer: bool = False
    listen: tuple[str, int] | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    recv_timeout_s: float = DEFAULT_RECV_TIMEOUT_S
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_inbox_messages: int = MAX_INBOX_MESSAGES
    emulation: LinkEmulation | None = None
    verify_hostname: bool = False

    @property
    def mesh_size(self) -> int:
        return self.world_size + (1 if self.with_dealer else 0)

    def role_of(self, rank: int) -> str:
        """The certificate role that rank ``rank`` must present."""
        if 0 <= rank < self.world_size:
            return keys.party_role(rank)
        if self.with_dealer and rank == self.world_size:
            return keys.DEALER
        raise ValueError(f"rank {rank} is not in this mesh")

    def validate(self) -> None:
        """Refuse a configuration that could only fail later, or join the wrong mesh (raises ValueError)."""
        if not keys.MIN_PARTIES <= self.world_size <= keys.MAX_PARTIES:
            raise ValueError(f"world_size must be in [{keys.MIN_PARTIES}, {keys.MAX_PARTIES}]")
        if not 0 <= self.rank < self.mesh_size:
            raise ValueError(f"rank {self.rank} outside a mesh of {self.mesh_size}")
        missing = set(range(self.mesh_size)) - set(self.endpoints)
        if missing:
            raise ValueError(f"no endpoint for ranks {sorted(missing)}")
        if self.credentials.role != self.role_of(self.rank):
            raise ValueError(f"rank {self.rank} needs {self.role_of(self.rank)} credentials, got {self.credentials.role}")
        if len(self.session_id.encode()) > 0xFFFF:
            raise ValueError("session id too long")
        if self.connect_timeout_s <= 0 or self.recv_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_message_bytes < 1 or self.max_inbox_messages < 1:
            raise ValueError("message and inbox limits must be positive")


@dataclass(frozen=True)
class LinkStats:
    """Traffic on one link as seen by this rank: framed bytes, messages, and calls that used the link."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    rounds: int = 0

    def __sub__(self, other: LinkStats) -> LinkStats:
        return LinkStats(
            self.bytes_sent - other.bytes_sent,
            self.bytes_received - other.bytes_received,
            self.messages_sent - other.messages_sent,
            self.messages_received - other.messages_received,
            self.rounds - other.rounds,
        )


@dataclass(frozen=True)
class CommStats:
    """A snapshot of this rank's traffic: per peer rank, plus rounds (communicating calls) in total."""

    links: Mapping[int, LinkStats] = field(default_factory=dict)
    rounds: int = 0

    @property
    def bytes_sent(self) -> int:
        return sum(s.bytes_sent for s in self.links.values())

    @property
    def bytes_received(self) -> int:
        return sum(s.bytes_received for s in self.links.values())

    @property
    def messages_sent(self) -> int:
        return sum(s.messages_sent for s in self.links.values())

    @property
    def messages_received(self) -> int:
        return sum(s.messages_received for s in self.links.values())

    def __sub__(self, other: CommStats) -> CommStats:
        return CommStats(
            {peer: s - other.links.get(peer, LinkStats()) for peer, s in self.links.items()},
            self.rounds - other.rounds,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for benchmark reports."""
        return {
            "rounds": self.rounds,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "links": {str(peer): dataclasses.asdict(s) for peer, s in sorted(self.links.items())},
        }


class _Counters:
    """Mutable per-link counters, touched only by the caller's thread."""

    __slots__ = ("bytes_sent", "bytes_received", "messages_sent", "messages_received", "rounds", "last_op")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.bytes_sent = self.bytes_received = self.messages_sent = self.messages_received = self.rounds = 0
        self.last_op = -1

    def snapshot(self) -> LinkStats:
        return LinkStats(self.bytes_sent, self.bytes_received, self.messages_sent, self.messages_received, self.rounds)


@dataclass(frozen=True)
class Group:
    """A set of mesh ranks taking part in a collective (CrypTen's process-group argument)."""

    ranks: tuple[int, ...]


# ----------------------------------------------------------------------------------------------------
# Typed object codec (what send_obj / recv_obj / broadcast_obj carry instead of pickle)

_T_NONE, _T_FALSE, _T_TRUE, _T_INT, _T_FLOAT, _T_STR, _T_BYTES = b"N", b"F", b"T", b"I", b"D", b"S", b"B"
_T_LIST, _T_TUPLE, _T_DICT, _T_SIZE, _T_TENSOR = b"L", b"U", b"M", b"Z", b"X"
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")


def encode_object(obj: object) -> bytes:
    """Encode ``obj`` with the typed codec: None, bool, int, float, str, bytes, torch tensors and
    ``torch.Size``, and lists/tuples/dicts of these. Anything else raises :class:`UnsupportedObjectError`."""
    out: list[bytes] = []
    _encode_into(obj, out, 0)
    return b"".join(out)


def _encode_into(obj: object, out: list[bytes], depth: int) -> None:
    if depth > MAX_OBJECT_DEPTH:
        raise UnsupportedObjectError("object nesting is too deep")
    if obj is None:
        out.append(_T_NONE)
    elif obj is True or obj is False:
        out.append(_T_TRUE if obj else _T_FALSE)
    elif isinstance(obj, int):
        raw = int(obj).to_bytes((int(obj).bit_length() + 8) // 8, "big", signed=True)
        out += [_T_INT, _U32.pack(len(raw)), raw]
    elif isinstance(obj, float):
        out += [_T_FLOAT, _F64.pack(obj)]
    elif isinstance(obj, str):
        raw = obj.encode()
        out += [_T_STR, _U32.pack(len(raw)), raw]
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj)
        out += [_T_BYTES, _U32.pack(len(raw)), raw]
    elif isinstance(obj, torch.Size):
        out += [_T_SIZE, _U32.pack(len(obj)), *(_DIM.pack(d) for d in obj)]
    elif isinstance(obj, torch.Tensor):
        header, data, _ = _tensor_wire(obj)
        out += [_T_TENSOR, header, bytes(data)]
    elif isinstance(obj, (list, tuple)):
        out += [_T_LIST if isinstance(obj, list) else _T_TUPLE, _U32.pack(len(obj))]
        for item in obj:
            _encode_into(item, out, depth + 1)
    elif isinstance(obj, dict):
        out += [_T_DICT, _U32.pack(len(obj))]
        for key, value in obj.items():
            _encode_into(key, out, depth + 1)
            _encode_into(value, out, depth + 1)
    else:
        raise UnsupportedObjectError(f"cannot send an object of type {type(obj).__name__} across a link")


def decode_object(data: bytes | bytearray | memoryview) -> object:
    """Inverse of :func:`encode_object`; raises :class:`CommProtocolError` on any malformed input."""
    view = memoryview(data)
    try:
        obj, end = _decode_at(view, 0, 0)
    except (struct.error, ValueError, TypeError, IndexError) as exc:
        raise CommProtocolError(f"malformed object encoding ({type(exc).__name__})") from None
    if end != len(view):
        raise CommProtocolError("trailing bytes after object")
    return obj


def _take(view: memoryview, pos: int, count: int) -> tuple[memoryview, int]:
    end = pos + count
    if count < 0 or end > len(view):
        raise ValueError("truncated")
    return view[pos:end], end


def _decode_at(view: memoryview, pos: int, depth: int) -> tuple[object, int]:
    if depth > MAX_OBJECT_DEPTH:
        raise ValueError("too deep")
    tag, pos = _take(view, pos, 1)
    tag = bytes(tag)
    if tag == _T_NONE:
        return None, pos
    if tag in (_T_TRUE, _T_FALSE):
        return tag == _T_TRUE, pos
    if tag in (_T_INT, _T_STR, _T_BYTES):
        length_raw, pos = _take(view, pos, 4)
        raw, pos = _take(view, pos, _U32.unpack(length_raw)[0])
        if tag == _T_INT:
            return int.from_bytes(raw, "big", signed=True), pos
        return (str(raw, "utf-8") if tag == _T_STR else bytes(raw)), pos
    if tag == _T_FLOAT:
        raw, pos = _take(view, pos, 8)
        return _F64.unpack(raw)[0], pos
    if tag == _T_SIZE:
        length_raw, pos = _take(view, pos, 4)
        count = _U32.unpack(length_raw)[0]
        if count > MAX_DIMS:
            raise ValueError("too many dims")
        raw, pos = _take(view, pos, 8 * count)
        return torch.Size(struct.unpack(f">{count}Q", raw)), pos
    if tag == _T_TENSOR:
        head, pos = _take(view, pos, _FRAME.size)
        kind, code, ndim, _, nbytes = _FRAME.unpack(head)
        if kind != _KIND_TENSOR or ndim > MAX_DIMS:
            raise ValueError("bad tensor header")
        raw_dims, pos = _take(view, pos, 8 * ndim)
        shape = struct.unpack(f">{ndim}Q", raw_dims)
        dtype, np_dtype = _tensor_type(code, shape, nbytes)
        raw, pos = _take(view, pos, nbytes)
        return torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).copy()).reshape(shape), pos
    if tag in (_T_LIST, _T_TUPLE, _T_DICT):
        length_raw, pos = _take(view, pos, 4)
        count = _U32.unpack(length_raw)[0]
        if count > len(view) - pos:  # every element takes at least one byte
            raise ValueError("container larger than its encoding")
        if tag == _T_DICT:
            result: dict[object, object] = {}
            for _ in range(count):
                key, pos = _decode_at(view, pos, depth + 1)
                value, pos = _decode_at(view, pos, depth + 1)
                result[key] = value  # an unhashable key raises TypeError -> malformed
            return result, pos
        items = []
        for _ in range(count):
            item, pos = _decode_at(view, pos, depth + 1)
            items.append(item)
        return (items if tag == _T_LIST else tuple(items)), pos
    raise ValueError("unknown tag")


def _tensor_type(code: int, shape: Sequence[int], nbytes: int) -> tuple[torch.dtype, np.dtype]:
    if code not in _DTYPES:
        raise ValueError(f"unknown dtype code {code}")
    dtype, np_dtype = _DTYPES[code]
    if math.prod(shape) * np_dtype.itemsize != nbytes:
        raise ValueError("tensor length does not match its shape")
    return dtype, np_dtype


def _tensor_wire(tensor: torch.Tensor) -> tuple[bytes, memoryview, torch.Tensor]:
    """Frame header and a zero-copy byte view of ``tensor`` (plus the CPU tensor that owns the bytes)."""
    if tensor.dtype not in _DTYPE_CODES:
        raise UnsupportedObjectError(f"tensors of dtype {tensor.dtype} are not carried")
    if tensor.dim() > MAX_DIMS:
        raise UnsupportedObjectError(f"tensors of more than {MAX_DIMS} dims are not carried")
    owner = tensor.detach()
    if owner.device.type != "cpu":
        owner = owner.cpu()
    if not owner.is_contiguous():
        owner = owner.contiguous()
    array = owner.numpy()
    data = memoryview(array.reshape(-1)).cast("B")
    header = _FRAME.pack(_KIND_TENSOR, _DTYPE_CODES[owner.dtype], array.ndim, 0, data.nbytes)
    return header + _DIMS[array.ndim].pack(*array.shape), data, owner


# ----------------------------------------------------------------------------------------------------
# Links and the progress engine


class _Incoming:
    __slots__ = ("kind", "value", "nbytes", "deliver_at")

    def __init__(self, kind: int, value: Any, nbytes: int, deliver_at: float) -> None:
        self.kind = kind
        self.value = value  # torch.Tensor for tensors, bytearray otherwise
        self.nbytes = nbytes  # framed size on the wire
        self.deliver_at = deliver_at


class _SendRequest:
    """Completion handle of a queued frame (what ``isend`` returns)."""

    def __init__(self, link: _Link, parts: tuple[memoryview, ...], owner: object) -> None:
        self._link = link
        self.parts = parts
        self.owner = owner  # keeps the tensor whose memory ``parts`` view alive until written
        self.nbytes = sum(p.nbytes for p in parts)
        self.not_before = 0.0
        self.done = False
        self.error: CommError | None = None

    def finish(self, error: CommError | None = None) -> None:
        self.error = error
        self.parts = ()
        self.owner = None
        self.done = True

    def is_completed(self) -> bool:
        return self.done

    def wait(self, timeout: float | None = None) -> None:
        """Drive the links until this frame is written (to the kernel) or its link fails."""
        link = self._link
        link.engine.progress(lambda: self.done, timeout, f"send to rank {link.peer}")
        if self.error is not None:
            raise self.error


class _RecvRequest:
    """A posted receive (what ``irecv`` returns); messages fill posted receives in posting order."""

    def __init__(self, link: _Link, kind: int, on_message: Callable[[_Incoming], Any]) -> None:
        self._link = link
        self.kind = kind
        self._on_message = on_message
        self.done = False
        self.result: Any = None

    def fulfil(self, item: _Incoming) -> None:
        if item.kind != self.kind:
            raise CommProtocolError(
                f"expected a {_KIND_NAMES[self.kind]} from rank {self._link.peer}, got a {_KIND_NAMES.get(item.kind, '?')}"
            )
        self.result = self._on_message(item)
        self.done = True

    def is_completed(self) -> bool:
        return self.done

    def wait(self, timeout: float | None = None) -> Any:
        self._link.complete(self, timeout)
        return self.result


class _Link:
    """One persistent TLS connection to a peer rank: outgoing frame queue, incoming frame parser.

    A link never blocks: :meth:`read_some` and :meth:`write_some` move whatever bytes the socket takes,
    and the :class:`_Engine` calls them whenever the caller waits for anything.
    """

    def __init__(self, peer: int, sock: ssl.SSLSocket, config: TlsCommConfig, engine: _Engine) -> None:
        self.peer = peer
        self.sock = sock
        self.engine = engine
        self.counters = _Counters()
        self.error: CommError | None = None
        self.inbox: deque[_Incoming] = deque()
        self.inbox_bytes = 0
        self.outgoing: deque[_SendRequest] = deque()
        self._posted: deque[_RecvRequest] = deque()
        self._max_message = config.max_message_bytes
        self._max_inbox = config.max_inbox_messages
        self._emulation = config.emulation
        self._emulated_free_at = 0.0
        # Read state: unparsed bytes are _buffer[_start:_end]; a frame goes header (with its dims) ->
        # [held until the inbox has room] -> payload, copied from the buffer or read straight into _target.
        self._buffer = bytearray(_RECV_BUFFER)
        # plaintext OpenSSL has decrypted but not yet handed over (a plain socket, as in tests, has none)
        self._pending: Callable[[], int] = sock.pending if isinstance(sock, ssl.SSLSocket) else lambda: 0
        self._view = memoryview(self._buffer)
        self._start = self._end = 0
        self._stage = "head"
        self._target: memoryview = memoryview(b"")
        self._filled = 0
        self._frame: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._shape: tuple[int, ...] = ()
        self._value: Any = None
        # write state: the frame being written, which part, where, and the chunk OpenSSL last refused
        self._current: _SendRequest | None = None
        self._part = 0
        self._offset = 0
        self._pending_chunk: memoryview | None = None
        sock.setblocking(False)

    # -- caller side --------------------------------------------------------------------------------

    def send(self, parts: tuple[memoryview, ...], owner: object) -> _SendRequest:
        if self.error is not None:
            raise self.error
        request = _SendRequest(self, parts, owner)
        if self._emulation is not None and self._emulation.bandwidth_bps is not None:
            now = time.monotonic()
            self._emulated_free_at = max(now, self._emulated_free_at) + request.nbytes * 8 / self._emulation.bandwidth_bps
            request.not_before = self._emulated_free_at
        self.outgoing.append(request)
        self.counters.bytes_sent += request.nbytes
        self.counters.messages_sent += 1
        self.engine.kick(self)
        return request

    def post(self, kind: int, on_message: Callable[[_Incoming], Any]) -> _RecvRequest:
        request = _RecvRequest(self, kind, on_message)
        self._posted.append(request)
        return request

    def complete(self, request: _RecvRequest, timeout: float | None) -> None:
        """Drive the links and hand arriving messages to posted receives, in order, until ``request`` is filled."""
        while not request.done:
            self.engine.progress(lambda: bool(self.inbox) or self.error is not None, timeout,
                                 f"message from rank {self.peer}")
            if not self.inbox:
                assert self.error is not None
                raise self.error
            item = self.inbox[0]
            if item.deliver_at > time.monotonic():  # emulated one-way delay
                self.engine.progress(lambda: time.monotonic() >= item.deliver_at, None, "emulated delay",
                                     wake_at=item.deliver_at)
            self.inbox.popleft()
            self.inbox_bytes -= item.nbytes
            self.counters.bytes_received += item.nbytes
            self.counters.messages_received += 1
            self._posted.popleft().fulfil(item)

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self.outgoing)

    @property
    def wants_read(self) -> bool:
        """False while a parsed frame waits for inbox room: the engine then stops watching the socket."""
        return self._stage != "held"

    def fail(self, error: CommError) -> None:
        if self.error is None:
            self.error = error
        for request in ([self._current] if self._current else []) + list(self.outgoing):
            request.finish(self.error)
        self._current = None
        self.outgoing.clear()

    # -- socket side (called by the engine) ---------------------------------------------------------

    def read_some(self) -> bool:
        """Read what the socket has (a bounded amount) and parse it; return whether any byte arrived or a
        held frame was admitted.

        A read that returns less than it asked for, with nothing left inside OpenSSL, ends the call: the
        record is used up, and asking again would most often only raise SSLWantReadError. The caller
        loops while anything moved, and waits on the (level-triggered) selector only after a read that
        found nothing, so a record still in the kernel is never forgotten.
        """
        progressed = self._parse() if self._stage == "held" or self._start != self._end else False
        for _ in range(64):
            if self._stage == "held":
                return progressed
            direct = self._stage == "payload" and self._start == self._end
            if direct:
                target, size = self._target[self._filled :], min(self._target.nbytes - self._filled, _CHUNK)
            else:
                if self._start == self._end:
                    self._start = self._end = 0
                elif self._end == _RECV_BUFFER:  # a frame's start sits at the end: move it to the front
                    kept = self._end - self._start
                    self._buffer[:kept] = self._view[self._start : self._end]
                    self._start, self._end = 0, kept
                target, size = self._view[self._end :], _RECV_BUFFER - self._end
            try:
                count = self.sock.recv_into(target, size)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return progressed
            except (ssl.SSLError, OSError) as exc:
                raise PeerDisconnectedError(f"link to rank {self.peer} failed: {type(exc).__name__}") from None
            if count == 0:
                idle = self._stage == "head" and self._start == self._end
                raise PeerDisconnectedError(f"rank {self.peer} closed the connection{'' if idle else ' mid-message'}")
            progressed = True
            if direct:
                self._filled += count
            else:
                self._end += count
            self._parse()
            if count < size and not self._pending():
                return True
        return progressed

    def _parse(self) -> bool:
        """Turn buffered bytes into frames (as far as they go and the inbox has room); return whether any
        frame moved on."""
        moved = False
        while True:
            buffered = self._end - self._start
            if self._stage == "head":
                if buffered < _FRAME.size:
                    return moved
                kind, code, ndim, reserved, nbytes = _FRAME.unpack_from(self._buffer, self._start)
                if kind not in _KIND_NAMES or reserved != 0 or ndim > MAX_DIMS or (kind != _KIND_TENSOR and (ndim or code)):
                    raise CommProtocolError(f"malformed frame header from rank {self.peer}")
                # Checked on the header alone, so an announced size never turns into an allocation.
                if nbytes > self._max_message:
                    raise MessageTooLargeError(
                        f"rank {self.peer} announced a {nbytes}-byte message (limit {self._max_message})"
                    )
                if buffered < _FRAME.size + 8 * ndim:
                    return moved
                shape = _DIMS[ndim].unpack_from(self._buffer, self._start + _FRAME.size)
                if kind == _KIND_TENSOR:
                    try:
                        _tensor_type(code, shape, nbytes)
                    except ValueError:
                        raise CommProtocolError(f"malformed tensor frame from rank {self.peer}") from None
                self._start += _FRAME.size + 8 * ndim
                self._frame, self._shape, self._stage = (kind, code, ndim, nbytes), shape, "held"
                moved = True
            if self._stage == "held":
                if not self._has_room():
                    return moved
                self._admit()
                moved = True
            take = min(self._end - self._start, self._target.nbytes - self._filled)
            if take:
                self._target[self._filled : self._filled + take] = self._view[self._start : self._start + take]
                self._start += take
                self._filled += take
            if self._filled < self._target.nbytes:
                return moved
            self._deliver()

    def _framed_size(self) -> int:
        _, _, ndim, nbytes = self._frame
        return _FRAME.size + 8 * ndim + nbytes

    def _has_room(self) -> bool:
        # An empty inbox always takes the next frame, so any frame within the size limit gets through and
        # a program that consumes its messages never stalls; buffered bytes stay under the limit.
        if not self.inbox:
            return True
        return len(self.inbox) < self._max_inbox and self.inbox_bytes + self._framed_size() <= self._max_message

    def _admit(self) -> None:
        """Allocate the payload's destination (what the payload's bytes are read or copied into)."""
        kind, code, _, nbytes = self._frame
        try:
            if kind == _KIND_TENSOR and nbytes:
                # numpy allocates faster than torch.empty, and the tensor shares the array's memory
                array = np.empty(self._shape, dtype=_DTYPES[code][1])
                self._value = torch.from_numpy(array)
                self._target = memoryview(array.reshape(-1)).cast("B")
            elif kind == _KIND_TENSOR:  # torch.from_numpy would give an empty tensor zero strides
                self._value = torch.empty(self._shape, dtype=_DTYPES[code][0])
                self._target = memoryview(b"")
            else:
                self._value = bytearray(nbytes)
                self._target = memoryview(self._value)
        except (MemoryError, ValueError):
            raise MessageTooLargeError(f"rank {self.peer} announced a {nbytes}-byte message this host cannot hold") from None
        self._stage, self._filled = "payload", 0

    def _deliver(self) -> None:
        delay = self._emulation.one_way_delay_s if self._emulation else 0.0
        size = self._framed_size()
        self.inbox.append(_Incoming(self._frame[0], self._value, size, time.monotonic() + delay if delay else 0.0))
        self.inbox_bytes += size
        self._value = None
        self._stage, self._target, self._filled = "head", memoryview(b""), 0

    def write_some(self) -> tuple[bool, bool, float | None]:
        """Write queued frames until done or the socket is full.

        Returns (wrote anything, blocked on a full socket, time the next paced frame is due or None).
        """
        wrote = False
        while True:
            if self._current is None:
                if not self.outgoing:
                    return wrote, False, None
                if self.outgoing[0].not_before > time.monotonic():
                    return wrote, False, self.outgoing[0].not_before
                self._current = self.outgoing.popleft()
                self._part, self._offset, self._pending_chunk = 0, 0, None
            request = self._current
            while self._part < len(request.parts):
                part = request.parts[self._part]
                if self._offset >= part.nbytes:
                    self._part, self._offset = self._part + 1, 0
                    continue
                if self._pending_chunk is None:
                    self._pending_chunk = part[self._offset : self._offset + _CHUNK]
                try:
                    written = self.sock.send(self._pending_chunk)
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    return wrote, True, None  # retry the same chunk when writable (OpenSSL requires it)
                except (ssl.SSLError, OSError) as exc:
                    raise PeerDisconnectedError(f"link to rank {self.peer} failed: {type(exc).__name__}") from None
                wrote = True
                self._offset += written
                self._pending_chunk = None if written >= self._pending_chunk.nbytes else self._pending_chunk[written:]
            self._current = None
            request.finish()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Engine:
    """Moves bytes on every link whenever the caller waits (an MPI-style progress engine).

    All socket work happens on the caller's thread, inside whatever call is waiting: no I/O threads, no
    hand-offs between threads on the latency path, and no OpenSSL object shared across threads. While
    waiting for one peer the engine keeps reading and writing every other link, so ranks that send to
    each other at the same time never deadlock. Data a peer sends while this rank computes waits in the
    kernel's socket buffers until the next call.
    """

    def __init__(self, recv_timeout_s: float) -> None:
        self.recv_timeout_s = recv_timeout_s
        self.links: list[_Link] = []
        self._selector = selectors.DefaultSelector()
        self._events: dict[int, int] = {}

    def add(self, link: _Link) -> None:
        self.links.append(link)
        self._selector.register(link.sock, selectors.EVENT_READ, link)
        self._events[link.peer] = selectors.EVENT_READ

    def kick(self, link: _Link) -> None:
        """Start writing a freshly queued frame right away (small frames finish here)."""
        if link.error is None:
            try:
                link.write_some()
            except CommError as exc:
                link.fail(exc)

    def _step(self, link: _Link) -> tuple[bool, float | None]:
        if link.error is not None:
            return False, None
        try:
            read = link.read_some()
            wrote, blocked, due = link.write_some() if link.busy else (False, False, None)
        except CommError as exc:
            link.fail(exc)
            return True, None
        self._watch(link, (selectors.EVENT_READ if link.wants_read else 0) | (selectors.EVENT_WRITE if blocked else 0))
        return read or wrote, due

    def _watch(self, link: _Link, events: int) -> None:
        # A held link's socket stays readable while its data waits in the kernel; watching it would turn
        # select() into a busy loop. A selector cannot watch for no event, so such a link is unregistered.
        current = self._events[link.peer]
        if current == events:
            return
        if not events:
            self._selector.unregister(link.sock)
        elif not current:
            self._selector.register(link.sock, events, link)
        else:
            self._selector.modify(link.sock, events, link)
        self._events[link.peer] = events

    def progress(self, done: Callable[[], bool], timeout: float | None, what: str, wake_at: float | None = None) -> None:
        """Service every link until ``done()``; raise :class:`CommTimeoutError` after ``timeout`` seconds.

        ``timeout`` None means the receive timeout; ``wake_at`` bounds the sleep without raising.
        """
        if done():
            return
        limit = self.recv_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            progressed = False
            next_due = wake_at
            for link in self.links:
                moved, due = self._step(link)
                progressed |= moved
                if due is not None:
                    next_due = due if next_due is None else min(next_due, due)
            if done():
                return
            if progressed:
                continue
            now = time.monotonic()
            if now >= deadline and wake_at is None:
                raise CommTimeoutError(f"no {what} within {limit:.1f}s")
            until = deadline if next_due is None else min(deadline, next_due)
            if self.links and any(link.error is None for link in self.links):
                self._selector.select(max(0.0, until - now))
            else:
                time.sleep(max(0.0, until - now))

    def flush(self, timeout: float) -> None:
        """Write out everything queued (best effort within ``timeout``)."""
        try:
            self.progress(lambda: not any(link.busy and link.error is None for link in self.links), timeout, "flush")
        except CommTimeoutError:
            log.warning("closing the data plane with frames still unsent")

    def close(self) -> None:
        self._selector.close()
        for link in self.links:
            link.fail(PeerDisconnectedError(f"link to rank {link.peer} is closed"))
            link.close()

# ----------------------------------------------------------------------------------------------------
# Mesh formation


def _server_context(credentials: keys.NodeCredentials) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(credentials.cert_path, credentials.key_path)
    context.load_verify_locations(cafile=str(credentials.ca_path))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _client_context(credentials: keys.NodeCredentials, verify_hostname: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(credentials.cert_path, credentials.key_path)
    context.load_verify_locations(cafile=str(credentials.ca_path))
    context.check_hostname = verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _tune(sock: socket.socket) -> None:
    """No Nagle delay (MPC rounds are small and latency-bound); keepalive probes so that a peer host that
    vanishes without closing its sockets is noticed within about half a minute even on an idle link."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _hello(rank: int, session: bytes) -> bytes:
    return _HELLO.pack(_HELLO_MAGIC, WIRE_VERSION, rank, len(session)) + session


def _send_hello(sock: ssl.SSLSocket, rank: int, session: bytes) -> None:
    sock.sendall(_hello(rank, session))


def _parse_hello_head(head: bytes, session: bytes) -> tuple[int, int]:
    """(claimed rank, session length) from a hello's fixed part; refuses a foreign version or session."""
    magic, version, rank, length = _HELLO.unpack(head)
    if magic != _HELLO_MAGIC or version != WIRE_VERSION:
        raise PeerAuthError("peer does not speak this data-plane version")
    if length != len(session):
        raise PeerAuthError("peer belongs to another session")
    return rank, length


def _recv_exact(sock: ssl.SSLSocket, count: int) -> bytes:
    buffer = bytearray(count)
    view, filled = memoryview(buffer), 0
    while filled < count:
        got = sock.recv_into(view[filled:])
        if got == 0:
            raise PeerDisconnectedError("peer closed the connection during the hello")
        filled += got
    return bytes(buffer)


def _recv_hello(sock: ssl.SSLSocket, session: bytes) -> int:
    rank, length = _parse_hello_head(_recv_exact(sock, _HELLO.size), session)
    if _recv_exact(sock, length) != session:
        raise PeerAuthError("peer belongs to another session")
    return rank


def _discard(raw: socket.socket | None, sock: ssl.SSLSocket | None) -> None:
    """Close a refused connection (after a handshake the TLS socket owns the file descriptor)."""
    for each in (sock, raw):
        if each is not None:
            try:
                each.close()
            except OSError:
                pass


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket for this rank (port 0 picks a free one: read it with ``getsockname``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Deep enough that a burst of strangers' connects cannot fill the kernel's accept queue and drop the
    # real peer's SYN (a dropped SYN costs a 1 s retransmit) before the acceptor drains it.
    sock.listen(_LISTEN_BACKLOG)
    return sock


class _Handshake:
    """One accepted connection on its way to an authenticated link, driven without blocking:
    TLS handshake, certificate role, our hello out, the peer's hello in."""

    __slots__ = ("sock", "address", "deadline", "stage", "role", "out", "inbuf", "need", "claimed")

    def __init__(self, sock: ssl.SSLSocket, address: str, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.deadline = deadline
        self.stage = "tls"
        self.role = ""
        self.out = memoryview(b"")
        self.inbuf = bytearray()
        self.need = _HELLO.size
        self.claimed = -1

    def advance(self, builder: _MeshBuilder, roles: Mapping[str, int]) -> int | None:
        """Move as far as the socket allows; the rank once authenticated, None while more I/O is needed.

        Raises on any refusal; waiting on the socket surfaces as ``ssl.SSLWantReadError`` /
        ``ssl.SSLWantWriteError``, which the caller turns into the events to watch.
        """
        while True:
            if self.stage == "tls":
                self.sock.do_handshake()
                self.role = keys.check_peer_role(self.sock.getpeercert(binary_form=True) or b"", set(roles), builder.ca)
                self.out = memoryview(_hello(builder.config.rank, builder.session))
                self.stage = "send"
            elif self.stage == "send":
                self.out = self.out[self.sock.send(self.out) :]
                if not self.out:
                    self.stage = "recv"
            else:
                chunk = self.sock.recv(self.need - len(self.inbuf))
                if not chunk:
                    raise PeerDisconnectedError("peer closed the connection during the hello")
                self.inbuf += chunk
                if len(self.inbuf) < self.need:
                    continue
                if self.claimed < 0:
                    self.claimed, length = _parse_hello_head(bytes(self.inbuf[: _HELLO.size]), builder.session)
                    self.need += length
                    if length:
                        continue
                if bytes(self.inbuf[_HELLO.size :]) != builder.session:
                    raise PeerAuthError("peer belongs to another session")
                if self.role not in roles:  # another connection of the same role got there first
                    raise PeerAuthError(f"a second {self.role} connection")
                if self.claimed != roles[self.role]:
                    raise PeerAuthError(f"a {self.role} certificate claimed rank {self.claimed}")
                return roles[self.role]


class _MeshBuilder:
    """Dials lower ranks and accepts higher ranks, all at once, until every link is authenticated or time
    runs out.

    Each lower rank is dialled from its own thread and one acceptor thread drives every accepted
    connection's handshake without blocking, so nothing waits on anything else: a stranger's idle or
    slow connection holds a slot for at most ``_ACCEPT_HANDSHAKE_S`` and never delays the real peer.
    """

    def __init__(self, config: TlsCommConfig, listener: socket.socket | None) -> None:
        self.config = config
        self.session = config.session_id.encode()
        self.ca = config.credentials.ca_certificate()
        self.links: dict[int, ssl.SSLSocket] = {}
        self.errors: list[str] = []
        self.deadline = time.monotonic() + config.connect_timeout_s
        self.listener = listener
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self._wake = threading.Event()

    def build(self) -> dict[int, ssl.SSLSocket]:
        config = self.config
        higher = set(range(config.rank + 1, config.mesh_size))
        if higher and self.listener is None:
            self.listener = bind_listener(*(config.listen or config.endpoints[config.rank]))
        workers = [threading.Thread(target=self._guarded, args=(self._dial, peer), daemon=True, name=f"dial-{peer}")
                   for peer in range(config.rank)]
        acceptor = None
        if higher:
            acceptor = threading.Thread(target=self._guarded, args=(self._accept_all, higher), daemon=True,
                                        name="accept")
            workers.append(acceptor)
        try:
            for worker in workers:
                worker.start()
            # Every worker has the same deadline; the grace second lets one finish a handshake it began.
            while any(w.is_alive() for w in workers) and time.monotonic() < self.deadline + 1.0:
                with self.lock:
                    failure = self.failure
                if failure is not None:
                    raise failure
                self._wake.wait(0.05)
                self._wake.clear()
            with self.lock:
                failure = self.failure
            if failure is not None:
                raise failure
        except BaseException:
            self.stop.set()
            self._close_all()
            raise
        finally:
            self.stop.set()
            if acceptor is not None:
                acceptor.join(1.0)  # it polls the stop flag at least every _ACCEPT_POLL_S
            if self.listener is not None:
                self.listener.close()
        with self.lock:
            missing = sorted(set(range(config.mesh_size)) - set(self.links) - {config.rank})
        if missing:
            self._close_all()
            detail = f" (refused: {'; '.join(self.errors[-3:])})" if self.errors else ""
            raise CommTimeoutError(
                f"rank {config.rank}: no authenticated link to ranks {missing} within {config.connect_timeout_s:.1f}s{detail}"
            )
        return self.links

    def _guarded(self, work: Callable[[Any], None], arg: Any) -> None:
        """Run one worker; its first exception is what build() raises."""
        try:
            work(arg)
        except BaseException as exc:
            with self.lock:
                if self.failure is None:
                    self.failure = exc
        finally:
            self._wake.set()

    def _add(self, peer: int, sock: ssl.SSLSocket) -> None:
        sock.settimeout(None)
        with self.lock:
            # A dial that finishes after build() gave up must not leave an open link behind.
            if self.stop.is_set():
                sock.close()
                return
            self.links[peer] = sock

    def _close_all(self) -> None:
        with self.lock:
            for sock in self.links.values():
                sock.close()
            self.links.clear()

    def _pause(self, pause: float) -> float:
        """Back off before the next dial (cut short when build() stops); returns the next pause."""
        self.stop.wait(min(pause, max(0.0, self.deadline - time.monotonic())))
        return min(pause * 2, 0.5)

    def _dial(self, peer: int) -> None:
        config = self.config
        host, port = config.endpoints[peer]
        context = _client_context(config.credentials, config.verify_hostname)
        pause = 0.02
        while not self.stop.is_set():
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return  # reported as missing by build()
            try:
                raw = socket.create_connection((host, port), timeout=min(remaining, _HANDSHAKE_TIMEOUT_S))
            except OSError:
                pause = self._pause(pause)
                continue
            _tune(raw)
            sock: ssl.SSLSocket | None = None
            try:
                sock = context.wrap_socket(raw, server_hostname=host)
                keys.check_peer_role(sock.getpeercert(binary_form=True) or b"", config.role_of(peer), self.ca)
                _send_hello(sock, config.rank, self.session)
                if _recv_hello(sock, self.session) != peer:
                    raise PeerAuthError(f"the node at rank {peer}'s address answered as another rank")
            except keys.PeerCertificateError as exc:
                _discard(raw, sock)
                raise PeerAuthError(f"rank {peer} at {host}:{port} refused: {exc}") from None
            except ssl.SSLCertVerificationError as exc:
                _discard(raw, sock)
                raise PeerAuthError(f"rank {peer} at {host}:{port} failed certificate verification: {exc.verify_message}") from None
            except ssl.SSLError as exc:
                _discard(raw, sock)
                reason = str(exc.reason or "")
                if "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason:
                    raise PeerAuthError(f"rank {peer} at {host}:{port} does not speak TLS 1.3 ({reason})") from None
                if "ALERT" in reason:  # the listener rejected this node's certificate
                    raise PeerAuthError(f"rank {peer} at {host}:{port} rejected this node's certificate ({reason})") from None
                self.errors.append(f"rank {peer}: {type(exc).__name__}")
                pause = self._pause(pause)
                continue
            except PeerAuthError:
                _discard(raw, sock)
                raise
            except (OSError, PeerDisconnectedError) as exc:
                # The listener closed on us (it refused our role, dropped a handshake that took too long,
                # or raced a restart); keep trying until the deadline, remembering why.
                _discard(raw, sock)
                self.errors.append(f"rank {peer}: {type(exc).__name__}")
                pause = self._pause(pause)
                continue
            self._add(peer, sock)
            return

    def _refuse(self, handshake: _Handshake, reason: str) -> None:
        # A stranger (foreign CA, wrong role, other session, idle or too slow) is refused; the mesh keeps
        # waiting for the real peer. Only the reason's type is logged, never certificate contents.
        _discard(None, handshake.sock)
        detail = f"{handshake.address}: {reason}"
        self.errors.append(detail)
        log.warning("rank %d refused a data-plane connection from %s", self.config.rank, detail)

    def _accept_all(self, expected: set[int]) -> None:
        config = self.config
        context = _server_context(config.credentials)
        roles = {config.role_of(r): r for r in expected}
        listener = self.listener
        assert listener is not None
        listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, None)
        pending: dict[int, _Handshake] = {}  # by file descriptor, oldest first

        def drop(handshake: _Handshake, reason: str) -> None:
            selector.unregister(handshake.sock)
            del pending[handshake.sock.fileno()]
            self._refuse(handshake, reason)

        def step(handshake: _Handshake) -> None:
            try:
                rank = handshake.advance(self, roles)
            except ssl.SSLWantReadError:
                selector.modify(handshake.sock, selectors.EVENT_READ, handshake)
                return
            except ssl.SSLWantWriteError:
                selector.modify(handshake.sock, selectors.EVENT_WRITE, handshake)
                return
            except (keys.PeerCertificateError, PeerAuthError, PeerDisconnectedError, ssl.SSLError, OSError,
                    struct.error) as exc:
                drop(handshake, type(exc).__name__)
                return
            assert rank is not None
            selector.unregister(handshake.sock)
            del pending[handshake.sock.fileno()]
            handshake.sock.setblocking(True)
            self._add(rank, handshake.sock)
            del roles[handshake.role]

        try:
            while roles and not self.stop.is_set():
                now = time.monotonic()
                if now >= self.deadline:
                    return
                for handshake in [h for h in pending.values() if now >= h.deadline]:
                    drop(handshake, "handshake timeout")
                wake = min([self.deadline, now + _ACCEPT_POLL_S, *(h.deadline for h in pending.values())])
                for key, _ in selector.select(max(0.0, wake - now)):
                    if key.data is None:
                        self._accept_ready(listener, context, selector, pending, drop, step)
                    elif pending.get(key.data.sock.fileno()) is key.data:  # not dropped earlier in this batch
                        step(key.data)
        finally:
            for handshake in list(pending.values()):
                _discard(None, handshake.sock)
            selector.close()

    def _accept_ready(self, listener: socket.socket, context: ssl.SSLContext, selector: selectors.BaseSelector,
                      pending: dict[int, _Handshake], drop: Callable[[_Handshake, str], None],
                      step: Callable[[_Handshake], None]) -> None:
        """Take every connection the kernel has queued and start its handshake."""
        while True:
            try:
                raw, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors: leave the rest queued, and do not spin on the listener
                self.stop.wait(_ACCEPT_POLL_S)
                return
            if len(pending) >= _MAX_PENDING_HANDSHAKES:
                # Evict the oldest: a real peer finishes in milliseconds, so it is never the oldest for long,
                # while refusing newcomers would let a stranger who holds every slot lock the peer out.
                drop(next(iter(pending.values())), "too many pending handshakes")
            try:
                _tune(raw)
                raw.setblocking(False)
                sock = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            except OSError:
                _discard(raw, None)
                continue
            deadline = min(time.monotonic() + _ACCEPT_HANDSHAKE_S, self.deadline)
            handshake = _Handshake(sock, str(address[0]), deadline)
            pending[sock.fileno()] = handshake
            selector.register(sock, selectors.EVENT_READ, handshake)
            step(handshake)  # the ClientHello is often already there


# ----------------------------------------------------------------------------------------------------
# The communicator


_REDUCE_OPS: dict[Any, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    ReduceOp.SUM: torch.add,
    ReduceOp.PRODUCT: torch.mul,
    ReduceOp.MIN: torch.minimum,
    ReduceOp.MAX: torch.maximum,
    ReduceOp.BAND: torch.bitwise_and,
    ReduceOp.BOR: torch.bitwise_or,
    ReduceOp.BXOR: torch.bitwise_xor,
}


def _reducer(op: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    for key, function in _REDUCE_OPS.items():
        if op == key:
            return function
    raise ValueError(f"unsupported reduce op {op}")


class TlsCommunicator(Communicator):
    """CrypTen's communicator interface over the mutual-TLS mesh (see the module docstring).

    Create one with :meth:`connect`, hand it to :func:`install`, and CrypTen's ``comm.get()`` returns it.
    Methods keep ``DistributedCommunicator``'s signatures and return conventions; ``src``/``dst`` are
    mesh ranks (the dealer is ``get_ttp_rank()``). Use it from one thread, like CrypTen does.
    """

    BYTES_PER_ELEMENT = 8

    def __init__(self, config: TlsCommConfig, links: Mapping[int, ssl.SSLSocket]) -> None:
        self.config = config
        self.rank = config.rank
        self.world_size = config.world_size
        self._name = f"rank{config.rank}"
        self._engine = _Engine(config.recv_timeout_s)
        self._links = {peer: _Link(peer, sock, config, self._engine) for peer, sock in links.items()}
        for link in self._links.values():
            self._engine.add(link)
        self._rounds = 0
        self._op = 0
        self._closed = False
        self.main_group = Group(tuple(range(config.world_size)))
        self.ttp_group = Group(tuple(range(config.mesh_size)))
        self.ttp_comm_group = Group((0, config.mesh_size - 1))
        self.ttp_initialized = config.with_dealer
        self.reset_communication_stats()

    @classmethod
    def connect(cls, config: TlsCommConfig, listener: socket.socket | None = None) -> TlsCommunicator:
        """Form the authenticated mesh for ``config`` (all ranks call this concurrently).

        ``listener`` is an already bound socket for this rank (see :func:`bind_listener`); without one the
        rank binds ``config.listen`` or its own endpoint. Raises :class:`CommTimeoutError` when some rank
        is not linked within ``connect_timeout_s`` and :class:`PeerAuthError` when a dialled peer is not
        who its rank requires.
        """
        config.validate()
        links = _MeshBuilder(config, listener).build()
        return cls(config, links)

    # -- CrypTen's classmethod protocol (the instance is managed by install/uninstall) ---------------

    @classmethod
    def is_initialized(cls) -> bool:
        return _installed is not None

    @classmethod
    def get(cls) -> TlsCommunicator:
        if _installed is None:
            raise RuntimeError("no TLS communicator installed; call pinfer.protocols.tls_communicator.install()")
        return _installed

    @classmethod
    def initialize(cls, rank: int, world_size: int, init_ttp: bool = False) -> None:
        """Called by CrypTen's ``comm._init``: the mesh already exists, so only check it is the same world."""
        current = cls.get()
        if init_ttp:
            raise CommError(
                "CrypTen's TTP provider talks to torch.distributed directly and cannot run over the TLS mesh; "
                "use pinfer's dealer provider"
            )
        if world_size not in (1, current.world_size) or rank not in (0, current.rank):
            raise CommError("crypten was initialized for a different world than the installed communicator")

    @classmethod
    def shutdown(cls) -> None:
        uninstall()

    # -- bookkeeping ------------------------------------------------------------------------------------

    def _link(self, peer: int) -> _Link:
        link = self._links.get(peer)
        if link is None:
            if self._closed:
                raise PeerDisconnectedError("the communicator is closed")
            raise ValueError(f"rank {self.rank} has no link to rank {peer}")
        if link.counters.last_op != self._op:
            link.counters.last_op = self._op
            link.counters.rounds += 1
        return link

    def _begin(self) -> None:
        self._op += 1
        self._rounds += 1

    def _members(self, group: Group | None) -> tuple[int, ...]:
        ranks = (group or self.main_group).ranks
        if self.rank not in ranks:
            raise ValueError(f"rank {self.rank} is not in group {ranks}")
        return ranks

    def _send_tensor(self, tensor: torch.Tensor, dst: int) -> _SendRequest:
        header, data, owner = _tensor_wire(tensor)
        parts = (memoryview(b"".join((header, data))),) if data.nbytes <= _SMALL_PAYLOAD else (memoryview(header), data)
        return self._link(dst).send(parts, owner)

    def _send_payload(self, kind: int, payload: bytes, dst: int) -> _SendRequest:
        frame = _FRAME.pack(kind, 0, 0, 0, len(payload)) + payload
        return self._link(dst).send((memoryview(frame),), None)

    def _post_tensor(self, src: int) -> _RecvRequest:
        return self._link(src).post(_KIND_TENSOR, lambda item: item.value)

    def _post_payload(self, kind: int, src: int) -> _RecvRequest:
        return self._link(src).post(kind, lambda item: item.value)

    @staticmethod
    def _like(received: torch.Tensor, template: torch.Tensor | None, src: int) -> torch.Tensor:
        """Check ``received`` against what the caller expects and put it on the template's device/shape."""
        if template is None:
            return received
        if received.dtype != template.dtype or received.numel() != template.numel():
            raise CommProtocolError(
                f"rank {src} sent {received.dtype}[{received.numel()}], expected {template.dtype}[{template.numel()}]"
            )
        if received.shape != template.shape:
            received = received.reshape(template.shape)
        return received if template.device.type == "cpu" else received.to(template.device)

    def _wait_all(self, requests: Sequence[_SendRequest]) -> None:
        for request in requests:
            request.wait()

    # -- point to point -------------------------------------------------------------------------------

    @_logging
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        """Send ``tensor`` to ``dst`` and return once it is handed to the kernel."""
        self._begin()
        self._send_tensor(tensor, dst).wait()

    @_logging
    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        """Receive a tensor shaped like ``tensor`` from ``src`` (a new tensor, as CrypTen expects)."""
        if src is None:
            raise ValueError("the TLS communicator needs an explicit source rank (MPC links are fixed)")
        self._begin()
        return self._like(self._post_tensor(src).wait(), tensor, src)

    @_logging
    def isend(self, tensor: torch.Tensor, dst: int) -> _SendRequest:
        """Queue ``tensor`` for ``dst``; ``wait()`` on the result before modifying the tensor."""
        self._begin()
        return self._send_tensor(tensor, dst)

    @_logging
    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> _RecvRequest:
        """Post a receive that fills ``tensor`` in place when ``wait()`` is called."""
        if src is None:
            raise ValueError("the TLS communicator needs an explicit source rank (MPC links are fixed)")
        self._begin()

        def fill(item: _Incoming) -> torch.Tensor:
            tensor.copy_(self._like(item.value, tensor, src))
            return tensor

        return self._link(src).post(_KIND_TENSOR, fill)

    # -- collectives over a group (default: the parties) --------------------------------------------

    @_logging
    def broadcast(self, input: Any, src: int, group: Group | None = None, batched: bool = False) -> Any:
        """Everyone ends with ``src``'s tensor(s), written in place into ``input``."""
        members = self._members(group)
        self._begin()
        tensors = list(input) if batched else [input]
        if self.rank == src:
            self._wait_all([self._send_tensor(t, peer) for peer in members if peer != src for t in tensors])
        else:
            posted = [self._post_tensor(src) for _ in tensors]
            for tensor, request in zip(tensors, posted):
                tensor.data.copy_(self._like(request.wait(), tensor, src))
        return input

    def _exchange(self, tensors: list[torch.Tensor], members: Sequence[int]) -> dict[int, list[torch.Tensor]]:
        """Send ``tensors`` to every other member and collect theirs (one round)."""
        sends = [self._send_tensor(t, peer) for peer in members if peer != self.rank for t in tensors]
        received = {peer: [self._post_tensor(peer) for _ in tensors] for peer in members if peer != self.rank}
        result = {
            peer: [self._like(r.wait(), t, peer) for r, t in zip(requests, tensors)]
            for peer, requests in received.items()
        }
        self._wait_all(sends)
        result[self.rank] = [t.clone() for t in tensors]
        return result

    @staticmethod
    def _combine(values: dict[int, list[torch.Tensor]], members: Sequence[int], op: Any) -> list[torch.Tensor]:
        reduce = _reducer(op)
        combined = [t.clone() for t in values[members[0]]]
        for peer in members[1:]:
            combined = [reduce(acc, t) for acc, t in zip(combined, values[peer])]
        return combined

    @_logging
    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        """Every party gets the reduction of all parties' tensors (reduced in rank order)."""
        members = self._members(None)
        self._begin()
        tensors = list(input) if batched else [input]
        result = self._combine(self._exchange(tensors, members), members, op)
        return result if batched else result[0]

    @_logging
    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        """``dst`` gets the reduction of all parties' tensors; the others get None."""
        members = self._members(None)
        self._begin()
        tensors = list(input) if batched else [input]
        if self.rank != dst:
            self._wait_all([self._send_tensor(t, dst) for t in tensors])
            return None
        posted = {peer: [self._post_tensor(peer) for _ in tensors] for peer in members if peer != dst}
        values = {peer: [self._like(r.wait(), t, peer) for r, t in zip(reqs, tensors)] for peer, reqs in posted.items()}
        values[dst] = tensors
        result = self._combine(values, members, op)
        return result if batched else result[0]

    @_logging
    def gather(self, tensor: torch.Tensor, dst: int) -> list[torch.Tensor | None]:
        """``dst`` gets every party's tensor in rank order; the others get ``[None]``."""
        members = self._members(None)
        self._begin()
        if self.rank != dst:
            self._send_tensor(tensor, dst).wait()
            return [None]
        posted = {peer: self._post_tensor(peer) for peer in members if peer != dst}
        return [tensor.clone() if peer == dst else self._like(posted[peer].wait(), tensor, peer) for peer in members]

    @_logging
    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every party gets every party's tensor, in rank order."""
        members = self._members(None)
        self._begin()
        values = self._exchange([tensor], members)
        return [values[peer][0] for peer in members]

    @_logging
    def scatter(self, scatter_list: Sequence[torch.Tensor], src: int, size: Any = None, device: Any = None) -> torch.Tensor:
        """Party ``r`` gets ``scatter_list[r]`` from ``src``."""
        members = self._members(None)
        self._begin()
        if self.rank == src:
            self._wait_all([self._send_tensor(scatter_list[peer], peer) for peer in members if peer != src])
            return scatter_list[src]
        received = self._post_tensor(src).wait()
        if size is not None and tuple(received.shape) != tuple(size):
            raise CommProtocolError(f"rank {src} scattered shape {tuple(received.shape)}, expected {tuple(size)}")
        return received if device is None else received.to(device)

    @_logging
    def barrier(self, group: Group | None = None) -> None:
        """Return once every member of ``group`` has entered the barrier."""
        members = self._members(group)
        self._begin()
        sends = [self._send_payload(_KIND_BARRIER, b"", peer) for peer in members if peer != self.rank]
        posted = [self._post_payload(_KIND_BARRIER, peer) for peer in members if peer != self.rank]
        for request in posted:
            request.wait()
        self._wait_all(sends)

    # -- typed objects --------------------------------------------------------------------------------

    @_logging
    def send_obj(self, obj: object, dst: int, group: Group | None = None) -> None:
        """Send a typed object (see :func:`encode_object`) to ``dst``."""
        payload = encode_object(obj)
        self._begin()
        self._send_payload(_KIND_OBJECT, payload, dst).wait()

    @_logging
    def recv_obj(self, src: int, group: Group | None = None) -> object:
        """Receive a typed object from ``src``."""
        self._begin()
        return decode_object(self._post_payload(_KIND_OBJECT, src).wait())

    @_logging
    def broadcast_obj(self, obj: object, src: int, group: Group | None = None) -> object:
        """Everyone in ``group`` gets ``src``'s object."""
        members = self._members(group)
        self._begin()
        if self.rank == src:
            if obj is None:
                raise ValueError("the source of broadcast_obj must provide an object")
            payload = encode_object(obj)
            self._wait_all([self._send_payload(_KIND_OBJECT, payload, peer) for peer in members if peer != src])
            return obj
        return decode_object(self._post_payload(_KIND_OBJECT, src).wait())

    # -- raw byte messages (for typed channels such as the dealer's) -----------------------------------

    def send_bytes(self, data: bytes | bytearray | memoryview, dst: int) -> None:
        """Send one opaque byte message to ``dst`` (counted in the link's stats, not in CrypTen's)."""
        self._begin()
        view = memoryview(data).cast("B")
        frame = _FRAME.pack(_KIND_BYTES, 0, 0, 0, view.nbytes)
        self._link(dst).send((memoryview(frame), view), data).wait()

    def recv_bytes(self, src: int) -> bytes:
        """Receive one opaque byte message from ``src``."""
        self._begin()
        return bytes(self._post_payload(_KIND_BYTES, src).wait())

    def transport(self, peer: int) -> PeerTransport:
        """A ``send_bytes``/``recv_bytes`` endpoint bound to ``peer`` (the byte transport of
        :class:`pinfer.protocols.channel.Channel`), so a typed channel can run over this mesh."""
        self._link(peer)
        return PeerTransport(self, peer)

    # -- identity -------------------------------------------------------------------------------------

    def get_world_size(self) -> int:
        return self.world_size

    def get_rank(self) -> int:
        return self.rank

    def get_ttp_rank(self) -> int:
        return self.world_size

    def set_name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError("party name must be a string")
        self._name = name

    def get_name(self) -> str:
        return self._name

    def get_distributed_backend(self) -> str:
        return "tls"

    # -- statistics -----------------------------------------------------------------------------------

    def stats(self) -> CommStats:
        """Snapshot of framed bytes, messages and rounds, per peer rank and in total."""
        return CommStats({peer: link.counters.snapshot() for peer, link in self._links.items()}, self._rounds)

    def reset_stats(self) -> None:
        """Zero this communicator's own counters (CrypTen's are reset by ``reset_communication_stats``)."""
        self._rounds = 0
        for link in self._links.values():
            link.counters.reset()

    def reset_communication_stats(self) -> None:
        """CrypTen's reset (``crypten.reset_communication_stats``): clears CrypTen's and our counters."""
        super().reset_communication_stats()
        self.reset_stats()

    # -- lifetime -------------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Flush and close every link; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._engine.flush(timeout)
        self._engine.close()

    def __enter__(self) -> TlsCommunicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PeerTransport:
    """A byte-message endpoint to one peer over a :class:`TlsCommunicator`."""

    def __init__(self, communicator: TlsCommunicator, peer: int) -> None:
        self._communicator = communicator
        self.peer = peer

    def send_bytes(self, data: bytes | memoryview) -> None:
        self._communicator.send_bytes(data, self.peer)

    def recv_bytes(self) -> bytes:
        return self._communicator.recv_bytes(self.peer)


# ----------------------------------------------------------------------------------------------------
# Installing into CrypTen

_installed: TlsCommunicator | None = None
_originals: dict[str, Any] = {}


def install(communicator: TlsCommunicator) -> None:
    """Make ``crypten.communicator.get()`` return ``communicator`` in this process.

    CrypTen's modules call ``comm.get()``, ``comm.is_initialized()``, ``comm._init()`` and
    ``comm.uninit()`` through the ``crypten.communicator`` module, so replacing those four functions
    routes all of CrypTen's communication through the TLS mesh. After this, ``crypten.is_initialized()``
    is true; key CrypTen's generators with :mod:`pinfer.protocols.crypten_rng` (CSPRNG seeds exchanged
    over this communicator) rather than ``crypten.init()``, whose ``_setup_prng`` draws seeds from
    torch's Mersenne twister. ``crypten.uninit()`` closes the communicator and restores CrypTen.
    """
    global _installed
    if _installed is not None and _installed is not communicator:
        raise RuntimeError("another TLS communicator is installed; uninstall it first")
    if not _originals:
        for name in ("get", "is_initialized", "_init", "uninit"):
            _originals[name] = getattr(crypten_comm, name)
    _installed = communicator
    crypten_comm.get = TlsCommunicator.get
    crypten_comm.is_initialized = TlsCommunicator.is_initialized
    crypten_comm._init = lambda use_threads=False, rank=0, world_size=1, init_ttp=False: TlsCommunicator.initialize(
        rank, world_size, init_ttp
    )
    crypten_comm.uninit = uninstall


def uninstall() -> None:
    """Close the installed communicator and give CrypTen back its own functions; idempotent."""
    global _installed
    communicator, _installed = _installed, None
    for name, function in _originals.items():
        setattr(crypten_comm, name, function)
    _originals.clear()
    if communicator is not None:
        communicator.close()
