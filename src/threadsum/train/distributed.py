"""Data parallel (DDP) and sharded (FSDP) training on torch.distributed through accelerate.

The training loop is the same function in one process and in many: this module decides the
strategy, builds the ``Accelerator`` and holds everything that differs between ranks.

    torchrun --standalone --nproc-per-node 4 -m threadsum train -c configs/bart-large.yaml
    threadsum train -c configs/bart-large.yaml --nproc 4          # the same, started for you

Strategies (``train.strategy``; see docs/distributed.md):

    auto       one process: plain; several: DDP
    ddp        every rank holds the whole model and optimizer; gradients are all-reduced once
               per optimizer step (the other micro-batches run under ``no_sync``)
    fsdp       FSDP2 (``torch.distributed.fsdp.fully_shard``) through accelerate's
               FullyShardedDataParallelPlugin: parameters, gradients and optimizer state are
               sharded; each BartEncoderLayer/BartDecoderLayer is its own unit.
               ``train.fsdp_sharding=full_shard`` re-gathers a layer's parameters for the backward
               pass (least memory, ZeRO-3-like); ``shard_grad_op`` keeps them gathered between
               forward and backward (less communication, ZeRO-2-like); ``train.fsdp_cpu_offload``
               keeps parameters and optimizer state in CPU memory.
    deepspeed  ZeRO-2/3 through accelerate's DeepSpeedPlugin; needs the ``deepspeed`` package

Rules the loop follows (all enforced here):

- Batch size is global: ``accumulation = ceil(batch_tokens / (max_tokens * world_size))``, so the
  same config trains on the same threads per optimizer step on 1, 2 or 8 ranks and a checkpoint
  resumes on another world size without changing the result.
- The loss is normalised by the label tokens of the whole step on all ranks, so averaging
  gradients across ranks gives exactly the single-process gradient.
- Rank 0 alone writes logs, metrics, the run record and ``model/``; non-zero ranks log warnings only.
- Every optimizer step ends with one all-reduce of (loss, tokens, stop flag): a SIGTERM that reaches
  any rank stops all ranks after the same step, they write one checkpoint together and exit 75.
- Checkpoints: DDP and single process write the plain format (checkpoint.py) from rank 0. FSDP
  writes ``sharded/`` with torch.distributed.checkpoint (each rank its shard; rank 0 the metadata,
  ``state.pt`` and the marker), which loads on any world size, including one plain process.
  The exported ``model/`` is always a consolidated Hugging Face folder.
  All ranks must see the same ``train.output_dir`` (one node, or a shared filesystem).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

from threadsum.config import Config, ConfigError
from threadsum.deps import MissingExtraError

log = logging.getLogger("threadsum.train")

SHARDED_DIR = "sharded"
"""Folder of a step checkpoint that holds the torch.distributed.checkpoint shards (model + optimizer)."""
_SHARDED_MODEL, _SHARDED_OPTIMIZER = "model", "optimizer"
# the layers FSDP shards as units: each is gathered just before it runs and freed after
FSDP_WRAP_CLASSES = ["BartEncoderLayer", "BartDecoderLayer"]


# ----------------------------------------------------------------------------------- ranks
def world_size() -> int:
    """Processes in the job, from torchrun's environment (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """Global rank of this process (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_rank_zero() -> bool:
    return rank() == 0


def accumulation_steps(batch_tokens: int, max_tokens: int, n_processes: int) -> int:
    """Micro-batches per rank per optimizer step so that a step holds ~``batch_tokens`` on all ranks."""
    return max(1, math.ceil(batch_tokens / (max_tokens * max(1, n_processes))))


def quiet_other_ranks() -> None:
    """Only rank 0 prints progress; the others report warnings and errors."""
    if not is_rank_zero():
        logging.getLogger("threadsum").setLevel(logging.WARNING)
        for name in ("transformers", "accelerate", "datasets"):
            logging.getLogger(name).setLevel(logging.ERROR)


