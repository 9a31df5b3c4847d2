"""The link engine: one persistent connection per peer, and the progress engine that drives them all.

All socket work runs on the caller's thread: whenever a call waits (for a receive, for a send to reach the
kernel), the :class:`Engine` reads and writes every link without blocking, as MPI implementations do. There
are no I/O threads, so nothing hands a message from one thread to another on the latency path and no
OpenSSL object is shared between threads; two ranks that send to each other at once never deadlock,
because each keeps reading while it waits. Every wait has a deadline (:class:`CommTimeoutError`, never a
hang). A frame whose payload is at most 64 KiB is joined with its header and written with one TLS write
(for a small tensor: one record, one syscall); larger payloads are written from the tensor's own memory.
Each link reads into a 128 KiB staging buffer, so a frame that fits one TLS record costs one TLS read,
and its payload is copied from there into the new tensor; a payload that does not fit is read straight
into the tensor.
"""

from __future__ import annotations

import logging
import selectors
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pinfer.tensor_codes import DTYPES

from .codec import DIMS, FRAME, KIND_NAMES, KIND_TENSOR, MAX_DIMS, tensor_type
from .config import TlsCommConfig
from .errors import CommError, CommProtocolError, CommTimeoutError, MessageTooLargeError, PeerDisconnectedError
from .stats import LinkCounters

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes per TLS write / read call: big enough to amortize, small enough to interleave
SMALL_PAYLOAD = 1 << 16  # payloads up to this size are written together with their header
# The longest a receive waits on its own link's socket alone before serving every link again (see
# Engine.progress): long enough that a round's reply comes inside it, short enough that a peer held
# back by this rank's full socket buffer waits no longer.
FOCUS_S = 0.002
# Each link reads into a staging buffer of this size, so one TLS record (16 KiB at most) arrives with one
# read call however many frames it holds; a payload that does not fit is read straight into its tensor.
_RECV_BUFFER = 1 << 17


class Incoming:
    """A received frame waiting in a link's inbox for the posted receive that takes it."""

    __slots__ = ("kind", "value", "nbytes", "deliver_at")

    def __init__(self, kind: int, value: Any, nbytes: int, deliver_at: float) -> None:
        self.kind = kind
        self.value = value  # torch.Tensor for tensors, bytearray otherwise
        self.nbytes = nbytes  # framed size on the wire
        self.deliver_at = deliver_at


class SendRequest:
    """Completion handle of a queued frame (what ``isend`` returns)."""

    __slots__ = ("_link", "parts", "owner", "nbytes", "not_before", "done", "error")

    def __init__(self, link: Link, parts: tuple[memoryview, ...], owner: object, nbytes: int) -> None:
        self._link = link
        self.parts = parts
        self.owner = owner  # keeps the tensor whose memory ``parts`` view alive until written
        self.nbytes = nbytes
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
        if not self.done:
            link = self._link
            link.engine.progress(lambda: self.done, timeout, f"send to rank {link.peer}")
        if self.error is not None:
            raise self.error


class RecvRequest:
    """A posted receive (what ``irecv`` returns); messages fill posted receives in posting order."""

    __slots__ = ("_link", "kind", "_on_message", "done", "result")

    def __init__(self, link: Link, kind: int, on_message: Callable[[Incoming], Any]) -> None:
        self._link = link
        self.kind = kind
        self._on_message = on_message
        self.done = False
        self.result: Any = None

    def fulfil(self, item: Incoming) -> None:
        if item.kind != self.kind:
            raise CommProtocolError(
                f"expected a {KIND_NAMES[self.kind]} from rank {self._link.peer}, got a {KIND_NAMES.get(item.kind, '?')}"
            )
        self.result = self._on_message(item)
        self.done = True

    def is_completed(self) -> bool:
        return self.done

    def wait(self, timeout: float | None = None) -> Any:
        self._link.complete(self, timeout)
        return self.result


