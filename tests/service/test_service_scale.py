"""The service beyond the default shape (tiny-llama on local processes): three parties, and a full
orchestrator that refuses what it cannot queue while everything it accepted completes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import pinfer
from pinfer.model.generation import generate_plain
from pinfer.model.registry import load_model
from pinfer.service.local_service import LocalService

PROMPT = [5, 6, 7, 8, 9]

pytestmark = pytest.mark.slow


def _plain(tokens: int) -> list[int]:
    config, weights, _ = load_model("tiny-llama")
    return generate_plain(config, weights, PROMPT, tokens)


def test_three_party_generation_matches_plaintext(tmp_path: Path) -> None:
    with LocalService(tmp_path, model="tiny-llama", parties=3) as service, \
            pinfer.Client(service.endpoint, service.token, service.ca_path, timeout_s=300) as client:
        info = client.model_info("tiny-llama")
        assert info.parties == 3 and len(info.deployment.party_keys) == 3
        tokens = list(client.generate_ids(PROMPT, 3))
    assert [t.token_id for t in tokens] == _plain(3)
    assert all(sorted(c.party for c in t.costs) == [0, 1, 2] for t in tokens)
    assert all(c.bytes_sent > 0 for t in tokens for c in t.costs)


@pytest.fixture(scope="module")
def one_slot_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    with LocalService(tmp_path_factory.mktemp("one-slot"), model="tiny-llama", slots=1, queue=1) as service:
        yield service


def test_requests_beyond_slots_and_queue_are_refused_and_accepted_ones_complete(
        one_slot_service: LocalService) -> None:
    """One session runs, one may wait; of four more sent at once while the first runs, one is queued
    and three get RESOURCE_EXHAUSTED at once. Both accepted sessions return the plaintext tokens."""
    service = one_slot_service
    long_tokens, short_tokens = 8, 2
    results: dict[str, list[int] | grpc.StatusCode] = {}
    first_token = threading.Event()

    def generate(name: str, tokens: int) -> None:
        with pinfer.Client(service.endpoint, service.token, service.ca_path, timeout_s=600) as client:
            ids: list[int] = []
            try:
                for token in client.generate_ids(PROMPT, tokens, model="tiny-llama"):
                    ids.append(token.token_id)
                    first_token.set()
            except grpc.RpcError as exc:
                results[name] = exc.code()
                return
            results[name] = ids

    running = threading.Thread(target=generate, args=("running", long_tokens))
    running.start()
    assert first_token.wait(timeout=300), "the first session produced no token"
    extra = [threading.Thread(target=generate, args=(f"extra{i}", short_tokens)) for i in range(4)]
    for thread in extra:
        thread.start()
    for thread in [running, *extra]:
        thread.join(timeout=600)
        assert not thread.is_alive()

    assert results["running"] == _plain(long_tokens)
    outcomes = [results[f"extra{i}"] for i in range(4)]
    refused = [o for o in outcomes if o == grpc.StatusCode.RESOURCE_EXHAUSTED]
    accepted = [o for o in outcomes if isinstance(o, list)]
    assert len(refused) == 3 and len(accepted) == 1, outcomes
    assert accepted[0] == _plain(short_tokens)
