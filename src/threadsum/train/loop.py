"""The training loop: one explicit function, read top to bottom.

    threadsum train --config configs/tiny.yaml

Outputs in ``train.output_dir``: ``checkpoints/step-XXXXXXXX/`` (see checkpoint.py), ``metrics.jsonl``
(one JSON record per log step, evaluation and event), ``run.json`` (the run record), ``config.yaml``
and ``model/`` (Hugging Face folder: safetensors weights, tokenizer, generation config, the resolved
threadsum ``config.yaml`` and a README.md model card).

Exit codes of ``threadsum train`` (``train_command``):

    EXIT_OK         0    finished; model/ written
    EXIT_FAILED     1    crashed (the run record says why)
    EXIT_CONFIG     2    invalid configuration or missing prepared data
    EXIT_OOM        3    out of memory even for a single thread per piece
    EXIT_PREEMPTED  75   SIGTERM or SIGINT: the current optimizer step finished, a checkpoint was
                         written; run the same command again to resume (75 is EX_TEMPFAIL of
                         sysexits.h: "temporary failure, retry later")
    EXIT_ABORTED    130  a second SIGINT: stopped at once, no checkpoint (128 + SIGINT)

Fault-injection switches for tests (environment): ``THREADSUM_INJECT_OOM=3,7`` raises a simulated
out-of-memory error in the first forward pass of those optimizer steps (1-based);
``THREADSUM_FAULT_CHECKPOINT_CRASH_AT_STEP=N`` exits abruptly while writing checkpoint N.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import numpy as np

from threadsum.config import Config
from threadsum.devices import resolve_precision
from threadsum.train.batching import (
    TokenBudgetSampler,
    collate,
    padded_cost,
    plan_micro_batches,
    split_micro_batch,
)
from threadsum.train.checkpoint import (
    CHECKPOINTS_DIR,
    CheckpointError,
    Counters,
    TrainState,
    list_checkpoints,
    remove_stale_tmp,
)
from threadsum.train.distributed import (
    accumulation_steps,
    build_accelerator,
    consolidated_model,
    load_model_weights,
    make_tracker,
    prepare_model_for_strategy,
    save_train_state,
    sync_step,
    uses_sharded_checkpoints,
    world_size,
)
from threadsum.train.distributed import finish as finish_distributed
from threadsum.train.progress import Progress, current_rss_gb, peak_memory_gb

log = logging.getLogger("threadsum.train")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_OOM = 3
EXIT_PREEMPTED = 75
EXIT_ABORTED = 130

INJECT_OOM_ENV = "THREADSUM_INJECT_OOM"
METRICS_FILE = "metrics.jsonl"
MODEL_DIR = "model"


class OutOfMemory(RuntimeError):
    """Out of memory that splitting cannot fix (one thread per piece already)."""


class _SimulatedOOM(RuntimeError):
    """Raised by the fault-injection switch and by the CPU memory ceiling; handled like CUDA OOM."""


# ------------------------------------------------------------------------------------ helpers
class StopSignal:
    """SIGTERM/SIGINT ask the loop to stop after the current optimizer step; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: finishing the current optimizer step, then writing a checkpoint "
                    "(press Ctrl-C again to abort at once without one)", signal.Signals(signum).name)


def _injected_oom_steps() -> set[int]:
    raw = os.environ.get(INJECT_OOM_ENV, "").strip()
    try:
        return {int(x) for x in raw.split(",") if x.strip()}
    except ValueError:
        raise ValueError(f"{INJECT_OOM_ENV}='{raw}' must be comma-separated step numbers, e.g. 3,7") from None


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (torch.OutOfMemoryError, _SimulatedOOM)) or "out of memory" in str(exc).lower()


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _token_lengths(ds) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.compute as pc

    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    src = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    tgt = pc.list_value_length(table.column("labels")).to_numpy(zero_copy_only=False)
    return src.astype(np.int64), tgt.astype(np.int64)


