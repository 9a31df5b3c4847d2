"""Measure the activation ranges the MPC non-linearities see, on a real Hugging Face model.

Every MPC approximation in :mod:`pinfer.protocols.nonlinear` (exp, reciprocal, rsqrt, SiLU, GeLU,
argmax) is only accurate on a bounded input domain, so the domains are chosen from measurements, not
guessed. :func:`measure_activation_ranges` hooks a plaintext ``transformers`` decoder (LLaMA or GPT-2
family) and records, per layer, the values that reach each non-linearity:

* ``norm_attn_in`` / ``norm_mlp_in`` - the statistic ``rsqrt`` receives in the pre-attention and
  pre-MLP norms: the mean square of the hidden state (RMSNorm) or its variance (LayerNorm), before eps.
* ``attn_logits`` - attention scores after the ``1/sqrt(d)`` scaling, causal entries only.
* ``attn_spread`` - the same scores minus their row maximum (what ``exp`` receives, always <= 0).
* ``softmax_denominator`` - ``sum(exp(score - rowmax))`` over the causal row (what ``reciprocal``
  receives, in ``[1, T]``).
* ``act_in`` - the MLP activation input (SiLU gate projection for LLaMA, GeLU input for GPT-2).
* ``norm_attn_absmax`` / ``norm_mlp_absmax`` - per token, the largest |hidden| entering the norm: it
  bounds the products the norm squares (in 2-party CrypTen a truncated product v fails with probability
  about |v| 2^-32, so SmolLM2's attention-sink activations of ~2.7e4 need a public pre-scale).
* ``*_rest`` variants of the four norm quantities - the same over positions >= 1 only, and
  ``norm_attn_in_first`` / ``norm_mlp_in_first`` for position 0 alone: the massive activations sit at
  position 0, which is public, so the two groups get different public scales (``pinfer.model.norm_plan``).

and, once per model: ``final_norm_in`` / ``final_norm_absmax`` (the final norm's statistic and |hidden|),
``logits`` and ``top_gap`` (top-1 minus top-2 logit per position: how close greedy argmax comes to a
tie).

Percentiles are computed on a seeded uniform subsample (exact min and max are always kept), so
attention maps of long prompts do not need gigabytes. Run ``python scripts/activation_ranges.py`` to
print the Markdown table that ``docs/approximations.md`` reproduces, with the norm shifts the service
derives (:mod:`pinfer.model.norm_plan`, the only place they are derived).

A research tool, not on the serving path: the service needs only the norm plan.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

PERCENTILES: tuple[float, ...] = (0.1, 1.0, 50.0, 99.0, 99.9)
"""Percentiles reported for every quantity, in percent."""

_SAMPLE_CAP = 200_000
"""Values kept per (quantity, layer, forward) for the percentile estimate."""

_CALIBRATION_ATTN = "pinfer_calibration"
"""Name under which the recording attention function is registered with ``transformers``."""


class RangeStats(TypedDict):
    """Summary of one measured quantity: exact extremes, percentiles of a subsample, and a count."""

    min: float
    max: float
    percentiles: dict[str, float]
    count: int


class _Recorder:
    """Collects exact extremes plus a bounded seeded subsample for each named quantity."""

    def __init__(self, seed: int) -> None:
        self._gen = torch.Generator().manual_seed(seed)
        self._min: dict[str, float] = {}
        self._max: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._samples: dict[str, list[torch.Tensor]] = {}

    def add(self, key: str, values: torch.Tensor) -> None:
        flat = values.detach().reshape(-1).to(torch.float64)
        if flat.numel() == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())
        self._min[key] = min(self._min.get(key, math.inf), lo)
        self._max[key] = max(self._max.get(key, -math.inf), hi)
        self._count[key] = self._count.get(key, 0) + flat.numel()
        if flat.numel() > _SAMPLE_CAP:
            idx = torch.randint(flat.numel(), (_SAMPLE_CAP,), generator=self._gen)
            flat = flat[idx]
        self._samples.setdefault(key, []).append(flat)

    def summary(self) -> dict[str, RangeStats]:
        out: dict[str, RangeStats] = {}
        for key, parts in self._samples.items():
            sample = torch.cat(parts).numpy()
            pct = np.percentile(sample, PERCENTILES)
            out[key] = RangeStats(
                min=self._min[key],
                max=self._max[key],
                percentiles={f"p{p:g}": float(v) for p, v in zip(PERCENTILES, pct)},
                count=self._count[key],
            )
        return out


def _norm_statistic(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the norm feeds to rsqrt (before eps): variance for LayerNorm, mean square for RMSNorm."""
    x = x.to(torch.float32)
    if isinstance(module, nn.LayerNorm):
        return x.var(dim=-1, unbiased=False)
    return x.pow(2).mean(dim=-1)


