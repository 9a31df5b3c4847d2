"""Public per-norm shifts that keep RMSNorm/LayerNorm on shares inside the fixed-point budget.

On shares a norm truncates each row's sum of squares once, and a truncation of a value V fails with
probability about |V| / 2^64; SmolLM2's first token carries activations of 2.5e4 from layer 11 on,
which would make that failure likely. ``nonlinear.rms_normalize`` therefore scales a row by a public
power of two first. The shifts are part of the model's public description: the model owner derives
them once, in plaintext, from the same decoder run on a fixed calibration set (never from a client's
prompt), separately for position 0 and for the other positions, with a margin.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pinfer.atomic_file import write_atomic
from pinfer.model.config import ModelConfig
from pinfer.model.corpus import essay_paths
from pinfer.model.decoder import Decoder, prepare_weights
from pinfer.model.generation import one_hot
from pinfer.model.plain_ops import PlainOps

NormShifts = dict[str, dict[str, int]]
"""Norm site (``L{i}.attn``, ``L{i}.mlp``, ``final``) -> {"first": shift at position 0, "rest": ...}."""

MARGIN_LOG2 = 2
"""Head-room over the calibration maxima: mean squares up to 4x larger keep the same failure bound."""

_CACHE_FILE = "norm_shifts.json"


def norm_shift(ms_max: float, hidden_size: int, budget_log2: int = 12) -> int:
    """Smallest public shift s (negative: scale up) with hidden_size * ms_max * 4^-s <= 2^budget_log2.

    ``rms_normalize(x, eps, shift=s)`` truncates the row's sum of squares of x 2^-s once; that value
    is hidden_size * ms * 4^-s in real units, and a truncation of it fails with probability about
    that times 2^-32, so the budget 2^12 means <= 2^-20 per row. The smallest such s keeps the most
    fractional bits for the smallest mean squares.
    """
    return math.ceil((math.log2(hidden_size * ms_max) - budget_log2) / 2)


def calibration_prompts(tokenizer: Any, essay_tokens: int = 1000) -> list[str]:
    """The calibration prompt set: chat-template and plain prompts plus one long essay slice.

    The essay slice is the start of the corpus's first essay (:mod:`pinfer.model.corpus`).
    """
    chats = [
        "What is the capital of France?",
        "Write a Python function that returns the n-th Fibonacci number, with a docstring.",
        "Explain in three sentences why the sky is blue.",
    ]
    plain = [
        "Once upon a time, there was a little girl named",
        "The history of the Roman Empire",
        "SELECT name, COUNT(*) FROM orders o JOIN users u ON o.user_id = u.id GROUP BY name HAVING",
        "1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765,",
        "Die Quantenmechanik beschreibt das Verhalten von Materie und Licht auf atomarer Ebene. "
        "Anders als die klassische Physik",
    ]
    if getattr(tokenizer, "chat_template", None):
        chats = [
            tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
            for c in chats
        ]
    prompts = chats + plain
    ids = tokenizer(essay_paths()[0].read_text(encoding="utf-8")).input_ids[:essay_tokens]
    prompts.append(tokenizer.decode(ids))
    return prompts


def row_shifts(shifts: Mapping[str, Mapping[str, int]], site: str, positions: torch.Tensor) -> torch.Tensor:
    """One shift per row of a norm's input, from the rows' public positions."""
    entry = shifts[site]
    return torch.where(positions == 0, entry["first"], entry["rest"]).to(torch.long)


class _RecordingOps(PlainOps):
    """The plaintext backend, noting each norm's largest mean square per position class."""

    def __init__(self, weights: Mapping[str, torch.Tensor]) -> None:
        super().__init__(weights)
        self.maxima: dict[str, dict[str, float]] = {}

    def normalize(self, x, eps, center, site, positions):  # type: ignore[override]
        centered = x - x.mean(dim=-1, keepdim=True) if center else x
        mean_square = (centered * centered).mean(dim=-1)
        seen = self.maxima.setdefault(site, {"first": 0.0, "rest": 0.0})
        for part, rows in (("first", positions == 0), ("rest", positions != 0)):
            if bool(rows.any()):
                seen[part] = max(seen[part], float(mean_square[rows].max()))
        return super().normalize(x, eps, center, site, positions)


def calibrate(config: ModelConfig, folded_weights: Mapping[str, torch.Tensor], prompts: Sequence[Sequence[int]]) -> NormShifts:
    """Shifts from the plaintext decoder's norm inputs over ``prompts`` (token id lists)."""
    ops = _RecordingOps(folded_weights)
    decoder = Decoder(config, ops)
    with torch.no_grad():
        for ids in prompts:
            ids = list(ids)[: config.max_positions]
            decoder.forward(one_hot(ids, config.vocab_size), decoder.new_cache(), 0)
    shifts: NormShifts = {}
    for site, maxima in ops.maxima.items():
        # A class the calibration never reached (the final norm sees only last positions) takes the
        # other class's maximum.
        first = maxima["first"] or maxima["rest"]
        rest = maxima["rest"] or maxima["first"]
        shifts[site] = {
            part: norm_shift(value * 2**MARGIN_LOG2, config.hidden_size)
            for part, value in (("first", first), ("rest", rest))
        }
    return shifts


def for_model(model_dir: Path, config: ModelConfig, weights: Mapping[str, torch.Tensor], tokenizer: Any) -> NormShifts:
    """The model's shifts, calibrated once on the standard prompt set and kept next to its weights."""
    cache = Path(model_dir) / _CACHE_FILE
    if cache.is_file():
        return json.loads(cache.read_text())
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in calibration_prompts(tokenizer)]
    shifts = calibrate(config, prepare_weights(config, weights), prompts)
    try:
        write_atomic(cache, json.dumps(shifts, indent=1, sort_keys=True).encode(), mode=0o644)
    except OSError:
        pass  # a read-only model directory (or a planted temp name): recalibrate next time
    return shifts
