"""Where checkpoints live on disk and the one way a checkpoint folder is published.

Layout of ``<output_dir>/checkpoints/``::

    step-00000120/
        model.safetensors   plain format: trainable weights (all; only the adapter with LoRA)
        sharded/            sharded format instead: torch.distributed.checkpoint files (weights + optimizer)
        state.pt            optimizer (plain format), scheduler, grad scaler, RNG, sampler position,
                            counters, the resolved config (see state.py)
        COMPLETE            JSON marker written last: step and the byte size of every file

:func:`publish` writes a checkpoint into ``.tmp-step-...``, fsyncs every file, writes the marker,
then renames the folder into place (atomic on POSIX). A folder without a valid marker is never used:
a crash or ``kill -9`` while writing leaves the previous checkpoint as the newest complete one.
Progress is read from the marker and ``state.pt``, never parsed out of folder names.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from threadsum.errors import UserError
from threadsum.model import normalize_file_modes

log = logging.getLogger("threadsum.train")

CHECKPOINTS_DIR = "checkpoints"
STEP_DIR_FORMAT = "step-{:08d}"
TMP_PREFIX = ".tmp-"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
SHARDED_DIR = "sharded"
"""Folder of a step checkpoint that holds the torch.distributed.checkpoint shards (model + optimizer)."""
COMPLETE_MARKER = "COMPLETE"

# Fault injection for tests: exit abruptly (no cleanup) in the middle of writing the checkpoint of
# this step, after its files are written and before the marker.
FAULT_CHECKPOINT_CRASH_ENV = "THREADSUM_FAULT_CHECKPOINT_CRASH_AT_STEP"
FAULT_EXIT_CODE = 86


class CheckpointError(UserError):
    """A checkpoint cannot be used; the message says which and why (exit 2)."""


def step_dir(root: str | Path, step: int) -> Path:
    """``root/step-XXXXXXXX``: the folder of the checkpoint after optimizer step ``step``."""
    return Path(root) / STEP_DIR_FORMAT.format(step)


def is_sharded_checkpoint(path: str | Path) -> bool:
    """True when the checkpoint folder holds the sharded format (``sharded/``) rather than the plain one."""
    return (Path(path) / SHARDED_DIR).is_dir()


# ------------------------------------------------------------------------------- publishing
def publish(
    root: str | Path,
    step: int,
    write: Callable[[Path], None],
    keep_last: int,
    best_step: Optional[int],
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write the checkpoint of ``step`` atomically and prune old ones; returns its folder.

    ``write(tmp)`` puts the checkpoint's files into the temporary folder ``tmp``. Every process of a
    sharded save calls this with its own ``write`` (its shard) and ``barrier`` (a collective barrier);
    only ``is_main`` creates the folder, fsyncs, writes the marker, renames and prunes. Pruning keeps
    the ``keep_last`` newest complete checkpoints plus the one of ``best_step``. When the checkpoint of
    ``step`` already exists complete, nothing is written. Raises ``OSError`` on a failed write.
    """
    root = Path(root)
    final = step_dir(root, step)
    if read_marker(final) is not None:
        return final  # this exact state is already on disk (final save right after a periodic one)
    tmp = root / f"{TMP_PREFIX}{final.name}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    write(tmp)
    barrier()
    if is_main:
        if os.environ.get(FAULT_CHECKPOINT_CRASH_ENV) == str(step):
            log.error("fault injection: crashing while writing checkpoint of step %d", step)
            os._exit(FAULT_EXIT_CODE)
        normalize_file_modes(tmp)  # safetensors writes 0600; a checkpoint reads like the other files
        _seal(tmp, step)
        if final.exists():  # an incomplete leftover with the same name
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        prune(root, keep_last, best_step)
    barrier()
    return final


def _seal(tmp: Path, step: int) -> None:
    """fsync every file under ``tmp``, then write and fsync the marker listing their sizes."""
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync(path)
        files[path.relative_to(tmp).as_posix()] = path.stat().st_size
    for folder in sorted(p for p in tmp.rglob("*") if p.is_dir()):
        _fsync_dir(folder)
    (tmp / COMPLETE_MARKER).write_text(json.dumps({"step": step, "time": time.time(), "files": files}))
    _fsync(tmp / COMPLETE_MARKER)
    _fsync_dir(tmp)


# ------------------------------------------------------------------------------- discovery
def read_marker(path: Path) -> Optional[dict]:
    """The marker when the folder is complete (every listed file present with its size), else None."""
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text())
        for name, size in marker["files"].items():
            if (path / name).stat().st_size != size:
                return None
        return marker
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_checkpoints(root: str | Path, warn: bool = False) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first. With ``warn``, logs which
    folders were skipped as incomplete or corrupt."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith(TMP_PREFIX):
            continue
        marker = read_marker(p)
        if marker is None:
            if warn:
                log.warning("skipping checkpoint %s: incomplete or corrupt (missing/mismatched %s marker)", p, COMPLETE_MARKER)
            continue
        found.append((int(marker["step"]), p))
    return sorted(found)


def remove_stale_tmp(root: str | Path) -> None:
    """Delete temporary folders left by a crash while writing (never read, safe to delete at start)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def prune(root: Path, keep_last: int, best_step: Optional[int]) -> None:
    """Delete complete checkpoints except the ``keep_last`` newest and the one of ``best_step``."""
    ckpts = list_checkpoints(root)
    keep = {p for _, p in ckpts[-keep_last:]}
    keep |= {p for s, p in ckpts if best_step is not None and s == best_step}
    for _, p in ckpts:
        if p not in keep:
            shutil.rmtree(p, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems do not allow fsync on directories
        pass
