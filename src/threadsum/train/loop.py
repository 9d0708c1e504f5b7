"""The training loop: ``train(cfg)`` builds the run, runs optimizer steps, then finishes it.

    threadsum train --config configs/tiny.yaml

Outputs in ``train.output_dir``: ``checkpoints/step-XXXXXXXX/`` (see checkpoint/layout.py),
``metrics.jsonl`` (one JSON record per log step, evaluation and event), ``run.json`` (the run record),
``config.yaml`` and ``model/`` (see export.py).

Exit codes of ``threadsum train`` (the table is :class:`threadsum.errors.ExitCode`):

    OK          0    finished; model/ written
    FAILURE     1    crashed (the run record says why)
    USAGE       2    invalid configuration, missing prepared data, unusable checkpoint
    OOM         3    out of memory even for a single thread per piece
    DIVERGED    4    the loss or gradient norm became non-finite (train.on_nonfinite); no checkpoint
                     of that step, the last good one kept; model/ not written
    PREEMPTED   75   SIGTERM or SIGINT: the current optimizer step finished, a checkpoint was
                     written; run the same command again to resume
    ABORTED     130  a second SIGINT: stopped at once, no checkpoint

Fault-injection switches for tests (environment): ``THREADSUM_INJECT_OOM`` (step.py) and
``THREADSUM_FAULT_CHECKPOINT_CRASH_AT_STEP`` (checkpoint/layout.py).
"""
from __future__ import annotations

import logging
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from threadsum.config import Config
from threadsum.devices import hardware_description, resolve_precision
from threadsum.errors import DivergedError, ExitCode, OutOfMemoryError
from threadsum.heap import reuse_freed_memory, stop_reusing_freed_memory
from threadsum.train import checkpoint
from threadsum.train.batching import (
    BatchFetcher,
    TokenBudgetSampler,
    plan_micro_batches,
    token_lengths,
)
from threadsum.train.checkpoint import plain, sharded
from threadsum.train.checkpoint.layout import (
    CHECKPOINTS_DIR,
    CheckpointError,
    list_checkpoints,
    remove_stale_tmp,
    step_dir,
)
from threadsum.train.checkpoint.state import Counters, TrainState
from threadsum.train.compiling import compile_model, compiled_graphs, pad_rule
from threadsum.train.distributed import (
    accumulation_steps,
    build_accelerator,
    make_tracker,
    prepare_model_for_strategy,
    uses_sharded_checkpoints,
    world_size,
)
from threadsum.train.distributed import finish as finish_distributed
from threadsum.train.evaluation import Validator
from threadsum.train.export import consolidated_model, export_model
from threadsum.family import check_prepared_family
from threadsum.model import family_for
from threadsum.train.loss import chunkable_head, loss_chunk_tokens
from threadsum.train.metrics import (
    METRICS_FILE,
    Window,
    append_jsonl,
    run_summary,
    truncate_metrics,
)
from threadsum.train.progress import Progress, peak_memory_gb
from threadsum.train.signals import StopSignal
from threadsum.train.step import StepResult, StepRunner

log = logging.getLogger("threadsum.train")


