"""Atomic file writes and content hashes, shared by every stage that writes outputs.

Every file sb2dask writes appears under its final name only when complete: it is written to a
temporary file beside the target and renamed over it. The temporary name is unique per call
(``tempfile.mkstemp``), not per process, so two tasks on threads of one Dask worker never share
one. Temporary names start with a dot and end in ``.tmp`` (before an optional ``suffix``), so
glob patterns of outputs never match them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "file_sha256", "bytes_sha256"]


def _umask() -> int:
    # os.umask can only be read by setting it; read it once, at import, before any threads write
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a unique temporary path beside ``path``; when the block ends without an exception,
    give it the permissions of an ordinary new file and rename it over ``path``; otherwise
    remove it.

    ``suffix`` ends the temporary name, for writers that insist on an extension
    (``numpy.save`` appends ``.npy`` to names without it).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix,
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; outputs are shared like any file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
