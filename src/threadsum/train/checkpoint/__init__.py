"""Checkpoints of the training loop: where they live and how they are published (layout), what they
hold besides weights (state), and the two formats of the weights (plain, sharded).

The caller chooses the format to write (the loop: sharded under FSDP, plain otherwise); reading
follows what the folder holds (:func:`load`, :func:`load_weights`).
"""
from __future__ import annotations

from pathlib import Path

from threadsum.train.checkpoint import plain, sharded
from threadsum.train.checkpoint.layout import (
    CHECKPOINTS_DIR,
    FAULT_CHECKPOINT_CRASH_ENV,
    FAULT_EXIT_CODE,
    SHARDED_DIR,
    CheckpointError,
    is_sharded_checkpoint,
    list_checkpoints,
    remove_stale_tmp,
)
from threadsum.train.checkpoint.state import Counters, TrainState, config_differences

__all__ = [
    "CHECKPOINTS_DIR", "FAULT_CHECKPOINT_CRASH_ENV", "FAULT_EXIT_CODE", "SHARDED_DIR", "CheckpointError",
    "Counters", "TrainState", "config_differences", "is_sharded_checkpoint", "list_checkpoints", "load",
    "load_weights", "remove_stale_tmp",
]


def load(state: TrainState, path: str | Path) -> list[str]:
    """Restore ``state`` from a checkpoint folder of either format; returns the config differences
    that change the result. Raises :class:`CheckpointError` (exit 2) when it cannot be used."""
    return (sharded.load if is_sharded_checkpoint(path) else plain.load)(state, path)


def load_weights(model, path: str | Path) -> None:
    """Copy a checkpoint's weights (either format) into ``model``; every rank calls it under FSDP.
    Raises :class:`CheckpointError` when the weights file cannot be read."""
    if is_sharded_checkpoint(path):
        sharded.load_shards(model, None, path)
    else:
        plain.copy_weights(model, plain.read_weights(path))