@dataclass
class Run:
    """Everything one call of :func:`train` builds, filled in by the build steps in order."""

    cfg: Config
    out_dir: Path
    tracker: Any
    stop: StopSignal = field(default_factory=StopSignal)
    accelerator: Any = None
    accumulation: int = 1
    precision: str = "fp32"
    autocast: Callable[[], Any] = nullcontext
    scaler: Any = None
    tokenizer: Any = None
    splits: dict[str, Any] = field(default_factory=dict)
    family: Any = None
    sampler: Optional[TokenBudgetSampler] = None
    total_steps: int = 0
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    n_params: int = 0
    n_trainable: int = 0
    stepper: Optional[StepRunner] = None
    validator: Optional[Validator] = None
    state: Optional[TrainState] = None
    progress: Optional[Progress] = None
    window: Window = field(default_factory=Window)
    last_ckpt_time: float = field(default_factory=time.monotonic)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    val_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def counters(self) -> Counters:
        """The live counters (restored on resume)."""
        return self.state.counters if self.state is not None else Counters()

    @property
    def ckpt_root(self) -> Path:
        """``<output_dir>/checkpoints``."""
        return self.out_dir / CHECKPOINTS_DIR

    @property
    def metrics_path(self) -> Path:
        """``<output_dir>/metrics.jsonl``."""
        return self.out_dir / METRICS_FILE

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one writer of metrics, run record and model/."""
        return self.accelerator is None or self.accelerator.is_main_process


# ---------------------------------------------------------------------------------------- train
def train(cfg: Config) -> dict[str, Any]:
    """Train per ``cfg`` (resuming when a checkpoint exists); returns the run summary with ``status``
    ('finished', 'preempted', 'aborted') and ``exit_code``.

    Raises the errors of its parts: :class:`~threadsum.errors.ConfigError` and other UserErrors
    (exit 2), :class:`~threadsum.errors.OutOfMemoryError` (exit 3),
    :class:`~threadsum.errors.DivergedError` (exit 4); the run record says why.
    """
    # changing shapes (token-budget batches) fragment CUDA's caching allocator; expandable segments
    # measured faster than plain caching. The allocator reads this once, when CUDA initialises, and
    # the tracker below may initialise CUDA (device name), so it is set first. Harmless on CPU.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    out_dir = Path(cfg.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = make_tracker(cfg, out_dir, "train")  # distributed: rank 0 writes the run record, others no-op
    tracker.start()
    run = Run(cfg=cfg, out_dir=out_dir, tracker=tracker)
    run.stop.install()
    try:
        _seed_and_backends(cfg.train.seed)
        _build_accelerator(run)
        _load_data(run)
        _build_model(run)
        _resume_and_record(run)
        preempted = _train_steps(run)
        return preempted if preempted is not None else _finish(run)
    except KeyboardInterrupt:
        _close_progress(run)
        tracker.finish("KILLED", cause="aborted (second SIGINT)", last_step=run.counters.step)
        return {"status": "aborted", "exit_code": int(ExitCode.ABORTED), "cause": "aborted (second SIGINT)",
                "step": run.counters.step}
    except OutOfMemoryError as exc:
        _close_progress(run)
        tracker.finish("FAILED", cause=f"OOM: {exc}", last_step=run.counters.step)
        raise
    except DivergedError as exc:
        _close_progress(run)
        tracker.finish("FAILED", cause=str(exc), last_step=run.counters.step,
                       summary=run_summary(run.counters, run.last_metrics))
        raise
    except BaseException as exc:
        _close_progress(run)
        tracker.finish("FAILED", cause=f"crashed: {type(exc).__name__}: {exc}", last_step=run.counters.step)
        raise
    finally:
        run.stop.restore()
        stop_reusing_freed_memory()  # a no-op unless this run changed glibc's settings
        finish_distributed(stopped=run.stop.requested)


# ---------------------------------------------------------------------------------------- build
def _seed_and_backends(seed: int) -> None:
    """Seed Python, numpy and torch; TF32 matmuls on CUDA; a clean accelerate state per run."""
    import torch
    from accelerate.state import AcceleratorState

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size() == 1:
        # accelerate keeps a process-wide singleton; a second run in one process must start clean
        AcceleratorState._reset_state(reset_partial_state=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_accelerator(run: Run) -> None:
    """Accelerator, precision, autocast and grad scaler of this launch."""
    import torch

    tc = run.cfg.train
    # distributed: batch_tokens is global (all ranks); strategy per train.strategy (train/distributed.py)
    run.accumulation = accumulation_steps(tc.batch_tokens, tc.max_tokens, world_size())
    run.accelerator = build_accelerator(run.cfg, run.accumulation)
    device = run.accelerator.device
    run.precision = resolve_precision(tc.precision, device)
    run.autocast, run.scaler = precision_parts(run.precision, device)
    if device.type == "cpu" and tc.reuse_freed_memory:
        log.info("train.reuse_freed_memory: %s", reuse_freed_memory())


def precision_parts(precision: str, device: Any) -> tuple[Callable[[], Any], Any]:
    """The autocast context factory and the gradient scaler of a resolved ``precision`` ("fp32",
    "bf16", "fp16") on a torch ``device``: what every training step runs under (the loop's and the
    planner's calibration, train/calibrate.py)."""
    import torch

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast: Callable[[], Any] = nullcontext
    if amp_dtype is not None:
        autocast = lambda: torch.autocast(device.type, dtype=amp_dtype)  # noqa: E731
    # fp16 overflows without dynamic loss scaling; bf16 has fp32's range and needs none
    return autocast, torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def _load_data(run: Run) -> None:
    """Tokenizer, splits and the token-budget sampler over the train split."""
    from threadsum.data.prepared import PreparedDataError, open_prepared
    from threadsum.data.tokenizer_check import check_prepared_for_model
    from threadsum.model import load_tokenizer

    tc, acc = run.cfg.train, run.accelerator
    prepared = open_prepared(run.cfg.data.prepared_dir)
    check_prepared_for_model(run.cfg)  # data tokenized for another model is refused (exit 2)
    run.family = family_for(run.cfg.model)
    check_prepared_family(run.cfg.data.prepared_dir, run.family)  # a causal run on seq2seq data: exit 2
    run.tokenizer = load_tokenizer(str(prepared.tokenizer_dir))
    run.splits = prepared.datasets()
    if len(run.splits["train"]) == 0:
        raise PreparedDataError(f"the train split of '{run.cfg.data.prepared_dir}' is empty; prepare more data")
    run.sampler = TokenBudgetSampler(
        *run.family.budget_lengths(*token_lengths(run.splits["train"])), tc.max_tokens, tc.max_batch_size,
        pad_rule(tc), tc.seed, accumulation=run.accumulation, rank=acc.process_index, world_size=acc.num_processes,
    )
    run.total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * run.sampler.steps_per_epoch()))


