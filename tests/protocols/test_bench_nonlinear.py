"""``pinfer bench nonlinear`` on small shapes: a table, a JSON report, positive costs per function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pinfer.cli import main


def test_bench_nonlinear_reports_every_function(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "nonlinear", "--out", str(tmp_path), "--elements", "64", "--cached", "32"]) == 0
    assert "B/element" in capsys.readouterr().out
    report = json.loads((tmp_path / "nonlinear.json").read_text())
    assert report["machine"]["cores"] >= 1
    assert set(report["results"]) == {"exp", "silu", "gelu", "softmax"}
    for costs in report["results"].values():
        assert costs["bytes"] > 0 and costs["rounds"] > 0
    assert report["results"]["softmax"]["elements"] == 9 * 32
