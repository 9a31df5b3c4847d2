"""The accuracy harness's plumbing: recorded prompts replay exactly, the grid splits into items that
reproduce ``evaluate``, and the plaintext backend runs every policy on a GPU (when there is one)."""

from __future__ import annotations

import pytest
import torch

from pinfer.kvcache.accuracy import RecordedPrompts, Runner, evaluate, grid, record_prompts, run_item, work_items
from pinfer.model.config import ModelConfig
from pinfer.model.weights import load_weights

POLICIES = ["streamingllm", "h2o", "snapkv", "tova", "quest", "mpcache"]


class FakePrompts:
    """Seeded random ids in a 512-token vocabulary; the 'key' is three fixed tokens."""

    def passkey(self, length: int, depth: float, seed: int) -> tuple[list[int], list[int]]:
        gen = torch.Generator().manual_seed(1000 * seed + round(100 * depth) + length)
        return torch.randint(0, 512, (length,), generator=gen).tolist(), [7, 8, 9]

    def text(self, length: int, seed: int) -> list[int]:
        return torch.randint(0, 512, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_recorded_prompts_replay(tmp_path):
    items = work_items([64, 96], [0.0, 0.5, 1.0], range(2), 64, 4, 2)
    recorded = record_prompts(FakePrompts(), items)
    recorded.save(tmp_path / "prompts.json")
    replay = RecordedPrompts.load(tmp_path / "prompts.json")
    assert len(replay.table) == 3 * 2 * 2 + 2
    assert replay.passkey(96, 0.5, 1) == FakePrompts().passkey(96, 0.5, 1)
    assert replay.text(68, 10_001) == FakePrompts().text(68, 10_001)
    with pytest.raises(KeyError):
        replay.passkey(128, 0.5, 0)


def _run(runner: Runner, entries, items):
    return [run_item(runner, FakePrompts(), entries, item) for item in items]


def test_items_reproduce_evaluate(tiny_llama_dir):
    config = ModelConfig.from_json_file(tiny_llama_dir)
    runner = Runner(config, load_weights(tiny_llama_dir, config))
    entries = grid(["streamingllm", "mpcache"], [0.2])
    lines = []
    records = list(evaluate(runner, FakePrompts(), entries, [96], [0.0, 1.0], range(1), 96, 3, 1, lines.append))
    items = work_items([96], [0.0, 1.0], range(1), 96, 3, 1)
    assert [i.task for i in items] == ["passkey", "passkey", "fidelity"]
    assert records == _run(runner, entries, items)
    assert len(lines) == 3 and lines[-1] == "fidelity sample 0: done"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tiny_llama_dir):
    config = ModelConfig.from_json_file(tiny_llama_dir)
    weights = load_weights(tiny_llama_dir, config)
    entries = grid(POLICIES, [0.1, 0.2])
    items = work_items([128], [0.5], range(1), 128, 4, 1)
    cpu = _run(Runner(config, weights), entries, items)
    gpu = _run(Runner(config, weights, "cuda"), entries, items)
    assert gpu[0]["hits"] == cpu[0]["hits"]
    for label, score in cpu[1]["scores"].items():
        assert gpu[1]["scores"][label]["top1"] == score["top1"]
        assert abs(gpu[1]["scores"][label]["kl"] - score["kl"]) < 1e-4
