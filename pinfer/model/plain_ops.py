"""The plaintext backend: the reference the MPC backend is measured against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from pinfer.model.tensor_ops import KVLayer


class PlainKVLayer:
    """Keys and values as ``(n_kv_heads, length, head_dim)`` tensors."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[1]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys = keys if self.keys is None else torch.cat([self.keys, keys], dim=1)
        self.values = values if self.values is None else torch.cat([self.values, values], dim=1)

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        return queries @ self.keys.transpose(1, 2)

    def mix(self, weights: torch.Tensor) -> torch.Tensor:
        return weights @ self.values

    def release(self) -> None:
        self.keys = self.values = None


class PlainOperand:
    def __init__(self, m: torch.Tensor) -> None:
        self._m = m

    def rmatmul(self, x: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        return x @ (self._m.transpose(-1, -2) if transposed else self._m)

    def release(self) -> None:
        self._m = None


class PlainOps:
    """Exact fp32 operations on plaintext tensors."""

    def __init__(self, weights: Mapping[str, torch.Tensor]) -> None:
        self.weights = weights

    def linear(self, x: torch.Tensor, weight: str, bias: str | None = None) -> torch.Tensor:
        y = x @ self.weights[weight]
        return y if bias is None else y + self.weights[bias]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens @ self.weights["embed"]

    def weight_rows(self, name: str, index: torch.Tensor) -> torch.Tensor:
        return self.weights[name][index]

    def cat(self, values: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
        return torch.cat(list(values), dim=dim)

    def normalize(
        self, x: torch.Tensor, eps: float, center: bool, site: str, positions: torch.Tensor
    ) -> torch.Tensor:
        if center:
            x = x - x.mean(dim=-1, keepdim=True)
        return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps)

    def softmax(self, x: torch.Tensor, dim: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            x = x.masked_fill(mask == 0, float("-inf"))
        return torch.softmax(x, dim=dim)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")

    def argmax_onehot(self, x: torch.Tensor, spread: float | None = None) -> torch.Tensor:
        return F.one_hot(x.argmax(dim=-1), x.shape[-1]).to(x.dtype)

    def topk_onehot(
        self, x: torch.Tensor, k: int, spread: float | None = None, resolution: float | None = None
    ) -> torch.Tensor:
        """The exact top-k (stable: ties to the lower index); ``spread`` and ``resolution`` are
        accepted and ignored."""
        order = torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]
        return F.one_hot(order, x.shape[-1]).to(x.dtype)

    def new_kv_layer(self) -> KVLayer:
        return PlainKVLayer()

    def operand(self, m: torch.Tensor) -> PlainOperand:
        return PlainOperand(m)

    def section(self, operator: str) -> AbstractContextManager[None]:
        return nullcontext()