def _decoder_layers(model: nn.Module) -> tuple[nn.ModuleList, str]:
    """The block list and the family (``llama`` or ``gpt2``) of a Hugging Face causal LM."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner.layers, "llama"
    inner = getattr(model, "transformer", None)
    if inner is not None and hasattr(inner, "h"):
        return inner.h, "gpt2"
    raise ValueError(f"unsupported model class {type(model).__name__}: expected LLaMA or GPT-2 layout")


def _record_attention(rec: _Recorder) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """An eager attention that also records logits, spreads and softmax denominators per layer."""

    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **_: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        groups = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        q_len, k_len = scores.shape[-2:]
        causal = torch.ones(q_len, k_len, dtype=torch.bool).tril(diagonal=k_len - q_len)
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            causal = causal & attention_mask[..., :q_len, :k_len]
        elif attention_mask is not None:
            causal = causal & (attention_mask[..., :q_len, :k_len] == 0)
        causal = causal.expand_as(scores)
        masked = scores.masked_fill(~causal, -math.inf)
        row_max = masked.amax(dim=-1, keepdim=True)
        spread = masked - row_max
        layer = f"L{module.layer_idx}"
        rec.add(f"{layer}/attn_logits", scores[causal])
        rec.add(f"{layer}/attn_spread", spread[causal])
        rec.add(f"{layer}/softmax_denominator", spread.exp().sum(dim=-1))
        weights = torch.softmax(masked, dim=-1)
        out = torch.matmul(weights, value).transpose(1, 2).contiguous()
        return out, weights

    return attention


@contextmanager
def _hooked(model: nn.Module, rec: _Recorder) -> Iterator[None]:
    """Install the recording hooks and attention function; restore the model afterwards."""
    from transformers import AttentionInterface

    layers, family = _decoder_layers(model)
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def pre_hook(key: str, statistic: bool) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if statistic:
                stat, absmax = _norm_statistic(module, x), x.abs().amax(dim=-1)
                rec.add(key, stat)
                rec.add(key.replace("_in", "_absmax"), absmax)
                # the same without position 0, which carries LLaMA's massive "attention sink" activation
                rec.add(key + "_first", stat[..., :1])
                rec.add(key + "_rest", stat[..., 1:])
                rec.add(key.replace("_in", "_absmax") + "_rest", absmax[..., 1:])
            else:
                rec.add(key, x)

        return hook

    seen_acts: set[int] = set()
    for i, block in enumerate(layers):
        if family == "llama":
            norm_attn, norm_mlp, act = block.input_layernorm, block.post_attention_layernorm, block.mlp.act_fn
        else:
            norm_attn, norm_mlp, act = block.ln_1, block.ln_2, block.mlp.act
        if id(act) in seen_acts:
            raise RuntimeError("activation module shared across layers; per-layer hooks would mix layers")
        seen_acts.add(id(act))
        handles.append(norm_attn.register_forward_pre_hook(pre_hook(f"L{i}/norm_attn_in", True)))
        handles.append(norm_mlp.register_forward_pre_hook(pre_hook(f"L{i}/norm_mlp_in", True)))
        handles.append(act.register_forward_pre_hook(pre_hook(f"L{i}/act_in", False)))
    final_norm = model.model.norm if family == "llama" else model.transformer.ln_f
    handles.append(final_norm.register_forward_pre_hook(pre_hook("final_norm_in", True)))

    AttentionInterface.register(_CALIBRATION_ATTN, _record_attention(rec))
    previous = model.config._attn_implementation
    model.config._attn_implementation = _CALIBRATION_ATTN
    try:
        yield
    finally:
        model.config._attn_implementation = previous
        for handle in handles:
            handle.remove()


def measure_activation_ranges(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], *, seed: int = 0
) -> dict[str, Any]:
    """Run ``prompts`` through ``model`` and return the ranges each MPC non-linearity must cover.

    The model runs one full (no-cache) forward per prompt, the way private prefill does. The result is
    JSON-serialisable::

        {"family": "llama", "n_prompts": 9, "n_tokens": [...],
         "layers": {0: {"norm_attn_in": RangeStats, "norm_mlp_in": ..., "norm_attn_absmax": ...,
                        "norm_mlp_absmax": ..., "attn_logits": ...,
                        "attn_spread": ..., "softmax_denominator": ..., "act_in": ...}, ...},
         "final_norm_in": RangeStats, "final_norm_absmax": RangeStats, "logits": RangeStats,
         "top_gap": RangeStats}

    ``seed`` only drives the percentile subsample.
    """
    layers, family = _decoder_layers(model)
    rec = _Recorder(seed)
    n_tokens: list[int] = []
    with _hooked(model, rec), torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            n_tokens.append(int(ids.shape[1]))
            logits = model(input_ids=ids, use_cache=False).logits[0].to(torch.float64)
            rec.add("logits", logits)
            top2 = logits.topk(2, dim=-1).values
            rec.add("top_gap", top2[:, 0] - top2[:, 1])
    stats = rec.summary()
    per_layer: dict[int, dict[str, RangeStats]] = {i: {} for i in range(len(layers))}
    result: dict[str, Any] = {"family": family, "n_prompts": len(prompts), "n_tokens": n_tokens}
    for key, value in stats.items():
        if key.startswith("L"):
            layer, name = key.split("/", 1)
            per_layer[int(layer[1:])][name] = value
        else:
            result[key] = value
    result["layers"] = per_layer
    return result


LAYER_QUANTITIES: tuple[str, ...] = (
    "norm_attn_in",
    "norm_mlp_in",
    "norm_attn_absmax",
    "norm_mlp_absmax",
    "norm_attn_in_first",
    "norm_mlp_in_first",
    "norm_attn_in_rest",
    "norm_mlp_in_rest",
    "norm_attn_absmax_rest",
    "norm_mlp_absmax_rest",
    "attn_logits",
    "attn_spread",
    "softmax_denominator",
    "act_in",
)
"""Per-layer quantities, in the order the Markdown table lists them."""


def overall(ranges: dict[str, Any], quantity: str) -> RangeStats:
    """Merge one per-layer quantity across layers: exact extremes; percentiles as the layer extremes.

    Merged percentiles are the min (for p <= 50) or max (for p > 50) over layers, i.e. the widest
    per-layer value, which is what a single approximation domain must cover.
    """
    per = [layer[quantity] for layer in ranges["layers"].values() if quantity in layer]
    pct: dict[str, float] = {}
    for name in per[0]["percentiles"]:
        values = [s["percentiles"][name] for s in per]
        pct[name] = min(values) if float(name[1:]) <= 50 else max(values)
    return RangeStats(
        min=min(s["min"] for s in per),
        max=max(s["max"] for s in per),
        percentiles=pct,
        count=sum(s["count"] for s in per),
    )


def markdown_table(ranges: dict[str, Any], per_layer: bool = False) -> str:
    """Render the measured ranges as a Markdown table (overall rows, optionally every layer)."""
    cols = ["min", *[f"p{p:g}" for p in PERCENTILES], "max"]
    lines = ["| quantity | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]

    def row(label: str, s: RangeStats) -> str:
        vals = [s["min"], *s["percentiles"].values(), s["max"]]
        return f"| {label} | " + " | ".join(f"{v:.4g}" for v in vals) + " |"

    for q in LAYER_QUANTITIES:
        lines.append(row(f"{q} (all layers)", overall(ranges, q)))
    model_wide = ("final_norm_in", "final_norm_absmax", "final_norm_in_first", "final_norm_in_rest",
                  "final_norm_absmax_rest", "logits", "top_gap")
    for q in model_wide:
        if q in ranges:
            lines.append(row(q, ranges[q]))
    if per_layer:
        for i, layer in ranges["layers"].items():
            for q in LAYER_QUANTITIES:
                if q in layer:
                    lines.append(row(f"L{i} {q}", layer[q]))
    return "\n".join(lines)


def random_gpt2(seed: int = 0) -> nn.Module:
    """GPT-2-base architecture with seeded random weights (no GPT-2 weights are available offline)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config()).eval()


