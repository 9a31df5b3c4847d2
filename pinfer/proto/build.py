"""Regenerate the committed gRPC stubs from the ``.proto`` files next to this module.

Why a module and not a Makefile rule: the stubs must come from the grpcio-tools version pinned in the
project's venv, and generated imports must be package-relative (``from . import x_pb2``) so that the
stubs live inside ``pinfer.proto`` instead of on the top-level import path.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(out_dir: Path = HERE) -> list[Path]:
    """Compile every ``*.proto`` here into ``out_dir``; return the generated files."""
    from grpc_tools import protoc
    import grpc_tools

    protos = sorted(HERE.glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
            f"--pyi_out={out_dir}", *(str(p) for p in protos)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    generated: list[Path] = []
    stems = [p.stem for p in protos]
    for stem in stems:
        for path in (out_dir / f"{stem}_pb2.py", out_dir / f"{stem}_pb2_grpc.py", out_dir / f"{stem}_pb2.pyi"):
            text = path.read_text()
            for other in stems:
                text = re.sub(rf"^import {other}_pb2 as", f"from . import {other}_pb2 as", text, flags=re.M)
            path.write_text(text)
            generated.append(path)
    return generated


def main() -> int:
    for path in build():
        print(path.relative_to(HERE.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
