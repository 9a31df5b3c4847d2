"""SmolLM2-135M: the exported safetensors cache is the GGUF model, and the loader reads it faithfully.

Slow: dequantising the GGUF takes about 20 s and 1.6 GB of memory. The export itself runs only once
per cache (scripts/setup.sh does it); this test reuses it.
"""

from __future__ import annotations

import time

import pytest
import torch

from pinfer.model import registry
from pinfer.model.registry import load_model

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smollm2_dir():  # type: ignore[no-untyped-def]
    return registry.materialize("smollm2-135m")


def test_export_round_trip_logits(smollm2_dir, no_network: None) -> None:  # type: ignore[no-untyped-def]
    """Exported safetensors model logits == GGUF-loaded model logits (the recipe of specs/models.md)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = registry.smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        ref_model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        ).eval()
        ref = ref_model(ids).logits
        del ref_model
        exported = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32,
                                                        local_files_only=True).eval()
        got = exported(ids).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    # The exported tokenizer is the GGUF's.
    _, _, cached_tok = load_model("smollm2-135m")
    assert cached_tok.encode(PROMPT) == ids[0].tolist()
    assert " Paris" in cached_tok.decode(got[0, -1].topk(3).indices.tolist())


def test_config_and_canonical_weights(smollm2_dir, no_network: None) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    cfg, w, tok = load_model("smollm2-135m")
    load_s = time.perf_counter() - t0
    assert (cfg.family, cfg.vocab_size, cfg.hidden_size, cfg.n_layers) == ("llama", 49152, 576, 30)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.intermediate_size) == (9, 3, 64, 1536)
    assert cfg.rope_theta == 100000.0 and cfg.tie_embeddings and cfg.eos_token_id == tok.eos_token_id == 2
    assert sum(t.numel() for k, t in w.items() if k != "lm_head") == 134_515_008
    assert load_s < 10  # typically ~0.4 s warm (weights are memory-mapped views); generous for CI
    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32, local_files_only=True)
    for i in (0, 29):
        layer = hf.model.layers[i]
        assert torch.equal(w[f"layers.{i}.wk"], layer.self_attn.k_proj.weight.T)
        assert torch.equal(w[f"layers.{i}.w_down"], layer.mlp.down_proj.weight.T)
        assert torch.equal(w[f"layers.{i}.attn_norm.weight"], layer.input_layernorm.weight)
    assert torch.equal(w["lm_head"], hf.lm_head.weight.T)
