"""Canonical weights equal the Hugging Face module's parameters, transposed where documented."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pinfer.model.config import ModelConfig
from pinfer.model.registry import GPT2_SIZES, gpt2_hf_config
from pinfer.model.weights import canonical_weights, expected_shapes, load_weights, read_safetensors_dir


def _hf_model(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True).eval()


def _check_llama(path: Path) -> None:
    cfg = ModelConfig.from_json_file(path)
    w = load_weights(path, cfg)
    hf = _hf_model(path)
    assert set(w) == set(expected_shapes(cfg))
    assert all(t.dtype == torch.float32 for t in w.values())
    assert torch.equal(w["embed"], hf.model.embed_tokens.weight)
    assert torch.equal(w["final_norm.weight"], hf.model.norm.weight)
    x = torch.randn(3, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    for i, layer in enumerate(hf.model.layers):
        q = f"layers.{i}."
        assert torch.equal(w[q + "attn_norm.weight"], layer.input_layernorm.weight)
        assert torch.equal(w[q + "mlp_norm.weight"], layer.post_attention_layernorm.weight)
        for short, mod in (("q", layer.self_attn.q_proj), ("k", layer.self_attn.k_proj),
                           ("v", layer.self_attn.v_proj), ("o", layer.self_attn.o_proj)):
            assert torch.equal(w[q + "w" + short], mod.weight.T)  # nn.Linear [out, in] -> [in, out]
            if cfg.attention_bias:
                assert torch.equal(w[q + "b" + short], mod.bias)
        for short, mod in (("gate", layer.mlp.gate_proj), ("up", layer.mlp.up_proj), ("down", layer.mlp.down_proj)):
            assert torch.equal(w[q + f"w_{short}"], mod.weight.T)
            if cfg.mlp_bias:
                assert torch.equal(w[q + f"b_{short}"], mod.bias)
        # y = x @ W (+ b) reproduces the HF projection: the layout contract the forward relies on.
        with torch.no_grad():
            ref_q = layer.self_attn.q_proj(x)
            ref_down = layer.mlp.down_proj(torch.ones(3, cfg.intermediate_size))
        got_q = x @ w[q + "wq"] + (w[q + "bq"] if cfg.attention_bias else 0)
        got_down = torch.ones(3, cfg.intermediate_size) @ w[q + "w_down"] + (w[q + "b_down"] if cfg.mlp_bias else 0)
        torch.testing.assert_close(got_q, ref_q, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got_down, ref_down, rtol=1e-6, atol=1e-6)
    assert torch.equal(w["lm_head"], hf.lm_head.weight.T)
    if cfg.tie_embeddings:
        assert w["lm_head"].data_ptr() == w["embed"].data_ptr()  # a view, not a second copy


def test_llama_tied(tiny_llama_dir: Path) -> None:
    _check_llama(tiny_llama_dir)


def test_llama_untied_with_biases(tiny_checkpoint: Callable[..., Path]) -> None:
    _check_llama(tiny_checkpoint("llama", seed=3, tie_word_embeddings=False, attention_bias=True, mlp_bias=True))


def test_gpt2(tiny_gpt2_dir: Path) -> None:
    cfg = ModelConfig.from_json_file(tiny_gpt2_dir)
    w = load_weights(tiny_gpt2_dir, cfg)
    hf = _hf_model(tiny_gpt2_dir)
    t = hf.transformer
    d = cfg.hidden_size
    assert set(w) == set(expected_shapes(cfg))
    assert torch.equal(w["embed"], t.wte.weight) and torch.equal(w["pos_embed"], t.wpe.weight)
    assert torch.equal(w["final_norm.weight"], t.ln_f.weight) and torch.equal(w["final_norm.bias"], t.ln_f.bias)
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(1))
    for i, block in enumerate(t.h):
        q = f"layers.{i}."
        assert torch.equal(w[q + "attn_norm.weight"], block.ln_1.weight)
        assert torch.equal(w[q + "attn_norm.bias"], block.ln_1.bias)
        assert torch.equal(w[q + "mlp_norm.weight"], block.ln_2.weight)
        assert torch.equal(w[q + "mlp_norm.bias"], block.ln_2.bias)
        # Conv1D is already [in, out]; c_attn is split q | k | v along its output axis.
        assert torch.equal(torch.cat([w[q + "wq"], w[q + "wk"], w[q + "wv"]], 1), block.attn.c_attn.weight)
        assert torch.equal(torch.cat([w[q + "bq"], w[q + "bk"], w[q + "bv"]]), block.attn.c_attn.bias)
        assert torch.equal(w[q + "wo"], block.attn.c_proj.weight) and torch.equal(w[q + "bo"], block.attn.c_proj.bias)
        assert torch.equal(w[q + "w_fc"], block.mlp.c_fc.weight) and torch.equal(w[q + "b_fc"], block.mlp.c_fc.bias)
        assert torch.equal(w[q + "w_proj"], block.mlp.c_proj.weight)
        assert torch.equal(w[q + "b_proj"], block.mlp.c_proj.bias)
        with torch.no_grad():
            ref_q, ref_k, ref_v = block.attn.c_attn(x).split(d, dim=-1)
        for name, ref in (("q", ref_q), ("k", ref_k), ("v", ref_v)):
            torch.testing.assert_close(x @ w[q + "w" + name] + w[q + "b" + name], ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(w["lm_head"], hf.lm_head.weight.T)
    assert w["lm_head"].data_ptr() == w["embed"].data_ptr()


def test_gpt2_original_names_without_prefix(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    """OpenAI's GPT-2 checkpoints have no ``transformer.`` prefix and carry ``attn.bias`` mask buffers."""
    state = load_file(str(tiny_gpt2_dir / "model.safetensors"))
    renamed = {k.removeprefix("transformer."): v.clone() for k, v in state.items()}
    renamed["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
    save_file(renamed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_bytes((tiny_gpt2_dir / "config.json").read_bytes())
    got, want = load_weights(tmp_path), load_weights(tiny_gpt2_dir)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sharded_checkpoint(family: str, tiny_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    src = tiny_checkpoint(family)
    _hf_model(src).save_pretrained(str(tmp_path), max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    got, want = load_weights(tmp_path), load_weights(src)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_missing_and_unexpected_tensors_fail_loudly(tiny_llama_dir: Path) -> None:
    cfg = ModelConfig.from_json_file(tiny_llama_dir)
    state = read_safetensors_dir(tiny_llama_dir)
    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(KeyError, match="up_proj"):
        canonical_weights(missing, cfg)
    with pytest.raises(ValueError, match="not understood"):
        canonical_weights({**state, "model.layers.0.self_attn.q_norm.weight": torch.ones(16)}, cfg)
    with pytest.raises(ValueError, match="wrong shapes"):
        canonical_weights({**state, "model.norm.weight": torch.ones(65)}, cfg)


def test_expected_shapes_match_published_parameter_counts() -> None:
    """GPT-2 base has 124,439,808 parameters and SmolLM2-135M 134,515,008 (tied heads counted once)."""
    from transformers import LlamaConfig

    def count(cfg: ModelConfig) -> int:
        return sum(torch.Size(s).numel() for k, s in expected_shapes(cfg).items() if k != "lm_head")

    gpt2 = gpt2_hf_config(*GPT2_SIZES["gpt2-base"]).to_dict()
    assert count(ModelConfig.from_hf_dict(gpt2)) == 124_439_808
    smol = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True).to_dict()
    assert count(ModelConfig.from_hf_dict(smol)) == 134_515_008
