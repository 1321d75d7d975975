"""Small generic helpers used across the library (not ShapeWorld-specific): atomic file writes,
process-stable seeds, the label value the loss ignores."""

from __future__ import annotations

import hashlib
import os

#: Label of positions the next-token loss ignores (prompt, media, padding), as PyTorch's default.
IGNORE_INDEX = -100


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and ``os.replace`` (never a partial file)."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from any printable parts, identical across processes (unlike ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