class _Fetch:
    """Rows by index from a (memory-mapped) split; tokens stay in Arrow, not in Python lists."""

    def __init__(self, ds, pad_id: int, start_id: int, multiple: int):
        self.ds, self.pad_id, self.start_id, self.multiple = ds, pad_id, start_id, multiple

    def __call__(self, indices: list[int]) -> dict[str, Any]:
        rows = self.ds[indices]
        return collate(rows["input_ids"], rows["labels"], self.pad_id, self.start_id, self.multiple)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records the interrupted run wrote after its last checkpoint (they are redone)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


# ----------------------------------------------------------------------------------- evaluation
def validation_loss(model, fetch: _Fetch, batches: list[list[int]], device, autocast) -> float:
    """Mean token cross-entropy (no label smoothing) over the validation split."""
    import torch
    import torch.nn.functional as F

    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for indices in batches:
            b = fetch(indices)
            with autocast():
                logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                               decoder_input_ids=b["decoder_input_ids"].to(device)).logits
            labels = b["labels"].to(device)
            total += F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1),
                                     ignore_index=-100, reduction="sum").item()
            n += b["n_label_tokens"]
    model.train()
    return total / max(1, n)


def validation_rouge(model, tokenizer, ds, n: int, cfg: Config, device) -> float:
    """ROUGE-L F1 (x100) of generated summaries on the first ``n`` validation threads (bounded cost).

    Decoding goes through :func:`threadsum.generation.generate_texts`, as ``evaluate`` and the
    Summarizer do, so this figure scores the summaries those would produce.
    """
    from rouge_score import rouge_scorer

    from threadsum.deps import require
    from threadsum.generation import decode, generate_texts

    require("rouge_score", "train")
    rows = ds[list(range(min(n, len(ds))))]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    model.eval()
    preds = generate_texts(model, tokenizer, rows["input_ids"], cfg.eval.generation, device)
    refs = decode(tokenizer, rows["labels"])
    model.train()
    scores = [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(refs, preds)]
    return 100.0 * float(np.mean(scores)) if scores else float("nan")


# ------------------------------------------------------------------------------------- export
def export_model(model, tokenizer, cfg: Config, out_dir: Path, summary: dict[str, Any], data_counts: dict[str, Any]) -> Path:
    """Write model/ atomically: weights (safetensors), tokenizer, generation config, config.yaml, README.md."""
    import shutil

    from threadsum.generation import build_generation_config
    from threadsum.train.modelcard import write_model_card

    final = out_dir / MODEL_DIR
    tmp = out_dir / f".tmp-{MODEL_DIR}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg.model.lora.enabled and cfg.model.lora.merge_on_export:
        model = model.merge_and_unload()
    base_config = getattr(model, "config", None)
    if base_config is not None:
        base_config.use_cache = True  # training turned the KV cache off; generation wants it
    gen_cfg = build_generation_config(cfg.eval.generation, model)
    model.generation_config = gen_cfg
    model.save_pretrained(str(tmp))
    gen_cfg.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    cfg.save(tmp)
    write_model_card(tmp, cfg, summary, data_counts)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


