"""ModelConfig parsing: both families, both config spellings, and loud rejection of unsupported variants."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pinfer.model.config import ModelConfig

# SmolLM2-135M-Instruct's config.json as transformers 5 writes it (rope nested in rope_parameters).
SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "intermediate_size": 1536, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "tie_word_embeddings": True,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "hidden_act": "silu",
    "attention_bias": False, "mlp_bias": False,
}

# GPT-2 base as on the hub (no tie flag: GPT-2 ties by default; n_inner null means 4 * n_embd).
GPT2_BASE = {
    "model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
    "n_head": 12, "n_inner": None, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
    "bos_token_id": 50256, "eos_token_id": 50256,
}


def test_llama_smollm2() -> None:
    cfg = ModelConfig.from_hf_dict(SMOLLM2)
    assert (cfg.family, cfg.vocab_size, cfg.hidden_size, cfg.n_layers) == ("llama", 49152, 576, 30)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.kv_group_size) == (9, 3, 64, 3)
    assert cfg.intermediate_size == 1536 and cfg.max_positions == 8192
    assert cfg.rope_theta == 100000.0 and cfg.norm_eps == 1e-5 and cfg.tie_embeddings
    assert cfg.bos_token_id == 1 and cfg.eos_token_ids == (2,) and cfg.eos_token_id == 2
    assert cfg.pad_token_id == 2 and cfg.activation == "silu"
    assert not cfg.attention_bias and not cfg.mlp_bias


def test_llama_legacy_spelling_and_defaults() -> None:
    """Older configs: top-level rope_theta, no head_dim / num_key_value_heads, eos as a list."""
    hf = {k: v for k, v in SMOLLM2.items() if k not in ("rope_parameters", "head_dim", "num_key_value_heads")}
    hf.update(rope_theta=500000.0, eos_token_id=[2, 7], tie_word_embeddings=False)
    cfg = ModelConfig.from_hf_dict(hf)
    assert cfg.rope_theta == 500000.0
    assert cfg.head_dim == 576 // 9 and cfg.n_kv_heads == 9
    assert cfg.eos_token_ids == (2, 7) and cfg.eos_token_id == 2
    assert not cfg.tie_embeddings


def test_gpt2_base() -> None:
    cfg = ModelConfig.from_hf_dict(GPT2_BASE)
    assert (cfg.family, cfg.vocab_size, cfg.hidden_size, cfg.n_layers) == ("gpt2", 50257, 768, 12)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (12, 12, 64)
    assert cfg.intermediate_size == 3072 and cfg.max_positions == 1024
    assert cfg.rope_theta is None and cfg.tie_embeddings and cfg.activation == "gelu_tanh"
    assert cfg.attention_bias and cfg.mlp_bias and cfg.eos_token_ids == (50256,)


@pytest.mark.parametrize(
    "hf_config_factory",
    ["tiny_llama_hf_config", "tiny_gpt2_hf_config"],
)
def test_hf_config_objects_round_trip(hf_config_factory: str, tmp_path: Path) -> None:
    """What transformers itself writes to config.json parses to the same values as its attributes."""
    from pinfer.model import registry

    hf = getattr(registry, hf_config_factory)()
    hf.save_pretrained(str(tmp_path))
    cfg = ModelConfig.from_json_file(tmp_path)  # a directory is accepted
    assert cfg == ModelConfig.from_json_file(tmp_path / "config.json")
    assert cfg.vocab_size == hf.vocab_size == 512 and cfg.hidden_size == 64 and cfg.n_layers == 2
    assert cfg.n_heads == 4 and cfg.n_kv_heads == (2 if cfg.family == "llama" else 4)
    assert json.loads(json.dumps(cfg.to_dict()))["family"] == cfg.family


def test_frozen() -> None:
    cfg = ModelConfig.from_hf_dict(GPT2_BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("base", "change", "match"),
    [
        (SMOLLM2, {"model_type": "mistral"}, "unsupported model_type"),
        (SMOLLM2, {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "RoPE type"),
        (SMOLLM2, {"sliding_window": 4096}, "sliding-window"),
        (SMOLLM2, {"hidden_act": "gelu"}, "hidden_act"),
        (SMOLLM2, {"num_key_value_heads": 4}, "multiple of n_kv_heads"),
        (GPT2_BASE, {"scale_attn_by_inverse_layer_idx": True}, "inverse-layer-idx"),
        (GPT2_BASE, {"activation_function": "relu"}, "activation"),
        (GPT2_BASE, {"n_head": 7}, "multiple of n_head"),
    ],
)
def test_rejects_unsupported(base: dict[str, Any], change: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf_dict({**base, **change})
