"""The plain checkpoint format: one ``model.safetensors`` with whole tensors plus ``state.pt``.

Written by one process (single process, or rank 0 of DDP, whose replicas are identical).
"""
from __future__ import annotations

from pathlib import Path

from threadsum.train.checkpoint.layout import (
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    publish,
    read_marker,
)
from threadsum.train.checkpoint.state import TrainState, read_state_file
from threadsum.train.distributed import model_is_sharded


def save(state: TrainState, root: str | Path, keep_last: int) -> Path:
    """Write ``root/step-XXXXXXXX`` for ``state.counters.step`` atomically (see layout.publish), then
    prune to ``keep_last`` + the best. Returns the folder; raises ``OSError`` when the disk fails."""
    import torch
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(state.weights(), str(tmp / MODEL_FILE))
        torch.save(state.state_blob(), tmp / STATE_FILE)

    return publish(root, state.counters.step, write, keep_last, state.counters.best_step)


def load(state: TrainState, path: str | Path) -> list[str]:
    """Restore ``state`` whole from a plain checkpoint folder; returns the config differences that
    change the result. Raises :class:`CheckpointError` when the folder is incomplete, unreadable, or
    does not fit the model (other weights, LoRA on/off, sharded weights)."""
    path = Path(path)
    if read_marker(path) is None:
        raise CheckpointError(f"checkpoint '{path}' is incomplete or corrupt (no valid COMPLETE marker)")
    if model_is_sharded(state.model):
        raise CheckpointError(
            f"checkpoint '{path}' was written without FSDP and cannot be loaded into sharded weights; "
            f"resume it with train.strategy=ddp (or one process), or start a new output_dir")
    blob = read_state_file(path)
    weights = read_weights(path)
    state.check_blob(blob, path)
    expected = set(state.weights())
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise CheckpointError(
            f"checkpoint '{path}' does not match the model (missing {missing[:3]}, unexpected {extra[:3]}); "
            f"the model settings changed since it was written: resume with the same model section or a new output_dir"
        )
    copy_weights(state.model, weights)
    return state.restore(blob)


def read_weights(path: str | Path) -> dict:
    """Name -> tensor from the checkpoint's ``model.safetensors``; :class:`CheckpointError` when unreadable."""
    from safetensors.torch import load_file

    try:
        return load_file(str(Path(path) / MODEL_FILE))
    except Exception as exc:  # noqa: BLE001 - truncated / garbled files
        raise CheckpointError(f"checkpoint '{path}' cannot be read: {type(exc).__name__}: {exc}") from exc


def copy_weights(model, weights: dict) -> None:
    """Copy ``weights`` (name -> tensor, names as in ``model.named_parameters()``) into ``model`` in place."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
