"""CrypTen's ``Communicator`` over the mutual-TLS mesh, and installing it into CrypTen.

Layout. Ranks ``0..world_size-1`` are the parties (role ``party<i>``). With ``with_dealer`` an extra rank
``world_size`` is the dealer (role ``dealer``), as CrypTen's TTP layout has it: ``get_world_size()`` still
reports the parties only, ``ttp_group`` spans parties and dealer, ``ttp_comm_group`` is ``(0, dealer)``
and ``main_group`` the parties.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed import ReduceOp

from .. import crypten_compat  # noqa: F401  (before any crypten import)
import crypten.communicator as crypten_comm
from crypten.communicator.communicator import Communicator, _logging

from .codec import FRAME, KIND_BARRIER, KIND_BYTES, KIND_OBJECT, KIND_TENSOR, decode_object, encode_object, tensor_wire
from .config import TlsCommConfig
from .errors import CommError, CommProtocolError, PeerDisconnectedError
from .link import SMALL_PAYLOAD, Engine, Incoming, Link, RecvRequest, SendRequest
from .mesh import MeshBuilder
from .stats import CommStats


@dataclass(frozen=True)
class Group:
    """A set of mesh ranks taking part in a collective (CrypTen's process-group argument)."""

    ranks: tuple[int, ...]


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
    """CrypTen's communicator interface over the mutual-TLS mesh (see :mod:`pinfer.protocols.tls`).

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
        self._engine = Engine(config.recv_timeout_s)
        self._links = {peer: Link(peer, sock, config, self._engine) for peer, sock in links.items()}
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
        links = MeshBuilder(config, listener).build()
        return cls(config, links)

    # -- CrypTen's classmethod protocol (the instance is managed by install/uninstall) ---------------

    @classmethod
    def is_initialized(cls) -> bool:
        return _installed is not None

    @classmethod
    def get(cls) -> TlsCommunicator:
        if _installed is None:
            raise RuntimeError("no TLS communicator installed; call pinfer.protocols.tls.install()")
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

    def _link(self, peer: int) -> Link:
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

    def _send_tensor(self, tensor: torch.Tensor, dst: int) -> SendRequest:
        header, data, owner = tensor_wire(tensor)
        parts = (memoryview(header + data),) if data.nbytes <= SMALL_PAYLOAD else (memoryview(header), data)
        return self._link(dst).send(parts, owner)

    def _send_payload(self, kind: int, payload: bytes, dst: int) -> SendRequest:
        frame = FRAME.pack(kind, 0, 0, 0, len(payload)) + payload
        return self._link(dst).send((memoryview(frame),), None)

    def _post_tensor(self, src: int) -> RecvRequest:
        return self._link(src).post(KIND_TENSOR, lambda item: item.value)

    def _post_payload(self, kind: int, src: int) -> RecvRequest:
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
        return received if template.is_cpu else received.to(template.device)

    def _wait_all(self, requests: Sequence[SendRequest]) -> None:
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
    def isend(self, tensor: torch.Tensor, dst: int) -> SendRequest:
        """Queue ``tensor`` for ``dst``; ``wait()`` on the result before modifying the tensor."""
        self._begin()
        return self._send_tensor(tensor, dst)

    @_logging
    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> RecvRequest:
        """Post a receive that fills ``tensor`` in place when ``wait()`` is called."""
        if src is None:
            raise ValueError("the TLS communicator needs an explicit source rank (MPC links are fixed)")
        self._begin()

        def fill(item: Incoming) -> torch.Tensor:
            tensor.copy_(self._like(item.value, tensor, src))
            return tensor

        return self._link(src).post(KIND_TENSOR, fill)

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
        sends = [self._send_payload(KIND_BARRIER, b"", peer) for peer in members if peer != self.rank]
        posted = [self._post_payload(KIND_BARRIER, peer) for peer in members if peer != self.rank]
        for request in posted:
            request.wait()
        self._wait_all(sends)

    # -- typed objects --------------------------------------------------------------------------------

    @_logging
    def send_obj(self, obj: object, dst: int, group: Group | None = None) -> None:
        """Send a typed object (see :func:`encode_object`) to ``dst``."""
        payload = encode_object(obj)
        self._begin()
        self._send_payload(KIND_OBJECT, payload, dst).wait()

    @_logging
    def recv_obj(self, src: int, group: Group | None = None) -> object:
        """Receive a typed object from ``src``."""
        self._begin()
        return decode_object(self._post_payload(KIND_OBJECT, src).wait())

    @_logging
    def broadcast_obj(self, obj: object, src: int, group: Group | None = None) -> object:
        """Everyone in ``group`` gets ``src``'s object."""
        members = self._members(group)
        self._begin()
        if self.rank == src:
            if obj is None:
                raise ValueError("the source of broadcast_obj must provide an object")
            payload = encode_object(obj)
            self._wait_all([self._send_payload(KIND_OBJECT, payload, peer) for peer in members if peer != src])
            return obj
        return decode_object(self._post_payload(KIND_OBJECT, src).wait())

    # -- raw byte messages (for typed channels such as the dealer's) -----------------------------------

    def send_bytes(self, data: bytes | bytearray | memoryview, dst: int) -> None:
        """Send one opaque byte message to ``dst`` (counted in the link's stats, not in CrypTen's)."""
        self.send_parts([memoryview(data)], dst)

    def send_parts(self, parts: Sequence[memoryview], dst: int) -> None:
        """Send the concatenation of ``parts`` as one byte message, each part from its own memory."""
        self._begin()
        views = tuple(memoryview(part).cast("B") for part in parts)
        frame = FRAME.pack(KIND_BYTES, 0, 0, 0, sum(view.nbytes for view in views))
        self._link(dst).send((memoryview(frame), *views), parts).wait()

    def recv_bytes(self, src: int) -> bytearray:
        """Receive one opaque byte message from ``src`` (the buffer it was read into, not a copy)."""
        self._begin()
        return self._post_payload(KIND_BYTES, src).wait()

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

    def send_parts(self, parts: Sequence[memoryview]) -> None:
        self._communicator.send_parts(parts, self.peer)

    def recv_bytes(self) -> bytearray:
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
