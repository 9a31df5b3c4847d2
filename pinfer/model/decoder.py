"""The decoder forward, written once for every backend (LLaMA and GPT-2 families).

Reads like the torch reference: values support torch's reshaping, slicing and arithmetic whether they
are plaintext tensors or shares; products with weights, non-linearities and the KV cache go through a
:class:`~pinfer.model.tensor_ops.TensorOps`. The norms' gains (and LayerNorm biases) are folded into the
next projection and projections that read the same input are fused by :func:`prepare_weights`, so a
norm costs no secret product and q/k/v (and gate/up) cost one opened input instead of three (two).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import torch

from pinfer.model.config import ModelConfig
from pinfer.model.tensor_ops import KVLayer, TensorOps, Value


class KVCachePolicy(Protocol):
    """What the decoder asks of a KV-cache policy (``pinfer.kvcache``'s, which sit above this layer):
    the per-layer caches to run on instead of the backend's own."""

    def new_cache(self, config: ModelConfig, ops: TensorOps) -> list[KVLayer]: ...


def prepare_weights(config: ModelConfig, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights the forward runs on: norms folded (:func:`fold_norms`), shared-input projections
    fused column-wise into ``layers.{i}.wqkv`` (+ ``bqkv``) and, for LLaMA, ``layers.{i}.w_gate_up``."""
    folded = fold_norms(config, weights)
    for i in range(config.n_layers):
        groups = [("wqkv", "bqkv", ("wq", "wk", "wv"), ("bq", "bk", "bv"))]
        if config.family == "llama":
            groups.append(("w_gate_up", "b_gate_up", ("w_gate", "w_up"), ("b_gate", "b_up")))
        for fused, fused_bias, parts, biases in groups:
            matrices = [folded.pop(f"layers.{i}.{p}") for p in parts]
            folded[f"layers.{i}.{fused}"] = torch.cat(matrices, dim=1)
            if f"layers.{i}.{biases[0]}" in folded:
                folded[f"layers.{i}.{fused_bias}"] = torch.cat([folded.pop(f"layers.{i}.{b}") for b in biases])
    return folded


def fold_norms(config: ModelConfig, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move each norm's gain (and bias) into the projections that read the normalised value.

    ``norm(x) * g @ W + c == norm(x) @ (g[:, None] * W) + c`` and, with a LayerNorm bias ``b``,
    ``+ b @ W``. Done in plaintext by the model owner before sharing; exact up to fp32 rounding.
    """
    folded = {k: v for k, v in weights.items() if not k.endswith((".weight", ".bias")) or "norm" not in k}
    targets: dict[str, tuple[str, ...]] = {}
    for i in range(config.n_layers):
        attn = tuple(f"layers.{i}.{w}" for w in ("wq", "wk", "wv"))
        mlp = (f"layers.{i}.w_gate", f"layers.{i}.w_up") if config.family == "llama" else (f"layers.{i}.w_fc",)
        targets[f"layers.{i}.attn_norm"] = attn
        targets[f"layers.{i}.mlp_norm"] = mlp
    targets["final_norm"] = ("lm_head",)
    for norm, projections in targets.items():
        gain = weights[f"{norm}.weight"]
        shift = weights.get(f"{norm}.bias")
        for name in projections:
            w = weights[name]
            folded[name] = gain[:, None] * w
            if shift is not None:
                bias_name = _bias_name(name)
                base = weights.get(bias_name, torch.zeros(w.shape[1]))
                folded[bias_name] = base + shift @ w
    return folded


def _bias_name(weight: str) -> str:
    prefix, _, leaf = weight.rpartition(".")
    bias_leaf = {"wq": "bq", "wk": "bk", "wv": "bv", "w_fc": "b_fc", "w_gate": "b_gate", "w_up": "b_up",
                 "lm_head": "lm_head_bias"}[leaf]
    return f"{prefix}.{bias_leaf}" if prefix else bias_leaf


def rope_tables(config: ModelConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(T, head_dim)`` for Hugging Face's rotate-half RoPE pairing."""
    assert config.rope_theta is not None
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, half, dtype=torch.float64) / half))
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def causal_mask(n_queries: int, start: int, n_keys: int) -> torch.Tensor | None:
    """Public 0/1 mask ``(n_queries, n_keys)``: query ``t`` (position ``start + t``) sees keys ``<= start + t``."""
    if n_queries == 1:
        return None
    query_pos = torch.arange(start, start + n_queries)[:, None]
    return (torch.arange(n_keys)[None, :] <= query_pos).float()


