"""Content hashes (sha256, hex) of files and folders: the prepare cache key and the tracked model's hash."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Optional

CHUNK = 1 << 20  # bytes read at a time: a 1.6 GB safetensors file is hashed in constant memory


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes. Raises OSError when it cannot be read."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_files(folder: str | Path, suffixes: Optional[Iterable[str]] = None) -> list[Path]:
    """Files under ``folder`` (recursively, sorted by path), only those ending in one of
    ``suffixes`` (e.g. ``(".safetensors",)``) when given."""
    ends = tuple(suffixes) if suffixes is not None else None
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and (ends is None or p.name.endswith(ends)))


def folder_sha256(folder: str | Path, suffixes: Optional[Iterable[str]] = None) -> str:
    """Hex sha256 over the files of :func:`folder_files`: each one's path relative to ``folder``
    (POSIX) and its :func:`file_sha256`, in path order. Equal hashes mean equal names and bytes,
    wherever the folder lies. Raises OSError when a file cannot be read."""
    root = Path(folder)
    h = hashlib.sha256()
    for p in folder_files(root, suffixes):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()
