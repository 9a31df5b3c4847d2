"""A party node's weight shares: opened once into sealed anonymous memory, lent to worker processes."""

from __future__ import annotations

import fcntl
import mmap
import multiprocessing as mp
import os
import shutil
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import torch

from pinfer import keys
from pinfer.parties import share_store
from pinfer.parties.weight_cache import SharedShares, WeightCache, open_shared


@pytest.fixture(scope="module")
def provisioned(key_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    party_keys = {i: keys.load_envelope_public_key(key_dir, keys.party_role(i)) for i in range(2)}
    return share_store.provision("tiny-llama", tmp_path_factory.mktemp("models"), party_keys, keys.load_ca_key(key_dir))


def _child_reads_then_scribbles(shares: SharedShares, conn: Connection) -> None:
    """In a forkserver child: report a checksum of every share, then overwrite them all (privately)."""
    bundle = shares.bundle()
    conn.send({name: int(share.sum()) for name, share in bundle.dense.items()})
    for share in bundle.dense.values():
        share.fill_(7)
    conn.send("scribbled")
    conn.close()


@pytest.mark.parametrize("party", [0, 1])
def test_shares_equal_the_share_file_and_reach_a_worker(provisioned: Path, key_dir: Path, party: int) -> None:
    private_key = keys.load_envelope_private_key(key_dir, keys.party_role(party))
    shared = open_shared(provisioned, party, private_key)
    _, from_file = share_store.load_party_model(provisioned, party, private_key)
    expected = from_file.expand()
    mapped = shared.bundle().dense
    assert mapped.keys() == expected.keys()
    assert all(torch.equal(mapped[name], expected[name]) for name in expected)

    context = mp.get_context("forkserver")
    ours, theirs = context.Pipe()
    worker = context.Process(target=_child_reads_then_scribbles, args=(shared, theirs))
    worker.start()
    theirs.close()
    assert ours.recv() == {name: int(share.sum()) for name, share in expected.items()}
    assert ours.recv() == "scribbled"
    worker.join(timeout=30)
    assert worker.exitcode == 0
    # The worker's writes stayed in its copy-on-write mapping: the node's shares and a later worker's are intact.
    again = shared.bundle().dense
    assert all(torch.equal(again[name], expected[name]) for name in expected)


def test_memory_is_sealed_and_has_no_file(provisioned: Path, key_dir: Path) -> None:
    shared = open_shared(provisioned, 0, keys.load_envelope_private_key(key_dir, "party0"))
    fd = shared._fd
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")  # anonymous: nothing on any disk
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
    with pytest.raises(PermissionError):
        os.pwrite(fd, b"x", 0)
    with pytest.raises(PermissionError):
        mmap.mmap(fd, shared.size)  # no shared writable mapping either


def test_cache_opens_once_and_again_after_reprovisioning(provisioned: Path, key_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(provisioned, root / "tiny-llama")
    cache = WeightCache(root, 1, keys.load_envelope_private_key(key_dir, "party1"))
    first = cache.get("tiny-llama")
    assert cache.get("tiny-llama") is first
    party_keys = {i: keys.load_envelope_public_key(key_dir, keys.party_role(i)) for i in range(2)}
    share_store.provision("tiny-llama", root, party_keys, keys.load_ca_key(key_dir))
    second = cache.get("tiny-llama")
    assert second is not first and second.card.provision_id != first.card.provision_id
    with pytest.raises(share_store.ShareFileError):
        WeightCache(root, 1, keys.load_envelope_private_key(key_dir, "party0")).get("tiny-llama")
