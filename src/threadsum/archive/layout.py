"""The job folder of an archive run: names, atomic writes, the manifest and finished shards.

::

    DIR/manifest.json            inputs (sha256 each), model fingerprint, settings, the shard plan
    DIR/shards/<id>.jsonl        one result per summarized thread of shard <id> (its commit point)
    DIR/shards/<id>.parquet      the same rows, when pyarrow is installed
    DIR/shard-rejects/<id>.jsonl threads of shard <id> that got no summary, with reasons
    DIR/rejects.jsonl            every reject of the job: files, emails and threads the readers refused,
                                 then the shards' rejects (rewritten at the end of each run)
    DIR/warnings.jsonl           repairs the readers made (rewritten at the end of each run)
    DIR/summary.json             the reconciled counts of the last run
    DIR/runs.jsonl               one line per run: mode, engine, shards and threads done, threads/s

A shard is finished when ``shards/<id>.jsonl`` exists: each file is written to a temporary name and
renamed into place (``os.replace``, atomic on POSIX), the shard's rejects and Parquet file first, so
a process killed at any moment leaves either a whole shard or none (plus temporary files, removed on
the next run).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from threadsum.archive.sources import ArchiveError

MANIFEST = "manifest.json"
SHARDS = "shards"
SHARD_REJECTS = "shard-rejects"
REJECTS = "rejects.jsonl"
WARNINGS = "warnings.jsonl"
SUMMARY = "summary.json"
RUNS = "runs.jsonl"
LOCK = ".lock"
FORMAT_VERSION = 1
"""Version of the job folder's layout; a folder of another version is refused."""

# columns of a result row that hold lists or objects: JSON text in Parquet, so every shard's file has
# the same flat schema whatever its claims hold
JSON_COLUMNS = ("warnings", "claims")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, flushed to disk, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def jsonl_bytes(rows: Iterable[dict[str, Any]]) -> bytes:
    """Rows as JSON lines (UTF-8, non-ASCII kept)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """``rows`` as JSON lines at ``path``, written atomically (:func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, jsonl_bytes(rows))


def write_json_atomic(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, written atomically."""
    write_bytes_atomic(path, (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON lines file ([] when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def count_lines(path: Path) -> int:
    """Rows of a JSON lines file (0 when it does not exist), counted without parsing them."""
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def has_parquet() -> bool:
    """Whether pyarrow is installed (shards then get a Parquet copy)."""
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def _write_parquet_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = [{k: (json.dumps(v, ensure_ascii=False) if k in JSON_COLUMNS else v) for k, v in r.items()} for r in rows]
    tmp = _tmp_name(path)
    pq.write_table(pa.Table.from_pylist(flat), tmp)
    os.replace(tmp, path)


class JobFolder:
    """Paths and file operations of one job folder (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        """``manifest.json``."""
        return self.root / MANIFEST

    def shard_results(self, shard_id: str) -> Path:
        """``shards/<id>.jsonl``: the shard's results, and the sign that it is finished."""
        return self.root / SHARDS / f"{shard_id}.jsonl"

    def shard_parquet(self, shard_id: str) -> Path:
        """``shards/<id>.parquet``."""
        return self.root / SHARDS / f"{shard_id}.parquet"

    def shard_rejects(self, shard_id: str) -> Path:
        """``shard-rejects/<id>.jsonl``."""
        return self.root / SHARD_REJECTS / f"{shard_id}.jsonl"

    # ---- state
    def is_job(self) -> bool:
        """Whether the folder holds a manifest."""
        return self.manifest_path.is_file()

    def is_empty(self) -> bool:
        """Whether the folder is missing or holds nothing but hidden files."""
        return not self.root.exists() or not any(not p.name.startswith(".") for p in self.root.iterdir())

    def read_manifest(self) -> dict[str, Any]:
        """The manifest; raises ArchiveError when it is unreadable or of another layout version."""
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArchiveError(f"{self.manifest_path} is unreadable ({exc}); run with --restart to start the job "
                               f"over, or choose another --out") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArchiveError(f"{self.root} was written by a threadsum with job folder version "
                               f"{manifest.get('format_version')} (this one writes {FORMAT_VERSION}); run with "
                               f"--restart or choose another --out")
        return manifest

    def finished(self) -> set[str]:
        """Ids of the shards whose results file exists."""
        folder = self.root / SHARDS
        return {p.name[:-len(".jsonl")] for p in folder.glob("*.jsonl")} if folder.is_dir() else set()

    # ---- writing
    def start(self, manifest: dict[str, Any]) -> None:
        """Begin the job anew: remove every earlier output, then write ``manifest``."""
        for name in (SHARDS, SHARD_REJECTS):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in (MANIFEST, REJECTS, WARNINGS, SUMMARY, RUNS):
            (self.root / name).unlink(missing_ok=True)
        write_json_atomic(self.manifest_path, manifest)

    def remove_partial(self, shard_ids: Iterable[str]) -> None:
        """Delete what a killed run left of unfinished shards and every temporary file."""
        for sid in shard_ids:
            self.shard_parquet(sid).unlink(missing_ok=True)
            self.shard_rejects(sid).unlink(missing_ok=True)
        for folder in (self.root, self.root / SHARDS, self.root / SHARD_REJECTS):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp-*"):
                    tmp.unlink(missing_ok=True)

    def write_shard(self, shard_id: str, results: list[dict[str, Any]], rejects: list[dict[str, Any]],
                    parquet: bool) -> None:
        """Commit one shard: its rejects (when any) and Parquet copy first, its results file last."""
        if rejects:
            write_jsonl_atomic(self.shard_rejects(shard_id), rejects)
        if parquet and results:
            self.shard_parquet(shard_id).parent.mkdir(parents=True, exist_ok=True)
            _write_parquet_atomic(self.shard_parquet(shard_id), results)
        write_jsonl_atomic(self.shard_results(shard_id), results)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock (``flock`` on ``.lock``; the kernel drops it when the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = (self.root / LOCK).open("a")
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise ArchiveError(f"another threadsum job is writing to {self.root}; wait for it to end or "
                                   f"choose another --out") from None
            yield
        finally:
            fh.close()


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line (a run log entry; a torn last line is skipped by readers of the log)."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def shard_counts(folder: JobFolder, shard_id: str) -> tuple[int, int]:
    """(results, rejects) rows of a finished shard, as on disk."""
    return count_lines(folder.shard_results(shard_id)), count_lines(folder.shard_rejects(shard_id))

