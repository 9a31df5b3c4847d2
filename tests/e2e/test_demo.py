"""``./demo`` on tiny-llama: the service starts, one private generation matches the plaintext reference,
and every process the demo started is gone afterwards, also after a Ctrl-C in mid-generation."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 600

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REPO / ".venv" / "bin" / "pinfer").exists(),
                       reason="the demo runs in the repository's own .venv (made by scripts/setup.sh)"),
]


def _start_demo(*args: str) -> subprocess.Popen:
    env = dict(os.environ, MODEL="tiny-llama", PROMPT="hi")
    # A session of its own, so a Ctrl-C can go to the demo's whole process group as a terminal sends it.
    return subprocess.Popen([str(REPO / "demo"), "--max-new-tokens", "2", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if text in args:
            found.append(args)
    return found


def _state_dir(output: str) -> str:
    match = re.search(r"logs in (\S+)", output)
    assert match, output
    return match.group(1)


def _assert_cleaned_up(state: str) -> None:
    deadline = time.monotonic() + 30
    while (left := _processes_mentioning(state)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes left behind: {left}"
    assert not Path(state).exists()


def test_demo_generates_through_the_service_and_stops_it() -> None:
    demo = _start_demo()
    output, _ = demo.communicate(timeout=DEMO_TIMEOUT_S)
    assert demo.returncode == 0, output
    assert "service up at 127.0.0.1:" in output
    assert re.search(r"^plaintext : .*\(identical tokens\)$", output, re.MULTILINE), output
    assert re.search(r"^prefill   : [0-9.]+ MB sent by party 0", output, re.MULTILINE), output
    _assert_cleaned_up(_state_dir(output))


def test_ctrl_c_stops_every_process() -> None:
    demo = _start_demo("--max-new-tokens", "40")  # long enough to be interrupted in mid-generation
    lines = []
    assert demo.stdout is not None
    for line in demo.stdout:  # bounded by the demo's own start-up and the generation below
        lines.append(line)
        if "generating through it" in line:
            break
    time.sleep(2)  # the session is running on the nodes
    os.killpg(demo.pid, signal.SIGINT)
    rest, _ = demo.communicate(timeout=60)
    output = "".join(lines) + rest
    assert demo.returncode != 0, output
    _assert_cleaned_up(_state_dir(output))
