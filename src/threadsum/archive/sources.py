"""Archive inputs: the paths on the command line -> read units, each read by ``read_source``.

No reader lives here. A path is dispatched by :func:`threadsum.data.readers.detect_format` and read
by :func:`threadsum.data.readers.read_source`, exactly as ``prepare`` reads ``data.source``, so a
format the readers learn is read here too. An archive folder may mix formats, which ``prepare``'s
folder rule does not read together: the folder is read as the readers see it (its detected format),
and each file the readers left unread (a ``unsupported_file`` reject) is read on its own when
``detect_format`` names a format for it. Files no reader takes stay file rejects with the readers'
reason and message.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from threadsum.data.readers import R_UNSUPPORTED_FILE, DataError, ReadResult, detect_format, read_source
from threadsum.errors import UserError

HASH_CHUNK = 1 << 20  # bytes read at a time when hashing an input file


class ArchiveError(UserError):
    """An archive job cannot start or go on as asked; the message names the problem and the fix (exit 2)."""


@dataclass(frozen=True)
class ReadUnit:
    """One call of ``read_source``: a file or folder and the format ``detect_format`` named for it."""

    path: Path
    fmt: str

    @property
    def source(self) -> str:
        """The unit's absolute path: the ``source`` of each of its threads in results and rejects."""
        return str(self.path.resolve())


@dataclass
class ReadArchive:
    """What reading the inputs gave: each unit with its ``ReadResult``, the file rejects of paths no
    reader takes, and every input file (what the manifest hashes)."""

    units: list[tuple[ReadUnit, ReadResult]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _visible_files(folder: Path) -> list[Path]:
    """Files under ``folder``, hidden files and folders aside (the readers' rule for leftovers)."""
    return sorted(f for f in folder.rglob("*")
                  if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts))


def _file_reject(path: Path, detail: str) -> dict[str, Any]:
    return {"level": "file", "reason": R_UNSUPPORTED_FILE, "detail": detail, "source": str(path.resolve()),
            "line": None, "thread_id": None}


def _unit_or_reject(path: Path) -> tuple[Optional[ReadUnit], Optional[dict[str, Any]]]:
    try:
        return ReadUnit(path, detect_format(path)), None
    except DataError as exc:
        return None, _file_reject(path, str(exc))


def check_inputs(inputs: list[str]) -> list[Path]:
    """The inputs as paths; raises ArchiveError naming the first one that does not exist."""
    paths = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if not p.exists():
            raise ArchiveError(f"input '{raw}' does not exist; pass .mbox/.eml/.jsonl files, Kaggle CSV/JSON "
                               f"files or folders holding them")
        paths.append(p)
    return paths


def read_archive(inputs: list[Path], max_body_chars: int) -> ReadArchive:
    """Read every input (see the module docstring); never raises for bad content.

    Args:
        inputs: existing files and folders (:func:`check_inputs`).
        max_body_chars: ``data.max_body_chars`` of the model's config (bodies are cut as in training).
    """
    out = ReadArchive()
    seen: set[Path] = set()

    def read(unit: ReadUnit) -> ReadResult:
        result = read_source(unit.path, unit.fmt, max_body_chars=max_body_chars, require_summary=False)
        out.units.append((unit, result))
        return result

    for p in inputs:
        out.files.extend(f for f in ([p] if p.is_file() else _visible_files(p)) if f.resolve() not in seen)
        seen.update(f.resolve() for f in out.files)
        unit, reject = _unit_or_reject(p)
        if unit is None and p.is_file():
            out.rejects.append(reject)
            continue
        if unit is None:  # a folder with no format of its own: each file is judged alone
            leftovers = _visible_files(p)
        else:
            result = read(unit)
            out.files.extend(f for f in result.files if f.resolve() not in seen)  # a Kaggle file's sibling
            seen.update(f.resolve() for f in result.files)
            leftovers = [Path(r["source"]) for r in result.rejects
                         if r["level"] == "file" and r["reason"] == R_UNSUPPORTED_FILE and r.get("source")]
            if leftovers:  # read on their own below, or rejected again there with their own reason
                drop = {str(f) for f in leftovers}
                result.rejects[:] = [r for r in result.rejects
                                     if not (r["level"] == "file" and r["reason"] == R_UNSUPPORTED_FILE
                                             and r.get("source") in drop)]
                files = result.counts["files"]
                files["by_reason"][R_UNSUPPORTED_FILE] = files["by_reason"].get(R_UNSUPPORTED_FILE, 0) - len(drop)
                if not files["by_reason"][R_UNSUPPORTED_FILE]:
                    del files["by_reason"][R_UNSUPPORTED_FILE]
                files["rejected"] -= len(drop)
        for f in leftovers:
            sub, reject = _unit_or_reject(f)
            if sub is None:
                out.rejects.append(reject)
            else:
                read(sub)
    return out


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def input_hashes(files: list[Path]) -> list[dict[str, Any]]:
    """``[{path, bytes, sha256}]`` of the input files, sorted by absolute path (the manifest's record)."""
    rows = [{"path": str(f.resolve()), "bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in files]
    return sorted(rows, key=lambda r: r["path"])