def _build_model(run: Run) -> None:
    """Model, optimizer, scheduler (prepared by accelerate), the step runner and the validator."""
    from threadsum.model import load_model, prepare_for_training
    from threadsum.train.optim import build_optimizer, build_scheduler

    cfg, tc, acc = run.cfg, run.cfg.train, run.accelerator
    model = prepare_for_training(load_model(cfg, run.tokenizer), cfg.model)
    model = prepare_model_for_strategy(model, cfg)  # distributed: FSDP needs one tied-embedding module
    model.config.use_cache = False  # no KV cache in teacher-forced training
    model.train()
    if tc.compile:
        _compile(run, model)
    start_id = getattr(model.config, "decoder_start_token_id", None)
    pad_id = run.family.pad_id(run.tokenizer)
    optimizer = build_optimizer(model, tc, acc.device.type)
    run.scheduler = build_scheduler(optimizer, tc, run.total_steps)
    run.model, run.optimizer = acc.prepare(model, optimizer)
    run.n_params = sum(p.numel() for p in run.model.parameters())
    run.n_trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    fetch = BatchFetcher(run.splits["train"], run.family, pad_id, start_id, pad_rule(tc), tc.train_on_prompt)
    label_lens = run.family.label_lengths(*token_lengths(run.splits["train"]), tc.train_on_prompt)
    run.stepper = StepRunner(accelerator=acc, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                             scaler=run.scaler, fetch=fetch, src_lens=run.sampler.src_lens,
                             tgt_lens=run.sampler.tgt_lens, label_lens=label_lens, tc=tc, autocast=run.autocast,
                             on_oom=lambda e: _on_oom(run, e))
    val_ds = run.splits.get("validation")
    if val_ds is not None and len(val_ds):
        batches = plan_micro_batches(*run.family.budget_lengths(*token_lengths(val_ds)), tc.max_tokens,
                                     tc.max_batch_size, pad_rule(tc), tc.seed, 0, shuffle=False)
        run.validator = Validator(val_ds, BatchFetcher(val_ds, run.family, pad_id, start_id, pad_rule(tc),
                                                       tc.train_on_prompt),
                                  batches, run.tokenizer, cfg, acc.device, run.autocast,
                                  run.stepper.loss_chunk_tokens)


def _compile(run: Run, model) -> None:
    """train.compile: compile the module the step calls (train/compiling.py), before accelerate wraps it."""
    head = chunkable_head(model) if loss_chunk_tokens(run.cfg.train.loss_chunk_tokens, run.accelerator) else None
    compile_model(model, head[0] if head else model, run.cfg.train)


