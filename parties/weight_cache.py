"""A party node's weight shares, opened once per model and lent to every session worker in memory.

Why: a session worker is a fresh process (CrypTen keeps its state in module globals), so each session
used to re-read its party's share file and decrypt every tensor (party 0) or expand the whole model
from its seed (the other parties): work proportional to the model, on the path to the first token.
The node now does that once per model. It copies the opened shares into an anonymous memory file
(``memfd``: it has no name in any file system, so no share reaches a disk in the clear), seals that
file against any further write, and hands each worker a duplicate of its descriptor. The worker maps
it privately (copy on write), so nothing a session does to its tensors reaches the node's copy or
another session.

What stays per session: the masked opening ``F = W - B`` of every weight matrix
(:class:`~pinfer.protocols.fixed_operand.FixedOperand`). Each session's dealer draws fresh masks ``B``
from that session's seeds and forgets them when the session ends. Keeping ``F`` across sessions would
need a dealer that keeps ``B`` for the model's lifetime and never pairs it with other data (two
openings under one mask reveal the difference of what they mask), so every session opens its own.
"""

from __future__ import annotations

import fcntl
import logging
import math
import mmap
import os
import threading
import weakref
from collections.abc import Iterable
from multiprocessing import reduction
from pathlib import Path

import numpy as np
import torch

from pinfer.keys import envelope
from pinfer.parties.share_store import ModelCard, ShareFileError, load_card, load_party_model
from pinfer.protocols.sharing import ShareBundle

log = logging.getLogger("pinfer.node")

_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
_ITEM = torch.empty((), dtype=torch.int64).element_size()

Layout = dict[str, tuple[int, tuple[int, ...]]]
"""Each tensor's byte offset in the memory file and its shape (public, like the share file's header)."""


class SharedShares:
    """One model's opened weight shares (int64 ring elements) in a sealed anonymous memory file.

    Pickling it for a worker process (``multiprocessing`` with the forkserver) sends a duplicate of
    the descriptor, never the bytes; :meth:`bundle` maps the shares in the receiving process.
    """

    def __init__(self, card: ModelCard, layout: Layout, size: int, fd: int) -> None:
        self.card = card
        self.layout = layout
        self.size = size
        self._fd = fd
        weakref.finalize(self, os.close, fd)

    def __reduce__(self) -> tuple:
        return _rebuild, (self.card, self.layout, self.size, reduction.DupFd(self._fd))

    def bundle(self) -> ShareBundle:
        """This party's dense weight shares, viewing a private copy-on-write mapping of the memory file."""
        memory = mmap.mmap(self._fd, max(self.size, 1), flags=mmap.MAP_PRIVATE,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
        dense = {
            name: torch.from_numpy(np.frombuffer(memory, dtype=np.int64, count=math.prod(shape), offset=offset)
                                   .reshape(shape))
            for name, (offset, shape) in self.layout.items()
        }
        return ShareBundle({name: shape for name, (_, shape) in self.layout.items()}, dense=dense)


def _rebuild(card: ModelCard, layout: Layout, size: int, duplicate: object) -> SharedShares:
    return SharedShares(card, layout, size, duplicate.detach())  # type: ignore[attr-defined]


def open_shared(model_dir: Path | str, party: int, private_key: envelope.PrivateKey) -> SharedShares:
    """Open party ``party``'s share file of ``model_dir`` once and move its shares into sealed memory."""
    card, bundle = load_party_model(model_dir, party, private_key)
    layout: Layout = {}
    size = 0
    for name, shape in sorted(bundle.shapes.items()):
        layout[name] = (size, shape)
        size += _ITEM * math.prod(shape)
    fd = os.memfd_create(f"pinfer-shares-{card.name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, max(size, 1))
        for name, share in bundle.consume():
            offset, shape = layout[name]
            if share.dtype != torch.int64 or tuple(share.shape) != shape:
                raise ShareFileError(f"share of {name!r} is not an int64 tensor of its listed shape")
            _write_at(fd, offset, memoryview(share.contiguous().numpy()).cast("B"))
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return SharedShares(card, layout, size, fd)


def _write_at(fd: int, offset: int, data: memoryview) -> None:
    # pwrite rather than a shared mapping: half the time for a model, and no page faults to take.
    while data:
        written = os.pwrite(fd, data, offset)
        offset += written
        data = data[written:]


class WeightCache:
    """A party node's opened models: each is opened on first use (or by :meth:`warm`) and kept.

    A model provisioned again (a new provisioning id in its card) is opened again; workers that hold
    the previous memory file keep their own descriptor of it until they exit.
    """

    def __init__(self, shares_root: Path | str, party: int, private_key: envelope.PrivateKey) -> None:
        self._root = Path(shares_root)
        self._party = party
        self._private_key = private_key
        self._models: dict[str, SharedShares] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, model: str) -> SharedShares:
        """The model's shares, opening its share file if this node has not yet (raises ShareFileError)."""
        with self._guard:
            lock = self._locks.setdefault(model, threading.Lock())
        with lock:
            model_dir = self._root / model
            cached = self._models.get(model)
            if cached is None or cached.card.provision_id != load_card(model_dir).provision_id:
                cached = open_shared(model_dir, self._party, self._private_key)
                self._models[model] = cached
                log.info("opened the weight shares of %s (%.1f MB)", model, cached.size / 1e6)
            return cached

    def warm(self, models: Iterable[str]) -> None:
        """Open ``models`` ahead of their first session; a failure is logged and retried on first use."""
        for model in models:
            try:
                self.get(model)
            except (ShareFileError, OSError) as exc:
                log.warning("could not open the weight shares of %s: %s", model, exc)
