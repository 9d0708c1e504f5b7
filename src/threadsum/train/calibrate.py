"""``threadsum plan --calibrate``: this machine's CPU training rate for the configured model, measured.

The planner's CPU rows otherwise scale one quoted figure (BART-large fp32 on a 2-vCPU machine) by
FLOPs per token. A calibration instead runs a few real optimizer steps of threadsum's own step
(:class:`threadsum.train.step.StepRunner`: token-budget micro-batches, the family's collation,
autocast of the resolved precision, the chunked loss, clipping, the configured optimizer) on a
random-init model of the configured architecture and on random token ids, so it needs no weights,
no tokenizer and no prepared data. Lengths are those of ``data.prepared_dir``'s train split when it
exists, else the Kaggle corpus's email-like lengths (:func:`threadsum.train.memory.kaggle_like_lengths`).

It measures two numbers, because an epoch costs both: the forward/backward rate in real (non-padding)
tokens per second at the sampler's padding, and the seconds of one optimizer update (AdamW touches
every parameter once per step, however many tokens the step holds). :func:`rate_for` combines them
for the configured ``train.batch_tokens``.

Where it is stored: one JSON file per user, ``$THREADSUM_CACHE_DIR/cpu_calibration.json`` (default
``$XDG_CACHE_HOME/threadsum/``, else ``~/.cache/threadsum/``), one entry per key
``cpu model | torch threads | architecture | precision | levers | lengths`` (:func:`calibration_key`),
a later calibration replacing the entry of its key. ``plan --cost`` reads the entry of the config's
key; nothing else does.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from threadsum.config import Config
from threadsum.devices import cpu_model_name, cpu_summary
from threadsum.train import memory as mem

CACHE_ENV = "THREADSUM_CACHE_DIR"
"""Environment variable naming the folder of the calibration file (overrides the XDG default)."""
CALIBRATION_FILE = "cpu_calibration.json"
"""Name of the calibration file inside the cache folder."""
CALIBRATION_VERSION = 1
"""Format of the file; entries of another version are ignored."""
DEFAULT_BUDGET_S = 100.0
"""Seconds of timed steps a calibration aims at; model build and the untimed warm-up step come on top
(about 15-25 s for BART-large on 2 vCPUs), so the whole command stays under 2 minutes."""
MIN_TIMED_STEPS = 2
"""Timed optimizer steps a calibration always runs, even past its budget."""
CALIBRATION_MAX_TOKENS = {"bf16": 4096, "fp32": 1536}
"""Largest micro-batch (padded tokens) a calibration step uses, by resolved precision; bigger
configured budgets are timed at this size. fp32: about two email threads; the rate per token changes
little above ~1k tokens there (the planner's micro-batch efficiency, ``memory._micro_batch_efficiency``:
98% at 1.5k, 99% at 4k), and a BART-large micro-batch of 4,096 tokens takes ~40 s on 2 AVX2 vCPUs.
bf16 on a CPU with native bf16: the rate does grow with the matmuls, measured at BART-large on 2 vCPUs
with avx512_bf16 (`plan -c configs/bart-large.yaml --calibrate --cost`): 198 real tokens/s at 1,536,
236 at 4,096, against 254 measured by training at 4,096 (bench/bench_train_cpu.py), so 1,536 made the
planner 28% pessimistic and 4,096 is 7% off; a step there takes 10-20 s, the whole command ~2.4 min."""


def calibration_max_tokens(precision: str) -> int:
    """:data:`CALIBRATION_MAX_TOKENS` for a resolved ``precision`` (fp16 and others: the fp32 size)."""
    return CALIBRATION_MAX_TOKENS.get(precision, CALIBRATION_MAX_TOKENS["fp32"])


# ------------------------------------------------------------------------------------- storage
def cache_dir() -> Path:
    """The folder of the calibration file: ``$THREADSUM_CACHE_DIR``, else ``$XDG_CACHE_HOME/threadsum``,
    else ``~/.cache/threadsum``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "threadsum"


def calibration_path() -> Path:
    """The calibration file (:func:`cache_dir` / :data:`CALIBRATION_FILE`)."""
    return cache_dir() / CALIBRATION_FILE


