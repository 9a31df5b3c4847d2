"""The docker-compose deployment end to end (deploy/smoke.sh); runs only where Docker is usable.

`./test` prepares Docker first where it can (deploy/base-image.sh: root on Debian) and deselects the
`docker` marker where `docker info` still fails. The smoke script builds the image, brings up the
orchestrator, both parties and the dealer, generates through the orchestrator with this checkout's
client SDK and compares the token ids and text with a local private run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Below ./test's per-test timeout (1200 s), so a hung stack is torn down by the script's own trap
# and its output reaches the failure report.
BUDGET_S = 1100


@pytest.mark.docker
@pytest.mark.slow
def test_compose_stack_generates_the_local_text() -> None:
    env = {**os.environ, "PYTHON": sys.executable}  # the client SDK of this checkout's interpreter
    proc = subprocess.Popen([str(ROOT / "deploy" / "smoke.sh")], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=BUDGET_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the script's EXIT trap takes the stack down
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        pytest.fail(f"deploy/smoke.sh ran past {BUDGET_S} s:\n{stderr[-4000:]}")
    assert proc.returncode == 0, stderr[-4000:]
    assert "smoke: OK" in stdout, stdout[-2000:]
