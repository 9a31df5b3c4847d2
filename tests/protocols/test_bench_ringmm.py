"""``pinfer bench ringmm`` on small shapes: a table, a JSON report with both paths per shape, the same
product from each, and the path ``ring_matmul`` takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pinfer.cli import main


def test_bench_ringmm_reports_both_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "ringmm", "--out", str(tmp_path), "--repeats", "2",
                 "--shapes", "64x128x64", "2x64x32"]) == 0
    assert "limb GMAC/s" in capsys.readouterr().out
    report = json.loads((tmp_path / "ringmm.json").read_text())
    assert report["machine"]["torch_threads"] == 1
    large, small = report["results"]["64x128x64"], report["results"]["2x64x32"]
    for row in (large, small):
        assert row["exact"]
        assert row["int64"]["runs"] >= 1 and row["limb"]["runs"] == 2
        assert row["int64"]["gmac_per_s"] > 0 and row["limb"]["gmac_per_s"] > 0
    # above the thresholds the path this host measured faster; below them always torch's kernel
    assert large["ring_matmul_path"] == ("limb" if report["limbs_faster"] else "int64")
    assert small["ring_matmul_path"] == "int64"


def test_bench_ringmm_rejects_a_malformed_shape(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="MxKxN"):
        main(["bench", "ringmm", "--out", str(tmp_path), "--shapes", "64x128"])
