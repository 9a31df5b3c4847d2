"""Imports go one way: every module belongs to a layer, and a layer imports only layers below it.

Why a test: an upward import (the SDK reaching into the CLI, the model into the KV policies built on
it, a party into the service) ties a lower layer to code it must not need, and nothing else notices
until the two cannot be deployed or changed apart. The check is static (the AST of every file), so it
sees imports inside functions and under ``TYPE_CHECKING`` as well as top-level ones.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Folder on disk -> the dotted package it is installed as (pyproject's package-dir).
PACKAGE_DIRS = {
    "pinfer": "pinfer",
    "protocols": "pinfer.protocols",
    "parties": "pinfer.parties",
    "kvcache": "pinfer.kvcache",
    "accel": "pinfer.accel",
}

# Lowest first. A module may import its own layer and any layer of a lower rank; layers of equal rank
# (the leaves) may not import each other.
LAYER_RANKS = {
    "base": 0,  # file and wire helpers every layer may use: atomic writes, tensor dtype codes
    "proto": 0,  # message schemas and generated stubs, spoken by client, orchestrator and nodes
    "accel": 1,  # HE arithmetic
    "model": 1,  # what a transformer is and how it runs on any backend
    "keys": 2,  # CA and certificates, envelopes, signed statements, the session contract
    "protocols": 3,  # MPC on CrypTen, the dealer, the TLS data plane
    "kvcache": 4,  # KV policies (over model.tensor_ops) and their cost harness on shares
    "parties": 5,  # party and dealer nodes, workers, share store
    "service": 6,  # client SDK (and the ``pinfer`` package that exports it), orchestrator, local service
    "bench": 7,
    "cli": 8,  # above bench: ``pinfer bench ...`` is one of its command groups
}

# The package itself exports the client SDK (``pinfer.Client``), so it sits with the service.
ROOT_LAYER = "service"

# Dotted module prefix -> layer; the longest matching prefix wins. A new module directly in pinfer/
# must be placed here by hand: the test refuses one that no prefix claims.
LAYER_OF_PREFIX = {
    "pinfer.atomic_file": "base",
    "pinfer.tensor_codes": "base",
    "pinfer.proto": "proto",
    "pinfer.accel": "accel",
    "pinfer.model": "model",
    "pinfer.keys": "keys",
    "pinfer.protocols": "protocols",
    "pinfer.kvcache": "kvcache",
    "pinfer.parties": "parties",
    "pinfer.service": "service",
    "pinfer.bench": "bench",
    "pinfer.cli": "cli",
}


@dataclass(frozen=True)
class UpwardImport:
    path: str
    line: int
    module: str
    imported: str
    module_layer: str
    imported_layer: str

    def __str__(self) -> str:
        return (f"{self.path}:{self.line}: {self.module} ({self.module_layer}) imports {self.imported} "
                f"({self.imported_layer})")


def layer_of(module: str) -> str | None:
    """The layer of a dotted module, None for one outside pinfer; raises ``KeyError`` naming a pinfer
    module that no layer claims."""
    if module == "pinfer":
        return ROOT_LAYER
    if not module.startswith("pinfer."):
        return None
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        layer = LAYER_OF_PREFIX.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    raise KeyError(f"module {module} belongs to no layer; add it to LAYER_OF_PREFIX")


def module_name(path: Path) -> str:
    """The dotted name ``path`` (relative to the repository root) is imported as."""
    folder, *rest = path.with_suffix("").parts
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join([PACKAGE_DIRS[folder], *rest])


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package in this tree (so ``from pkg import name`` imports it)."""
    for folder, package in sorted(PACKAGE_DIRS.items(), key=lambda item: -len(item[1])):
        if dotted == package or dotted.startswith(package + "."):
            relative = REPO.joinpath(folder, *dotted[len(package):].split(".")[1:])
            return relative.with_suffix(".py").is_file() or (relative / "__init__.py").is_file()
    return False


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``tree``, relative ones resolved against ``module``.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``.
    """
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((node.lineno, submodule if _is_module(submodule) else source))
    return found


def upward_imports(path: Path, source: str) -> list[UpwardImport]:
    """Every import in ``source`` (the text of ``path``, relative to the repository root) that reaches a
    higher layer or a peer layer; raises ``KeyError`` naming a module no layer claims."""
    module = module_name(path)
    own = layer_of(module)
    assert own is not None, module
    found = []
    for line, imported in imported_modules(ast.parse(source, str(path)), module, path.name == "__init__.py"):
        target = layer_of(imported)
        if target is None or target == own:
            continue
        if LAYER_RANKS[target] >= LAYER_RANKS[own]:
            found.append(UpwardImport(str(path), line, module, imported, own, target))
    return found


def _source_files() -> list[Path]:
    return sorted(path.relative_to(REPO) for folder in PACKAGE_DIRS for path in (REPO / folder).rglob("*.py"))


def test_every_import_points_down() -> None:
    files = _source_files()
    assert len(files) > 50, "the source tree was not found"
    violations = [v for path in files for v in upward_imports(path, (REPO / path).read_text())]
    assert not violations, "imports against the layer order:\n" + "\n".join(map(str, violations))


@pytest.mark.parametrize(
    ("path", "source", "imported"),
    [
        # A function-level import of the CLI from the SDK (the shape of a real one this test replaced).
        ("pinfer/service/client.py", "def f():\n    from pinfer.cli.generate import until_stop\n", "pinfer.cli.generate"),
        # The model reaching the policies built on it, under TYPE_CHECKING.
        ("pinfer/model/decoder.py", "if TYPE_CHECKING:\n    from pinfer.kvcache import KVPolicy\n", "pinfer.kvcache"),
        # A party importing the service through ``from pinfer import ...``.
        ("parties/node.py", "from pinfer import service\n", "pinfer.service"),
        # Plain ``import`` of the package root, which exports the client.
        ("protocols/world.py", "import pinfer\n", "pinfer"),
        # A relative import out of accel into protocols, and peers of equal rank.
        ("accel/rlwe.py", "from ..protocols import sharing\n", "pinfer.protocols.sharing"),
        ("pinfer/model/config.py", "from pinfer.accel import primes\n", "pinfer.accel.primes"),
    ],
)
def test_an_upward_import_is_reported_with_file_line_and_module(path: str, source: str, imported: str) -> None:
    violations = upward_imports(Path(path), "import os\n" + source)
    assert [(v.path, v.imported) for v in violations] == [(path, imported)]
    assert violations[0].line == source.count("\n") + 1


def test_a_module_in_no_layer_is_refused() -> None:
    with pytest.raises(KeyError, match="belongs to no layer"):
        upward_imports(Path("pinfer/misc.py"), "")
