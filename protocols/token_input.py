"""A prompt on its way to the parties: what the client seals to each party, and the share each makes of it.

The model reads a prompt as one-hot rows over the vocabulary, shared additively at the fixed-point
scale. Sent as they are, party 0's rows take 8 bytes per vocabulary entry per token (393 KB per
SmolLM2 token), which caps a prompt near the envelope's size limit. With two parties the client
sends DPF keys instead (:mod:`fss.dpf`): for each token t, one key pair for ``SCALE * [x == t]`` over
the vocabulary, key b to party b, 288 bytes each for SmolLM2; each party expands its key over the
vocabulary into its share of the token's row. Either key alone is pseudo-random, so a party learns
nothing of t, and nobody else takes part. With three parties the rows go as before (party 0 dense,
the others a seed each, :func:`sharing.share`): a DPF shares between two.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pinfer.model.generation import one_hot

from .csprng import SEED_BYTES
from .fss import dpf
from .sharing import SCALE, ShareBundle, share

DPF_KEYS = "dpf keys"
ONE_HOT_ROWS = "one-hot rows"
_NAME = "tokens"


def prompt_form(parties: int) -> str:
    """How a prompt travels to ``parties`` parties: :data:`DPF_KEYS` for two, :data:`ONE_HOT_ROWS` otherwise."""
    return DPF_KEYS if parties == 2 else ONE_HOT_ROWS


def vocabulary_bits(vocab_size: int) -> int:
    """The DPF input width that covers every token id."""
    if vocab_size < 1:
        raise ValueError("a vocabulary holds at least one token")
    return max(1, (vocab_size - 1).bit_length())


@dataclass(frozen=True)
class Payload:
    """What one party's envelope carries for a prompt: a tensor of this dtype and shape."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def payload(party: int, parties: int, prompt_tokens: int, vocab_size: int) -> Payload:
    """The tensor party ``party`` must receive for a prompt of ``prompt_tokens`` tokens."""
    if prompt_form(parties) == DPF_KEYS:
        return Payload(torch.int64, (prompt_tokens, dpf.key_words(vocabulary_bits(vocab_size))))
    if party == 0:
        return Payload(torch.int64, (prompt_tokens, vocab_size))
    return Payload(torch.uint8, (SEED_BYTES,))


def share_prompt(prompt_ids: Sequence[int], vocab_size: int, parties: int) -> list[torch.Tensor]:
    """Each party's payload for ``prompt_ids`` (the client's side)."""
    ids = np.asarray(list(prompt_ids), dtype=np.int64)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError("prompt ids must be non-empty and inside the vocabulary")
    if prompt_form(parties) == DPF_KEYS:
        count = ids.size
        roots = [np.frombuffer(os.urandom(16 * count), dtype=np.uint64).reshape(count, 2) for _ in range(2)]
        beta = np.full(count, SCALE, dtype=np.uint64)
        keys = dpf.generate(ids.astype(np.uint64), beta, vocabulary_bits(vocab_size), *roots)
        return [torch.from_numpy(key.view(np.int64)) for key in keys]
    bundles = share({_NAME: one_hot(ids.tolist(), vocab_size)}, parties)
    return [bundles[0].dense[_NAME]] + [torch.frombuffer(bytearray(b.seed), dtype=torch.uint8) for b in bundles[1:]]


def open_prompt(party: int, parties: int, received: torch.Tensor, prompt_tokens: int, vocab_size: int) -> ShareBundle:
    """Party ``party``'s share of the prompt's one-hot rows, ``"tokens"`` ``(prompt_tokens, vocab)``,
    from its payload (checked against :func:`payload` first: a ValueError names what differs)."""
    expected = payload(party, parties, prompt_tokens, vocab_size)
    if received.dtype != expected.dtype or tuple(received.shape) != expected.shape:
        raise ValueError(f"a prompt payload for party {party} is {expected.dtype} {expected.shape}, "
                         f"not {received.dtype} {tuple(received.shape)}")
    shapes = {_NAME: (prompt_tokens, vocab_size)}
    if prompt_form(parties) == DPF_KEYS:
        words = received.contiguous().numpy().view(np.uint64)
        rows = dpf.evaluate_domain(party, words, vocabulary_bits(vocab_size), vocab_size)
        return ShareBundle(shapes, dense={_NAME: torch.from_numpy(rows.view(np.int64))})
    if party == 0:
        return ShareBundle(shapes, dense={_NAME: received})
    return ShareBundle(shapes, seed=received.numpy().tobytes())