def _resume_and_record(run: Run) -> None:
    """Restore the newest usable checkpoint (per train.resume), reset or trim metrics.jsonl, write
    config.yaml and the run's parameters, start the progress display."""
    cfg, tc, acc = run.cfg, run.cfg.train, run.accelerator
    run.state = TrainState(model=acc.unwrap_model(run.model), optimizer=run.optimizer, scheduler=run.scheduler,
                           sampler=run.sampler, scaler=run.scaler, config=cfg.to_dict(),
                           adapter_only=cfg.model.lora.enabled)
    run.state.counters.compute_max_tokens = tc.compute_max_tokens or tc.max_tokens
    resumed_from = resume(run.state, tc.resume, run.ckpt_root)
    if resumed_from is None and run.metrics_path.exists() and run.is_main:
        run.metrics_path.unlink()  # a fresh run in a used folder: old records would mix with new ones
    if run.is_main:  # distributed: one writer
        truncate_metrics(run.metrics_path, run.counters.step)
        cfg.save(run.out_dir)
    run.tracker.log_params({
        "precision": run.precision, "device": str(acc.device), "accumulation": run.accumulation,
        "total_steps": run.total_steps, "n_params": run.n_params, "n_trainable_params": run.n_trainable,
        "world_size": acc.num_processes, "train_threads": len(run.splits["train"]),
        "resumed_from": str(resumed_from) if resumed_from else None,
        **{f"train.{k}": v for k, v in tc.model_dump(mode="json").items()},
    })
    log.info("training %s params (%s trainable) on %s, %s, %d micro-batches of <=%d tokens per step, %d steps",
             f"{run.n_params:,}", f"{run.n_trainable:,}", acc.device, run.precision, run.accumulation,
             tc.max_tokens, run.total_steps)
    run.progress = Progress(run.total_steps, run.counters.step, enabled=run.is_main)


def resume(state: TrainState, setting: str, ckpt_root: Path) -> Optional[Path]:
    """Load the checkpoint ``train.resume`` names into ``state``: 'none' loads nothing, 'auto' tries the
    newest complete ones under ``ckpt_root`` in turn (skipping unusable ones with a warning), a path
    loads that folder. Returns the folder loaded, or None. Raises :class:`CheckpointError` when a named
    folder cannot be used."""
    if setting == "none":
        return None
    if setting == "auto":
        remove_stale_tmp(ckpt_root)
        candidates = [p for _, p in reversed(list_checkpoints(ckpt_root, warn=True))]
    else:
        candidates = [Path(setting)]
        if not candidates[0].is_dir():
            raise CheckpointError(f"train.resume='{setting}' is not a checkpoint folder; use 'auto', 'none' or a "
                                  f"path like {ckpt_root}/step-00000100")
    for path in candidates:
        try:
            diffs = checkpoint.load(state, path)
        except CheckpointError as exc:
            if setting != "auto":
                raise
            log.warning("skipping %s", exc)
            continue
        log.info("resumed from %s (step %d)", path, state.counters.step)
        if diffs:
            log.warning("the config differs from the checkpoint's in settings that change the result:\n  %s",
                        "\n  ".join(diffs))
        return path
    return None


# ----------------------------------------------------------------------------------------- loop
def _train_steps(run: Run) -> Optional[dict[str, Any]]:
    """Optimizer steps until ``total_steps``, with logging, validation and checkpoints; returns the
    preempted result when a signal stopped the run, else None."""
    tc = run.cfg.train
    while run.counters.step < run.total_steps:
        micro_batches = run.sampler.next_step()
        result = run.stepper.run(run.counters, micro_batches, run.sampler.last_step_global,
                                 lambda: run.stop.requested)
        if result.stop_requested and not run.stop.requested:
            run.stop.signum = signal.SIGTERM  # another rank was signalled: stop together
        _check_finite(run, result)
        _count_step(run, result)
        want_ckpt = (tc.checkpoint_every_steps and run.counters.step % tc.checkpoint_every_steps == 0) or (
            tc.checkpoint_every_minutes and time.monotonic() - run.last_ckpt_time >= 60 * tc.checkpoint_every_minutes)
        if (run.validator is not None and tc.eval_every_steps and run.counters.step % tc.eval_every_steps == 0
                and run.counters.step < run.total_steps):
            want_ckpt = _validate(run, announce=True) or want_ckpt  # the best checkpoint must exist on disk
        if want_ckpt or run.stop.requested:
            _save_checkpoint(run)
            run.last_ckpt_time = time.monotonic()
        if run.stop.requested:
            return _preempted(run)
    return None


