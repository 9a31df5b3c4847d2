"""Weight provisioning: per-party share files sealed to each party, party 1's file a seed only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pinfer import keys
from pinfer.decoder import prepare_weights
from pinfer.models.registry import load_model
from pinfer.parties import share_store
from pinfer.protocols.sharing import encode


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
