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
               sharded; each layer the model lists in ``_no_split_modules`` (BART: encoder and
               decoder layers; Llama/Qwen: decoder layers) is its own unit.
               ``train.fsdp_sharding=full_shard`` re-gathers a layer's parameters for the backward
               pass (least memory, ZeRO-3-like); ``shard_grad_op`` keeps them gathered between
               forward and backward (less communication, ZeRO-2-like); ``train.fsdp_cpu_offload``
               keeps parameters and optimizer state in CPU memory.

Rules the loop follows (all enforced here):

- Batch size is global: ``accumulation = ceil(batch_tokens / (max_tokens * world_size))``, so the
  same config trains on the same threads per optimizer step on 1, 2 or 8 ranks and a checkpoint
  resumes on another world size without changing the result.
- The loss is normalised by the label tokens of the whole step on all ranks, so averaging
  gradients across ranks gives exactly the single-process gradient.
- Rank 0 alone writes logs, metrics, the run record and ``model/``; non-zero ranks log warnings only.
- Every optimizer step ends with one all-reduce of (loss, tokens, stop flag): a SIGTERM that reaches
  any rank stops all ranks after the same step, they write one checkpoint together and exit 75.
- Checkpoints (train/checkpoint/): DDP and single process write the plain format from rank 0. FSDP
  writes ``sharded/`` with torch.distributed.checkpoint (each rank its shard; rank 0 the metadata,
  ``state.pt`` and the marker), which loads on any world size, including one plain process.
  The exported ``model/`` is always a consolidated Hugging Face folder (train/export.py).
  All ranks must see the same ``train.output_dir`` (one node, or a shared filesystem).
"""
from __future__ import annotations

import logging
import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from threadsum.config import Config, ConfigError

log = logging.getLogger("threadsum.train")

# the layers FSDP shards as units (each gathered just before it runs and freed after) are the model's
# own ``_no_split_modules`` (BART: BartEncoderLayer/BartDecoderLayer, Llama: LlamaDecoderLayer...),
# which accelerate reads when no class names are given: one rule for every model family
FSDP_WRAP_CLASSES = None


# ----------------------------------------------------------------------------------- ranks
def world_size() -> int:
    """Processes in the job, from torchrun's environment (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """Global rank of this process (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_rank_zero() -> bool:
    """True on the process that writes logs, metrics, the run record and model/."""
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
    """'single', 'ddp' or 'fsdp' for this launch of ``n_processes`` (``requested``: train.strategy)."""
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


def build_accelerator(cfg: Config, accumulation: int):
    """The ``Accelerator`` of this launch: plain, DDP or FSDP2 per ``train.strategy``, accumulating
    ``accumulation`` micro-batches per optimizer step (gradients synchronised on the last one)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import (
        DistributedType,
        GradientAccumulationPlugin,
        InitProcessGroupKwargs,
    )

    tc = cfg.train
    n = world_size()
    strategy = resolve_strategy(tc.strategy, n)
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
def sync_step(accelerator, loss_sum, grad_norm, real_tokens: int, padded_tokens: int,
              stop: bool) -> tuple[float, float, int, int, bool]:
    """The step's one device-to-host transfer and (with several ranks) its one small all-reduce.

    ``loss_sum``: this rank's summed loss (0-d tensor on the device); ``grad_norm``: the total
    gradient norm (0-d tensor, the same on every rank); token counts of this rank; ``stop``: this rank
    was signalled. Returns (loss summed over ranks, grad norm, real tokens, padded tokens, any rank
    signalled). Every rank calls this once per optimizer step, before the update, so a signal or a
    non-finite value seen by any rank is seen by all of them at the same step (no rank waits in a
    collective the others never enter).
    """
    import torch

    # FSDP2 returns the norm as a replicated DTensor: its full tensor needs no communication
    norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else torch.as_tensor(grad_norm)
    loss_sum = torch.as_tensor(loss_sum)
    values = torch.stack([loss_sum.double(), norm.to(loss_sum.device).double()])
    if accelerator.num_processes == 1:
        loss, norm = values.tolist()  # note: CPU-GPU sync, once per optimizer step
        return loss, norm, int(real_tokens), int(padded_tokens), bool(stop)
    counts = torch.tensor([float(real_tokens), float(padded_tokens), 1.0 if stop else 0.0],
                          dtype=torch.float64, device=values.device)
    t = torch.cat([values.to(accelerator.device), counts.to(accelerator.device)])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    loss, norm_sum, real, padded, stops = t.tolist()  # NaN/inf on any rank stay NaN/inf in the sum
    return loss, norm_sum / accelerator.num_processes, int(real), int(padded), stops > 0


# ------------------------------------------------------------------------------- collectives
def dist_active() -> bool:
    """True when a torch.distributed process group is up (launched by torchrun with >1 process)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    import torch.distributed as dist

    if dist_active():
        dist.barrier()


def model_is_sharded(model) -> bool:
    """True when the parameters are FSDP2 shards (DTensors) rather than whole tensors."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def destroy() -> None:
    """Leave the process group cleanly (avoids gloo/nccl warnings at exit)."""
    if dist_active():
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