class NullTracker:
    """The run tracker of ranks other than 0: accepts every call, writes nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def make_tracker(cfg: Config, output_dir: str | Path, kind: str):
    """``RunTracker`` on rank 0; a no-op stand-in elsewhere (one run record, one MLflow run)."""
    if not is_rank_zero():
        return NullTracker()
    from threadsum.track import RunTracker

    return RunTracker(cfg, output_dir, kind)


# -------------------------------------------------------------------------------- strategy
def resolve_strategy(requested: str, n_processes: int) -> str:
    """'single', 'ddp', 'fsdp' or 'deepspeed' for this launch."""
    if requested == "auto":
        return "ddp" if n_processes > 1 else "single"
    if requested == "ddp" and n_processes == 1:
        return "single"
    return requested


def uses_sharded_checkpoints(cfg: Config) -> bool:
    """FSDP runs write sharded checkpoints on any world size (so a 1-process FSDP run mixes with others)."""
    return cfg.train.strategy == "fsdp"


def _fsdp_plugin(cfg: Config):
    from accelerate.utils import FullyShardedDataParallelPlugin

    tc = cfg.train
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        # full_shard frees a layer's gathered parameters after its forward (re-gathered for backward);
        # shard_grad_op keeps them until backward: one all-gather fewer per layer, more memory
        reshard_after_forward=tc.fsdp_sharding == "full_shard",
        cpu_offload=tc.fsdp_cpu_offload,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=FSDP_WRAP_CLASSES,
        state_dict_type="SHARDED_STATE_DICT",
        # activation checkpointing stays with model.gradient_checkpointing (prepare_for_training)
        activation_checkpointing=False,
    )


def _deepspeed_plugin(cfg: Config, accumulation: int):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise MissingExtraError(
            "train.strategy=deepspeed needs the 'deepspeed' package: pip install deepspeed (CUDA machines); "
            "without it use train.strategy=fsdp (fsdp_sharding=full_shard is ZeRO-3-like, shard_grad_op ZeRO-2-like)")
    from accelerate.utils import DeepSpeedPlugin

    tc = cfg.train
    return DeepSpeedPlugin(
        zero_stage=tc.deepspeed_stage,
        gradient_accumulation_steps=accumulation,
        gradient_clipping=tc.max_grad_norm or None,
        offload_optimizer_device="cpu" if tc.fsdp_cpu_offload else "none",
        offload_param_device="cpu" if tc.fsdp_cpu_offload and tc.deepspeed_stage == 3 else "none",
        zero3_save_16bit_model=False,
    )


def build_accelerator(cfg: Config, accumulation: int):
    """The ``Accelerator`` of this launch: plain, DDP, FSDP2 or DeepSpeed per ``train.strategy``."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, GradientAccumulationPlugin, InitProcessGroupKwargs

    tc = cfg.train
    n = world_size()
    strategy = resolve_strategy(tc.strategy, n)
    if strategy == "deepspeed":
        _deepspeed_plugin(cfg, accumulation)  # names the missing package first
        raise ConfigError(
            "train.strategy=deepspeed is not wired into the training loop yet (its engine owns backward, "
            "loss scaling and clipping); use train.strategy=fsdp: fsdp_sharding=full_shard is the ZeRO-3 "
            "equivalent and shard_grad_op the ZeRO-2 one")
    # no CUDA: accelerate picks the gloo backend only when told it runs on CPU
    cpu = not torch.cuda.is_available()
    kwargs: dict[str, Any] = {}
    fsdp = _fsdp_plugin(cfg) if strategy == "fsdp" and n > 1 else None
    if fsdp is not None:
        kwargs["fsdp_plugin"] = fsdp
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision="no",  # autocast and loss scaling are explicit in the loop, identical on CPU and GPU
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=accumulation, adjust_scheduler=False, sync_with_dataloader=False),
        # a rank that dies or hangs turns into an error on the others after this long instead of a silent hang
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=tc.dist_timeout_minutes))],
        **kwargs,
    )
    if fsdp is not None and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # accelerate enables FSDP on accelerator devices only; on CPU (gloo) switch the shared state
        # ourselves so that prepare(), no_sync() and clip_grad_norm_() take the same FSDP2 path as on GPUs
        for shared in (PartialState._shared_state, AcceleratorState._shared_state):
            shared["distributed_type"] = DistributedType.FSDP
        AcceleratorState._shared_state["fsdp_plugin"] = fsdp
    if n > 1:
        quiet_other_ranks()
        log.info("distributed: %s on %d processes (%s backend), %d micro-batches per rank per step",
                 strategy, accelerator.num_processes, "gloo" if cpu else "nccl", accumulation)
    return accelerator


def strategy_of(accelerator) -> str:
    """'single', 'ddp', 'fsdp' or 'deepspeed' as actually set up."""
    from accelerate.utils import DistributedType

    t = accelerator.distributed_type
    if t == DistributedType.FSDP:
        return "fsdp"
    if t == DistributedType.DEEPSPEED:
        return "deepspeed"
    return "ddp" if accelerator.num_processes > 1 else "single"


