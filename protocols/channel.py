"""A typed message channel between two nodes (here: a party and the dealer).

Messages are a kind, a few JSON-typed parameters and int64 tensors sent as raw bytes: nothing is
pickled, so a peer can only ever make the other side parse numbers. The byte transport is anything
with ``send_bytes``/``recv_bytes`` (a ``multiprocessing`` pipe between local processes, or a TLS
socket wrapper), so the channel is independent of where the nodes run.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

_HEADER_LEN = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 16


class ChannelError(RuntimeError):
    """The peer sent something that is not a well-formed message."""


class ByteTransport(Protocol):
    def send_parts(self, parts: Sequence[memoryview]) -> None:
        """Send the parts' concatenation as one message (a dealer's reply is hundreds of MB: its
        tensors go out from their own memory, not joined into a copy first)."""

    def recv_bytes(self) -> bytes | bytearray: ...


@dataclass
class Message:
    kind: str
    params: dict = field(default_factory=dict)
    tensors: list[torch.Tensor] = field(default_factory=list)


@dataclass
class ChannelStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0


class Channel:
    """Sends and receives :class:`Message` objects over a byte transport, counting traffic."""

    def __init__(self, transport: ByteTransport) -> None:
        self._transport = transport
        self.stats = ChannelStats()

    def send(self, message: Message) -> None:
        arrays = [t.detach().to(torch.int64).contiguous().numpy() for t in message.tensors]
        header = json.dumps(
            {"kind": message.kind, "params": message.params, "shapes": [list(a.shape) for a in arrays]}
        ).encode()
        header += b" " * (-(_HEADER_LEN.size + len(header)) % 8)  # tensors start 8-byte aligned
        parts = [memoryview(_HEADER_LEN.pack(len(header)) + header)]
        parts += [memoryview(a).cast("B") for a in arrays if a.size]
        self._transport.send_parts(parts)
        self.stats.bytes_sent += sum(part.nbytes for part in parts)
        self.stats.messages_sent += 1

    def recv(self) -> Message:
        payload = self._transport.recv_bytes()
        self.stats.bytes_received += len(payload)
        self.stats.messages_received += 1
        return decode(payload)


def decode(payload: bytes | bytearray) -> Message:
    """Parse one message, rejecting anything malformed with :class:`ChannelError`. The tensors of a
    received ``bytearray`` (the TLS link's) are views of it, not copies."""
    if len(payload) < _HEADER_LEN.size:
        raise ChannelError("truncated message")
    (header_len,) = _HEADER_LEN.unpack_from(payload)
    if header_len > MAX_HEADER_BYTES or _HEADER_LEN.size + header_len > len(payload):
        raise ChannelError("bad header length")
    try:
        header = json.loads(payload[_HEADER_LEN.size : _HEADER_LEN.size + header_len])
        kind, params, shapes = header["kind"], header["params"], header["shapes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ChannelError("malformed header") from exc
    if not isinstance(kind, str) or not isinstance(params, dict) or not isinstance(shapes, list):
        raise ChannelError("malformed header")
    offset = _HEADER_LEN.size + header_len
    tensors = []
    for shape in shapes:
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ChannelError("malformed tensor shape")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        end = offset + 8 * count
        if end > len(payload):
            raise ChannelError("truncated tensor data")
        array = np.frombuffer(payload, dtype=np.int64, count=count, offset=offset).reshape(shape)
        in_place = isinstance(payload, bytearray) and array.ctypes.data % 8 == 0
        tensors.append(torch.from_numpy(array if in_place else array.copy()))
        offset = end
    if offset != len(payload):
        raise ChannelError("trailing bytes after message")
    return Message(kind, params, tensors)
