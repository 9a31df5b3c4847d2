"""The byte-level tokenizer of tiny models: exact round trip, ids inside a 512-row table, SmolLM2 specials."""

from __future__ import annotations

from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pinfer.model.tokenizer import (
    BYTE_BOS_ID,
    BYTE_EOS_ID,
    BYTE_SPECIALS,
    BYTE_VOCAB_SIZE,
    byte_level_tokenizer,
    load_tokenizer,
)

TOK = byte_level_tokenizer()


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(text: str) -> None:
    # A special token's literal spelling encodes to that token (see the next test), not to bytes.
    assume(not any(special in text for special in BYTE_SPECIALS))
    ids = TOK.encode(text)
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no BOS added
    assert all(len(BYTE_SPECIALS) <= i < BYTE_VOCAB_SIZE for i in ids)
    assert TOK.decode(ids) == text


def test_specials_match_smollm2_ids(tmp_path: Path) -> None:
    assert (TOK.bos_token_id, TOK.eos_token_id) == (BYTE_BOS_ID, BYTE_EOS_ID) == (1, 2)
    assert TOK.encode("<|im_start|>hi<|im_end|>") == [1, *TOK.encode("hi"), 2]
    TOK.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    assert again.encode("Grüße, 世界") == TOK.encode("Grüße, 世界")
    assert len(again) == BYTE_VOCAB_SIZE == 259