def _check_finite(run: Run, result: StepResult) -> None:
    """Apply ``train.on_nonfinite`` to a step whose loss or gradient norm was NaN/inf (its update was
    not applied). 'stop': raise at once; 'skip': count it and raise when ``train.max_nonfinite_skips``
    steps in a row were non-finite. Raises :class:`DivergedError` (exit 4) before any checkpoint of
    the step, so the newest checkpoint on disk is the last good one."""
    c, tc = run.counters, run.cfg.train
    if not result.nonfinite:
        c.nonfinite_in_a_row = 0
        return
    step = c.step + 1
    part = "loss" if not math.isfinite(result.loss) else "gradient norm"
    what = f"{part} became non-finite at step {step} (loss {result.loss}, gradient norm {result.grad_norm})"
    good = list_checkpoints(run.ckpt_root)
    last_good = f"the last good checkpoint is {good[-1][1]}" if good else "no checkpoint was written before it"
    fix = "lower train.lr, raise train.warmup_steps or keep train.max_grad_norm > 0"
    if tc.on_nonfinite == "stop":
        raise DivergedError(f"{what}; {last_good}; {fix} (or set train.on_nonfinite=skip)")
    c.nonfinite_steps += 1
    c.nonfinite_in_a_row += 1
    if run.is_main:
        append_jsonl(run.metrics_path, {"event": "nonfinite", "step": step, "nonfinite_steps": c.nonfinite_steps,
                                        "in_a_row": c.nonfinite_in_a_row})
    if c.nonfinite_in_a_row >= tc.max_nonfinite_skips:
        raise DivergedError(f"{what}, the {c.nonfinite_in_a_row}th non-finite step in a row "
                            f"(train.max_nonfinite_skips={tc.max_nonfinite_skips}); {last_good}; {fix}")
    run.progress.message(f"{what}: update skipped ({c.nonfinite_in_a_row} in a row, {c.nonfinite_steps} in all)")


