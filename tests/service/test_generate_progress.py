"""`pinfer generate --endpoint`'s progress line while the parties run the prefill."""

from __future__ import annotations

import io
import re
import time

import pytest

from pinfer.cli.generate import PrefillProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_ends_with_the_time_to_the_first_token() -> None:
    out = io.StringIO()
    with PrefillProgress(12, out) as progress:
        progress.done()
        progress.done()  # the first token ends the line once; later tokens change nothing
    assert re.fullmatch(r"prefill   : 12 prompt tokens on shares \.\.\. first token after \d+\.\d s\n", out.getvalue())


def test_progress_line_counts_seconds_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PrefillProgress, "TICK_S", 0.01)
    out = _Terminal()
    with PrefillProgress(3, out) as progress:
        time.sleep(0.1)
        progress.done()
    lines = out.getvalue().split("\r")
    assert len(lines) > 2 and lines[1].endswith(" s") and lines[-1].startswith("prefill   : 3 prompt tokens")
    assert lines[-1].endswith("s\n") and "first token after" in lines[-1]


def test_progress_line_says_failed_and_is_silent_when_hidden() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), PrefillProgress(3, out):
        raise RuntimeError("the service went away")
    assert out.getvalue() == "prefill   : 3 prompt tokens on shares ... failed\n"
    hidden = io.StringIO()
    with PrefillProgress(3, hidden, shown=False) as progress:
        progress.done()
    assert hidden.getvalue() == ""