# ---------------------------------------------------------------------------------------- train
def train(cfg: Config) -> dict[str, Any]:
    """Train per ``cfg`` (resuming when a checkpoint exists); returns the run summary with ``exit_code``."""
    import torch
    import torch.nn.functional as F
    from accelerate.state import AcceleratorState

    from threadsum.data.prepared import open_prepared
    from threadsum.model import load_model, load_tokenizer, prepare_for_training
    from threadsum.train.modelcard import hardware_description
    from threadsum.train.optim import build_optimizer, build_scheduler

    # changing shapes (token-budget batches) fragment CUDA's caching allocator; expandable segments
    # measured faster than plain caching. The allocator reads this once, when CUDA initialises, and
    # the tracker below may initialise CUDA (device name), so it is set first. Harmless on CPU.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    tc = cfg.train
    out_dir = Path(tc.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = out_dir / CHECKPOINTS_DIR
    metrics_path = out_dir / METRICS_FILE
    tracker = make_tracker(cfg, out_dir, "train")  # distributed: rank 0 writes the run record, others no-op
    tracker.start()
    stop = StopSignal()
    stop.install()
    progress: Optional[Progress] = None
    counters = Counters()
    try:
        # ---------------------------------------------------------------- device and precision
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            # accelerate keeps a process-wide singleton; a second run in one process must start clean
            AcceleratorState._reset_state(reset_partial_state=True)
        random.seed(tc.seed)
        np.random.seed(tc.seed)
        torch.manual_seed(tc.seed)
        # distributed: batch_tokens is global (all ranks); strategy per train.strategy (train/distributed.py)
        accumulation = accumulation_steps(tc.batch_tokens, tc.max_tokens, world_size())
        accelerator = build_accelerator(cfg, accumulation)
        sharded_ckpt = uses_sharded_checkpoints(cfg)
        device = accelerator.device
        precision = resolve_precision(tc.precision, device)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

        def autocast():
            return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

        # fp16 overflows without dynamic loss scaling; bf16 has fp32's range and needs none
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

        # ---------------------------------------------------------------- data
        prepared = open_prepared(cfg.data.prepared_dir)
        tokenizer = load_tokenizer(str(prepared.tokenizer_dir))
        splits = prepared.datasets()
        train_ds = splits["train"]
        if len(train_ds) == 0:
            raise ValueError(f"the train split of '{cfg.data.prepared_dir}' is empty; prepare more data")
        val_ds = splits["validation"] if "validation" in splits and len(splits["validation"]) else None
        src_lens, tgt_lens = _token_lengths(train_ds)
        sampler = TokenBudgetSampler(
            src_lens, tgt_lens, tc.max_tokens, tc.max_batch_size, tc.pad_to_multiple_of, tc.seed,
            accumulation=accumulation, rank=accelerator.process_index, world_size=accelerator.num_processes,
        )
        total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * sampler.steps_per_epoch()))

        # ---------------------------------------------------------------- model and optimizer
        model = prepare_for_training(load_model(cfg, tokenizer), cfg.model)
        model = prepare_model_for_strategy(model, cfg)  # distributed: FSDP needs one tied-embedding module
        model.config.use_cache = False  # no KV cache in teacher-forced training
        model.train()
        start_id = model.config.decoder_start_token_id
        fetch = _Fetch(train_ds, tokenizer.pad_token_id, start_id, tc.pad_to_multiple_of)
        val_fetch = _Fetch(val_ds, tokenizer.pad_token_id, start_id, tc.pad_to_multiple_of) if val_ds is not None else None
        val_batches = (plan_micro_batches(*_token_lengths(val_ds), tc.max_tokens, tc.max_batch_size,
                                          tc.pad_to_multiple_of, tc.seed, 0, shuffle=False) if val_ds is not None else [])
        optimizer = build_optimizer(model, tc, device.type)
        scheduler = build_scheduler(optimizer, tc, total_steps)
        model, optimizer = accelerator.prepare(model, optimizer)
        n_params = sum(p.numel() for p in model.parameters())
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

        # ---------------------------------------------------------------- resume
        state = TrainState(model=accelerator.unwrap_model(model), optimizer=optimizer, scheduler=scheduler,
                           sampler=sampler, scaler=scaler, config=cfg.to_dict(), adapter_only=cfg.model.lora.enabled)
        state.counters.compute_max_tokens = tc.compute_max_tokens or tc.max_tokens
        resumed_from = _resume(state, tc.resume, ckpt_root)
        counters = state.counters
        if resumed_from is None and metrics_path.exists() and accelerator.is_main_process:
            metrics_path.unlink()  # a fresh run in a used folder: old records would mix with new ones
        if accelerator.is_main_process:  # distributed: one writer
            _truncate_metrics(metrics_path, counters.step)
            cfg.save(out_dir)
        tracker.log_params({
            "precision": precision, "device": str(device), "accumulation": accumulation, "total_steps": total_steps,
            "n_params": n_params, "n_trainable_params": n_trainable, "world_size": accelerator.num_processes,
            "train_threads": len(train_ds), "resumed_from": str(resumed_from) if resumed_from else None,
            **{f"train.{k}": v for k, v in tc.model_dump(mode="json").items()},
        })
        log.info("training %s params (%s trainable) on %s, %s, %d micro-batches of <=%d tokens per step, %d steps",
                 f"{n_params:,}", f"{n_trainable:,}", device, precision, accumulation, tc.max_tokens, total_steps)

        oom_steps = _injected_oom_steps()
        progress = Progress(total_steps, counters.step, enabled=accelerator.is_main_process)
        window = {"t": 0.0, "real": 0, "padded": 0, "loss": 0.0, "steps": 0}
        last_ckpt_time = time.monotonic()
        last_metrics: dict[str, Any] = {}
        val_metrics: dict[str, Any] = {}

        def evaluate_now() -> dict[str, Any]:
            t_eval = time.perf_counter()
            m: dict[str, Any] = {"step": counters.step}
            if val_fetch is not None:
                m["val_loss"] = validation_loss(model, val_fetch, val_batches, device, autocast)
                if tc.eval_rouge_samples:
                    m["val_rougeL"] = validation_rouge(accelerator.unwrap_model(model), tokenizer, val_ds,
                                                       tc.eval_rouge_samples, cfg, device)
            m["eval_seconds"] = time.perf_counter() - t_eval
            return m

        def save_checkpoint() -> Path:
            # distributed: DDP/plain: rank 0 writes, the others wait; FSDP: every rank writes its shard
            return save_train_state(state, ckpt_root, tc.keep_last, accelerator, sharded_ckpt)

        # ---------------------------------------------------------------- the loop
        while counters.step < total_steps:
            micro_batches = sampler.next_step()
            # the step's gradient is the mean over all its label tokens, however it is split
            # distributed: over all ranks' label tokens; averaging gradients across ranks divides by world size
            step_label_tokens = sum(int(tgt_lens[i]) for mb in sampler.last_step_global for i in mb) / accelerator.num_processes
            rng_at_step_start = torch.get_rng_state()
            step_budget = counters.compute_max_tokens
            t_step = time.perf_counter()
            while True:  # one attempt per pass; an OOM redoes the step with smaller pieces
                try:
                    step_loss, step_real, step_padded = 0.0, 0, 0
                    accelerator.step = 0  # accumulate() counts micro-batches; a redone step restarts the count
                    for mb_index, indices in enumerate(micro_batches):
                        with accelerator.accumulate(model):
                            cost = padded_cost(src_lens[indices], tgt_lens[indices], tc.pad_to_multiple_of)
                            pieces = ([indices] if cost <= step_budget else
                                      split_micro_batch(indices, src_lens, tgt_lens, step_budget, tc.pad_to_multiple_of))
                            for p_index, piece in enumerate(pieces):
                                b = fetch(piece)
                                last_piece = p_index == len(pieces) - 1
                                # DDP: only the step's very last backward may all-reduce
                                sync_ctx = nullcontext() if last_piece else accelerator.no_sync(model)
                                with sync_ctx:
                                    if counters.step + 1 in oom_steps and mb_index == 0 and p_index == 0:
                                        oom_steps.discard(counters.step + 1)
                                        raise _SimulatedOOM(f"injected out of memory ({INJECT_OOM_ENV})")
                                    with autocast():
                                        logits = model(input_ids=b["input_ids"].to(device, non_blocking=True),
                                                       attention_mask=b["attention_mask"].to(device, non_blocking=True),
                                                       decoder_input_ids=b["decoder_input_ids"].to(device, non_blocking=True)).logits
                                        loss_sum = F.cross_entropy(
                                            logits.float().view(-1, logits.shape[-1]),
                                            b["labels"].to(device, non_blocking=True).view(-1),
                                            ignore_index=-100, reduction="sum", label_smoothing=tc.label_smoothing)
                                        del logits  # backward needs only the loss's log-softmax: holding logits costs 4 B x vocab per target token
                                    if tc.memory_limit_gb and current_rss_gb() > tc.memory_limit_gb:
                                        raise _SimulatedOOM(f"RSS {current_rss_gb():.2f} GB above train.memory_limit_gb={tc.memory_limit_gb}")
                                    scaler.scale(loss_sum / step_label_tokens).backward()
                                step_loss += loss_sum.detach()
                                step_real += b["n_real_tokens"]
                                step_padded += b["n_padded_tokens"]

                            if accelerator.sync_gradients:
                                if tc.max_grad_norm > 0:
                                    scaler.unscale_(optimizer)
                                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                                else:
                                    grad_norm = None
                                scale_before = scaler.get_scale() if scaler.is_enabled() else None
                                scaler.step(optimizer)
                                scaler.update()
                                # note: get_scale() is a CPU-GPU sync point, paid only with fp16
                                skipped = scaler.is_enabled() and scaler.get_scale() < scale_before
                                if skipped:
                                    counters.skipped_steps += 1
                                else:
                                    scheduler.step()
                                optimizer.zero_grad(set_to_none=True)
                    break
                except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                    if not _is_oom(exc):
                        raise
                    del exc
                    optimizer.zero_grad(set_to_none=True)
                    _free_memory()
                    largest = max(padded_cost(src_lens[mb], tgt_lens[mb], tc.pad_to_multiple_of) for mb in micro_batches)
                    new_budget = min(step_budget, largest) // 2
                    if new_budget < min(int(src_lens[i] + tgt_lens[i]) for mb in micro_batches for i in mb):
                        raise OutOfMemory(
                            f"out of memory at step {counters.step + 1} even with one thread per piece; lower "
                            f"train.max_tokens, turn on model.gradient_checkpointing or use a bigger device "
                            f"(see `threadsum plan`)") from None
                    counters.oom_events += 1
                    step_budget = new_budget
                    if counters.oom_events >= tc.oom_backoff_after:
                        counters.compute_max_tokens = min(counters.compute_max_tokens, new_budget)
                    torch.set_rng_state(rng_at_step_start)  # the redo sees the same dropout stream
                    event = {"event": "oom", "step": counters.step + 1, "oom_events": counters.oom_events,
                             "piece_budget": step_budget, "run_budget": counters.compute_max_tokens}
                    if accelerator.is_main_process:
                        _append_jsonl(metrics_path, event)
                    progress.message(f"out of memory at step {counters.step + 1}: redoing it in pieces of "
                                     f"<= {step_budget} tokens (event {counters.oom_events}; budget for the rest of "
                                     f"the run: {counters.compute_max_tokens})")
            # distributed: one all-reduce per step: loss and token totals of all ranks, and whether any
            # rank was signalled (then all stop after this step and checkpoint together)
            step_loss, step_real, step_padded, stop_any = sync_step(
                accelerator, step_loss, step_real, step_padded, stop.signum is not None)
            if stop_any and stop.signum is None:
                stop.signum = signal.SIGTERM
            step_seconds = time.perf_counter() - t_step
            counters.step += 1
            counters.micro_steps += len(micro_batches)
            counters.real_tokens += step_real
            counters.padded_tokens += step_padded
            counters.train_seconds += step_seconds
            window["t"] += step_seconds
            window["real"] += step_real
            window["padded"] += step_padded
            step_loss = step_loss / (step_label_tokens * accelerator.num_processes)
            window["loss"] += step_loss
            window["steps"] += 1

            log_now = counters.step % tc.log_every_steps == 0 or counters.step == total_steps
            last_metrics = {
                "step": counters.step, "epoch": round(sampler.fractional_epoch, 4), "loss": step_loss,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_per_s": window["real"] / max(window["t"], 1e-9),
                "padded_tokens_per_s": window["padded"] / max(window["t"], 1e-9),
                "peak_mem_gb": peak_memory_gb(device.type),
            }
            progress.update(counters.step, last_metrics, log_line=log_now)
            if log_now and accelerator.is_main_process:
                record = {**last_metrics, "loss": window["loss"] / window["steps"], "real_tokens": counters.real_tokens,
                          "skipped_steps": counters.skipped_steps, "oom_events": counters.oom_events,
                          "train_seconds": round(counters.train_seconds, 3)}
                _append_jsonl(metrics_path, record)
                tracker.log_metrics({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                                    step=counters.step)
                window = {"t": 0.0, "real": 0, "padded": 0, "loss": 0.0, "steps": 0}

            want_ckpt = (tc.checkpoint_every_steps and counters.step % tc.checkpoint_every_steps == 0) or (
                tc.checkpoint_every_minutes and time.monotonic() - last_ckpt_time >= 60 * tc.checkpoint_every_minutes)
            if val_fetch is not None and tc.eval_every_steps and counters.step % tc.eval_every_steps == 0 \
                    and counters.step < total_steps:
                val_metrics = evaluate_now()
                if counters.best_val_loss is None or val_metrics["val_loss"] < counters.best_val_loss:
                    counters.best_val_loss, counters.best_step = val_metrics["val_loss"], counters.step
                    want_ckpt = True  # the best checkpoint must exist on disk to be kept
                if accelerator.is_main_process:
                    _append_jsonl(metrics_path, val_metrics)
                tracker.log_metrics({k: v for k, v in val_metrics.items() if k != "step"}, step=counters.step)
                progress.message(f"step {counters.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in val_metrics.items() if k != "step"))
            if want_ckpt or stop.signum is not None:
                save_checkpoint()
                last_ckpt_time = time.monotonic()
            if stop.signum is not None:
                cause = f"preempted ({signal.Signals(stop.signum).name})"
                progress.close()
                log.warning("%s: checkpoint of step %d written; run the same command to resume (exit code %d)",
                            cause, counters.step, EXIT_PREEMPTED)
                tracker.finish("KILLED", cause=cause, last_step=counters.step, summary=_summary(counters, last_metrics))
                accelerator.wait_for_everyone()  # distributed: nobody exits before the run record is written
                return {"status": "preempted", "exit_code": EXIT_PREEMPTED, "cause": cause, "step": counters.step,
                        **_summary(counters, last_metrics)}

        # ---------------------------------------------------------------- finish
        progress.close()
        if val_fetch is not None and val_metrics.get("step") != counters.step:
            val_metrics = evaluate_now()
            if counters.best_val_loss is None or val_metrics["val_loss"] < counters.best_val_loss:
                counters.best_val_loss, counters.best_step = val_metrics["val_loss"], counters.step
            if accelerator.is_main_process:
                _append_jsonl(metrics_path, val_metrics)
            tracker.log_metrics({k: v for k, v in val_metrics.items() if k != "step"}, step=counters.step)
        final_ckpt = save_checkpoint()
        export_from = model
        if tc.export_best and counters.best_step is not None and counters.best_step != counters.step:
            best = [p for s, p in list_checkpoints(ckpt_root) if s == counters.best_step]
            if best:  # distributed: either checkpoint format; every rank loads under FSDP
                load_model_weights(accelerator.unwrap_model(model), best[0])
        summary = {
            **_summary(counters, last_metrics),
            "val_loss": val_metrics.get("val_loss"), "val_rougeL": val_metrics.get("val_rougeL"),
            "precision": precision, "hardware": hardware_description(), "accumulation": accumulation,
            "n_params": n_params, "n_trainable_params": n_trainable, "steps": counters.step,
        }
        model_dir = None
        export_target = consolidated_model(accelerator, export_from, cfg, tokenizer)  # distributed: FSDP gathers
        if accelerator.is_main_process:
            counts = {name: len(ds) for name, ds in splits.items()}
            model_dir = export_model(export_target, tokenizer, cfg, out_dir, summary, counts)
            tracker.log_artifact(model_dir)
        tracker.finish("FINISHED", last_step=counters.step, summary=summary)
        return {"status": "finished", "exit_code": EXIT_OK, "model_dir": str(model_dir) if model_dir else None,
                "checkpoint": str(final_ckpt), **summary}

    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        tracker.finish("KILLED", cause="aborted (second SIGINT)", last_step=counters.step)
        return {"status": "aborted", "exit_code": EXIT_ABORTED, "cause": "aborted (second SIGINT)", "step": counters.step}
    except OutOfMemory as exc:
        if progress is not None:
            progress.close()
        tracker.finish("FAILED", cause=f"OOM: {exc}", last_step=counters.step)
        raise
    except BaseException as exc:
        if progress is not None:
            progress.close()
        tracker.finish("FAILED", cause=f"crashed: {type(exc).__name__}: {exc}", last_step=counters.step)
        raise
    finally:
        stop.restore()
        finish_distributed(stopped=stop.signum is not None)


def _summary(counters: Counters, last_metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "final_loss": last_metrics.get("loss"),
        "real_tokens": counters.real_tokens,
        "real_tokens_per_s": counters.real_tokens / counters.train_seconds if counters.train_seconds else None,
        "padding_fraction": 1 - counters.real_tokens / counters.padded_tokens if counters.padded_tokens else None,
        "peak_mem_gb": last_metrics.get("peak_mem_gb"),
        "train_seconds": counters.train_seconds,
        "best_val_loss": counters.best_val_loss,
        "best_step": counters.best_step,
        "oom_events": counters.oom_events,
        "compute_max_tokens": counters.compute_max_tokens,
        "skipped_steps": counters.skipped_steps,
    }


def _resume(state: TrainState, resume: str, ckpt_root: Path) -> Optional[Path]:
    """Load the checkpoint ``train.resume`` names; 'auto' tries the newest complete ones in turn."""
    if resume == "none":
        return None
    if resume == "auto":
        remove_stale_tmp(ckpt_root)
        candidates = [p for _, p in reversed(list_checkpoints(ckpt_root, warn=True))]
    else:
        candidates = [Path(resume)]
        if not candidates[0].is_dir():
            raise CheckpointError(f"train.resume='{resume}' is not a checkpoint folder; use 'auto', 'none' or a "
                                  f"path like {ckpt_root}/step-00000100")
    for path in candidates:
        try:
            diffs = state.load(path)
        except CheckpointError as exc:
            if resume != "auto":
                raise
            log.warning("skipping %s", exc)
            continue
        log.info("resumed from %s (step %d)", path, state.counters.step)
        if diffs:
            log.warning("the config differs from the checkpoint's in settings that change the result:\n  %s",
                        "\n  ".join(diffs))
        return path
    return None


def train_command(cfg: Config) -> int:
    """Entry of ``threadsum train``: runs ``train`` and maps the outcome to the documented exit code."""
    from threadsum.config import ConfigError
    from threadsum.data.prepared import PreparedDataError
    from threadsum.deps import MissingExtraError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        result = train(cfg)
    except (ConfigError, PreparedDataError, MissingExtraError, CheckpointError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except OutOfMemory as exc:
        log.error("%s", exc)
        return EXIT_OOM
    except Exception:  # noqa: BLE001 - the run record holds the cause; print the traceback for the user
        log.exception("training crashed")
        return EXIT_FAILED
    if result["status"] == "finished":
        log.info("done: model in %s (real tokens/s %.0f)", result.get("model_dir"), result.get("real_tokens_per_s") or 0)
    return int(result["exit_code"])


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m threadsum.train.loop CONFIG [a.b=c ...]``: used by tests to run training in a subprocess."""
    from threadsum.config import load_config

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = load_config(argv[0] if argv else None, argv[1:])
    return train_command(cfg)


if __name__ == "__main__":
    sys.exit(main())
