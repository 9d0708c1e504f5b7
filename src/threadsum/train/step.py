"""One optimizer step: forward/backward over the step's micro-batches, out-of-memory split-and-redo,
loss scaling, clipping, the step's one cross-rank sync, then the optimizer and scheduler update.

The sync (loss, gradient norm, token counts, stop flag) happens before the update, so a non-finite
loss or gradient norm is known at the step it happens without another device sync: the update is
then not applied (``StepResult.nonfinite``) and the loop applies ``train.on_nonfinite``. With fp16 a
non-finite gradient norm alone is the gradient scaler's business (it skips the step and lowers the
scale, as it always did); a non-finite loss is divergence in every precision.

The gradient of a step is the mean over all its label tokens (on all ranks), however the step is cut
into micro-batches and pieces, so an out-of-memory redo in smaller pieces computes the same update
(up to float summation order; without dropout the split is pure arithmetic).

Fault injection for tests: ``THREADSUM_INJECT_OOM=3,7`` raises a simulated out-of-memory error in the
first forward pass of those optimizer steps (1-based).
"""
from __future__ import annotations

import gc
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from threadsum.config import TrainConfig
from threadsum.errors import ConfigError, OutOfMemoryError
from threadsum.train.batching import BatchFetcher, padded_cost, split_micro_batch
from threadsum.train.checkpoint.state import Counters
from threadsum.train.compiling import mark_batch_dynamic
from threadsum.train.distributed import sync_step
from threadsum.train.loss import lm_loss_sum, loss_chunk_tokens
from threadsum.train.progress import current_rss_gb

log = logging.getLogger("threadsum.train")

INJECT_OOM_ENV = "THREADSUM_INJECT_OOM"


class SimulatedOOM(RuntimeError):
    """Raised by the fault-injection switch and by the CPU memory ceiling; handled like CUDA OOM."""


def injected_oom_steps() -> set[int]:
    """Optimizer steps (1-based) named by ``THREADSUM_INJECT_OOM``; raises ConfigError when malformed."""
    raw = os.environ.get(INJECT_OOM_ENV, "").strip()
    try:
        return {int(x) for x in raw.split(",") if x.strip()}
    except ValueError:
        raise ConfigError(f"{INJECT_OOM_ENV}='{raw}' must be comma-separated step numbers, e.g. 3,7") from None


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory, the simulated one, and backends that only say 'out of memory'."""
    import torch

    return isinstance(exc, (torch.OutOfMemoryError, SimulatedOOM)) or "out of memory" in str(exc).lower()


def free_memory() -> None:
    """Drop unreachable tensors and return cached CUDA blocks before a redo."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class StepResult:
    """What one optimizer step did, summed over all ranks."""

    loss: float
    """Mean cross-entropy per label token of the step (nats; label smoothing included)."""
    real_tokens: int
    """Non-padding source + target tokens of the step."""
    padded_tokens: int
    """Source + target tokens including padding."""
    grad_norm: float
    """Total L2 norm of the (unscaled) gradient before clipping."""
    scaler_skipped: bool
    """fp16: the gradient scaler found inf/NaN gradients and skipped the update."""
    nonfinite: bool
    """The loss, or (fp32/bf16) the gradient norm, was NaN or inf: the update was not applied."""
    stop_requested: bool
    """Some rank received SIGTERM/SIGINT: every rank stops after this step."""
    micro_batches: int
    """Micro-batches this rank ran."""
    seconds: float
    """Wall time of the step (redos included)."""
    update_seconds: float = 0.0
    """Wall time of the optimizer and scheduler update alone (part of ``seconds``): the planner's
    calibration separates it from the per-token forward/backward time."""


