"""The sharded checkpoint format of FSDP runs: ``sharded/`` (torch.distributed.checkpoint) + ``state.pt``.

Each rank writes its shard of the model and optimizer; rank 0 adds the metadata, ``state.pt`` and the
marker (layout.publish). torch.distributed.checkpoint reshards on load, so a sharded checkpoint loads
on any world size, including one plain process.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from threadsum.train.checkpoint.layout import (
    SHARDED_DIR,
    STATE_FILE,
    CheckpointError,
    publish,
    read_marker,
)
from threadsum.train.checkpoint.state import TrainState, read_state_file
from threadsum.train.distributed import barrier, dist_active

_SHARDED_MODEL, _SHARDED_OPTIMIZER = "model", "optimizer"
_NO_DIST_WARNING = "torch.distributed is disabled, unavailable or uninitialized"


def save(state: TrainState, root: str | Path, keep_last: int, is_main: bool) -> Path:
    """Write the sharded checkpoint of ``state.counters.step``; every rank calls it at the same step
    (collective). Returns the folder; a crash at any point leaves no half checkpoint (layout.publish)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    def write(tmp: Path) -> None:
        model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
        warnings.filterwarnings("ignore", message=_NO_DIST_WARNING)
        # collective: each rank writes its own shard file, rank 0 the global metadata
        dcp.save({_SHARDED_MODEL: model_sd, _SHARDED_OPTIMIZER: optim_sd}, checkpoint_id=str(tmp / SHARDED_DIR),
                 no_dist=not dist_active())
        barrier()
        if is_main:
            torch.save(state.state_blob(include_optimizer=False), tmp / STATE_FILE)

    return publish(root, state.counters.step, write, keep_last, state.counters.best_step,
                   is_main=is_main, barrier=barrier)


def load(state: TrainState, path: str | Path) -> list[str]:
    """Restore ``state`` whole from a sharded checkpoint (every rank calls it); returns the config
    differences that change the result. Raises :class:`CheckpointError` when the folder is incomplete,
    unreadable or does not fit the model."""
    path = Path(path)
    if read_marker(path) is None:
        raise CheckpointError(f"checkpoint '{path}' is incomplete or corrupt (no valid COMPLETE marker)")
    blob = read_state_file(path)
    state.check_blob(blob, path)
    try:
        load_shards(state.model, state.optimizer, path)
    except Exception as exc:  # noqa: BLE001 - missing keys, torn shards
        raise CheckpointError(f"sharded checkpoint '{path}' cannot be loaded into this model: "
                              f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return state.restore(blob)


def load_shards(model, optimizer, path: str | Path) -> None:
    """Load a sharded checkpoint into ``model`` (and ``optimizer`` when not None) on any world size.

    torch.distributed.checkpoint reshards on load: each rank reads the slices its own shards need,
    and a single plain process reads whole tensors. Every rank of a job must call it.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    folder = Path(path)
    if folder.name != SHARDED_DIR:
        folder = folder / SHARDED_DIR
    no_dist = not dist_active()
    warnings.filterwarnings("ignore", message=_NO_DIST_WARNING)
    if optimizer is None:
        blob = {_SHARDED_MODEL: get_model_state_dict(model)}
        dcp.load(blob, checkpoint_id=str(folder), no_dist=no_dist)
        set_model_state_dict(model, blob[_SHARDED_MODEL])
        return
    model_sd, optim_sd = get_state_dict(model, optimizer)
    blob = {_SHARDED_MODEL: model_sd, _SHARDED_OPTIMIZER: optim_sd}
    dcp.load(blob, checkpoint_id=str(folder), no_dist=no_dist)
    set_state_dict(model, optimizer, model_state_dict=blob[_SHARDED_MODEL], optim_state_dict=blob[_SHARDED_OPTIMIZER])
