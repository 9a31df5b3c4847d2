"""Whole-file writes that appear atomically and never write through a planted link.

Why: key, share, cache and port files land in directories that other users or containers may also
write to (a shared model cache, a mounted state volume). A fixed temporary name such as ``x.tmp``
opened the ordinary way follows a symlink planted there, so secret bytes would go wherever the link
points, or a file of the attacker's choosing would be truncated. Each write therefore goes to a fresh
random sibling name created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, which fails on any existing entry,
link or not, and has its final mode before the first byte arrives. ``os.replace`` then renames it over
the target: a link at the target is replaced, not followed, and readers see the old file or the new
one, never half of one.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomic(path: Path | str, data: bytes | Iterable[bytes], mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (bytes or chunks); the file has ``mode`` exactly, whatever the umask.

    Raises ``FileExistsError`` if something already sits at the temporary name (only an attacker
    who can write the directory could have put it there), and leaves nothing behind on any failure.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, _CREATE, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # open() applies the umask; the caller asked for this mode
            for chunk in (data,) if isinstance(data, bytes) else data:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())  # a crash after the rename must not leave an empty key or share file
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