class Link:
    """One persistent TLS connection to a peer rank: outgoing frame queue, incoming frame parser.

    A link never blocks: :meth:`read_some` and :meth:`write_some` move whatever bytes the socket takes,
    and the :class:`Engine` calls them whenever the caller waits for anything.
    """

    def __init__(self, peer: int, sock: ssl.SSLSocket, config: TlsCommConfig, engine: Engine) -> None:
        self.peer = peer
        self.sock = sock
        self.engine = engine
        self.counters = LinkCounters()
        self._awaiting = f"message from rank {peer}"  # what a receive timeout names
        self.error: CommError | None = None
        self.inbox: deque[Incoming] = deque()
        self.inbox_bytes = 0
        self.outgoing: deque[SendRequest] = deque()
        self._posted: deque[RecvRequest] = deque()
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
        self._current: SendRequest | None = None
        self._part = 0
        self._offset = 0
        self._pending_chunk: memoryview | None = None
        self._more = False  # read_some stopped at its bound (see ready)
        self.write_blocked = False  # the socket refused the last write: wait until the selector says writable
        sock.setblocking(False)

    # -- caller side --------------------------------------------------------------------------------

    def send(self, parts: tuple[memoryview, ...], owner: object) -> SendRequest:
        if self.error is not None:
            raise self.error
        nbytes = parts[0].nbytes if len(parts) == 1 else sum(p.nbytes for p in parts)
        request = SendRequest(self, parts, owner, nbytes)
        self.counters.bytes_sent += nbytes
        self.counters.messages_sent += 1
        if self._emulation is not None and self._emulation.bandwidth_bps is not None:
            now = time.monotonic()
            self._emulated_free_at = max(now, self._emulated_free_at) + nbytes * 8 / self._emulation.bandwidth_bps
            request.not_before = self._emulated_free_at
        elif len(parts) == 1 and nbytes <= _CHUNK and self._current is None and not self.outgoing and not self.write_blocked:
            # An idle link writes a frame of one part at once (a round's frame: one TLS write, one syscall).
            # A refused write is queued whole, so the retry passes OpenSSL the same bytes, as it requires.
            try:
                written = self.sock.send(parts[0])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                self.write_blocked = True
                written = 0
            except (ssl.SSLError, OSError) as exc:
                self.fail(PeerDisconnectedError(f"link to rank {self.peer} failed: {type(exc).__name__}"))
                request.finish(self.error)
                self.engine.watch(self)
                return request
            if written == nbytes:  # OpenSSL (no partial writes, as Python sets it) takes all or refuses
                request.finish()
                return request
            self._current, self._part, self._offset, self._pending_chunk = request, 0, written, None
            self.engine.watch(self)
            return request
        self.outgoing.append(request)
        self.engine.kick(self)
        return request

    def post(self, kind: int, on_message: Callable[[Incoming], Any]) -> RecvRequest:
        request = RecvRequest(self, kind, on_message)
        self._posted.append(request)
        return request

    def complete(self, request: RecvRequest, timeout: float | None) -> None:
        """Drive the links and hand arriving messages to posted receives, in order, until ``request`` is filled."""
        while not request.done:
            if not self.inbox:
                self.engine.progress(self._arrived, timeout, self._awaiting, focus=self)
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

    def _arrived(self) -> bool:
        return bool(self.inbox) or self.error is not None

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

    def read_some(self, wait_s: float = 0.0) -> bool:
        """Read what the socket has (a bounded amount) and parse it; return whether any byte arrived or a
        held frame was admitted. With ``wait_s``, the first read waits up to that long for a record (in
        OpenSSL's own poll, see :meth:`Engine.progress`); every later one returns at once.

        The engine calls this once its (level-triggered) selector reports the socket readable, or when
        :attr:`ready` says there is work without new bytes. A read into the staging buffer that returns
        less than it asked for, with nothing left inside OpenSSL, ends the call: the record is used up,
        and reading again would most often only raise ``SSLWantReadError``, which costs more than asking
        the selector. (OpenSSL without read-ahead, as Python sets it, takes no byte of the next record
        from the kernel, so whatever is unread stays visible to the selector.) A payload read straight
        into its tensor keeps reading while records come, as a bulk transfer's do.
        """
        self._more = False
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
                if wait_s:
                    self.sock.settimeout(wait_s)
                    try:
                        count = self.sock.recv_into(target, size)
                    finally:
                        self.sock.setblocking(False)
                        wait_s = 0.0
                else:
                    count = self.sock.recv_into(target, size)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, TimeoutError):
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
            if not direct and count < size and not self._pending():
                return True
        self._more = True  # stopped at the bound with bytes perhaps left inside OpenSSL: come back unasked
        return progressed

    @property
    def ready(self) -> bool:
        """Whether :meth:`read_some` has work that no new bytes need to announce: the last call stopped at
        its bound, or a held frame now fits the inbox."""
        return self._more or (self._stage == "held" and self._has_room())

    def _parse(self) -> bool:
        """Turn buffered bytes into frames (as far as they go and the inbox has room); return whether any
        frame moved on."""
        moved = False
        while True:
            buffered = self._end - self._start
            if self._stage == "head":
                if buffered < FRAME.size:
                    return moved
                kind, code, ndim, reserved, nbytes = FRAME.unpack_from(self._buffer, self._start)
                if kind not in KIND_NAMES or reserved != 0 or ndim > MAX_DIMS or (kind != KIND_TENSOR and (ndim or code)):
                    raise CommProtocolError(f"malformed frame header from rank {self.peer}")
                # Checked on the header alone, so an announced size never turns into an allocation.
                if nbytes > self._max_message:
                    raise MessageTooLargeError(
                        f"rank {self.peer} announced a {nbytes}-byte message (limit {self._max_message})"
                    )
                if buffered < FRAME.size + 8 * ndim:
                    return moved
                shape = DIMS[ndim].unpack_from(self._buffer, self._start + FRAME.size)
                if kind == KIND_TENSOR:
                    try:
                        tensor_type(code, shape, nbytes)
                    except ValueError:
                        raise CommProtocolError(f"malformed tensor frame from rank {self.peer}") from None
                self._start += FRAME.size + 8 * ndim
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
        return FRAME.size + 8 * ndim + nbytes

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
            if kind == KIND_TENSOR and nbytes:
                # numpy allocates faster than torch.empty, and the tensor shares the array's memory
                array = np.empty(self._shape, dtype=DTYPES[code][1])
                self._value = torch.from_numpy(array)
                self._target = memoryview(array).cast("B")
            elif kind == KIND_TENSOR:  # torch.from_numpy would give an empty tensor zero strides
                self._value = torch.empty(self._shape, dtype=DTYPES[code][0])
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
        self.inbox.append(Incoming(self._frame[0], self._value, size, time.monotonic() + delay if delay else 0.0))
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
                    self.write_blocked = True
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


