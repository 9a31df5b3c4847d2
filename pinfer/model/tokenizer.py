"""Tokenizers: load one from a checkpoint directory, or build the byte-level one tiny test models use.

The tokenizer is public under the threat model and runs only on the client, in the clear. Loading is
strictly local (``local_files_only``) so that a missing file fails loudly instead of reaching for a hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Special tokens of the byte-level tokenizer, at the ids SmolLM2 uses for them, so chat-style prompts
# and stop ids behave alike on tiny and real models.
BYTE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BYTE_BOS_ID = 1
BYTE_EOS_ID = 2
BYTE_VOCAB_SIZE = len(BYTE_SPECIALS) + 256


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a checkpoint directory (``tokenizer.json`` + ``tokenizer_config.json``)."""
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


class NoChatTemplateError(ValueError):
    """A conversation the tokenizer cannot format: it has no chat template and the conversation is more
    than the one user turn that is then sent as it is."""


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of a conversation (``{"role", "content"}`` turns) ready for the assistant's reply.

    With a chat template the turns are formatted by it, the generation prompt appended. Without one,
    only a single user turn is accepted and its text is the prompt as it is, which is what the model
    was then trained on; anything else raises :class:`NoChatTemplateError` rather than inventing a format.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    elif len(messages) == 1 and messages[0]["role"] == "user":
        text = messages[0]["content"]
    else:
        raise NoChatTemplateError("the tokenizer has no chat template, so the conversation must be one user message")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: Any, prompt: str, raw: bool) -> list[int]:
    """The prompt's token ids: wrapped as one user turn in the tokenizer's chat template, if it has one,
    unless ``raw``."""
    if raw:
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return encode_chat(tokenizer, [{"role": "user", "content": prompt}])


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A merge-free byte-level BPE: 3 specials (ids 0-2) then one token per byte (ids 3-258).

    Why: tiny random models need a real tokenizer (so every code path from text to ids is exercised)
    whose ids fit a vocabulary of a few hundred; any UTF-8 text round-trips exactly.
    """
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    byte_chars.sort(key=lambda ch: _byte_of(ch))
    vocab = {tok: i for i, tok in enumerate(BYTE_SPECIALS)}
    vocab.update({ch: len(BYTE_SPECIALS) + i for i, ch in enumerate(byte_chars)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(BYTE_SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BYTE_SPECIALS[BYTE_BOS_ID],
        eos_token=BYTE_SPECIALS[BYTE_EOS_ID],
        pad_token=BYTE_SPECIALS[BYTE_EOS_ID],
        unk_token=None,
    )


def _byte_of(ch: str) -> int:
    """The byte GPT-2's byte-to-unicode table maps to ``ch`` (printable bytes map to themselves)."""
    code = ord(ch)
    if code < 256 and (33 <= code <= 126 or 161 <= code <= 172 or 174 <= code <= 255):
        return code
    # The remaining 68 bytes were shifted to 256 + n in increasing byte order.
    shifted = [b for b in range(256) if not (33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255)]
    return shifted[code - 256]
