"""Key directory layout, permissions, role certificates and the peer-role check."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pinfer import cli, keys
from pinfer.cli import keys as keys_command
from pinfer.keys import envelope


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_and_permissions(key_dir: Path) -> None:
    layout = keys.KeyDir(key_dir)
    manifest = keys.load_manifest(key_dir)
    assert manifest.roles == ("orchestrator", "party0", "party1", "party2", "dealer", "client")
    assert _mode(layout.ca_key) == 0o600
    for role in manifest.roles:
        assert _mode(layout.node_key(role)) == 0o600
        assert _mode(layout.node_dir(role)) == 0o700
        assert keys.certificate_role(_cert(layout.node_cert(role))) == role
    for i in range(3):
        role = keys.party_role(i)
        assert _mode(layout.envelope_private(role)) == 0o600
        assert layout.envelope_public(role).read_bytes() == manifest.envelope_public_keys[role]
    assert set(manifest.envelope_public_keys) == {"party0", "party1", "party2"}
    text = layout.manifest.read_text()
    for i in range(3):  # the manifest is public: no private key may appear in it
        assert layout.envelope_private(keys.party_role(i)).read_bytes().hex() not in text


def test_envelope_keys_pair_up(key_dir: Path) -> None:
    ctx = envelope.EnvelopeContext("s", 0, "input-share")
    sealed = envelope.seal(b"share", keys.load_envelope_public_key(key_dir, "party0"), ctx)
    assert envelope.open_envelope(sealed, keys.load_envelope_private_key(key_dir, "party0"), ctx) == b"share"
    with pytest.raises(envelope.EnvelopeAuthError):
        envelope.open_envelope(sealed, keys.load_envelope_private_key(key_dir / "party1", "party1"), ctx)


def test_sans_are_the_role_and_extra_hosts_only(key_dir: Path) -> None:
    """gRPC checks a server's DNS name: a name only one role carries makes that a role check, so no
    certificate carries a name that every certificate shares (localhost, 127.0.0.1)."""
    layout = keys.KeyDir(key_dir)
    for role in keys.load_manifest(key_dir).roles:
        san = _cert(layout.node_cert(role)).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = set(san.get_values_for_type(x509.DNSName))
        assert role in names and "localhost" not in names and not san.get_values_for_type(x509.IPAddress)
        assert not names & (set(keys.load_manifest(key_dir).roles) - {role})
    san = _cert(layout.node_cert("party0")).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"party0", "party0.internal"} == set(san.get_values_for_type(x509.DNSName))


def test_a_certificate_cannot_carry_another_roles_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="another role"):
        keys.init_keys(tmp_path / "k", hostnames={"party0": ["orchestrator"]})


def test_check_peer_role_accepts_right_role(key_dir: Path) -> None:
    layout = keys.KeyDir(key_dir)
    ca = _cert(layout.ca_cert)
    cert = _cert(layout.node_cert("party1"))
    assert keys.check_peer_role(cert, "party1", ca) == "party1"
    der = cert.public_bytes(serialization.Encoding.DER)
    assert keys.check_peer_role(der, {"party0", "party1"}, ca) == "party1"
    assert keys.check_peer_role(cert.public_bytes(serialization.Encoding.PEM), "party1", ca) == "party1"


def test_check_peer_role_refuses_wrong_role(key_dir: Path) -> None:
    layout = keys.KeyDir(key_dir)
    ca = _cert(layout.ca_cert)
    with pytest.raises(keys.PeerRoleError):
        keys.check_peer_role(_cert(layout.node_cert("client")), "party0", ca)
    with pytest.raises(keys.PeerRoleError):
        keys.check_peer_role(_cert(layout.node_cert("party1")), ["party0", "dealer"], ca)


def test_check_peer_role_refuses_foreign_ca_ca_cert_expired_and_garbage(key_dir: Path, foreign_key_dir: Path) -> None:
    ca = _cert(keys.KeyDir(key_dir).ca_cert)
    foreign = _cert(keys.KeyDir(foreign_key_dir).node_cert("party0"))
    with pytest.raises(keys.PeerCertificateError) as info:
        keys.check_peer_role(foreign, "party0", ca)
    assert not isinstance(info.value, keys.PeerRoleError)
    with pytest.raises(keys.PeerCertificateError):
        keys.check_peer_role(ca, "party0", ca)  # self-signed CA presented as a node
    own = _cert(keys.KeyDir(key_dir).node_cert("party0"))
    with pytest.raises(keys.PeerCertificateError):
        keys.check_peer_role(own, "party0", ca, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=5000))
    with pytest.raises(keys.PeerCertificateError):
        keys.check_peer_role(b"not a certificate", "party0", ca)


def test_node_credentials_from_whole_dir_or_node_folder(key_dir: Path) -> None:
    whole = keys.load_node_credentials(key_dir, "dealer")
    own = keys.load_node_credentials(key_dir / "dealer", "dealer")
    assert whole.certificate_pem() == own.certificate_pem()
    assert whole.ca_certificate() == _cert(keys.KeyDir(key_dir).ca_cert)
    with pytest.raises(keys.KeyDirError):
        keys.load_node_credentials(key_dir / "dealer", "party0")


def test_malformed_manifest_is_a_key_dir_error(tmp_path: Path) -> None:
    for text in ("{", '{"version": 1}', '{"version": 7}', "[]"):
        with pytest.raises(keys.KeyDirError):
            keys.KeyManifest.from_json(text)


def test_refuses_to_overwrite_and_validates_input(tmp_path: Path) -> None:
    keys.init_keys(tmp_path / "k", parties=2)
    with pytest.raises(keys.KeyDirError):
        keys.init_keys(tmp_path / "k", parties=2)
    first = keys.load_manifest(tmp_path / "k").ca_fingerprint
    assert keys.init_keys(tmp_path / "k", parties=2, overwrite=True).ca_fingerprint != first
    with pytest.raises(ValueError):
        keys.init_keys(tmp_path / "k4", parties=4)
    with pytest.raises(ValueError):
        keys.init_keys(tmp_path / "kx", parties=2, hostnames={"party2": ["x"]})
    with pytest.raises(ValueError):
        keys.init_keys(tmp_path / "ky", parties=2, hostnames={"party0": ["bad host!"]})


def _run_cli(argv: list[str]) -> int:
    """Run ``pinfer keys ...`` through the command's own parser (the full CLI imports every command)."""
    parser = argparse.ArgumentParser(prog="pinfer")
    keys_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_keys_command_is_registered() -> None:
    assert "pinfer.cli.keys" in cli._COMMAND_MODULES


