"""Shared fixtures: one key directory per test session (certificate generation is the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinfer import keys


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-party key directory (covers 2-party worlds too: they just leave party2 unused)."""
    root = tmp_path_factory.mktemp("keys")
    keys.init_keys(root, parties=3, hostnames={"party0": ["party0.internal"]})
    return root


@pytest.fixture(scope="session")
def foreign_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys of an unrelated deployment: same role names, different CA."""
    root = tmp_path_factory.mktemp("foreign-keys")
    keys.init_keys(root, parties=3)
    return root
