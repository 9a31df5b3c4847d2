"""``pinfer bench service``'s data-plane measurements, the nodes' link presets, and one service run on
tiny-llama (the model runs are too long for the suite on SmolLM2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pinfer.bench import plane
from pinfer.bench import service as bench_service
from pinfer.parties.session_worker import link_emulation
from pinfer.protocols import tls


def test_throughput_measurements_are_positive() -> None:
    for measure in (bench_service.tls_data_plane, bench_service.tcp_data_plane):
        assert measure(1 << 20)["gbit_per_s"] > 0


def test_data_plane_only_run_writes_round_costs_for_every_path_and_size(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench_service.register(parser.add_subparsers())
    args = parser.parse_args(["service", "--out", str(tmp_path), "--data-plane-only", "--bulk-mib", "1",
                              "--rounds", "20", "--round-repeats", "2"])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "service.json").read_text())
    assert report["machine"]["device"] and report["machine"]["cpu"] and report["service"] == []
    assert report["data_plane"]["tls"]["gbit_per_s"] > 0 and report["data_plane"]["tcp"]["gbit_per_s"] > 0
    rounds = report["data_plane"]["rounds"]
    assert rounds["rounds_per_repeat"] == 20 and rounds["repeats"] == 2
    assert rounds["sizes_bytes"] == list(plane.DEFAULT_SIZES)
    assert list(rounds["paths"]) == list(plane.PATHS)
    for by_size in rounds["paths"].values():
        assert list(by_size) == [str(size) for size in plane.DEFAULT_SIZES]
        for cost in by_size.values():
            assert len(cost["repeat_medians_ms"]) == 2 and all(ms > 0 for ms in cost["repeat_medians_ms"])
            assert min(cost["repeat_medians_ms"]) <= cost["median_ms"] <= max(cost["repeat_medians_ms"])
            assert len(cost["repeat_cpu_ms"]) == 2 and all(ms > 0 for ms in cost["repeat_cpu_ms"])
            assert min(cost["repeat_cpu_ms"]) <= cost["cpu_ms"] <= max(cost["repeat_cpu_ms"])
    headers, rows = plane.round_rows(rounds)
    assert headers[0] == "round path" and [row[0] for row in rows] == list(plane.PATHS)
    assert len(headers) == len(rows[0]) == 1 + 3 * len(plane.DEFAULT_SIZES)
    assert rows[0][2::3] == [1.0] * len(plane.DEFAULT_SIZES)  # tcp is its own unit


def test_round_costs_refuse_sizes_that_are_not_int64_tensors() -> None:
    with pytest.raises(ValueError):
        plane.round_costs(sizes=(12,))


def test_link_presets() -> None:
    assert link_emulation("loopback") is None
    assert link_emulation("lan") == tls.LAN and link_emulation("wan") == tls.WAN
    with pytest.raises(ValueError):
        link_emulation("satellite")


@pytest.mark.slow
def test_a_service_run_generates_through_the_local_service() -> None:
    """One tiny-llama session on loopback, as ``pinfer bench service`` runs each link."""
    run = bench_service.service_run("tiny-llama", "loopback", prompt_tokens=4, tokens=3, concurrency=1)
    assert run["link"] == "loopback" and run["prompt_tokens"] == 4 and run["tokens_per_session"] == 3
    assert 0 < run["first_token_s"] <= run["wall_s"] and run["decode_per_token_s"] > 0 and run["tokens_per_s"] > 0
