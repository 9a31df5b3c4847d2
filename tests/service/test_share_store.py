"""Weight provisioning: per-party share files sealed to each party, party 1's file a seed only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pinfer import atomic_file, keys
from pinfer.model.decoder import prepare_weights
from pinfer.model.registry import load_model
from pinfer.parties import share_store
from pinfer.protocols.sharing import ShareBundle, encode


@pytest.fixture(scope="module")
def provisioned(key_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    party_keys = {i: keys.load_envelope_public_key(key_dir, keys.party_role(i)) for i in range(2)}
    return share_store.provision("tiny-llama", tmp_path_factory.mktemp("models"), party_keys, keys.load_ca_key(key_dir))


def test_shares_add_up_to_the_prepared_weights(provisioned: Path, key_dir: Path) -> None:
    card0, bundle0 = share_store.load_party_model(provisioned, 0, keys.load_envelope_private_key(key_dir, "party0"))
    card1, bundle1 = share_store.load_party_model(provisioned, 1, keys.load_envelope_private_key(key_dir, "party1"))
    assert card0 == card1 and card0.parties == 2
    config, weights, _ = load_model("tiny-llama")
    prepared = prepare_weights(config, weights)
    shares0, shares1 = bundle0.expand(), bundle1.expand()
    assert set(shares0) == set(prepared)
    for name, value in prepared.items():
        assert torch.equal(shares0[name] + shares1[name], encode(value)), name


def test_party1_file_is_a_sealed_seed(provisioned: Path) -> None:
    assert share_store.share_file(provisioned, 1).stat().st_size < 4096  # header + one hybrid-KEM envelope
    assert share_store.share_file(provisioned, 0).stat().st_size > 100 * 1024
    assert oct(share_store.share_file(provisioned, 0).stat().st_mode & 0o777) == "0o600"


def test_a_party_opens_only_its_own_file(provisioned: Path, key_dir: Path) -> None:
    key0 = keys.load_envelope_private_key(key_dir, "party0")
    card = share_store.load_card(provisioned)
    with pytest.raises(share_store.ShareFileError):
        share_store.read_share_file(share_store.share_file(provisioned, 1), 0, key0, card)
    with pytest.raises(share_store.ShareFileError):
        share_store.load_party_model(provisioned, 1, key0)  # the card records party 1's key fingerprint


def test_tampered_or_truncated_files_are_refused(provisioned: Path, key_dir: Path, tmp_path: Path) -> None:
    key0 = keys.load_envelope_private_key(key_dir, "party0")
    card = share_store.load_card(provisioned)
    data = share_store.share_file(provisioned, 0).read_bytes()
    flipped = bytearray(data)
    flipped[-5] ^= 1
    for i, content in enumerate((data[:-10], bytes(flipped), b"junk")):
        path = tmp_path / f"bad{i}.shares"
        path.write_bytes(content)
        with pytest.raises(share_store.ShareFileError):
            share_store.read_share_file(path, 0, key0, card)


def _split(data: bytes) -> tuple[int, dict, bytes]:
    """A share file's version, parsed header and envelope section."""
    _, version, head_len = share_store._HEAD.unpack_from(data)
    end = share_store._HEAD.size + head_len
    return version, json.loads(data[share_store._HEAD.size:end]), data[end:]


def _join(version: int, head: bytes, body: bytes) -> bytes:
    return share_store._HEAD.pack(share_store.SHARE_MAGIC, version, len(head)) + head + body


_HEADER_EDITS = ("grown shape", "transposed shape", "renamed tensor", "same content, other bytes")


def _edited_header(header: dict, edit: str) -> bytes:
    """A header that still parses and still names this party, model and provisioning."""
    (name, shape), *rest = header["tensors"]
    if edit == "same content, other bytes":
        return json.dumps(header, sort_keys=True, indent=1).encode()
    tensors = {
        "grown shape": [[name, [shape[0] + 1, *shape[1:]]], *rest],
        "transposed shape": [[name, shape[::-1]], *rest],  # embed (512, 64): same size, other layout
        "renamed tensor": [[name + "x", shape], *rest],
    }[edit]
    return json.dumps({**header, "tensors": tensors}, sort_keys=True).encode()


@pytest.mark.parametrize("edit", _HEADER_EDITS)
@pytest.mark.parametrize("party", [0, 1])
def test_edited_header_is_refused(provisioned: Path, key_dir: Path, tmp_path: Path, party: int, edit: str) -> None:
    key = keys.load_envelope_private_key(key_dir, keys.party_role(party))
    version, header, body = _split(share_store.share_file(provisioned, party).read_bytes())
    path = tmp_path / f"party{party}.shares"
    path.write_bytes(_join(version, _edited_header(header, edit), body))
    with pytest.raises(share_store.ShareFileError, match="does not open"):
        share_store.read_share_file(path, party, key, share_store.load_card(provisioned))


def test_version_1_file_asks_to_reprovision(provisioned: Path, key_dir: Path, tmp_path: Path) -> None:
    key = keys.load_envelope_private_key(key_dir, "party1")
    _, header, body = _split(share_store.share_file(provisioned, 1).read_bytes())
    path = tmp_path / "old.shares"
    path.write_bytes(_join(1, json.dumps(header, sort_keys=True).encode(), body))
    with pytest.raises(share_store.ShareFileError, match="re-provision"):
        share_store.read_share_file(path, 1, key, share_store.load_card(provisioned))


def _seed_file(key_dir: Path, path: Path) -> None:
    bundle = ShareBundle({"w": (2, 3)}, seed=bytes(32))
    share_store.write_share_file(path, bundle, 1, "m", "p", keys.load_envelope_public_key(key_dir, "party1"))


def test_write_never_follows_a_planted_link(key_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    store = tmp_path / "store"
    store.mkdir()
    path = store / "party1.shares"
    (store / "party1.tmp").symlink_to(victim)  # the fixed temporary name earlier versions used
    monkeypatch.setattr(atomic_file.secrets, "token_hex", lambda n: "f" * 2 * n)
    guessed = store / f".party1.shares.{'f' * 16}.tmp"
    guessed.symlink_to(victim)
    with pytest.raises(FileExistsError):
        _seed_file(key_dir, path)
    assert victim.read_bytes() == b"untouched" and not path.exists() and guessed.is_symlink()

    guessed.unlink()
    path.symlink_to(victim)  # a link at the final name is replaced, not written through
    _seed_file(key_dir, path)
    assert victim.read_bytes() == b"untouched"
    assert not path.is_symlink() and oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in store.iterdir()) == ["party1.shares", "party1.tmp"]
