"""Move a policy cache built in plaintext onto shares: the cost bench's stand-in for an MPC prefill.

An MPC prefill of thousands of tokens is far too slow for a 2-core host, and a decode step's cost on
shares does not depend on the cache's contents (every selection is oblivious: same operations, same
traffic, whatever the data), only on its public shape. So the bench prefills in plaintext, splits the
resulting cache tree into a public skeleton and its tensors (after a prefill every tensor a policy
cache holds is secret: keys, values, scores, keep bits, selections), secret-shares the tensors, and
each party rebuilds the same tree over its shares and the MPC backend. Shared references (MPCache's
cross-layer board) stay shared.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from pinfer.model.plain_ops import PlainKVLayer, PlainOps


@dataclass(frozen=True)
class _Secret:
    name: str


@dataclass(frozen=True)
class _SecretLayer:
    keys: str | None  # None: an empty (or released) layer
    values: str | None


class _Backend:
    """Where the skeleton held the plaintext backend's ops."""


def split_secrets(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """A public skeleton of ``tree`` and its secret tensors by placeholder name."""
    tensors: dict[str, torch.Tensor] = {}
    memo: dict[int, Any] = {}

    def walk(node: Any) -> Any:
        if id(node) in memo:
            return memo[id(node)]
        if isinstance(node, torch.Tensor):
            out: Any = _Secret(f"t{len(tensors)}")
            tensors[out.name] = node.detach()
        elif isinstance(node, PlainOps):
            out = _Backend()
        elif isinstance(node, PlainKVLayer):
            if node.keys is None:
                out = _SecretLayer(None, None)
            else:
                out = _SecretLayer(walk(node.keys).name, walk(node.values).name)
        elif isinstance(node, list):
            out = [walk(x) for x in node]
        elif isinstance(node, tuple):
            out = tuple(walk(x) for x in node)
        elif isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
        elif hasattr(node, "__dict__") and not isinstance(node, type):
            out = copy.copy(node)
            memo[id(node)] = out
            for key, value in vars(node).items():
                object.__setattr__(out, key, walk(value))
            return out
        else:
            out = node
        memo[id(node)] = out
        return out

    return walk(tree), tensors


def join_secrets(skeleton: Any, shares: dict[str, torch.Tensor], ops: Any) -> Any:
    """On a party: the skeleton with shares in place of secrets and ``ops`` (the MPC backend)."""
    from pinfer.protocols import crypten_compat  # noqa: F401
    from crypten.mpc import MPCTensor

    from pinfer.protocols.sharing import FRACTIONAL_BITS

    memo: dict[int, Any] = {}

    def secret(name: str) -> Any:
        return MPCTensor.from_shares(shares[name], precision=FRACTIONAL_BITS)

    def walk(node: Any) -> Any:
        if id(node) in memo:
            return memo[id(node)]
        if isinstance(node, _Secret):
            out: Any = secret(node.name)
        elif isinstance(node, _Backend):
            out = ops
        elif isinstance(node, _SecretLayer):
            out = ops.new_kv_layer()
            if node.keys is not None:
                out.append(secret(node.keys), secret(node.values))
        elif isinstance(node, list):
            out = [walk(x) for x in node]
        elif isinstance(node, tuple):
            out = tuple(walk(x) for x in node)
        elif isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
        elif hasattr(node, "__dict__") and not isinstance(node, type):
            out = node
            memo[id(node)] = out
            for key, value in vars(node).items():
                object.__setattr__(out, key, walk(value))
            return out
        else:
            out = node
        memo[id(node)] = out
        return out

    return walk(skeleton)