def usable_threads() -> int:
    """CPU threads a training process here uses: torch's intra-op threads when torch is loaded,
    else the cores this process may run on."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _shape(spec: mem.ModelSpec) -> dict[str, Any]:
    """The architecture numbers that set the speed (the spec without its name and dropouts)."""
    skip = {"name", "dropout", "attention_dropout", "activation_dropout", "max_positions"}
    return {f.name: getattr(spec, f.name) for f in fields(spec) if f.name not in skip}


def _levers(cfg: Config) -> dict[str, Any]:
    m, t = cfg.model, cfg.train
    return {"optimizer": t.optimizer, "gradient_checkpointing": m.gradient_checkpointing,
            "lora_r": m.lora.r if m.lora.enabled else 0, "loss_chunk_tokens": t.loss_chunk_tokens,
            "attn": m.attn_implementation or "sdpa", "reuse_freed_memory": t.reuse_freed_memory}


def calibration_key(cfg: Config, precision: str, cpu: Optional[str] = None, threads: Optional[int] = None) -> str:
    """The key of cfg's calibration on this CPU: CPU model, torch threads, architecture, resolved
    precision ("fp32", "bf16"), the levers that change speed, and the source/target token limits.

    Raises:
        PlanError: cfg's architecture cannot be read (:func:`threadsum.train.memory.model_spec`).
    """
    spec = mem.model_spec(cfg)
    parts = {"cpu": cpu or cpu_model_name(), "threads": threads or usable_threads(), "shape": _shape(spec),
             "precision": precision, "levers": _levers(cfg),
             "lengths": [cfg.data.max_source_tokens, cfg.data.max_target_tokens]}
    return json.dumps(parts, sort_keys=True, separators=(",", ":"))


def read_calibrations(path: Optional[Path] = None) -> dict[str, dict[str, Any]]:
    """Every stored entry by key ({} when the file is missing, unreadable or of another version)."""
    path = path or calibration_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CALIBRATION_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def store_calibration(entry: dict[str, Any], path: Optional[Path] = None) -> Path:
    """Add or replace ``entry`` (under ``entry['key']``) in the calibration file, written atomically.

    Raises:
        OSError: the cache folder cannot be created or written.
    """
    path = path or calibration_path()
    entries = read_calibrations(path)
    entries[entry["key"]] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": CALIBRATION_VERSION, "entries": entries}, indent=1))
    tmp.replace(path)
    return path


def find_calibration(cfg: Config, precision: str) -> Optional[dict[str, Any]]:
    """The stored calibration of cfg at ``precision`` on this CPU with this many threads, or None."""
    try:
        key = calibration_key(cfg, precision)
    except mem.PlanError:
        return None
    return read_calibrations().get(key)


def rate_for(entry: dict[str, Any], batch_tokens: int) -> float:
    """Training rate in real tokens/s of a run whose optimizer steps hold ``batch_tokens`` padded tokens.

    A step's real tokens ``R = batch_tokens x real share`` (the calibration's measured real/padded
    share) take ``R / forward_backward_rate + update_seconds``; the rate is ``R`` over that time.
    """
    real = batch_tokens * float(entry["real_share"])
    return real / (real / float(entry["forward_backward_tokens_per_s"]) + float(entry["update_seconds"]))


# ----------------------------------------------------------------------------------- measuring
class _SizedVocab:
    """Stands in for a tokenizer where only its size and special ids are read (building a random
    model of ``model.tiny``): a calibration has no data and so no trained tokenizer."""

    def __init__(self, size: int, pad: int, bos: Optional[int], eos: int):
        self.size, self.pad_token_id, self.bos_token_id, self.eos_token_id = size, pad, bos, eos

    def __len__(self) -> int:
        return self.size


def random_model(cfg: Config):
    """A random-init model of cfg's architecture (no weights read): ``model.tiny`` for a random init,
    else the config.json of the local folder or the known hub id (``resources/models.yaml``).

    Raises:
        PlanError: the architecture cannot be read.
    """
    import transformers

    from threadsum.family import family_of
    from threadsum.model import build_random_model

    m = cfg.model
    kwargs = {"attn_implementation": m.attn_implementation} if m.attn_implementation else {}
    if m.init == "random":
        spec = mem.model_spec(cfg)
        vocab = _SizedVocab(spec.vocab_size, pad=1, bos=0, eos=2)
        return build_random_model(m, vocab)
    name = m.name_or_path or ""
    local = Path(name).expanduser()
    if (local / "config.json").is_file():
        hf = transformers.AutoConfig.from_pretrained(str(local))
    else:
        models = mem.known_models()
        key = models.get("aliases", {}).get(name, name)
        if key not in models or key == "aliases":
            mem.model_spec(cfg)  # raises the planner's PlanError naming the known ids
        fields_ = dict(models[key])
        hf = transformers.AutoConfig.for_model(fields_.pop("model_type"), **fields_)
    return getattr(transformers, family_of(hf).auto_class).from_config(hf, **kwargs)


def _lengths(cfg: Config, n: int, seed: int) -> tuple[Any, Any, str]:
    """Source and target lengths [n] for the synthetic threads, and where they come from."""
    import numpy as np

    try:
        from threadsum.data.prepared import open_prepared
        from threadsum.train.batching import token_lengths

        src, tgt = token_lengths(open_prepared(cfg.data.prepared_dir).datasets()["train"])
        if len(src):
            pick = np.random.default_rng(seed).choice(len(src), size=n, replace=len(src) < n)
            return src[pick], tgt[pick], f"lengths of {cfg.data.prepared_dir} (train split)"
    except Exception:  # no prepared data (or no datasets installed): the corpus's lengths
        pass
    src, tgt = mem.kaggle_like_lengths(n, cfg.data.max_source_tokens, cfg.data.max_target_tokens, seed)
    return src, tgt, "Kaggle-like email lengths (train/memory.py kaggle_like_lengths)"


class _Rows:
    """Token id rows by index, as a tokenized split serves them to :class:`BatchFetcher`."""

    def __init__(self, input_ids: list[list[int]], labels: list[list[int]]):
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, indices: list[int]) -> dict[str, list[list[int]]]:
        return {"input_ids": [self.input_ids[i] for i in indices], "labels": [self.labels[i] for i in indices]}


def _timed_steps(runner: Any, sampler: Any, tc: Any, budget_s: float, say: Callable[[str], None]) -> list[Any]:
    """Run optimizer steps until ``budget_s`` seconds of them are timed (at least
    :data:`MIN_TIMED_STEPS`; the first step allocates and initialises and is not timed), with the
    heap setting the loop uses on a CPU (``train.reuse_freed_memory``). Returns the timed steps'
    results."""
    from threadsum.heap import reuse_freed_memory, stop_reusing_freed_memory
    from threadsum.train.checkpoint.state import Counters

    counters = Counters()
    counters.compute_max_tokens = tc.max_tokens
    timed: list[Any] = []
    t_timed = 0.0
    if tc.reuse_freed_memory:
        reuse_freed_memory()
    try:
        while True:
            mbs = sampler.next_step()
            r = runner.run(counters, mbs, sampler.last_step_global, lambda: False)
            counters.step += 1
            if counters.step > 1:
                timed.append(r)
                t_timed += r.seconds
            say(f"  step {counters.step}: {r.real_tokens} real tokens in {r.seconds:.1f} s "
                f"(update {r.update_seconds:.2f} s){'' if counters.step > 1 else ' (warm-up, not timed)'}")
            if len(timed) >= MIN_TIMED_STEPS and t_timed >= budget_s:
                return timed
    finally:
        stop_reusing_freed_memory()


def calibrate(cfg: Config, budget_s: float = DEFAULT_BUDGET_S, *, store: bool = True,
              say: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Measure this machine's training rate for cfg's model and precision on the CPU; store and return it.

    Runs one untimed warm-up step, then timed optimizer steps (one micro-batch each, of at most
    ``min(train.max_tokens, calibration_max_tokens(precision))`` padded tokens) until ``budget_s`` seconds of
    them have run (at least :data:`MIN_TIMED_STEPS`).

    Returns:
        The entry: ``key``, ``cpu`` (model, cores, bf16/AMX/VNNI flags), ``threads``, ``precision``,
        ``shape``, ``levers``, ``lengths``, ``forward_backward_tokens_per_s`` (real tokens per second
        of forward + backward), ``update_seconds`` (one optimizer update), ``real_share`` (real /
        padded tokens), ``tokens_per_s`` (real tokens/s at ``train.batch_tokens``, :func:`rate_for`),
        ``timed_steps``, ``seconds`` (the whole call), ``loadavg`` (1-minute, before and after),
        ``measured_at`` (UTC ISO time) and ``torch``.

    Raises:
        PlanError: the architecture cannot be read.
        ConfigError: the optimizer cannot run on a CPU (adamw8bit).
        OSError: ``store`` and the cache file cannot be written.
    """
    import numpy as np
    import torch
    from accelerate.state import AcceleratorState

    from threadsum.devices import resolve_precision
    from threadsum.family import family_of
    from threadsum.model import prepare_for_training
    from threadsum.train.batching import BatchFetcher, TokenBudgetSampler
    from threadsum.train.compiling import pad_rule
    from threadsum.train.distributed import build_accelerator
    from threadsum.train.loop import precision_parts
    from threadsum.train.optim import build_optimizer, build_scheduler
    from threadsum.train.step import StepRunner

    t_start, load_before = time.perf_counter(), os.getloadavg()[0]
    device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device)
    tc = cfg.train.model_copy(update={"max_tokens": min(cfg.train.max_tokens, calibration_max_tokens(precision)),
                                      "compile": False, "memory_limit_gb": 0.0, "warmup_steps": 0})
    say(f"calibrating {mem.model_spec(cfg).name} ({precision}) on {cpu_summary()}, {torch.get_num_threads()} threads")
    torch.manual_seed(cfg.train.seed)
    model = prepare_for_training(random_model(cfg), cfg.model)
    model.config.use_cache = False
    model.train()
    family = family_of(model)
    src_lens, tgt_lens, lengths_from = _lengths(cfg, 512, cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    rows = _Rows([rng.integers(5, vocab, int(s)).tolist() for s in src_lens],
                 [rng.integers(5, vocab, int(t)).tolist() for t in tgt_lens])
    budget_src, budget_tgt = family.budget_lengths(src_lens, tgt_lens)
    sampler = TokenBudgetSampler(budget_src, budget_tgt, tc.max_tokens, tc.max_batch_size, pad_rule(tc), tc.seed)
    AcceleratorState._reset_state(reset_partial_state=True)  # a clean accelerate state, as the loop starts
    acc = build_accelerator(cfg.model_copy(update={"train": tc}), 1)
    autocast, scaler = precision_parts(precision, device)
    optimizer = build_optimizer(model, tc, "cpu")
    scheduler = build_scheduler(optimizer, tc, 1000)
    model, optimizer = acc.prepare(model, optimizer)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    fetch = BatchFetcher(rows, family, pad_id, getattr(model.config, "decoder_start_token_id", None), pad_rule(tc))
    runner = StepRunner(accelerator=acc, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        fetch=fetch, src_lens=budget_src, tgt_lens=budget_tgt,
                        label_lens=family.label_lengths(src_lens, tgt_lens, tc.train_on_prompt), tc=tc,
                        autocast=autocast, on_oom=lambda _e: None)
    timed = _timed_steps(runner, sampler, tc, budget_s, say)
    real = sum(r.real_tokens for r in timed)
    padded = sum(r.padded_tokens for r in timed)
    fb_seconds = sum(r.seconds - r.update_seconds for r in timed)
    update_s = float(np.median([r.update_seconds for r in timed]))
    entry = {
        "key": calibration_key(cfg, precision), "cpu": cpu_summary(), "cpu_model": cpu_model_name(),
        "threads": usable_threads(), "precision": precision, "model": mem.model_spec(cfg).name,
        "shape": _shape(mem.model_spec(cfg)), "levers": _levers(cfg),
        "lengths": [cfg.data.max_source_tokens, cfg.data.max_target_tokens], "lengths_from": lengths_from,
        "micro_batch_tokens": tc.max_tokens, "forward_backward_tokens_per_s": real / fb_seconds,
        "update_seconds": update_s, "real_share": real / padded, "timed_steps": len(timed),
        "timed_real_tokens": real, "loadavg": [load_before, os.getloadavg()[0]],
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
    }
    entry["tokens_per_s"] = rate_for(entry, cfg.train.batch_tokens)
    entry["seconds"] = round(time.perf_counter() - t_start, 1)
    if store:
        entry["stored_in"] = str(store_calibration(entry))
    return entry


def describe(entry: dict[str, Any]) -> str:
    """One line for the plan output: what was measured, where and when."""
    return (f"{entry['model']} {entry['precision']}, forward+backward {entry['forward_backward_tokens_per_s']:.0f} "
            f"real tokens/s and {entry['update_seconds']:.2f} s per optimizer update ({entry['timed_steps']} timed "
            f"steps, load average {entry['loadavg'][0]:.1f}-{entry['loadavg'][1]:.1f}) on {entry['cpu']}, "
            f"{entry['threads']} threads, {entry['measured_at']}")
