"""The docker-compose deployment end to end (deploy/smoke.sh); runs only where Docker is usable."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.docker
@pytest.mark.slow
def test_compose_stack_generates_the_local_text() -> None:
    result = subprocess.run([str(ROOT / "deploy" / "smoke.sh")], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "smoke: OK" in result.stdout
