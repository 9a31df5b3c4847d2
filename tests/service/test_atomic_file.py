"""Atomic writes: exact modes whatever the umask, no temporary left behind, links never written through."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pinfer import atomic_file
from pinfer.cli.node import write_port_file


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_file.write_atomic(tmp_path / "public", b"x", mode=0o644)
    finally:
        os.umask(old)
    atomic_file.write_atomic(tmp_path / "private", [b"a", b"b"])
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    assert (tmp_path / "private").read_bytes() == b"ab"


def test_a_failed_write_leaves_no_temporary(tmp_path: Path) -> None:
    def chunks():
        yield b"partial"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        atomic_file.write_atomic(tmp_path / "f", chunks())
    assert list(tmp_path.iterdir()) == []


def test_port_file_replaces_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    for planted in (tmp_path / "serving.port", tmp_path / "serving.tmp"):
        planted.symlink_to(victim)
    write_port_file(str(tmp_path / "serving.port"), 7100)
    assert victim.read_text() == "untouched"
    assert not (tmp_path / "serving.port").is_symlink() and (tmp_path / "serving.port").read_text() == "7100\n"