def main(argv: Sequence[str] | None = None) -> None:
    """Print the SmolLM2 (and optionally random GPT-2) range tables as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-layer", action="store_true", help="also list every layer")
    parser.add_argument("--gpt2", action="store_true", help="also measure a random GPT-2-base")
    parser.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM

    from pinfer.model import norm_plan
    from pinfer.model.decoder import prepare_weights
    from pinfer.model.registry import load_model, resolve

    # The registry's checkpoint is the one the service runs, so the ranges are those of the served weights.
    config, weights, tokenizer = load_model("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m"), dtype=torch.float32, local_files_only=True).eval()
    prompts = norm_plan.calibration_prompts(tokenizer)
    ranges = {"smollm2": measure_activation_ranges(model, tokenizer, prompts)}
    print(f"SmolLM2-135M-Instruct, {len(prompts)} prompts, tokens {ranges['smollm2']['n_tokens']}")
    print(markdown_table(ranges["smollm2"], per_layer=args.per_layer))
    prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    shifts = norm_plan.calibrate(config, prepare_weights(config, weights), prompt_ids)
    print("\nnorm plan shifts, margin included (position 0 / others): " + ", ".join(
        f"{name} {s['first']}/{s['rest']}" for name, s in shifts.items()
    ))
    if args.gpt2:
        # The GPT-2 vocabulary differs, but random weights make any token ids equally meaningful, so the
        # SmolLM2 tokenizer (ids < 49152 < 50257) is reused to feed the same text.
        ranges["gpt2_random"] = measure_activation_ranges(random_gpt2(), tokenizer, prompts)
        print("\nGPT-2-base, random weights (seed 0), same prompts")
        print(markdown_table(ranges["gpt2_random"], per_layer=args.per_layer))
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(ranges, fh, indent=1)


if __name__ == "__main__":
    main()
