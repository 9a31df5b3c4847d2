"""The plaintext backend is the reference: it must match Hugging Face transformers logit for logit.

Prefill and then token-by-token decode through the explicit KV cache, against one full transformers
forward, on tiny LLaMA and GPT-2 checkpoints (fast) and on SmolLM2-135M-Instruct (slow).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pinfer.model.decoder import Decoder, prepare_weights
from pinfer.model.generation import one_hot
from pinfer.model.plain_ops import PlainOps
from pinfer.model.registry import load_model, resolve


def _max_logit_error(model: str, ids: list[int], prefill: int) -> float:
    config, weights, _ = load_model(model)
    reference = AutoModelForCausalLM.from_pretrained(resolve(model), dtype=torch.float32).eval()
    decoder = Decoder(config, PlainOps(prepare_weights(config, weights)))
    tokens = one_hot(ids, config.vocab_size)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
        cache = decoder.new_cache()
        errors = [(decoder.forward(tokens[:prefill], cache, 0)[0] - expected[prefill - 1]).abs().max()]
        for t in range(prefill, len(ids)):
            errors.append((decoder.forward(tokens[t : t + 1], cache, t)[0] - expected[t]).abs().max())
    return float(max(errors))


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_tiny_models_match_transformers(model: str) -> None:
    ids = torch.randint(0, 256, (14,), generator=torch.Generator().manual_seed(3)).tolist()
    assert _max_logit_error(model, ids, prefill=9) <= 1e-4


@pytest.mark.slow
def test_smollm2_matches_transformers() -> None:
    _, _, tokenizer = load_model("smollm2-135m")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Explain in one sentence why the sky is blue."}],
        tokenize=False, add_generation_prompt=True,
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [504, 6079]
    assert _max_logit_error("smollm2-135m", ids, prefill=len(ids) - 4) <= 1e-4
