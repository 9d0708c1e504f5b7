"""Everything resumable in one object (``TrainState``), saved atomically in numbered step folders.

Layout of ``<output_dir>/checkpoints/``::

    step-00000120/
        model.safetensors   trainable weights (all weights; only the adapter with LoRA)
        state.pt            optimizer, scheduler, grad scaler, RNG states, sampler position,
                            counters, the resolved config (keys: the KEY_* constants below)
        COMPLETE            JSON marker written last: step and the byte size of every file

A checkpoint is written into ``.tmp-step-...``, every file is fsynced, the marker is written, then
the folder is renamed into place (atomic on POSIX). A folder without a valid marker is never used:
a crash or ``kill -9`` while writing leaves the previous checkpoint as the newest complete one.
Progress is read from the marker and ``state.pt``, never parsed out of folder names.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from threadsum.errors import UserError

log = logging.getLogger("threadsum.train")

CHECKPOINTS_DIR = "checkpoints"
STEP_DIR_FORMAT = "step-{:08d}"
TMP_PREFIX = ".tmp-"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
COMPLETE_MARKER = "COMPLETE"

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

# Fault injection for tests: exit abruptly (no cleanup) in the middle of writing the checkpoint of
# this step, after the weights are written and before the marker.
FAULT_CHECKPOINT_CRASH_ENV = "THREADSUM_FAULT_CHECKPOINT_CRASH_AT_STEP"
FAULT_EXIT_CODE = 86

# Settings whose change between a checkpoint and the resumed run changes the result.
_IGNORED_ON_RESUME = {
    "name",
    "train.output_dir", "train.resume", "train.log_every_steps", "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes", "train.keep_last", "train.eval_every_steps",
    "train.eval_rouge_samples", "train.num_workers", "train.memory_limit_gb", "train.auto_fit",
    "data.num_proc", "data.source", "data.strict",
    # distributed layout: same math on any strategy/world size (see train/distributed.py)
    "train.strategy", "train.fsdp_sharding", "train.fsdp_cpu_offload", "train.dist_timeout_minutes",
}
_IGNORED_SECTIONS = ("eval.", "track.", "serve.", "sagemaker.")


class CheckpointError(UserError):
    """A checkpoint cannot be used; the message says which and why."""


@dataclass
class Counters:
    """Step counters and running totals (all part of the exact-resume state)."""

    step: int = 0
    """Optimizer steps completed."""
    micro_steps: int = 0
    """Micro-batches (forward/backward passes of whole micro-batches) completed."""
    real_tokens: int = 0
    """Non-padding source + target tokens trained on."""
    padded_tokens: int = 0
    """Tokens including padding."""
    skipped_steps: int = 0
    """fp16 steps skipped because gradients had inf/NaN."""
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
        return dict(self.__dict__)


@dataclass
class TrainState:
    """Model, optimizer, scheduler, scaler, sampler, RNG and counters: saved and loaded whole."""

    model: Any
    optimizer: Any
    scheduler: Any
    sampler: Any
    scaler: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    adapter_only: bool = False
    counters: Counters = field(default_factory=Counters)

    # ---- weights
    def _weights(self) -> dict[str, Any]:
        # named_parameters() lists tied weights (BART's shared embeddings) once, which safetensors needs
        return {
            n: p.detach().contiguous().cpu()
            for n, p in self.model.named_parameters()
            if p.requires_grad or not self.adapter_only
        }

    def state_blob(self, include_optimizer: bool = True) -> dict[str, Any]:
        """Contents of state.pt (sharded checkpoints keep the optimizer in their shards instead)."""
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

    # ---- save
    def save(self, root: str | Path, keep_last: int) -> Path:
        """Write ``root/step-XXXXXXXX`` atomically, then prune old ones (keep ``keep_last`` + best)."""
        import torch
        from safetensors.torch import save_file

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        step = self.counters.step
        final = root / STEP_DIR_FORMAT.format(step)
        if _read_marker(final) is not None:
            return final  # this exact state is already on disk (e.g. final save right after a periodic one)
        tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()

        save_file(self._weights(), str(tmp / MODEL_FILE))
        _fsync(tmp / MODEL_FILE)
        if os.environ.get(FAULT_CHECKPOINT_CRASH_ENV) == str(step):
            log.error("fault injection: crashing while writing checkpoint of step %d", step)
            os._exit(FAULT_EXIT_CODE)
        torch.save(self.state_blob(), tmp / STATE_FILE)
        _fsync(tmp / STATE_FILE)
        marker = {
            "step": step,
            "time": time.time(),
            "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir())},
        }
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker))
        _fsync(tmp / COMPLETE_MARKER)
        _fsync_dir(tmp)
        if final.exists():  # an incomplete leftover with the same name
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        prune(root, keep_last, self.counters.best_step)
        return final

    # ---- load
    def load(self, path: str | Path, strict_config: bool = False) -> list[str]:
        """Restore everything from a checkpoint folder; returns the config differences that matter."""
        import torch
        from safetensors.torch import load_file

        path = Path(path)
        if _read_marker(path) is None:
            raise CheckpointError(f"checkpoint '{path}' is incomplete or corrupt (no valid {COMPLETE_MARKER} marker)")
        # --- distributed: FSDP checkpoints keep weights + optimizer in sharded/ (train/distributed.py)
        from threadsum.train.distributed import is_sharded_checkpoint, model_is_sharded

        sharded = is_sharded_checkpoint(path)
        if not sharded and model_is_sharded(self.model):
            raise CheckpointError(
                f"checkpoint '{path}' was written without FSDP and cannot be loaded into sharded weights; "
                f"resume it with train.strategy=ddp (or one process), or start a new output_dir")
        # --- end distributed
        try:
            # our own file, written by save() above; it holds numpy RNG state, hence weights_only=False
            blob = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
            weights = {} if sharded else load_file(str(path / MODEL_FILE))
        except Exception as exc:  # truncated / garbled files
            raise CheckpointError(f"checkpoint '{path}' cannot be read: {type(exc).__name__}: {exc}") from exc
        if blob.get(KEY_FORMAT) != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint '{path}' has format {blob.get(KEY_FORMAT)}, expected {FORMAT_VERSION}")
        if bool(blob[KEY_ADAPTER_ONLY]) != self.adapter_only:
            raise CheckpointError(
                f"checkpoint '{path}' was written {'with' if blob[KEY_ADAPTER_ONLY] else 'without'} LoRA; "
                f"set model.lora.enabled={bool(blob[KEY_ADAPTER_ONLY])} or start a new output_dir"
            )
        expected = set(self._weights()) if not sharded else set()
        if set(weights) != expected:
            missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
            raise CheckpointError(
                f"checkpoint '{path}' does not match the model (missing {missing[:3]}, unexpected {extra[:3]}); "
                f"the model settings changed since it was written: resume with the same model section or a new output_dir"
            )
        if sharded:  # distributed: any world size, including one plain process
            from threadsum.train.distributed import load_sharded

            try:
                load_sharded(self.model, self.optimizer, path)
            except Exception as exc:  # noqa: BLE001 - missing keys, torn shards
                raise CheckpointError(f"sharded checkpoint '{path}' cannot be loaded into this model: "
                                      f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        else:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, tensor in weights.items():
                    params[name].copy_(tensor)
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


def capture_rng() -> dict[str, Any]:
    import torch

    return {
        RNG_PYTHON: random.getstate(),
        RNG_NUMPY: np.random.get_state(),
        RNG_TORCH: torch.get_rng_state(),
        RNG_CUDA: torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state[RNG_PYTHON])
    np.random.set_state(state[RNG_NUMPY])
    torch.set_rng_state(state[RNG_TORCH])
    if state.get(RNG_CUDA) is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state[RNG_CUDA])


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every setting that changes the result of a resumed run."""
    a, b = _flatten(saved or {}), _flatten(current or {})
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in _IGNORED_ON_RESUME or key.startswith(_IGNORED_SECTIONS):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


# ------------------------------------------------------------------------------ discovery
def _read_marker(path: Path) -> Optional[dict[str, Any]]:
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
    """Complete checkpoints as (step, path), oldest first. With ``warn``, says which were skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith(TMP_PREFIX):
            continue
        marker = _read_marker(p)
        if marker is None:
            if warn:
                log.warning("skipping checkpoint %s: incomplete or corrupt (missing/mismatched %s marker)", p, COMPLETE_MARKER)
            continue
        found.append((int(marker["step"]), p))
    return sorted(found)


def remove_stale_tmp(root: str | Path) -> None:
    """Temporary folders left by a crash while writing; never read, safe to delete at start."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def prune(root: Path, keep_last: int, best_step: Optional[int]) -> None:
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
