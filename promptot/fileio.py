"""Small file helpers shared by the library: content digests and atomic writes.

Atomic writes go to a unique temporary name in the destination folder, are flushed and fsynced, and are
then renamed over the destination, so a reader (or a run restarted after a kill) sees the old file or the
new one, never a truncated one.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Callable, IO, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["file_digest", "sha256_file", "atomic_write", "atomic_write_text"]


def file_digest(path: PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes (``algo``: any :func:`hashlib.new` name, e.g. ``"sha256"``, ``"md5"``)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file."""
    return file_digest(path, "sha256")


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> str:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file in the same folder, which is fsynced
    and renamed over ``path``. Returns ``str(path)``. On any error the temporary file is removed and the old
    ``path`` (if any) is left as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> str:
    """:func:`atomic_write` for a UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
