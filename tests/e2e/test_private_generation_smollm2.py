"""End to end: a private generation with the real model through the user-facing command."""

from __future__ import annotations

import json

import pytest

from pinfer.cli import main


@pytest.mark.slow
def test_private_generation_of_smollm2_equals_plaintext(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--prompt", "What is the capital of France?", "--max-new-tokens", "3", "--check", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["match"] is True and report["tokens"] == report["plaintext_tokens"]
    assert report["text"].startswith("The capital")
    assert set(report["latency_s"]) >= {"prefill", "decode_per_token"}
    assert report["bytes_per_party"][0] == report["bytes_per_party"][1] > 0
    assert report["rounds"][0] > 0
