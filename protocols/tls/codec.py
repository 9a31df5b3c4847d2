"""The wire codec: how frames, tensors and typed objects are laid out on a link.

A frame is a fixed header (kind, dtype code, ndim, reserved, payload length), then ``ndim`` u64 dims for
a tensor frame, then the payload. A tensor's payload is its raw little-endian bytes. What ``send_obj``,
``recv_obj`` and ``broadcast_obj`` carry is encoded by :func:`encode_object` (tensors, numbers, strings,
bytes and containers of them); nothing is pickled.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
import torch

from pinfer.tensor_codes import DTYPE_CODES, DTYPES

from .errors import CommProtocolError, UnsupportedObjectError

# The version of this frame format, announced in every connection's hello (see :mod:`.mesh`).
WIRE_VERSION = 1
MAX_DIMS = 8
MAX_OBJECT_DEPTH = 32

# Frame: kind, dtype code, ndim, reserved, payload length; then ndim x u64 dims (tensor frames only).
FRAME = struct.Struct(">BBBBQ")
DIM = struct.Struct(">Q")
DIMS = tuple(struct.Struct(">" + "Q" * n) for n in range(MAX_DIMS + 1))
TENSOR_HEADERS = tuple(struct.Struct(FRAME.format + "Q" * n) for n in range(MAX_DIMS + 1))  # FRAME + dims
KIND_TENSOR, KIND_OBJECT, KIND_BARRIER, KIND_BYTES = 1, 2, 3, 4
KIND_NAMES = {KIND_TENSOR: "tensor", KIND_OBJECT: "object", KIND_BARRIER: "barrier", KIND_BYTES: "bytes"}

if np.dtype("<i8") != np.dtype("=i8"):  # raw buffers are sent as they lie in memory
    raise ImportError("the TLS communicator supports little-endian hosts only")

# Typed objects: a one-byte tag, then the value (lengths and counts as big-endian u32).
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
        out += [_T_SIZE, _U32.pack(len(obj)), *(DIM.pack(d) for d in obj)]
    elif isinstance(obj, torch.Tensor):
        header, data, _ = tensor_wire(obj)
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
        head, pos = _take(view, pos, FRAME.size)
        kind, code, ndim, _, nbytes = FRAME.unpack(head)
        if kind != KIND_TENSOR or ndim > MAX_DIMS:
            raise ValueError("bad tensor header")
        raw_dims, pos = _take(view, pos, 8 * ndim)
        shape = struct.unpack(f">{ndim}Q", raw_dims)
        dtype, np_dtype = tensor_type(code, shape, nbytes)
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


def tensor_type(code: int, shape: Sequence[int], nbytes: int) -> tuple[torch.dtype, np.dtype]:
    """The torch and numpy dtypes of a tensor frame; ValueError for an unknown dtype code or a payload
    length that does not match the shape."""
    if code not in DTYPES:
        raise ValueError(f"unknown dtype code {code}")
    dtype, np_dtype = DTYPES[code]
    if math.prod(shape) * np_dtype.itemsize != nbytes:
        raise ValueError("tensor length does not match its shape")
    return dtype, np_dtype


def tensor_wire(tensor: torch.Tensor) -> tuple[bytes, memoryview, torch.Tensor]:
    """Frame header and a zero-copy byte view of ``tensor`` (plus the CPU tensor that owns the bytes)."""
    code = DTYPE_CODES.get(tensor.dtype)
    if code is None:
        raise UnsupportedObjectError(f"tensors of dtype {tensor.dtype} are not carried")
    ndim = tensor.dim()
    if ndim > MAX_DIMS:
        raise UnsupportedObjectError(f"tensors of more than {MAX_DIMS} dims are not carried")
    # Each step only when needed: on a round of a few values these calls cost more than the bytes.
    owner = tensor.detach() if tensor.requires_grad else tensor
    if not owner.is_cpu:
        owner = owner.cpu()
    if not owner.is_contiguous():
        owner = owner.contiguous()
    array = owner.numpy()
    data = memoryview(array).cast("B") if array.size else memoryview(b"")
    return TENSOR_HEADERS[ndim].pack(KIND_TENSOR, code, ndim, 0, data.nbytes, *array.shape), data, owner
