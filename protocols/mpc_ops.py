"""The MPC backend: the decoder's operations on CrypTen shares.

Weight matrices and the KV cache are :class:`FixedOperand` objects, so a token's online traffic is
independent of the model's size; biases and learned position tables are plain shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch

from . import crypten_compat  # noqa: F401
import crypten
from crypten.mpc import MPCTensor

from . import nonlinear, oblivious
from pinfer.model.norm_plan import NormShifts, row_shifts

from .costs import CostMeter
from .dealer import DealerProvider
from .fixed_operand import FixedOperand, OpeningQueue
from .sharing import FRACTIONAL_BITS, ShareBundle

# Shared tensors used as right operands of products; every other weight is added or indexed.
_MATRIX_SUFFIXES = ("wqkv", "wo", "w_gate_up", "w_down", "w_fc", "w_proj")


EXACT_TRUNCATION = frozenset({"wqkv", "w_gate_up", "w_down", "w_fc", "w_proj", "lm_head"})
"""Weights whose products are truncated exactly (one more round each) rather than locally: a local
truncation of a value v fails with probability |v| 2^-32, and these outputs carry most of a token's
sum of |v| (the logits, the MLP's wide rows, the residual stream's massive activations, up to 2.5e4
in SmolLM2's down projection; ``pinfer bench truncation`` measures it by site). The attention output
projection's round would put a decode token over its round budget."""


def _is_matrix(name: str) -> bool:
    return name in ("embed", "lm_head") or name.rsplit(".", 1)[-1] in _MATRIX_SUFFIXES


class MpcKVLayer:
    """Keys (stored transposed, ``(n_kv, head_dim, length)``) and values as fixed operands whose new
    rows are opened with the next score product's queries (``openings``, one queue per model)."""

    def __init__(self, provider: DealerProvider, openings: OpeningQueue) -> None:
        self._provider = provider
        self._openings = openings
        self._keys: FixedOperand | None = None
        self._values: FixedOperand | None = None

    @property
    def length(self) -> int:
        return 0 if self._keys is None else self._keys.shape[2]

    def append(self, keys: MPCTensor, values: MPCTensor) -> None:
        keys_t = keys.transpose(1, 2)
        if self._keys is None:
            self._keys = FixedOperand(self._provider, keys_t, queue=self._openings)
            self._values = FixedOperand(self._provider, values, queue=self._openings)
        else:
            self._keys.extend(keys_t, dim=2)
            self._values.extend(values, dim=1)

    def scores(self, queries: MPCTensor) -> MPCTensor:
        return self._keys.rmatmul(queries)

    def mix(self, weights: MPCTensor) -> MPCTensor:
        return self._values.rmatmul(weights)

    def release(self) -> None:
        for operand in (self._keys, self._values):
            if operand is not None:
                operand.release()


class MpcOps:
    """Operations on shares; ``weights`` are this party's shares of the folded model weights and
    ``norm_shifts`` the model's public norm scales (``pinfer.model.norm_plan``)."""

    def __init__(
        self, provider: DealerProvider, costs: CostMeter, weights: ShareBundle, norm_shifts: NormShifts
    ) -> None:
        self._provider = provider
        self._costs = costs
        self._norm_shifts = norm_shifts
        self._openings = OpeningQueue()
        self.matrices: dict[str, FixedOperand] = {}
        self.vectors: dict[str, MPCTensor] = {}
        with costs.in_phase("setup"):
            for name, value in weights.consume():
                shared = MPCTensor.from_shares(value, precision=FRACTIONAL_BITS)
                if _is_matrix(name):
                    self.matrices[name] = FixedOperand(provider, shared)
                else:
                    self.vectors[name] = shared

    def linear(self, x: MPCTensor, weight: str, bias: str | None = None) -> MPCTensor:
        y = self.matrices[weight].rmatmul(x, exact=weight.rsplit(".", 1)[-1] in EXACT_TRUNCATION)
        return y if bias is None else y + self.vectors[bias]

    def embed(self, tokens: MPCTensor) -> MPCTensor:
        return self.matrices["embed"].rmatmul(tokens)

    def weight_rows(self, name: str, index: torch.Tensor) -> MPCTensor:
        return self.vectors[name][index]

    def cat(self, values: Sequence[MPCTensor], dim: int) -> MPCTensor:
        return crypten.cat(list(values), dim=dim)

    def normalize(
        self, x: MPCTensor, eps: float, center: bool, site: str, positions: torch.Tensor
    ) -> MPCTensor:
        shift = row_shifts(self._norm_shifts, site, positions)
        return nonlinear.rms_normalize(x, eps, shift=shift, center=center)

    def softmax(self, x: MPCTensor, dim: int, mask: torch.Tensor | None = None) -> MPCTensor:
        return nonlinear.softmax(x, dim, mask=mask)

    def silu(self, x: MPCTensor) -> MPCTensor:
        return nonlinear.silu(x)

    def gelu(self, x: MPCTensor) -> MPCTensor:
        return nonlinear.gelu(x)

    def argmax_onehot(self, x: MPCTensor, spread: float | None = None) -> MPCTensor:
        return nonlinear.argmax_onehot(x, dim=-1, spread=spread)

    def topk_onehot(
        self, x: MPCTensor, k: int, spread: float | None = None, resolution: float | None = None
    ) -> MPCTensor:
        return oblivious.topk_onehot(x, k, spread, resolution)

    def new_kv_layer(self) -> MpcKVLayer:
        return MpcKVLayer(self._provider, self._openings)

    def operand(self, m: MPCTensor) -> FixedOperand:
        return FixedOperand(self._provider, m, scale=int(m.encoder.scale))

    def section(self, operator: str) -> AbstractContextManager[None]:
        return self._costs.section(operator)

    def use_costs(self, costs: CostMeter) -> None:
        """Charge later work to ``costs`` (each session has its own meter)."""
        self._costs = costs
