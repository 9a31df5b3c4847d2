"""The small interface the decoder and the KV policies are written against.

Values are torch tensors in the plaintext backend and CrypTen ``MPCTensor`` shares in the MPC backend;
both already share torch's reshaping, slicing, arithmetic and public-constant methods, so the forward
uses those directly. Everything that differs between plaintext and shares — products with secret
weights, non-linearities, the KV cache, cost accounting — goes through a :class:`TensorOps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

Value = Any  # torch.Tensor (plaintext) or crypten MPCTensor (shares)


class KVLayer(Protocol):
    """One layer's key/value cache, laid out per key/value head."""

    @property
    def length(self) -> int: ...

    def append(self, keys: Value, values: Value) -> None:
        """Add rows; ``keys`` and ``values`` are ``(n_kv_heads, new_tokens, head_dim)``."""

    def scores(self, queries: Value) -> Value:
        """``queries @ keys^T``: ``(n_kv, rows, head_dim)`` -> ``(n_kv, rows, length)``."""

    def mix(self, weights: Value) -> Value:
        """``weights @ values``: ``(n_kv, rows, length)`` -> ``(n_kv, rows, head_dim)``."""

    def release(self) -> None:
        """Let go of backend resources (the dealer's masks) once a KV policy drops this layer."""


class Operand(Protocol):
    """A value ``M`` that several products use, from either side (``TensorOps.operand``)."""

    def rmatmul(self, x: Value, transposed: bool = False) -> Value:
        """``x @ M``, or ``x @ M^T`` when ``transposed``."""

    def release(self) -> None:
        """Let go of backend resources once no product needs ``M``."""


class TensorOps(Protocol):
    def linear(self, x: Value, weight: str, bias: str | None = None) -> Value:
        """``x @ W[weight] (+ b[bias])`` with the model's secret weights."""

    def embed(self, tokens: Value) -> Value:
        """Embedding rows for one-hot token rows ``(T, vocab)``."""

    def weight_rows(self, name: str, index: torch.Tensor) -> Value:
        """Rows of a secret weight at public indices (learned positions)."""

    def cat(self, values: Sequence[Value], dim: int) -> Value: ...

    def normalize(self, x: Value, eps: float, center: bool, site: str, positions: torch.Tensor) -> Value:
        """``x / sqrt(mean(x^2) + eps)`` over the last dim (centred first for LayerNorm).

        ``site`` names the norm and ``positions`` are the rows' public positions; a backend may use
        them to pick public fixed-point scales (see ``pinfer.model.norm_plan``).
        """

    def softmax(self, x: Value, dim: int, mask: torch.Tensor | None = None) -> Value:
        """Softmax where ``mask`` (public 0/1, broadcastable) removes entries entirely."""

    def silu(self, x: Value) -> Value: ...

    def gelu(self, x: Value) -> Value: ...

    def argmax_onehot(self, x: Value, spread: float | None = None) -> Value:
        """One-hot of the last dimension's maximum (exactly one 1 per row). ``spread`` is a public
        bound on max - min of a row, which lets the MPC backend compare in narrower lanes; a row
        beyond it gives a wrong result, so pass only measured bounds with margin."""

    def topk_onehot(
        self, x: Value, k: int, spread: float | None = None, resolution: float | None = None
    ) -> Value:
        """``(..., n)`` -> ``(..., k, n)``: row r is the one-hot of the r-th largest entry (ties to the
        lower index), in the default value encoding. KV policies select tokens or clusters with it and
        gather them by a product with the cache, so which entries win never leaves the backend.
        ``spread`` as for :meth:`argmax_onehot`. ``resolution`` (public, real units) lets a backend
        rank entries closer than it either way (ties included) in exchange for cheaper comparisons;
        entries further apart keep their exact order, and every row still has exactly one 1 on
        distinct entries."""

    def new_kv_layer(self) -> KVLayer: ...

    def operand(self, m: Value) -> Operand:
        """``m`` prepared for several products: on shares its Beaver mask is opened once, so each
        product opens only the other factor (a selection one-hot used to pick and to route back)."""

    def section(self, operator: str) -> AbstractContextManager[None]:
        """Charge the enclosed work to an operator class (see ``pinfer.protocols.costs``)."""