def test_cli_keys_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deploy-keys"
    assert _run_cli(["keys", "init", "--out", str(out), "--parties", "3", "--nodes", "party1=p1.svc,10.1.2.3",
                     "--hostname", "pinfer.local"]) == 0
    manifest = keys.load_manifest(out)
    assert manifest.parties == 3 and manifest.hostnames["party1"] == ("p1.svc", "10.1.2.3", "pinfer.local")
    printed = capsys.readouterr().out
    for role in manifest.roles:
        private = keys.KeyDir(out).node_key(role).read_text()
        assert private.splitlines()[1] not in printed
    assert _run_cli(["keys", "init", "--out", str(out)]) == 2  # refuses to overwrite
    assert _run_cli(["keys", "init", "--out", str(tmp_path / "bad"), "--nodes", "party0"]) == 2


@pytest.fixture
def fresh_keys(tmp_path: Path) -> Path:
    """A 2-party key directory of this test's own, free to break."""
    root = tmp_path / "keys"
    keys.init_keys(root, parties=2)
    return root


def test_fresh_keys_load_and_key_folders_are_tightened(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    (root / "party0").mkdir(parents=True, mode=0o755)
    (root / "party0").chmod(0o755)  # a folder made before init, with the usual umask
    manifest = keys.init_keys(root, parties=2)
    layout = keys.KeyDir(root)
    assert _mode(root) == _mode(layout.ca_key.parent) == _mode(layout.node_dir("party0")) == 0o700
    for role in manifest.roles:
        assert keys.load_node_credentials(root, role).key_path == layout.node_key(role)
        assert keys.load_node_credentials(layout.node_dir(role), role).role == role
    for role in ("party0", "party1"):
        keys.load_envelope_private_key(root, role)
        keys.load_envelope_private_key(layout.node_dir(role), role)


def test_compose_setup_layout_loads(tmp_path: Path) -> None:
    """deploy/docker-compose.yml's setup: keys made under umask 077, then the shared folders opened to 0755."""
    root = tmp_path / "state" / "keys"
    old = os.umask(0o077)
    try:
        keys.init_keys(root, parties=2)
    finally:
        os.umask(old)
    for folder in (root.parent, root, root / "ca"):
        folder.chmod(0o755)
    for role in ("party0", "party1", "dealer", "orchestrator"):
        keys.load_node_credentials(root / role, role)
    for role in ("party0", "party1"):
        keys.load_envelope_private_key(root / role, role)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=oct)
def test_exposed_envelope_key_is_refused(fresh_keys: Path, mode: int) -> None:
    path = keys.KeyDir(fresh_keys).envelope_private("party0")
    secret = path.read_bytes().hex()
    path.chmod(mode)
    for root in (fresh_keys, fresh_keys / "party0"):
        with pytest.raises(keys.KeyDirError, match="chmod 600") as info:
            keys.load_envelope_private_key(root, "party0")
        assert str(path) in str(info.value) and secret not in str(info.value)


def test_exposed_node_key_is_refused(fresh_keys: Path) -> None:
    path = keys.KeyDir(fresh_keys).node_key("party1")
    path.chmod(0o644)
    with pytest.raises(keys.KeyDirError, match="chmod 600") as info:
        keys.load_node_credentials(fresh_keys / "party1", "party1")
    assert str(path) in str(info.value) and path.read_text().splitlines()[1] not in str(info.value)


def test_symlinked_keys_are_refused(fresh_keys: Path, tmp_path: Path) -> None:
    layout = keys.KeyDir(fresh_keys)
    for path in (layout.envelope_private("party0"), layout.node_key("party0")):
        elsewhere = tmp_path / f"elsewhere-{path.name}"
        path.rename(elsewhere)  # still 0600: the link, not the mode, is what is refused
        path.symlink_to(elsewhere)
    with pytest.raises(keys.KeyDirError, match="symbolic link"):
        keys.load_envelope_private_key(fresh_keys, "party0")
    with pytest.raises(keys.KeyDirError, match="symbolic link"):
        keys.load_node_credentials(fresh_keys, "party0")
    dangling = layout.envelope_private("party1")
    dangling.unlink()
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(keys.KeyDirError, match="symbolic link"):
        keys.load_envelope_private_key(fresh_keys, "party1")


def test_rewriting_keys_never_follows_a_planted_link(fresh_keys: Path, tmp_path: Path) -> None:
    layout = keys.KeyDir(fresh_keys)
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    planted = (layout.node_key("dealer"), layout.envelope_private("party1"), layout.node_cert("party0"))
    for path in planted:
        path.unlink()
        path.symlink_to(victim)
    keys.init_keys(fresh_keys, parties=2, overwrite=True)
    assert victim.read_text() == "untouched"
    for path in planted:
        assert not path.is_symlink()
    assert _mode(layout.node_key("dealer")) == _mode(layout.envelope_private("party1")) == 0o600
    assert _mode(layout.node_cert("party0")) == 0o644