class Engine:
    """Moves bytes on every link whenever the caller waits (an MPI-style progress engine).

    All socket work happens on the caller's thread, inside whatever call is waiting: no I/O threads, no
    hand-offs between threads on the latency path, and no OpenSSL object shared across threads. While
    waiting for one peer the engine keeps reading and writing every other link, so ranks that send to
    each other at the same time never deadlock. Data a peer sends while this rank computes waits in the
    kernel's socket buffers until the next call.
    """

    def __init__(self, recv_timeout_s: float) -> None:
        self.recv_timeout_s = recv_timeout_s
        self.links: list[Link] = []
        self._selector = selectors.DefaultSelector()
        self._events: dict[int, int] = {}

    def add(self, link: Link) -> None:
        self.links.append(link)
        self._selector.register(link.sock, selectors.EVENT_READ, link)
        self._events[link.peer] = selectors.EVENT_READ

    def kick(self, link: Link) -> None:
        """Start writing a freshly queued frame right away (small frames finish here)."""
        if link.error is None and not link.write_blocked:
            try:
                link.write_some()
            except CommError as exc:
                link.fail(exc)
            self.watch(link)

    def _step(self, link: Link, read: bool) -> tuple[bool, float | None]:
        """Read (when asked) and write what the link has; whether anything moved, and the next paced frame's time."""
        if link.error is not None:
            return False, None
        try:
            moved = link.read_some() if read else False
            due = None
            if link.busy and not link.write_blocked:
                wrote, _, due = link.write_some()
                moved |= wrote
        except CommError as exc:
            link.fail(exc)
            moved, due = True, None
        self.watch(link)
        return moved, due

    def watch(self, link: Link) -> None:
        """Watch the link's socket for what it now waits for (reading unless held, writing when refused)."""
        # A held link's socket stays readable while its data waits in the kernel, and a failed one's
        # reports its end forever; watching either would turn select() into a busy loop. A selector cannot
        # watch for no event, so such a link is unregistered.
        events = 0 if link.error is not None else (
            (selectors.EVENT_READ if link.wants_read else 0) | (selectors.EVENT_WRITE if link.write_blocked else 0))
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

    def progress(self, done: Callable[[], bool], timeout: float | None, what: str, wake_at: float | None = None,
                 focus: Link | None = None) -> None:
        """Service every link until ``done()``; raise :class:`CommTimeoutError` after ``timeout`` seconds.

        ``timeout`` None means the receive timeout; ``wake_at`` bounds the sleep without raising. A link is
        read only when the selector reports its socket readable (or :attr:`Link.ready`), never on the
        chance that bytes came: a read that finds nothing costs OpenSSL an exception, more than the
        selector's system call; a link is written whenever it has frames and the socket took the last
        write.

        ``focus`` is the link whose message ``done`` waits for. While no link has frames to write or
        bytes to parse, nothing but that message can move, so the engine first waits on that socket
        alone, inside OpenSSL's read (a blocking read with a timeout: no selector, no exception, no loop
        in Python; about a quarter of a small round's cost). That wait lasts at most ``FOCUS_S``; then
        every link is served again, so a peer whose large frame fills this rank's socket buffer while it
        waits for another peer (and which may need that frame written before it sends what the other peer
        waits for) is drained within that time, and no pattern of sends can deadlock the ranks.
        """
        if done():
            return
        limit = self.recv_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        if focus is not None and wake_at is None and self._quiet(focus):
            try:
                focus.read_some(min(limit, FOCUS_S))
            except CommError as exc:
                focus.fail(exc)
            self.watch(focus)
            if done():
                return
        while True:
            progressed = False
            next_due = wake_at
            for link in self.links:
                if link.error is None and (link.ready or (link.busy and not link.write_blocked)):
                    moved, due = self._step(link, link.ready)
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
            if not any(link.error is None for link in self.links):
                time.sleep(max(0.0, until - now))
                continue
            for key, events in self._selector.select(max(0.0, until - now)):
                link = key.data
                if events & selectors.EVENT_WRITE:
                    link.write_blocked = False
                self._step(link, bool(events & selectors.EVENT_READ))
            if done():
                return

    def _quiet(self, focus: Link) -> bool:
        """Whether only ``focus``'s next bytes can move anything: no frame to write, nothing to parse."""
        if focus.error is not None or not focus.wants_read:
            return False
        return not any(link.error is None and (link.busy or link.ready) for link in self.links)

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