@dataclass
class StepRunner:
    """Runs optimizer steps on the prepared model; holds what every step needs.

    ``fetch`` collates rows by index; ``src_lens``/``tgt_lens`` are the two padded lengths [rows] of
    the train split the token budget counts (the family's ``budget_lengths``), ``label_lens`` the
    scored tokens [rows] (the family's ``label_lengths``); ``autocast()`` returns the precision's autocast context; ``on_oom(event)`` is told about
    every recovered out-of-memory event (for metrics and progress).
    """

    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    fetch: BatchFetcher
    src_lens: np.ndarray
    tgt_lens: np.ndarray
    label_lens: np.ndarray
    tc: TrainConfig
    autocast: Callable[[], Any]
    on_oom: Callable[[dict[str, Any]], None]
    oom_steps: set[int] = field(default_factory=injected_oom_steps)

    def __post_init__(self) -> None:
        self.loss_chunk_tokens = loss_chunk_tokens(self.tc.loss_chunk_tokens, self.accelerator)  # once per run

    def run(self, counters: Counters, micro_batches: list[list[int]], step_global: list[list[int]],
            stop_requested: Callable[[], bool]) -> StepResult:
        """One optimizer step over this rank's ``micro_batches`` (row indices); ``step_global`` holds all
        ranks' micro-batches of the step (the loss denominator). Updates the OOM fields of ``counters``.
        Raises :class:`OutOfMemoryError` when even one thread per piece does not fit."""
        import torch

        # the step's gradient is the mean over all its label tokens, however it is split; distributed:
        # over all ranks' label tokens (averaging gradients across ranks divides by world size)
        n = self.accelerator.num_processes
        label_tokens = sum(int(self.label_lens[i]) for mb in step_global for i in mb) / n
        rng_at_start = torch.get_rng_state()
        budget = counters.compute_max_tokens
        t0 = time.perf_counter()
        while True:  # one attempt per pass; an out-of-memory error redoes the step in smaller pieces
            try:
                loss_sum, real, padded, grad_norm = self._attempt(counters, micro_batches, budget, label_tokens)
                break
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not is_oom(exc):
                    raise
                del exc  # its traceback holds the failed attempt's activations
                budget = self._recover(counters, micro_batches, budget)
                torch.set_rng_state(rng_at_start)  # the redo sees the same dropout stream
        # distributed: one all-reduce per step: loss, gradient norm and token totals of all ranks, and
        # whether any rank was signalled (then all stop after this step and checkpoint together)
        loss, norm, real, padded, stop_any = sync_step(self.accelerator, loss_sum, grad_norm, real, padded,
                                                       stop_requested())
        nonfinite = not math.isfinite(loss) or (not self.scaler.is_enabled() and not math.isfinite(norm))
        t_update = time.perf_counter()
        skipped = self._discard() if nonfinite else self._update(counters.step + 1)
        t_end = time.perf_counter()
        return StepResult(loss=loss / (label_tokens * n), real_tokens=real, padded_tokens=padded, grad_norm=norm,
                          scaler_skipped=skipped, nonfinite=nonfinite, stop_requested=stop_any,
                          micro_batches=len(micro_batches), seconds=t_end - t0, update_seconds=t_end - t_update)

    def _attempt(self, counters: Counters, micro_batches: list[list[int]], budget: int, label_tokens: float):
        """Forward/backward of every micro-batch (split into pieces of <= ``budget`` padded tokens),
        then unscale and clip. Returns (loss sum, real tokens, padded tokens, gradient norm); the loss sum
        and the norm are 0-d device tensors (no sync yet)."""
        acc, tc = self.accelerator, self.tc
        loss_sum, real, padded = 0.0, 0, 0
        acc.step = 0  # accumulate() counts micro-batches; a redone step restarts the count
        for mb_index, indices in enumerate(micro_batches):
            with acc.accumulate(self.model):
                cost = padded_cost(self.src_lens[indices], self.tgt_lens[indices], self.fetch.multiple)
                pieces = ([indices] if cost <= budget else
                          split_micro_batch(indices, self.src_lens, self.tgt_lens, budget, self.fetch.multiple))
                for p_index, piece in enumerate(pieces):
                    b = self.fetch(piece)
                    # DDP: only the step's very last backward may all-reduce
                    sync_ctx = nullcontext() if p_index == len(pieces) - 1 else acc.no_sync(self.model)
                    with sync_ctx:
                        if counters.step + 1 in self.oom_steps and mb_index == 0 and p_index == 0:
                            self.oom_steps.discard(counters.step + 1)
                            raise SimulatedOOM(f"injected out of memory ({INJECT_OOM_ENV})")
                        loss_sum += self._forward_backward(b, label_tokens)
                    real += b["n_real_tokens"]
                    padded += b["n_padded_tokens"]
        # the last micro-batch synchronised the gradients (accumulation = micro-batches per step)
        self.scaler.unscale_(self.optimizer)
        # clipping at inf measures the norm and leaves the gradients as they are (x 1.0)
        max_norm = tc.max_grad_norm if tc.max_grad_norm > 0 else math.inf
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
        return loss_sum, real, padded, grad_norm

    def _forward_backward(self, b: dict[str, Any], label_tokens: float):
        """Summed (label-smoothed) cross-entropy of one piece, detached; its gradient, divided by the
        step's label tokens, is accumulated into ``.grad``. One process: the LM head and loss run in
        chunks of ``train.loss_chunk_tokens`` target tokens (no full fp32 logits, see train/loss.py);
        DDP/FSDP keep the model's own forward, which their gradient synchronisation hooks."""
        device, tc = self.accelerator.device, self.tc
        inputs = {k: b[k].to(device, non_blocking=True) for k in self.fetch.family.model_inputs}
        labels = b["labels"].to(device, non_blocking=True)
        if tc.compile:
            mark_batch_dynamic(*inputs.values(), labels)  # lengths are bucketed (static); batch size varies freely
        with self.autocast():
            loss_sum = lm_loss_sum(self.model, inputs, labels, tc.label_smoothing, self.loss_chunk_tokens)
        if tc.memory_limit_gb and current_rss_gb() > tc.memory_limit_gb:
            raise SimulatedOOM(f"RSS {current_rss_gb():.2f} GB above train.memory_limit_gb={tc.memory_limit_gb}")
        self.scaler.scale(loss_sum / label_tokens).backward()
        return loss_sum.detach()

    def _update(self, step: int) -> bool:
        """Optimizer and scheduler step, zero the gradients. Returns whether the fp16 scaler skipped
        the update (inf/NaN gradients; the scheduler then does not advance either). Raises
        :class:`OutOfMemoryError` when the update itself (e.g. the optimizer state) does not fit."""
        scaler = self.scaler
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        try:
            scaler.step(self.optimizer)
        except Exception as exc:  # noqa: BLE001 - only OOM is translated, the rest re-raised
            if not is_oom(exc):
                raise
            raise OutOfMemoryError(
                f"out of memory in the optimizer update of step {step}: splitting micro-batches cannot help; "
                f"use train.optimizer=adafactor, model.lora.enabled=true or a bigger device (see `threadsum plan`)"
            ) from None
        scaler.update()
        # note: get_scale() is a CPU-GPU sync point, paid only with fp16
        skipped = scaler.is_enabled() and scaler.get_scale() < scale_before
        if not skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return skipped

    def _discard(self) -> bool:
        """Drop the step's gradients without an update (non-finite step). fp16: the scaler still
        records the step (update() lowers the scale on inf/NaN gradients, as a skipped step would).
        Returns False: this is not a scaler skip."""
        if self.scaler.is_enabled():
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return False

    def _recover(self, counters: Counters, micro_batches: list[list[int]], budget: int) -> int:
        """After an out-of-memory error: free memory, halve the piece budget (and keep it for the rest
        of the run after ``train.oom_backoff_after`` events). Returns the new budget in padded tokens.
        Raises :class:`OutOfMemoryError` when one thread per piece is already too much."""
        tc, lens = self.tc, (self.src_lens, self.tgt_lens)
        self.optimizer.zero_grad(set_to_none=True)
        free_memory()
        largest = max(padded_cost(lens[0][mb], lens[1][mb], self.fetch.multiple) for mb in micro_batches)
        new_budget = min(budget, largest) // 2
        if new_budget < min(int(lens[0][i] + lens[1][i]) for mb in micro_batches for i in mb):
            raise OutOfMemoryError(
                f"out of memory at step {counters.step + 1} even with one thread per piece; lower "
                f"train.max_tokens, turn on model.gradient_checkpointing or use a bigger device "
                f"(see `threadsum plan`)") from None
        counters.oom_events += 1
        if counters.oom_events >= tc.oom_backoff_after:
            counters.compute_max_tokens = min(counters.compute_max_tokens, new_budget)
        self.on_oom({"event": "oom", "step": counters.step + 1, "oom_events": counters.oom_events,
                     "piece_budget": new_budget, "run_budget": counters.compute_max_tokens})
        return new_budget
