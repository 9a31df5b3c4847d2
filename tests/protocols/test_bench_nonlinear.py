"""``pinfer bench nonlinear`` on small shapes: a table, a JSON report with both comparison methods per
function, FSS using fewer rounds than the carry tree wherever the function compares, errors bounded;
exact truncation never off where local truncation visibly fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pinfer.cli import main
from pinfer.protocols.nonlinear import ERROR_BOUNDS


def test_bench_nonlinear_reports_both_methods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "nonlinear", "--out", str(tmp_path), "--elements", "64", "--cached", "32",
                 "--rows", "2", "--vocabulary", "256", "--truncations", "4096"]) == 0
    assert "rounds fss" in capsys.readouterr().out
    report = json.loads((tmp_path / "nonlinear.json").read_text())
    assert report["machine"]["cores"] >= 1
    results = report["results"]
    assert {"ltz (32-bit)", "exp", "silu", "gelu", "softmax (decode row)", "rsqrt", "argmax_onehot"} <= set(results)
    for name, by_method in results.items():
        tree, fss = by_method["carry-tree"], by_method["fss"]
        assert tree["rounds"] > 0 and fss["rounds"] > 0 and tree["dealer_bytes"] > 0
        assert fss["rounds"] <= tree["rounds"], name
    for name in ("ltz (32-bit)", "softmax (decode row)", "rsqrt", "argmax_onehot"):
        assert results[name]["fss"]["rounds"] < results[name]["carry-tree"]["rounds"], name
    assert results["ltz (32-bit)"]["fss"]["rounds"] == 1
    assert results["ltz (32-bit)"]["fss"]["max_abs_error"] == 0
    assert results["argmax_onehot"]["fss"]["max_abs_error"] == 0
    assert results["softmax (decode row)"]["fss"]["elements"] == 9 * 32
    assert results["silu"]["fss"]["max_abs_error"] <= 10 * ERROR_BOUNDS["silu"][0]
    truncation = {row["magnitude_log2"]: row for row in report["truncation"]}
    for row in truncation.values():
        assert row["exact"]["failures"] == 0 and row["exact"]["rounds"] == 1 and row["local"]["rounds"] == 0
        assert row["exact"]["dealer_bytes"] >= 16 * row["elements"]
    # |v| < 2^26: local truncation fails with probability about 2^-7, some 30 of 4,096
    assert truncation[26]["local"]["failures"] > 0