class Decoder:
    """A decoder-only transformer over a backend; the KV cache is explicit and owned by the caller."""

    def __init__(self, config: ModelConfig, ops: TensorOps, kv_policy: KVCachePolicy | None = None) -> None:
        self.config = config
        self.ops = ops
        self.kv_policy = kv_policy

    def new_cache(self) -> list[KVLayer]:
        """One cache layer per decoder layer: the backend's own, or a KV policy's wrappers of them."""
        if self.kv_policy is not None:
            return self.kv_policy.new_cache(self.config, self.ops)
        return [self.ops.new_kv_layer() for _ in range(self.config.n_layers)]

    def forward(self, tokens: Value, cache: list[KVLayer], start: int) -> Value:
        """Run one-hot ``tokens`` ``(T, vocab)`` at positions ``start..start+T-1``; logits of the last."""
        cfg, ops = self.config, self.ops
        n_tokens = tokens.shape[0]
        positions = torch.arange(start, start + n_tokens)
        with ops.section("embed"):
            x = ops.embed(tokens)
            if cfg.family == "gpt2":
                x = x + ops.weight_rows("pos_embed", positions)
        for i, layer in enumerate(cache):
            x = x + self._attention(i, self._normalize(x, f"L{i}.attn", positions), layer, positions)
            x = x + self._mlp(i, self._normalize(x, f"L{i}.mlp", positions))
        last = self._normalize(x[-1:], "final", positions[-1:])
        with ops.section("linear"):
            bias = "lm_head_bias" if cfg.family == "gpt2" else None
            return ops.linear(last, "lm_head", bias)

    def _normalize(self, x: Value, site: str, positions: torch.Tensor) -> Value:
        """RMSNorm (llama) or LayerNorm (gpt2) without gain and bias (folded into the next linear)."""
        with self.ops.section("norm"):
            return self.ops.normalize(x, self.config.norm_eps, self.config.family == "gpt2", site, positions)

    def _attention(self, i: int, h: Value, cache: KVLayer, positions: torch.Tensor) -> Value:
        cfg, ops = self.config, self.ops
        n_tokens, hd, n_kv, group = h.shape[0], cfg.head_dim, cfg.n_kv_heads, cfg.kv_group_size
        biased = cfg.attention_bias or cfg.family == "gpt2"
        with ops.section("linear"):
            qkv = ops.linear(h, f"layers.{i}.wqkv", f"layers.{i}.bqkv" if biased else None)
        with ops.section("attention"):
            q_width, kv_width = cfg.n_heads * hd, n_kv * hd
            q = qkv[:, :q_width]
            k = qkv[:, q_width : q_width + kv_width]
            v = qkv[:, q_width + kv_width :]
            q = q.reshape(n_tokens, cfg.n_heads, hd).transpose(0, 1)
            k = k.reshape(n_tokens, n_kv, hd).transpose(0, 1)
            v = v.reshape(n_tokens, n_kv, hd).transpose(0, 1)
            scale = 1.0 / math.sqrt(hd)
            if cfg.family == "llama":
                cos, sin = rope_tables(cfg, positions)
                # The 1/sqrt(hd) score scale rides on the queries' public RoPE factors: one truncation.
                q = self._rotate(q, cos * scale, sin * scale)
                k = self._rotate(k, cos, sin)
            else:
                q = q * scale
            cache.append(k, v)
            # Query heads sharing a key/value head become extra rows of that head's product.
            q = q.reshape(n_kv, group * n_tokens, hd)
            scores = cache.scores(q)
        mask = causal_mask(n_tokens, int(positions[0]), cache.length)
        with ops.section("softmax"):
            weights = ops.softmax(scores, dim=-1, mask=None if mask is None else mask.repeat(group, 1))
        with ops.section("attention"):
            mixed = cache.mix(weights).reshape(n_kv * group, n_tokens, hd)
            mixed = mixed.transpose(0, 1).reshape(n_tokens, cfg.n_heads * hd)
        with ops.section("linear"):
            return ops.linear(mixed, f"layers.{i}.wo", f"layers.{i}.bo" if biased else None)

    def _rotate(self, x: Value, cos: torch.Tensor, sin: torch.Tensor) -> Value:
        half = self.config.head_dim // 2
        rotated = self.ops.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _mlp(self, i: int, h: Value) -> Value:
        cfg, ops = self.config, self.ops
        if cfg.family == "llama":
            with ops.section("linear"):
                gate_up = ops.linear(h, f"layers.{i}.w_gate_up", f"layers.{i}.b_gate_up" if cfg.mlp_bias else None)
            gate, up = gate_up[:, : cfg.intermediate_size], gate_up[:, cfg.intermediate_size :]
            with ops.section("activation"):
                inner = ops.silu(gate) * up
            with ops.section("linear"):
                return ops.linear(inner, f"layers.{i}.w_down", f"layers.{i}.b_down" if cfg.mlp_bias else None)
        with ops.section("linear"):
            inner = ops.linear(h, f"layers.{i}.w_fc", f"layers.{i}.b_fc")
        with ops.section("activation"):
            inner = ops.gelu(inner)
        with ops.section("linear"):
            return ops.linear(inner, f"layers.{i}.w_proj", f"layers.{i}.b_proj")
