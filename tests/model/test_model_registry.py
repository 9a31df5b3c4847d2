"""Registry: materialise once into $PINFER_CACHE, deterministically, offline; load_model's contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pinfer.model import registry
from pinfer.model.config import ModelConfig
from pinfer.model.registry import load_model


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PINFER_CACHE", str(tmp_path))
    return tmp_path / "models"


def test_cache_root_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PINFER_CACHE", raising=False)
    assert registry.cache_root() == Path.home() / ".cache" / "pinfer" / "models"
    monkeypatch.setenv("PINFER_CACHE", str(tmp_path))
    assert registry.cache_root() == tmp_path / "models"


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_tiny_models_materialise_once_and_load(name: str, cache: Path, no_network: None) -> None:
    path = registry.materialize(name)
    assert path == cache / name and (path / registry.STAMP).is_file()
    assert not list(cache.glob(f".{name}.tmp-*"))  # the temporary build directory is gone
    stamp_mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert registry.materialize(name) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp_mtime  # not rebuilt

    config, weights, tokenizer = load_model(name)
    assert isinstance(config, ModelConfig) and config.vocab_size == 512 and config.n_layers == 2
    assert config.family == ("llama" if name == "tiny-llama" else "gpt2")
    assert tokenizer.decode(tokenizer.encode("private inference")) == "private inference"
    assert max(tokenizer.encode("ÿ€")) < config.vocab_size
    assert weights["lm_head"].shape == (64, 512)


def test_random_weights_are_deterministic_and_spread(cache: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Same seed -> same bits on every machine; tiny logits are spread so argmax is not a near-tie."""
    a = load_model("tiny-llama").weights
    monkeypatch.setenv("PINFER_CACHE", str(tmp_path / "other"))
    b = load_model("tiny-llama").weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["embed"].std().item() == pytest.approx(0.1, rel=0.05)
    assert 0.9 < a["layers.0.attn_norm.weight"].mean().item() < 1.1


def test_random_models_load_in_hf(cache: Path) -> None:
    """pinfer's random writer produces checkpoints transformers accepts, equal to the canonical view."""
    from transformers import AutoModelForCausalLM

    for name in ("tiny-llama", "tiny-gpt2"):
        path = registry.materialize(name)
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
        w = load_model(path).weights  # by path, not by name
        assert torch.equal(hf.get_input_embeddings().weight, w["embed"])
        assert torch.equal(hf.get_output_embeddings().weight.T, w["lm_head"])


def test_hub_is_offline() -> None:
    """conftest (and pinfer.model.registry) switch the Hugging Face libraries offline: nothing downloads."""
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE


def test_unknown_names_fail(cache: Path) -> None:
    with pytest.raises(KeyError, match="unknown model"):
        registry.materialize("gpt5")
    with pytest.raises(FileNotFoundError, match="neither a registry model"):
        load_model("no-such-model-or-dir")


def test_gpt2_family_sizes() -> None:
    for name, (d, layers, heads) in registry.GPT2_SIZES.items():
        cfg = ModelConfig.from_hf_dict(registry.gpt2_hf_config(d, layers, heads).to_dict())
        assert (cfg.hidden_size, cfg.n_layers, cfg.n_heads) == (d, layers, heads), name
        assert cfg.vocab_size == 50257 and cfg.max_positions == 1024 and cfg.intermediate_size == 4 * d


def test_cli_list_and_export(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert registry.main(["export", "tiny-gpt2"]) == 0
    assert "tiny-gpt2: exported" in capsys.readouterr().out
    assert registry.main(["export", "tiny-gpt2"]) == 0
    assert "tiny-gpt2: cached" in capsys.readouterr().out
    assert registry.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "smollm2-135m" in listing and "gpt2-base" in listing
    assert registry.main(["path", "tiny-gpt2"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "tiny-gpt2")
