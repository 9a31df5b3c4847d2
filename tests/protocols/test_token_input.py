"""A prompt's payloads (``pinfer.protocols.token_input``): the parties' shares add up to the one-hot rows
at the fixed-point scale, with DPF keys of a few hundred bytes per token for two parties and the
one-hot upload for three; a payload of the wrong form or size is refused before anything is expanded."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pinfer.protocols import token_input
from pinfer.protocols.sharing import SCALE

SMOLLM2_VOCAB = 49_152


def _rows(prompt_ids: list[int], vocab_size: int, parties: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    payloads = token_input.share_prompt(prompt_ids, vocab_size, parties)
    shares = [token_input.open_prompt(party, parties, payload, len(prompt_ids), vocab_size).expand()["tokens"]
              for party, payload in enumerate(payloads)]
    return sum(shares), payloads


@settings(max_examples=25, deadline=None)
@given(vocab_size=st.integers(1, 3000), parties=st.sampled_from([2, 3]), data=st.data())
def test_the_shares_add_up_to_the_scaled_one_hot_rows(vocab_size: int, parties: int, data: st.DataObject) -> None:
    prompt_ids = data.draw(st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=6))
    total, _ = _rows(prompt_ids, vocab_size, parties)
    expected = torch.nn.functional.one_hot(torch.tensor(prompt_ids), vocab_size) * SCALE
    assert torch.equal(total, expected)


def test_two_parties_receive_288_bytes_per_smollm2_token() -> None:
    prompt_ids = [0, 1, 17, SMOLLM2_VOCAB - 1]
    total, payloads = _rows(prompt_ids, SMOLLM2_VOCAB, 2)
    assert token_input.prompt_form(2) == token_input.DPF_KEYS
    assert [p.numel() * p.element_size() for p in payloads] == [288 * len(prompt_ids)] * 2
    assert torch.equal(total.argmax(dim=1), torch.tensor(prompt_ids)) and int(total.sum()) == SCALE * len(prompt_ids)


def test_three_parties_keep_the_one_hot_upload() -> None:
    assert token_input.prompt_form(3) == token_input.ONE_HOT_ROWS
    _, payloads = _rows([5, 6], 100, 3)
    assert payloads[0].shape == (2, 100) and [p.numel() for p in payloads[1:]] == [32, 32]


def test_a_payload_of_the_wrong_form_is_refused() -> None:
    payloads = token_input.share_prompt([1, 2, 3], 1000, 2)
    with pytest.raises(ValueError, match="prompt payload for party 1"):
        token_input.open_prompt(1, 2, payloads[1][:2], 3, 1000)
    with pytest.raises(ValueError, match="prompt payload for party 0"):
        token_input.open_prompt(0, 2, payloads[0].to(torch.int32), 3, 1000)
    with pytest.raises(ValueError, match="inside the vocabulary"):
        token_input.share_prompt([1000], 1000, 2)
