"""Load a local Hugging Face checkpoint into pinfer's canonical, family-independent weight names.

Why canonical names: the forward and the weight-share store are written once for both families, and
the MPC layer multiplies activations by weights as ``y = x @ W``. So every projection is stored as
``[d_in, d_out]`` (HF ``nn.Linear`` weights are ``[out, in]`` and are transposed here; GPT-2 ``Conv1D``
weights are already ``[in, out]``). All tensors are fp32. To keep a load of SmolLM2 well under a
second, nothing is copied: tensors are zero-copy views of the memory-mapped safetensors, so
transposed projections, GPT-2's split q/k/v and a tied ``lm_head`` (the view ``embed.T``, sharing
``embed``'s storage: share it once, not twice) are *non-contiguous*. Call ``.contiguous()`` before
``.view()``; matmuls and encodings work on them as they are. Tensors are read-only in spirit:
mutating one in place would change its aliases.

Canonical names (``d`` = hidden_size, ``H``/``Hkv`` = query/key-value heads, ``hd`` = head_dim,
``F`` = intermediate_size, ``V`` = vocab_size, ``P`` = max_positions, ``i`` = layer index)::

    embed                       [V, d]        token embedding table (row = token id)
    pos_embed                   [P, d]        gpt2 only: learned absolute positions
    layers.{i}.attn_norm.weight [d]           RMSNorm (llama) / LayerNorm (gpt2) gain before attention
    layers.{i}.attn_norm.bias   [d]           gpt2 only
    layers.{i}.wq               [d, H*hd]
    layers.{i}.wk               [d, Hkv*hd]
    layers.{i}.wv               [d, Hkv*hd]
    layers.{i}.wo               [H*hd, d]
    layers.{i}.bq / bk / bv     [H*hd] / [Hkv*hd] / [Hkv*hd]   gpt2, or llama with attention_bias
    layers.{i}.bo               [d]           gpt2, or llama with attention_bias
    layers.{i}.mlp_norm.weight  [d]           norm before the MLP
    layers.{i}.mlp_norm.bias    [d]           gpt2 only
    layers.{i}.w_gate           [d, F]        llama: down(silu(x @ w_gate) * (x @ w_up))
    layers.{i}.w_up             [d, F]        llama
    layers.{i}.w_down           [F, d]        llama
    layers.{i}.b_gate / b_up / b_down         llama with mlp_bias only
    layers.{i}.w_fc             [d, F]        gpt2: gelu_tanh(x @ w_fc + b_fc) @ w_proj + b_proj
    layers.{i}.b_fc             [F]           gpt2
    layers.{i}.w_proj           [F, d]        gpt2
    layers.{i}.b_proj           [d]           gpt2
    final_norm.weight           [d]
    final_norm.bias             [d]           gpt2 only
    lm_head                     [d, V]        logits = h @ lm_head; tied models: embed.T (a view)

Head layout: the columns of ``wq`` are grouped by head (head ``h`` owns columns ``h*hd:(h+1)*hd``),
likewise ``wk``/``wv``; query head ``h`` attends with key/value head ``h // (H // Hkv)``. LLaMA q/k
columns are in Hugging Face's order, so RoPE pairs dimension ``j`` with ``j + hd/2`` inside a head
(``rotate_half``), not adjacent dimensions as in the original Meta/llama.cpp layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from pinfer.model.config import ModelConfig

# Non-parameter tensors some checkpoints carry (buffers); they hold nothing the forward needs.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def read_safetensors_dir(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, HF names, as stored (single file or sharded)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        with index.open(encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors(.index.json) in {path}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name)))
    return state


def canonical_weights(state: Mapping[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename, transpose, split and cast an HF state dict to the canonical fp32 layout.

    Raises ``KeyError`` for a missing parameter and ``ValueError`` for a left-over one or a wrong
    shape, because a silently ignored tensor would only show up later as wrong logits.
    """
    if config.family == "llama":
        out, used = _llama(state, config)
    else:
        out, used = _gpt2(state, config)
    unused = sorted(k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if unused:
        raise ValueError(f"checkpoint tensors not understood by the {config.family} loader: {unused[:8]}")
    _check_shapes(out, config)
    return out


def load_weights(path: str | Path, config: ModelConfig | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint directory (``config.json`` + safetensors) into canonical weights."""
    config = config or ModelConfig.from_json_file(path)
    return canonical_weights(read_safetensors_dir(path), config)


class _Reader:
    """Looks names up under an optional prefix and records what was consumed."""

    def __init__(self, state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> None:
        self.state = state
        self.used: set[str] = set()
        candidates = [p for p in prefixes if any(k.startswith(p) for k in state)]
        self.prefix = candidates[0] if candidates else ""

    def has(self, name: str) -> bool:
        return self.prefix + name in self.state

    def get(self, name: str) -> torch.Tensor:
        key = self.prefix + name
        if key not in self.state:
            raise KeyError(f"checkpoint lacks {key!r}")
        self.used.add(key)
        return self.state[key].to(torch.float32)

    def get_root(self, key: str) -> torch.Tensor:
        """A name outside the base-model prefix (``lm_head.weight``)."""
        self.used.add(key)
        return self.state[key].to(torch.float32)


def _linear_t(w: torch.Tensor) -> torch.Tensor:
    """HF nn.Linear [out, in] -> canonical [in, out], as a view."""
    return w.t()


def _llama(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], set[str]]:
    r = _Reader(state, ("model.",))
    out: dict[str, torch.Tensor] = {"embed": r.get("embed_tokens.weight")}
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}.", f"layers.{i}."
        out[q + "attn_norm.weight"] = r.get(p + "input_layernorm.weight")
        for short, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
            out[q + "w" + short] = _linear_t(r.get(p + f"self_attn.{hf}.weight"))
            if cfg.attention_bias:
                out[q + "b" + short] = r.get(p + f"self_attn.{hf}.bias")
        out[q + "mlp_norm.weight"] = r.get(p + "post_attention_layernorm.weight")
        for short in ("gate", "up", "down"):
            out[q + f"w_{short}"] = _linear_t(r.get(p + f"mlp.{short}_proj.weight"))
            if cfg.mlp_bias:
                out[q + f"b_{short}"] = r.get(p + f"mlp.{short}_proj.bias")
    out["final_norm.weight"] = r.get("norm.weight")
    _head(out, r, cfg)
    return out, r.used


def _gpt2(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], set[str]]:
    # Checkpoints saved from GPT2LMHeadModel prefix "transformer."; OpenAI's originals (GPT2Model) don't.
    r = _Reader(state, ("transformer.",))
    d = cfg.hidden_size
    out: dict[str, torch.Tensor] = {
        "embed": r.get("wte.weight"),
        "pos_embed": r.get("wpe.weight"),
    }
    for i in range(cfg.n_layers):
        p, q = f"h.{i}.", f"layers.{i}."
        out[q + "attn_norm.weight"] = r.get(p + "ln_1.weight")
        out[q + "attn_norm.bias"] = r.get(p + "ln_1.bias")
        # Conv1D weights are already [in, out]; c_attn fuses q|k|v along the output axis.
        w_qkv, b_qkv = r.get(p + "attn.c_attn.weight"), r.get(p + "attn.c_attn.bias")
        for j, short in enumerate("qkv"):
            out[q + "w" + short] = w_qkv[:, j * d : (j + 1) * d]
            out[q + "b" + short] = b_qkv[j * d : (j + 1) * d]
        out[q + "wo"] = r.get(p + "attn.c_proj.weight")
        out[q + "bo"] = r.get(p + "attn.c_proj.bias")
        out[q + "mlp_norm.weight"] = r.get(p + "ln_2.weight")
        out[q + "mlp_norm.bias"] = r.get(p + "ln_2.bias")
        out[q + "w_fc"] = r.get(p + "mlp.c_fc.weight")
        out[q + "b_fc"] = r.get(p + "mlp.c_fc.bias")
        out[q + "w_proj"] = r.get(p + "mlp.c_proj.weight")
        out[q + "b_proj"] = r.get(p + "mlp.c_proj.bias")
    out["final_norm.weight"] = r.get("ln_f.weight")
    out["final_norm.bias"] = r.get("ln_f.bias")
    _head(out, r, cfg)
    return out, r.used


def _head(out: dict[str, torch.Tensor], r: _Reader, cfg: ModelConfig) -> None:
    """``lm_head`` [d, V]; a tied model may still store a copy of the embedding, which is skipped."""
    if cfg.tie_embeddings:
        if "lm_head.weight" in r.state:
            r.used.add("lm_head.weight")
        out["lm_head"] = out["embed"].t()
    else:
        if "lm_head.weight" not in r.state:
            raise KeyError("untied checkpoint lacks 'lm_head.weight'")
        out["lm_head"] = _linear_t(r.get_root("lm_head.weight"))


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for a config; the contract the loader and the share store check."""
    d, hd, f, v = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
    qd, kvd = cfg.n_heads * hd, cfg.n_kv_heads * hd
    shapes: dict[str, tuple[int, ...]] = {"embed": (v, d), "final_norm.weight": (d,), "lm_head": (d, v)}
    gpt2 = cfg.family == "gpt2"
    if gpt2:
        shapes["pos_embed"] = (cfg.max_positions, d)
        shapes["final_norm.bias"] = (d,)
    for i in range(cfg.n_layers):
        q = f"layers.{i}."
        shapes.update({q + "attn_norm.weight": (d,), q + "mlp_norm.weight": (d,)})
        shapes.update({q + "wq": (d, qd), q + "wk": (d, kvd), q + "wv": (d, kvd), q + "wo": (qd, d)})
        if cfg.attention_bias:
            shapes.update({q + "bq": (qd,), q + "bk": (kvd,), q + "bv": (kvd,), q + "bo": (d,)})
        if gpt2:
            shapes.update({q + "attn_norm.bias": (d,), q + "mlp_norm.bias": (d,)})
            shapes.update({q + "w_fc": (d, f), q + "b_fc": (f,), q + "w_proj": (f, d), q + "b_proj": (d,)})
        else:
            shapes.update({q + "w_gate": (d, f), q + "w_up": (d, f), q + "w_down": (f, d)})
            if cfg.mlp_bias:
                shapes.update({q + "b_gate": (f,), q + "b_up": (f,), q + "b_down": (d,)})
    return shapes


def _check_shapes(out: Mapping[str, torch.Tensor], cfg: ModelConfig) -> None:
    want = expected_shapes(cfg)
    if set(want) != set(out):
        raise ValueError(f"canonical names mismatch: missing {sorted(set(want) - set(out))[:5]}, "
                         f"extra {sorted(set(out) - set(want))[:5]}")
    bad = [(k, tuple(out[k].shape), s) for k, s in want.items() if tuple(out[k].shape) != s]
    if bad:
        raise ValueError(f"wrong shapes (name, got, want): {bad[:5]}")
