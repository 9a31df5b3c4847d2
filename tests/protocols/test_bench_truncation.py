"""``pinfer bench truncation`` on tiny-llama: every truncated site listed, the exactly truncated ones
(``mpc_ops.EXACT_TRUNCATION``) expected never to fail, the per-token total the sum of the local ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pinfer.cli import main
from pinfer.protocols.mpc_ops import EXACT_TRUNCATION


def test_bench_truncation_sums_the_local_sites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "truncation", "--out", str(tmp_path), "--model", "tiny-llama"]) == 0
    assert "expected failures" in capsys.readouterr().out
    report = json.loads((tmp_path / "truncation.json").read_text())
    sites = report["sites"]
    assert {"wqkv", "wo", "w_gate_up", "w_down", "lm_head", "attention scores", "norm output"} <= set(sites)
    for name, site in sites.items():
        assert site["local_would_be"] > 0 and site["elements_per_token"] > 0
        assert (site["truncation"] == "exact") == (name in EXACT_TRUNCATION)
        assert site["expected_failures_per_token"] == (0.0 if name in EXACT_TRUNCATION else site["local_would_be"])
    local = sum(s["expected_failures_per_token"] for s in sites.values())
    assert report["expected_failures_per_token"] == pytest.approx(local)
    assert report["if_all_local"] > report["expected_failures_per_token"]
