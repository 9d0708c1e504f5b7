"""Everything resumable in one object: ``TrainState`` (model, optimizer, scheduler, scaler, sampler,
RNG, counters, config) and the contents of ``state.pt``. The formats (plain.py, sharded.py) write the
weights; this module owns what else a checkpoint holds and how a resumed run compares its config.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from threadsum.config import WEIGHT_NEUTRAL_KEYS, differing_settings
from threadsum.train.checkpoint.layout import STATE_FILE, CheckpointError

# keys of state.pt
KEY_FORMAT = "format_version"
KEY_OPTIMIZER = "optimizer"
KEY_SCHEDULER = "scheduler"
KEY_SCALER = "scaler"
KEY_RNG = "rng"
KEY_SAMPLER = "sampler"
KEY_COUNTERS = "counters"
KEY_CONFIG = "config"
KEY_ADAPTER_ONLY = "adapter_only"
FORMAT_VERSION = 1

# keys of the RNG snapshot
RNG_PYTHON, RNG_NUMPY, RNG_TORCH, RNG_CUDA = "python", "numpy", "torch", "cuda"


@dataclass
class Counters:
    """Step counters and running totals (all part of the exact-resume state)."""

    step: int = 0
    """Optimizer steps completed (skipped steps included)."""
    micro_steps: int = 0
    """Micro-batches (forward/backward passes of whole micro-batches) completed."""
    real_tokens: int = 0
    """Non-padding source + target tokens trained on."""
    padded_tokens: int = 0
    """Tokens including padding."""
    skipped_steps: int = 0
    """fp16 steps skipped by the gradient scaler because gradients had inf/NaN."""
    nonfinite_steps: int = 0
    """Steps whose loss or gradient norm was non-finite, skipped under train.on_nonfinite=skip."""
    nonfinite_in_a_row: int = 0
    """Consecutive non-finite steps up to now (0 after a good step)."""
    oom_events: int = 0
    """Out-of-memory events recovered by splitting a micro-batch."""
    compute_max_tokens: int = 0
    """Current largest piece run in one forward/backward (lowered by repeated OOM)."""
    best_val_loss: Optional[float] = None
    """Best validation loss so far."""
    best_step: Optional[int] = None
    """Step of the best validation loss."""
    train_seconds: float = 0.0
    """Wall time spent training, summed over resumed runs."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every counter (stored in ``state.pt``)."""
        return dict(self.__dict__)


@dataclass
class TrainState:
    """Model, optimizer, scheduler, scaler, sampler, RNG and counters: saved and restored whole.

    ``config`` is the resolved config (``Config.to_dict()``); ``adapter_only`` is True with LoRA,
    where checkpoints hold only the trainable (adapter) weights.
    """

    model: Any
    optimizer: Any
    scheduler: Any
    sampler: Any
    scaler: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    adapter_only: bool = False
    counters: Counters = field(default_factory=Counters)

    def weights(self) -> dict[str, Any]:
        """Name -> CPU tensor of the weights a plain checkpoint holds (trainable ones only with LoRA)."""
        # named_parameters() lists tied weights (BART's shared embeddings) once, which safetensors needs
        return {
            n: p.detach().contiguous().cpu()
            for n, p in self.model.named_parameters()
            if p.requires_grad or not self.adapter_only
        }

    def state_blob(self, include_optimizer: bool = True) -> dict[str, Any]:
        """Contents of state.pt (the sharded format keeps the optimizer in its shards instead)."""
        return {
            KEY_FORMAT: FORMAT_VERSION,
            KEY_OPTIMIZER: self.optimizer.state_dict() if include_optimizer else None,
            KEY_SCHEDULER: self.scheduler.state_dict(),
            KEY_SCALER: self.scaler.state_dict() if self.scaler is not None and self.scaler.is_enabled() else None,
            KEY_RNG: capture_rng(),
            KEY_SAMPLER: self.sampler.state_dict(),
            KEY_COUNTERS: self.counters.to_dict(),
            KEY_CONFIG: self.config,
            KEY_ADAPTER_ONLY: self.adapter_only,
        }

    def check_blob(self, blob: dict[str, Any], path: Path) -> None:
        """Raise :class:`CheckpointError` when ``blob`` (read from ``path``) cannot restore this state."""
        if blob.get(KEY_FORMAT) != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint '{path}' has format {blob.get(KEY_FORMAT)}, expected {FORMAT_VERSION}")
        if bool(blob[KEY_ADAPTER_ONLY]) != self.adapter_only:
            raise CheckpointError(
                f"checkpoint '{path}' was written {'with' if blob[KEY_ADAPTER_ONLY] else 'without'} LoRA; "
                f"set model.lora.enabled={bool(blob[KEY_ADAPTER_ONLY])} or start a new output_dir"
            )

    def restore(self, blob: dict[str, Any]) -> list[str]:
        """Restore optimizer (when the blob holds it), scheduler, scaler, sampler, counters and RNG from
        ``blob``; the weights are the format's job. Returns the config differences that matter."""
        if blob[KEY_OPTIMIZER] is not None:
            self.optimizer.load_state_dict(blob[KEY_OPTIMIZER])
        self.scheduler.load_state_dict(blob[KEY_SCHEDULER])
        if self.scaler is not None and blob[KEY_SCALER] is not None:
            self.scaler.load_state_dict(blob[KEY_SCALER])
        diffs = config_differences(blob[KEY_CONFIG], self.config)
        fp_saved = blob[KEY_SAMPLER].get("fingerprint")
        if fp_saved != self.sampler.fingerprint():
            diffs.append(f"batching: {fp_saved} -> {self.sampler.fingerprint()} (the data order will differ)")
        self.sampler.load_state_dict(blob[KEY_SAMPLER])
        self.counters = Counters(**blob[KEY_COUNTERS])
        restore_rng(blob[KEY_RNG])
        return diffs


def read_state_file(path: str | Path) -> dict[str, Any]:
    """The ``state.pt`` blob of a checkpoint folder; raises :class:`CheckpointError` when unreadable."""
    import torch

    try:
        # our own file, written by the formats; it holds numpy RNG state, hence weights_only=False
        return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated / garbled files
        raise CheckpointError(f"checkpoint '{path}' cannot be read: {type(exc).__name__}: {exc}") from exc


def capture_rng() -> dict[str, Any]:
    """Snapshot of the Python, numpy, torch CPU and CUDA random generators (restored by restore_rng)."""
    import torch

    return {
        RNG_PYTHON: random.getstate(),
        RNG_NUMPY: np.random.get_state(),
        RNG_TORCH: torch.get_rng_state(),
        RNG_CUDA: torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set every random generator from a :func:`capture_rng` snapshot (CUDA only when available)."""
    import torch

    random.setstate(state[RNG_PYTHON])
    np.random.set_state(state[RNG_NUMPY])
    torch.set_rng_state(state[RNG_TORCH])
    if state.get(RNG_CUDA) is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state[RNG_CUDA])


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every setting that changes the trained weights of a resumed run
    (all but ``threadsum.config.WEIGHT_NEUTRAL_KEYS``)."""
    return [f"{key}: {old!r} -> {new!r}" for key, old, new in differing_settings(saved, current, WEIGHT_NEUTRAL_KEYS)]
