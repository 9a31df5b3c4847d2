"""One text completion through the client SDK: pieces of text as tokens arrive, cut at a stop.

Why on the client: the parties see neither the text nor which token ends it, so end-of-sequence ids
and stop strings can only be applied here, after each token is opened. The generation ends early
(closing the SDK's token stream cancels it on the service) at the first end-of-sequence token or the
first stop string, and otherwise after ``max_tokens``. Text that could still turn into a stop string is
held back until it cannot, so no part of a stop string is ever emitted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pinfer.service.client import Client, Token, VerifiedModel, text_pieces


class StopStrings:
    """Finds the first of several stop strings in text fed piece by piece."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that can be emitted now: everything before a stop string (then :attr:`stopped`), or
        everything but a tail that may be the start of one."""
        if self.stopped:
            return ""
        text = self._held + piece
        found = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if found:
            self.stopped = True
            self._held = ""
            return text[:min(found)]
        keep = max((self._partial_length(text, s) for s in self._stops), default=0)
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep]

    @staticmethod
    def _partial_length(text: str, stop: str) -> int:
        """The length of the longest end of ``text`` that begins ``stop`` (shorter than ``stop``)."""
        return next((k for k in range(min(len(stop) - 1, len(text)), 0, -1) if text.endswith(stop[:k])), 0)

    def flush(self) -> str:
        """What was held back, once the text has ended without a stop string."""
        rest, self._held = self._held, ""
        return rest


class TextCompletion:
    """A greedy completion of ``prompt_ids``; iterate :meth:`pieces` once.

    After the iteration, :attr:`completion_tokens` counts the tokens the service generated and this
    client read (the end-of-sequence token or the one that completed a stop string included), and
    :attr:`finish_reason` is ``"stop"`` (either of them) or ``"length"`` (``max_tokens`` reached).
    """

    def __init__(self, client: Client, model: VerifiedModel, prompt_ids: list[int], max_tokens: int,
                 stop: Sequence[str] = (), *, kv_policy: str | None = None, kv_budget: float | None = None) -> None:
        self._client = client
        self._model = model
        self._kv = {"kv_policy": kv_policy, "kv_budget": kv_budget}
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self._stop = StopStrings(stop)
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def pieces(self) -> Iterator[str]:
        tokenizer = self._client.tokenizer(self._model)
        eos = self._model.eos_token_ids
        tokens = self._client.generate_ids(self.prompt_ids, self.max_tokens, model=self._model.name, **self._kv)
        with contextlib.closing(tokens):
            for piece in text_pieces(tokenizer, eos, self._until_eos(tokens, eos)):
                text = self._stop.feed(piece)
                if text:
                    yield text
                if self._stop.stopped:
                    self.finish_reason = "stop"
                    return
        rest = self._stop.flush()
        if rest:
            yield rest
        self.finish_reason = self.finish_reason or "length"

    def _until_eos(self, tokens: Iterable[Token], eos: Iterable[int]) -> Iterator[Token]:
        stop_ids = set(eos)
        for token in tokens:
            self.completion_tokens += 1
            yield token
            if token.token_id in stop_ids:
                self.finish_reason = "stop"
                return