def _count_step(run: Run, result: StepResult) -> None:
    """Add the step to the counters and the log window; show progress; write the log record when due."""
    c, tc = run.counters, run.cfg.train
    c.step += 1
    c.micro_steps += result.micro_batches
    c.real_tokens += result.real_tokens
    c.padded_tokens += result.padded_tokens
    c.train_seconds += result.seconds
    c.skipped_steps += int(result.scaler_skipped)
    run.window.add(result.seconds, result.real_tokens, result.padded_tokens, result.loss)
    real_per_s, padded_per_s = run.window.tokens_per_s()
    log_now = c.step % tc.log_every_steps == 0 or c.step == run.total_steps
    run.last_metrics = {
        "step": c.step, "epoch": round(run.sampler.fractional_epoch, 4), "loss": result.loss,
        "lr": run.scheduler.get_last_lr()[0], "grad_norm": result.grad_norm,
        "tokens_per_s": real_per_s, "padded_tokens_per_s": padded_per_s,
        "peak_mem_gb": peak_memory_gb(run.accelerator.device.type),
    }
    run.progress.update(c.step, run.last_metrics, log_line=log_now)
    if log_now and run.is_main:
        record = {**run.last_metrics, "loss": run.window.loss / run.window.steps, "real_tokens": c.real_tokens,
                  "skipped_steps": c.skipped_steps, "nonfinite_steps": c.nonfinite_steps, "oom_events": c.oom_events,
                  "train_seconds": round(c.train_seconds, 3)}
        if tc.compile:
            record["compiled_graphs"] = compiled_graphs()
        append_jsonl(run.metrics_path, record)
        run.tracker.log_metrics({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                                step=c.step)
        run.window = Window()


def _validate(run: Run, announce: bool) -> bool:
    """Validation now: record it, track the best; returns True when this is the best loss so far."""
    c = run.counters
    m = run.validator(run.model, run.accelerator.unwrap_model(run.model), c.step)
    run.val_metrics = m
    best = c.best_val_loss is None or m["val_loss"] < c.best_val_loss
    if best:
        c.best_val_loss, c.best_step = m["val_loss"], c.step
    if run.is_main:
        append_jsonl(run.metrics_path, m)
    run.tracker.log_metrics({k: v for k, v in m.items() if k != "step"}, step=c.step)
    if announce:
        run.progress.message(f"step {c.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "step"))
    return best


def _on_oom(run: Run, event: dict[str, Any]) -> None:
    """Record a recovered out-of-memory event (metrics.jsonl and the progress display)."""
    if run.is_main:
        append_jsonl(run.metrics_path, event)
    run.progress.message(f"out of memory at step {event['step']}: redoing it in pieces of <= {event['piece_budget']} "
                         f"tokens (event {event['oom_events']}; budget for the rest of the run: {event['run_budget']})")


def _save_checkpoint(run: Run) -> Path:
    """The checkpoint of the current step in the run's format: sharded under FSDP (every rank writes its
    shard), else plain (rank 0 writes, the others wait)."""
    keep_last, acc = run.cfg.train.keep_last, run.accelerator
    if uses_sharded_checkpoints(run.cfg):
        return sharded.save(run.state, run.ckpt_root, keep_last, acc.is_main_process)
    path = plain.save(run.state, run.ckpt_root, keep_last) if acc.is_main_process else step_dir(run.ckpt_root, run.counters.step)
    acc.wait_for_everyone()
    return path


# --------------------------------------------------------------------------------------- finish
def _preempted(run: Run) -> dict[str, Any]:
    """After the checkpoint of a signalled step: record KILLED and return exit code 75."""
    cause = f"preempted ({signal.Signals(run.stop.signum).name})"
    run.progress.close()
    log.warning("%s: checkpoint of step %d written; run the same command to resume (exit code %d)",
                cause, run.counters.step, ExitCode.PREEMPTED)
    summary = run_summary(run.counters, run.last_metrics)
    run.tracker.finish("KILLED", cause=cause, last_step=run.counters.step, summary=summary)
    run.accelerator.wait_for_everyone()  # distributed: nobody exits before the run record is written
    return {"status": "preempted", "exit_code": int(ExitCode.PREEMPTED), "cause": cause,
            "step": run.counters.step, **summary}


def _finish(run: Run) -> dict[str, Any]:
    """Last validation, last checkpoint, export of model/ (the best checkpoint's weights with
    train.export_best), run record FINISHED."""
    c, tc, acc = run.counters, run.cfg.train, run.accelerator
    run.progress.close()
    if run.validator is not None and run.val_metrics.get("step") != c.step:
        _validate(run, announce=False)
    final_ckpt = _save_checkpoint(run)
    if tc.export_best and c.best_step is not None and c.best_step != c.step:
        best = [p for s, p in list_checkpoints(run.ckpt_root) if s == c.best_step]
        if best:  # distributed: either checkpoint format; every rank loads under FSDP
            checkpoint.load_weights(acc.unwrap_model(run.model), best[0])
    summary = {
        **run_summary(c, run.last_metrics),
        "val_loss": run.val_metrics.get("val_loss"), "val_rougeL": run.val_metrics.get("val_rougeL"),
        "precision": run.precision, "hardware": hardware_description(), "accumulation": run.accumulation,
        "n_params": run.n_params, "n_trainable_params": run.n_trainable, "steps": c.step,
    }
    model_dir = None
    export_target = consolidated_model(acc, run.model, run.cfg, run.tokenizer)  # distributed: FSDP gathers
    if acc.is_main_process:
        counts = {name: len(ds) for name, ds in run.splits.items()}
        model_dir = export_model(export_target, run.tokenizer, run.cfg, run.out_dir, summary, counts)
        run.tracker.log_model(model_dir)
    run.tracker.finish("FINISHED", last_step=c.step, summary=summary)
    return {"status": "finished", "exit_code": int(ExitCode.OK), "model_dir": str(model_dir) if model_dir else None,
            "checkpoint": str(final_ckpt), **summary}


def _close_progress(run: Run) -> None:
    if run.progress is not None:
        run.progress.close()


# -------------------------------------------------------------------------------------- command
def train_command(cfg: Config) -> int:
    """Entry of ``threadsum train``: runs :func:`train` and returns its exit code (0 or 75/130).

    Errors propagate: a :class:`~threadsum.errors.ThreadsumError` carries its exit code (the CLI and
    :func:`main` turn it into one line and that code); anything else is a crash (exit 1, traceback).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    result = train(cfg)
    if result["status"] == "finished":
        log.info("done: model in %s (real tokens/s %.0f)", result.get("model_dir"), result.get("real_tokens_per_s") or 0)
    return int(result["exit_code"])


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m threadsum.train.loop CONFIG [a.b=c ...]``: training in a subprocess (tests, benchmarks).
    Returns the exit code; a ThreadsumError becomes one logged line and its code."""
    from threadsum.config import load_config
    from threadsum.errors import ThreadsumError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return train_command(load_config(argv[0] if argv else None, argv[1:]))
    except ThreadsumError as exc:
        log.error("%s", exc)
        return int(exc.exit_code)


if __name__ == "__main__":
    sys.exit(main())