def prepare_model_for_strategy(model, cfg: Config):
    """Model surgery a strategy needs before ``accelerator.prepare`` (no numerical change).

    FSDP2 puts each parameter in exactly one shard group. BART ties one embedding matrix to four
    modules (``shared``, the encoder's and decoder's ``embed_tokens``, ``lm_head``); the three
    embedding modules are identical (same class, scale, padding index and weight), so the encoder
    and decoder are pointed at ``shared`` and accelerate groups it with ``lm_head``.
    """
    if cfg.train.strategy != "fsdp":
        return model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    shared = getattr(inner, "shared", None)
    if shared is None:
        return model
    for part in (inner.encoder, inner.decoder):
        emb = getattr(part, "embed_tokens", None)
        if emb is None or emb is shared:
            continue
        same = (type(emb) is type(shared) and emb.weight is shared.weight
                and getattr(emb, "embed_scale", None) == getattr(shared, "embed_scale", None)
                and emb.padding_idx == shared.padding_idx)
        if not same:
            raise ConfigError(
                "train.strategy=fsdp needs the encoder/decoder token embeddings tied to model.shared "
                "(as in every BART checkpoint); this model unties them: use train.strategy=ddp")
        part.embed_tokens = shared
    return model


# ------------------------------------------------------------------------- per-step sync
def sync_step(accelerator, loss_sum, real_tokens: int, padded_tokens: int, stop: bool) -> tuple[float, int, int, bool]:
    """Sum the step's loss and token counts over ranks and OR their stop flags: one small all-reduce.

    Every rank calls this once per optimizer step, so a signal seen by any one rank stops all of them
    after the same step (no rank waits in a collective the others never enter).
    """
    import torch

    loss = float(loss_sum)  # note: CPU-GPU sync, once per optimizer step
    if accelerator.num_processes == 1:
        return loss, int(real_tokens), int(padded_tokens), bool(stop)
    t = torch.tensor([loss, float(real_tokens), float(padded_tokens), 1.0 if stop else 0.0],
                     dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    loss, real, padded, stops = t.tolist()
    return loss, int(real), int(padded), stops > 0


# ---------------------------------------------------------------------------- checkpoints
def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _dist_active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def model_is_sharded(model) -> bool:
    """True when the parameters are FSDP2 shards (DTensors) rather than whole tensors."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def is_sharded_checkpoint(path: str | Path) -> bool:
    return (Path(path) / SHARDED_DIR).is_dir()


def save_train_state(state, root: str | Path, keep_last: int, accelerator, sharded: bool) -> Path:
    """Write the checkpoint of ``state.counters.step``: every rank calls this at the same step.

    Plain: rank 0 writes it (DDP replicas are identical). Sharded: each rank writes its shard of the
    model and optimizer into one temporary folder; rank 0 adds ``state.pt`` and the ``COMPLETE``
    marker and renames the folder into place, so a crash at any point leaves no half checkpoint.
    """
    from threadsum.train.checkpoint import STEP_DIR_FORMAT

    root = Path(root)
    final = root / STEP_DIR_FORMAT.format(state.counters.step)
    if not sharded:
        path = state.save(root, keep_last) if accelerator.is_main_process else final
        accelerator.wait_for_everyone()
        return path
    _save_sharded(state, root, final, keep_last, accelerator.is_main_process)
    return final


def _save_sharded(state, root: Path, final: Path, keep_last: int, main: bool) -> None:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from threadsum.train.checkpoint import (
        COMPLETE_MARKER,
        FAULT_CHECKPOINT_CRASH_ENV,
        FAULT_EXIT_CODE,
        STATE_FILE,
        TMP_PREFIX,
        _fsync,
        _fsync_dir,
        _read_marker,
        prune,
    )

    if _read_marker(final) is not None:
        return  # this exact state is already on disk (final save right after a periodic one)
    tmp = root / f"{TMP_PREFIX}{final.name}-sharded"
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
    warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
    # collective: each rank writes its own shard file, rank 0 the global metadata
    dcp.save({_SHARDED_MODEL: model_sd, _SHARDED_OPTIMIZER: optim_sd}, checkpoint_id=str(tmp / SHARDED_DIR),
             no_dist=not _dist_active())
    _barrier()
    if main:
        import json
        import time

        step = state.counters.step
        if os.environ.get(FAULT_CHECKPOINT_CRASH_ENV) == str(step):
            log.error("fault injection: crashing while writing checkpoint of step %d", step)
            os._exit(FAULT_EXIT_CODE)
        for f in (tmp / SHARDED_DIR).iterdir():
            _fsync(f)
        _fsync_dir(tmp / SHARDED_DIR)
        torch.save(state.state_blob(include_optimizer=False), tmp / STATE_FILE)
        _fsync(tmp / STATE_FILE)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        files.update({f"{SHARDED_DIR}/{p.name}": p.stat().st_size for p in sorted((tmp / SHARDED_DIR).iterdir())})
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"step": step, "time": time.time(), "files": files}))
        _fsync(tmp / COMPLETE_MARKER)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        prune(root, keep_last, state.counters.best_step)
    _barrier()


def load_sharded(model, optimizer, path: str | Path) -> None:
    """Load a sharded checkpoint into ``model`` (and ``optimizer`` when given) on any world size.

    torch.distributed.checkpoint reshards on load: each rank reads the slices its own shards need,
    and a single plain process reads whole tensors. Every rank of a job must call it.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict

    folder = Path(path)
    if folder.name != SHARDED_DIR:
        folder = folder / SHARDED_DIR
    no_dist = not _dist_active()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
    if optimizer is None:
        model_sd = get_model_state_dict(model)
        blob = {_SHARDED_MODEL: model_sd}
        dcp.load(blob, checkpoint_id=str(folder), no_dist=no_dist)
        set_model_state_dict(model, blob[_SHARDED_MODEL])
        return
    model_sd, optim_sd = get_state_dict(model, optimizer)
    blob = {_SHARDED_MODEL: model_sd, _SHARDED_OPTIMIZER: optim_sd}
    dcp.load(blob, checkpoint_id=str(folder), no_dist=no_dist)
    set_state_dict(model, optimizer, model_state_dict=blob[_SHARDED_MODEL], optim_state_dict=blob[_SHARDED_OPTIMIZER])


def load_model_weights(model, checkpoint: str | Path) -> None:
    """Copy a checkpoint's weights (either format) into ``model``; every rank calls it under FSDP."""
    import torch
    from safetensors.torch import load_file

    from threadsum.train.checkpoint import MODEL_FILE

    checkpoint = Path(checkpoint)
    if is_sharded_checkpoint(checkpoint):
        load_sharded(model, None, checkpoint)
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(str(checkpoint / MODEL_FILE)).items():
            params[name].copy_(tensor)


# --------------------------------------------------------------------------------- export
def consolidated_model(accelerator, model, cfg: Config, tokenizer):
    """The model to export as one Hugging Face folder: returned on rank 0, None on the others.

    DDP/plain: the unwrapped model. FSDP: all ranks gather the full state dict (to CPU, on rank 0
    only) and rank 0 loads it into a fresh copy of the model, which ``save_pretrained`` can write.
    """
    if not model_is_sharded(accelerator.unwrap_model(model)):
        return accelerator.unwrap_model(model) if accelerator.is_main_process else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from threadsum.model import load_model, prepare_for_training

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not accelerator.is_main_process:
        return None
    fresh = prepare_for_training(load_model(cfg, tokenizer), cfg.model)
    missing, unexpected = fresh.load_state_dict(full, strict=False)
    # tied copies of the shared embedding may be listed under one name only; anything else is a bug
    real_missing = [k for k in missing if not k.endswith("embed_tokens.weight") and k != "lm_head.weight"]
    if real_missing or unexpected:
        raise RuntimeError(f"consolidating FSDP weights failed: missing {real_missing[:3]}, unexpected {unexpected[:3]}")
    return fresh


def destroy() -> None:
    """Leave the process group cleanly (avoids gloo/nccl warnings at exit)."""
    if _dist_active():
        import torch.distributed as dist

        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def finish(stopped: bool) -> None:
    """End of ``train()`` on every rank: leave the process group; after a preemption also ignore
    further SIGTERMs. torchrun terminates the remaining ranks as soon as the first one exits; the
    checkpoint is complete by then and a rank has only its exit left, which should be its own 75."""
    import signal

    if world_size() > 1:
        if stopped:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        destroy()


def describe(cfg: Config, n: Optional[int] = None) -> str:
    """One line for logs: strategy and world size."""
    n = world_size() if n is None else n
    return f"{resolve_strategy(cfg.train.strategy, n)} x{n}"
