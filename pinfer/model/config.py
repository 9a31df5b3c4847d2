"""Architecture description of a decoder-only model, independent of its Hugging Face family.

The forward (plaintext and MPC backends alike) is written once against this dataclass, so every
family-specific spelling of a hyper-parameter (``n_embd`` vs ``hidden_size``, ``n_layer`` vs
``num_hidden_layers``, ``rope_parameters`` vs the older ``rope_theta``...) is resolved here and only
here. Everything in a :class:`ModelConfig` is *public* under the threat model: the architecture and the
tokenizer are known to every party.

Two families are supported, matching the two forwards pinfer implements:

* ``"llama"`` (``model_type: llama``): RMSNorm, rotary positions (default RoPE only, HF's
  ``rotate_half`` pairing), grouped-query attention, SwiGLU MLP, optionally tied head.
* ``"gpt2"`` (``model_type: gpt2``): pre-LayerNorm with bias, learned absolute positions,
  multi-head attention, GeLU (tanh approximation, ``gelu_new``) MLP, tied head.

Variants whose numerics the forward does not implement (RoPE scaling, sliding windows, GPT-2's
inverse-layer-index attention scaling...) are rejected when parsed rather than silently mis-computed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Family = Literal["llama", "gpt2"]

_LLAMA_MODEL_TYPES = frozenset({"llama"})
_GPT2_MODEL_TYPES = frozenset({"gpt2"})


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters the forward needs, with one spelling for both families.

    ``head_dim * n_heads`` need not equal ``hidden_size`` for LLaMA-family models (it does for
    SmolLM2 and GPT-2). ``rope_theta`` is ``None`` for families with learned positions.
    ``eos_token_ids`` is a tuple because LLaMA-family configs may list several stop ids.
    """

    family: Family
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    norm_eps: float
    tie_embeddings: bool
    rope_theta: float | None
    activation: str
    attention_bias: bool
    mlp_bias: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.family not in ("llama", "gpt2"):
            raise ValueError(f"unknown family {self.family!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if (self.family == "llama") != (self.rope_theta is not None):
            raise ValueError("rope_theta must be set for llama and only for llama")

    @property
    def eos_token_id(self) -> int | None:
        """The first stop id, for callers that only need one."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def kv_group_size(self) -> int:
        """Query heads per key/value head (1 for plain multi-head attention)."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, e.g. for benchmark reports."""
        out = dataclasses.asdict(self)
        out["eos_token_ids"] = list(self.eos_token_ids)
        return out

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any]) -> ModelConfig:
        """Parse the contents of a Hugging Face ``config.json`` (LLaMA or GPT-2 family)."""
        model_type = hf.get("model_type")
        if model_type in _LLAMA_MODEL_TYPES:
            return _parse_llama(hf)
        if model_type in _GPT2_MODEL_TYPES:
            return _parse_gpt2(hf)
        raise ValueError(
            f"unsupported model_type {model_type!r}: pinfer implements "
            f"{sorted(_LLAMA_MODEL_TYPES | _GPT2_MODEL_TYPES)}"
        )

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelConfig:
        """Parse a ``config.json`` file, or the one inside a checkpoint directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        with path.open(encoding="utf-8") as f:
            return cls.from_hf_dict(json.load(f))


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _rope_theta(hf: Mapping[str, Any]) -> float:
    """RoPE base; transformers 5 nests it in ``rope_parameters``, older configs keep it top-level."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"RoPE type {rope_type!r} is not implemented (only 'default')")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


def _parse_llama(hf: Mapping[str, Any]) -> ModelConfig:
    if hf.get("sliding_window") not in (None, 0):
        raise ValueError("sliding-window attention is not implemented")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"llama hidden_act {hf['hidden_act']!r} is not implemented (only 'silu')")
    if int(hf.get("pretraining_tp", 1)) != 1:
        raise ValueError("pretraining_tp != 1 is not implemented")
    hidden = int(hf["hidden_size"])
    n_heads = int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim") or hidden // n_heads
    return ModelConfig(
        family="llama",
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=int(head_dim),
        intermediate_size=int(hf["intermediate_size"]),
        max_positions=int(hf.get("max_position_embeddings", 2048)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_theta=_rope_theta(hf),
        activation="silu",
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        bos_token_id=None if hf.get("bos_token_id") is None else int(hf["bos_token_id"]),
        eos_token_ids=_ids(hf.get("eos_token_id")),
        pad_token_id=None if hf.get("pad_token_id") is None else int(hf["pad_token_id"]),
    )


def _parse_gpt2(hf: Mapping[str, Any]) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"gpt2 activation {act!r} is not implemented (only the tanh GeLU)")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ValueError("GPT-2 attention variants (inverse-layer-idx scaling, upcast) are not implemented")
    if hf.get("scale_attn_weights", True) is not True:
        raise ValueError("GPT-2 without 1/sqrt(head_dim) attention scaling is not implemented")
    if hf.get("add_cross_attention"):
        raise ValueError("cross-attention is not implemented")
    hidden = int(hf["n_embd"])
    n_heads = int(hf["n_head"])
    if hidden % n_heads:
        raise ValueError(f"n_embd={hidden} is not a multiple of n_head={n_heads}")
    return ModelConfig(
        family="gpt2",
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        n_layers=int(hf["n_layer"]),
        n_heads=n_heads,
        n_kv_heads=n_heads,
        head_dim=hidden // n_heads,
        intermediate_size=int(hf.get("n_inner") or 4 * hidden),
        max_positions=int(hf["n_positions"]),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        rope_theta=None,
        activation="gelu_tanh",
        attention_bias=True,
        mlp_bias=True,
        bos_token_id=None if hf.get("bos_token_id") is None else int(hf["bos_token_id"]),
        eos_token_ids=_ids(hf.get("eos_token_id")),
        pad_token_id=None if hf.get("pad_token_id") is None else int(hf["pad_token_id"]),
    )
