"""Suite-wide test set-up: offline Hugging Face libraries, TLS 1.3-only gRPC, tiny model checkpoints,
a local MPC world.

The offline variables are set here, at conftest import, because huggingface_hub reads them once when
it is first imported; with them set, any attempt to reach a hub fails instead of downloading. gRPC's
TLS setting is read once too, when grpc is first imported.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# The orchestrators and nodes some tests serve in-process must refuse TLS 1.2, as `pinfer node` and
# `pinfer orchestrator` do; gRPC reads the setting once, when it is first imported.
from pinfer.keys.grpc_tls import require_tls13  # noqa: E402

require_tls13()

import socket  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if TYPE_CHECKING:
    from pinfer.protocols.world import LocalWorld

TinyCheckpoint = Callable[..., Path]


def _write_tiny_checkpoint(out: Path, family: str, seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny HF model with transformers' own ``save_pretrained`` (not pinfer's writer).

    Why: the loader must read what Hugging Face writes, so these checkpoints come from HF modules,
    with 1-D parameters (norm gains, biases) perturbed so that none is a trivial 1 or 0.
    """
    from transformers import AutoModelForCausalLM

    from pinfer.model.registry import tiny_gpt2_hf_config, tiny_llama_hf_config
    from pinfer.model.tokenizer import byte_level_tokenizer

    hf_config = tiny_llama_hf_config() if family == "llama" else tiny_gpt2_hf_config()
    for key, value in overrides.items():
        setattr(hf_config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(str(out))
    byte_level_tokenizer().save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    """Factory: ``tiny_checkpoint("llama" | "gpt2", seed=0, **hf_config_overrides) -> directory``.

    Directories are cached per argument set for the session; treat them as read-only.
    """
    made: dict[tuple[Any, ...], Path] = {}

    def make(family: str, seed: int = 0, **overrides: Any) -> Path:
        key = (family, seed, tuple(sorted(overrides.items())))
        if key not in made:
            made[key] = _write_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{family}"), family, seed, **overrides)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_checkpoint: TinyCheckpoint) -> Path:
    """A tiny LLaMA (GQA 4/2 heads, d=64, 2 layers, vocab 512, tied) saved by transformers."""
    return tiny_checkpoint("llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tiny_checkpoint: TinyCheckpoint) -> Path:
    """A tiny GPT-2 (4 heads, d=64, 2 layers, vocab 512, 256 positions) saved by transformers."""
    return tiny_checkpoint("gpt2")


@pytest.fixture(scope="module")
def world() -> Iterator[LocalWorld]:
    """Two parties and a dealer as local processes (``LocalWorld``), shared by the tests of one module.

    Imported here rather than at the top: ``pinfer.protocols`` patches torch for CrypTen, which tests
    that never run a protocol should not pay for. A module that needs another world (three parties,
    a parametrized size) defines its own ``world`` fixture.
    """
    from pinfer.protocols.world import LocalWorld

    with LocalWorld(n_parties=2) as local_world:
        yield local_world


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any outgoing IP connection for the duration of a test (``nothing downloads``).

    Unix-domain sockets stay allowed (local IPC is not a download).
    """
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network access attempted during a no_network test: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield
