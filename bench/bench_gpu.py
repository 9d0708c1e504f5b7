"""GPU benchmark of threadsum's own training loop and Summarizer on BART-large (random init).

One command on a GPU machine, after the anchor script so both sets of numbers come from one card
(bench/README.md has the exact device call, its carry list and the wheels of threadsum's own
dependencies):

    ONLY=amp_bf16_token_budget,generation_speed,lora_r16_amp,grad_ckpt_amp,full_epoch_best \
        timeout 200 python .anchor/gpu_anchor.py > $OUT/anchor.log 2>&1; \
    PYTHONPATH=src BUDGET_S=330 python bench/bench_gpu.py

CPU smoke test (tiny BART, a few steps per variant, under 2 minutes):

    TINY=1 PYTHONPATH=src python bench/bench_gpu.py

What runs: ``threadsum.train.loop.train(cfg)`` itself (token-budget sampler, collate, autocast,
label-smoothed loss, clipping, fused AdamW, OOM back-off, metrics.jsonl) on a prepared folder of
synthetic token ids with the anchor's email-like lengths (4,167 threads, median source ~600 tokens,
~25% at 1,024, target median ~90; identical numbers to gpu_anchor.py), and
``Summarizer.from_pretrained(...).generate`` for beam search. Each variant runs in its own Python
process, so an allocator setting, an out-of-memory or a crash stays in that variant; the others go on.

Variants (``ONLY=name,name`` picks some): bf16 full fine-tune at token budgets 16k/32k, with and
without gradient checkpointing, with the chunked LM-head loss (the default) and with full fp32 logits,
with ``train.compile`` (inductor, bucketed lengths; the first steps include compilation), with expandable CUDA segments (the loop's default; whether it really
took effect is read back from the allocator) and without; LoRA r16; generation at batch 32,
4 beams, 128 new tokens in bf16 with threadsum's generation settings and with the anchor's (every
summary exactly 128 tokens, no n-gram blocking).

Measured per training variant: real (non-pad) tokens/s after the first warm-up steps, read from the
loop's own metrics.jsonl (per-step records: the loop's clock, which ends each step with a CPU-GPU
sync); model FLOPs utilisation = that x model FLOPs per real token / a bf16 matmul measured in the
same run (FLOPs counted analytically for unpadded threads and checked against
torch.utils.flop_counter on the real model in the generation variant); peak
``max_memory_allocated`` and ``max_memory_reserved``; projected epoch time for 4,167 threads.

Time caps: each variant stops after ``cap_s`` seconds of training (the process exits once the
numbers are read; the main variant instead gets SIGTERM, so the loop's checkpoint-on-preemption and
its timing are part of the result) and the whole script skips variants that no longer fit
``BUDGET_S`` (default 360 s). Results: ``$OUT/bench_gpu.json``, a markdown table on stdout and
``$OUT/bench_gpu.md``, per-variant logs and metrics in ``$OUT/logs``.

Environment: OUT (default /tmp/bench_gpu_out), TINY=1, ONLY, BUDGET_S, BENCH_DATA=auto|disk|memory
(``disk``: a real prepared folder written with the ``datasets`` package; ``memory``: the same rows
served from memory through ``Prepared.datasets`` when ``datasets`` is not installed),
BENCH_WHEELS (folder of wheels used to install missing pure dependencies such as pydantic; default
``.anchor/wheels`` when it exists), WORK (scratch folder; default /dev/shm when it has room),
KEEP_WORK=1.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TINY = os.environ.get("TINY") == "1"
OUT = Path(os.environ.get("OUT") or "/tmp/bench_gpu_out")

# --------------------------------------------------------------------------------------- shapes
# BartConfig() defaults (facebook/bart-large's shape); TINY is the anchor's CPU smoke model
BART_LARGE = dict(d_model=1024, encoder_layers=12, decoder_layers=12, attention_heads=16, ffn_dim=4096,
                  vocab_size=50265, max_position_embeddings=1024, dropout=0.1)
BART_TINY = dict(d_model=64, encoder_layers=2, decoder_layers=2, attention_heads=4, ffn_dim=128,
                 vocab_size=1000, max_position_embeddings=1024, dropout=0.1)
DIMS = BART_TINY if TINY else BART_LARGE
N_THREADS = 64 if TINY else 4167
MAX_SRC, MAX_TGT = (128, 32) if TINY else (1024, 256)
K16, K32, K64 = (512, 1024, 2048) if TINY else (16384, 32768, 65536)
WARMUP_STEPS = 2 if TINY else 5
"""Steps left out of the steady tokens/s (first CUDA kernels, cuBLAS handles, allocator growth)."""

# the goals (issue 4 and 9), printed beside the numbers
GOALS = {"full_tokens_per_s": 230_000, "full_mfu": 0.40, "epoch_s": 15.0, "lora_tokens_per_s": 400_000,
         "generate_threads_per_s": 60.0}

# name, kind and settings of each variant, in priority order: when the budget runs out the tail is skipped.
# cap_s: seconds of training after the first step; cap_steps: steps (TINY keeps runs deterministic)
VARIANTS: list[dict[str, Any]] = [
    {"name": "matmul_bf16", "kind": "matmul"},
    {"name": "full_bf16_16k", "kind": "train", "max_tokens": K16, "finish": True, "cap_s": 50,
     "note": "main variant: stopped by SIGTERM (checkpoint written) or at the end of the epoch (checkpoint + export)"},
    {"name": "generate_bs32_beams4", "kind": "generate", "cap_s": 40},
    {"name": "lora_r16_16k", "kind": "train", "max_tokens": K16, "lora": True, "cap_s": 20},
    # the loss lever: every other variant uses the chunked LM-head loss (train.loss_chunk_tokens=1024)
    {"name": "full_bf16_16k_full_logits", "kind": "train", "max_tokens": K16, "loss_chunk": 0, "cap_s": 20},
    # torch.compile (inductor) with bucketed lengths: compile time is reported apart from steady tokens/s
    {"name": "full_bf16_16k_compile", "kind": "train", "max_tokens": K16, "compile": True, "cap_s": 90},
    # the allocator comparison: only the one of these two that differs from what full_bf16_16k ran with
    {"name": "full_bf16_16k_no_expandable", "kind": "train", "max_tokens": K16,
     "alloc_conf": "expandable_segments:False", "cap_s": 20},
    {"name": "full_bf16_16k_expandable_env", "kind": "train", "max_tokens": K16,
     "alloc_conf": "expandable_segments:True", "cap_s": 20},
    {"name": "full_bf16_16k_gc", "kind": "train", "max_tokens": K16, "gc": True, "cap_s": 20},
    {"name": "full_bf16_32k", "kind": "train", "max_tokens": K32, "cap_s": 20},
    {"name": "full_bf16_32k_gc", "kind": "train", "max_tokens": K32, "gc": True, "cap_s": 20},
    {"name": "lora_r16_32k", "kind": "train", "max_tokens": K32, "lora": True, "cap_s": 20},
    {"name": "full_bf16_64k_gc", "kind": "train", "max_tokens": K64, "gc": True, "cap_s": 20},
    {"name": "lora_r16_16k_gc", "kind": "train", "max_tokens": K16, "lora": True, "gc": True, "cap_s": 20},
]
# the smoke test covers every code path once (SIGTERM + checkpoint, capped exit, LoRA with checkpointing,
# generation) in as few processes as possible: each one pays ~5-15 s of imports on a busy 2-core machine
TINY_VARIANTS = ["matmul_bf16", "full_bf16_16k", "generate_bs32_beams4", "lora_r16_16k_gc", "full_bf16_16k_full_logits"]
CHILD_OVERHEAD_S = 15 if TINY else 35
"""Estimated seconds a variant spends outside its cap (imports, model init, checkpoint): used to skip what no longer fits."""

# anchor runs (gpu_anchor.py names) that each variant is compared with
ANCHOR_MATCH = {
    "full_bf16_16k": ["FULL EPOCH amp-bf16 token-budget 16k", "amp-bf16 sdpa fusedAdamW token-budget 16k"],
    "full_bf16_16k_no_expandable": ["amp-bf16 sdpa fusedAdamW token-budget 16k"],
    "full_bf16_16k_expandable_env": ["amp-bf16 sdpa fusedAdamW token-budget 16k"],
    "full_bf16_32k": ["amp-bf16 sdpa fusedAdamW token-budget 16k"],
    "full_bf16_16k_gc": ["grad-ckpt amp-bf16 token-budget 16k"],
    "full_bf16_32k_gc": ["grad-ckpt amp-bf16 token-budget 16k"],
    "full_bf16_64k_gc": ["grad-ckpt amp-bf16 token-budget 16k"],
    "lora_r16_16k": ["LoRA r16 all-linear amp-bf16 token-budget 16k"],
    "full_bf16_16k_full_logits": ["amp-bf16 sdpa fusedAdamW token-budget 16k"],
    "full_bf16_16k_compile": ["amp-bf16 sdpa fusedAdamW token-budget 16k"],
    "lora_r16_32k": ["LoRA r16 all-linear amp-bf16 token-budget 16k"],
    "lora_r16_16k_gc": ["LoRA r16 all-linear amp-bf16 token-budget 16k"],
    "generate_bs32_beams4/anchor_settings": ["generate bf16 beams=4 128 new tokens bs32"],
    "generate_bs32_beams4/threadsum_settings": ["generate bf16 beams=4 128 new tokens bs32"],
    "generate_bs32_beams4/ctranslate2_anchor_settings": ["generate bf16 beams=4 128 new tokens bs32"],
}


# ------------------------------------------------------------------------------------ the data
@functools.lru_cache(maxsize=1)
def anchor_examples() -> tuple[list[list[int]], list[list[int]]]:
    """Token ids with the anchor's email-like lengths: the same generator calls as gpu_anchor.py, same numbers."""
    import numpy as np

    rng = np.random.default_rng(0)
    src_len = np.clip(rng.lognormal(math.log(MAX_SRC * 0.6), 0.7, N_THREADS), 8 if TINY else 32, MAX_SRC).astype(int)
    tgt_len = np.clip(rng.lognormal(math.log(MAX_TGT * 0.35), 0.4, N_THREADS), 8, MAX_TGT).astype(int)
    voc = 1000 if TINY else 50000
    src, tgt = [], []
    for s, t in zip(src_len, tgt_len):
        src.append(rng.integers(4, voc, s).tolist())
        tgt.append(rng.integers(4, voc, t).tolist())
    return src, tgt


def write_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """A word-level tokenizer whose every id is one word 't<id>': text of n words is exactly n tokens.

    BART's special tokens keep BART's ids (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4), so the
    random-init model built by threadsum.model from this tokenizer has BartConfig()'s vocabulary
    (50,265) and token ids.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"t{i}": i for i in range(len(specials), vocab_size)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    fast.save_pretrained(str(out_dir))


def write_workdir(work: Path, mode: str) -> dict[str, Any]:
    """Tokenizer, the token ids (tokens.json) and a prepared folder (prepared.py's contract) for train()."""
    import numpy as np

    src, tgt = anchor_examples()
    prepared = work / "prepared"
    write_tokenizer(prepared / "tokenizer", DIMS["vocab_size"])
    (prepared / "threads").mkdir(parents=True, exist_ok=True)
    (prepared / "threads" / "train.jsonl").write_text("")
    (work / "tokens.json").write_text(json.dumps({"input_ids": src, "labels": tgt}))
    if mode == "disk":
        from datasets import Dataset, DatasetDict

        ds = Dataset.from_dict({"thread_id": [f"t{i}" for i in range(len(src))], "input_ids": src, "labels": tgt})
        DatasetDict({"train": ds}).save_to_disk(str(prepared / "tokenized"))
    else:
        (prepared / "tokenized").mkdir(parents=True, exist_ok=True)  # served from memory by the child
    s = np.array([len(x) for x in src])
    t = np.array([len(y) for y in tgt])
    return {"n": len(src), "src_median": int(np.median(s)), "src_p90": int(np.percentile(s, 90)),
            "frac_src_at_max": round(float((s >= MAX_SRC).mean()), 3), "tgt_median": int(np.median(t)),
            "real_tokens": int(s.sum() + t.sum()), "data_path": mode}


def epoch_steps(max_tokens: int, max_batch_size: int, pad_to: int) -> int:
    """Micro-batches of one epoch as the loop's sampler cuts them (accumulation 1: one per optimizer step)."""
    import numpy as np

    from threadsum.train.batching import plan_micro_batches

    src, tgt = anchor_examples()
    return len(plan_micro_batches(np.array([len(x) for x in src]), np.array([len(y) for y in tgt]),
                                  max_tokens, max_batch_size, pad_to, seed=0, epoch=0))


# --------------------------------------------------------------------------------------- FLOPs
def forward_flops(ls: int, lt: int, d: dict[str, Any]) -> float:
    """Matmul FLOPs of one forward pass of a BART on one unpadded thread (source ls, target lt tokens).

    Per encoder layer and source token: q/k/v/o projections 8 d^2, feed-forward 4 d f, attention
    4 d ls. Per decoder layer and target token: self-attention projections 8 d^2, cross-attention
    q/o 4 d^2, feed-forward 4 d f, self-attention 4 d lt (causal, counted in full like the kernels
    compute it), cross-attention 4 d ls; plus cross-attention k/v of the source, 4 d^2 per source
    token and layer. LM head: 2 d V per target token.
    """
    dm, f, v = d["d_model"], d["ffn_dim"], d["vocab_size"]
    enc = d["encoder_layers"] * ls * (8 * dm * dm + 4 * dm * f + 4 * dm * ls)
    dec = d["decoder_layers"] * (lt * (12 * dm * dm + 4 * dm * f + 4 * dm * lt + 4 * dm * ls) + 4 * dm * dm * ls)
    return float(enc + dec + 2 * dm * v * lt)


def train_flops_per_real_token(lora: bool) -> float:
    """Model FLOPs of training per real token over the data set (useful work only: no padding).

    Full fine-tune: forward + backward = 3 forwards. LoRA: frozen matrices get no weight gradient,
    so about 2 forwards (the adapters add well under 1%).
    """
    src, tgt = anchor_examples()
    total = sum(forward_flops(len(s), len(t), DIMS) for s, t in zip(src, tgt))
    tokens = sum(len(s) + len(t) for s, t in zip(src, tgt))
    return (2.0 if lora else 3.0) * total / tokens


# ---------------------------------------------------------------------------------------- deps
REQUIRED = {  # import name -> what pip calls it
    "numpy": "numpy", "torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers",
    "accelerate": "accelerate", "peft": "peft", "safetensors": "safetensors", "yaml": "pyyaml",
    "pydantic": "pydantic", "nicknames": "nicknames", "nameparser": "nameparser", "text_to_num": "text2num",
    "dateparser": "dateparser",
}
# pure-python or per-version wheels that bench/README.md tells you to carry in .anchor/wheels: the
# pydantic stack and the grounding check's parsers (generation imports threadsum.verify)
WHEEL_STACK = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "nicknames", "nameparser",
               "text2num", "dateparser", "pytz", "tzlocal", "typing-extensions"]
FIXABLE = {"pydantic", "nicknames", "nameparser", "text2num", "dateparser"}
IMPORT_PROBE = ("import threadsum.train.loop, threadsum.model, threadsum.inference.summarizer, threadsum.config, "
                "threadsum.verify")


def _probe_imports(env: dict[str, str]) -> Optional[str]:
    """None when threadsum's training and inference modules import in a fresh interpreter, else the error."""
    r = subprocess.run([sys.executable, "-c", IMPORT_PROBE], env=env, capture_output=True, text=True, cwd=REPO)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]


def check_dependencies(env: dict[str, str]) -> dict[str, Any]:
    """Make threadsum importable here, installing missing pure dependencies from a carried wheel folder.

    Exits with a message naming what is missing and how to carry it when that is not possible.
    """
    import importlib.util

    missing = [pip for mod, pip in REQUIRED.items() if importlib.util.find_spec(mod) is None]
    error = _probe_imports(env) if not missing else "missing: " + ", ".join(missing)
    info: dict[str, Any] = {"missing_at_start": missing, "installed_from_wheels": []}
    if error is None:
        return info
    wheels = Path(os.environ.get("BENCH_WHEELS") or REPO / ".anchor" / "wheels")
    fixable = [m for m in missing if m in FIXABLE]
    if wheels.is_dir() and len(fixable) == len(missing):
        # --target keeps the machine's site-packages untouched; the folder goes first on PYTHONPATH
        target = wheels / "site"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--find-links",
               str(wheels), "--target", str(target)]
        have = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels.glob("*.whl")}
        carried = [w for w in WHEEL_STACK if w in have]
        # typing-extensions only if the machine's is too old
        for stack in ([w for w in carried if w != "typing-extensions"], carried):
            r = subprocess.run(cmd + stack, capture_output=True, text=True)
            env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
            sys.path.insert(0, str(target))
            error = _probe_imports(env) if r.returncode == 0 else r.stderr.strip()[-500:]
            info["installed_from_wheels"] = stack
            if error is None:
                return info
    print("\nbench_gpu.py cannot import threadsum here: " + error, file=sys.stderr)
    print("Needed: torch, transformers, tokenizers, accelerate, peft, safetensors, numpy (the GPU image has them) and "
          "threadsum's own pydantic>=2.7 and pyyaml.\nFix: carry wheels for the missing ones, e.g. on a machine with "
          "network:\n  pip download --only-binary=:all: --no-deps --python-version 3.12 "
          "--platform manylinux2014_x86_64 -d .anchor/wheels pydantic pydantic-core annotated-types "
          "typing-inspection typing-extensions nicknames nameparser text2num dateparser pytz tzlocal\n(one pydantic-core wheel per Python version; see bench/README.md), "
          "then run again with carry ['.anchor'] (or set BENCH_WHEELS=folder).", file=sys.stderr)
    sys.exit(3)


# ------------------------------------------------------------------------------------- children
def _metrics_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written when the process stopped
    return out


def summarize_metrics(records: list[dict[str, Any]], real_tokens_epoch: int) -> dict[str, Any]:
    """Throughput from the loop's per-step records (cumulative real_tokens and train_seconds)."""
    steps = [r for r in records if "event" not in r and "train_seconds" in r and "real_tokens" in r]
    r: dict[str, Any] = {"steps": len(steps), "oom_events": sum(1 for x in records if x.get("event") == "oom")}
    if not steps:
        return r
    last = steps[-1]
    r["all_tokens_per_s"] = round(last["real_tokens"] / max(last["train_seconds"], 1e-9))
    w = min(WARMUP_STEPS, len(steps) - 1)
    if w >= 1:
        first = steps[w - 1]
        dt = last["train_seconds"] - first["train_seconds"]
        r["tokens_per_s"] = round((last["real_tokens"] - first["real_tokens"]) / max(dt, 1e-9))
        r["steady_steps"] = len(steps) - w
    else:
        r["tokens_per_s"] = r["all_tokens_per_s"]
        r["steady_steps"] = len(steps)
    # the loop logs per-window rates; with log_every_steps=1 a window is one step
    prev_t, real, padded = 0.0, 0.0, 0.0
    for x in steps:
        dt = x["train_seconds"] - prev_t
        prev_t = x["train_seconds"]
        real += x.get("tokens_per_s", 0) * dt
        padded += x.get("padded_tokens_per_s", 0) * dt
    r["padding_fraction"] = round(1 - real / padded, 3) if padded else None
    r["train_seconds"] = last["train_seconds"]
    r["real_tokens"] = last["real_tokens"]
    r["peak_mem_gb_loop"] = round(max(x.get("peak_mem_gb", 0) for x in steps), 2)
    r["epoch_s_projected"] = round(real_tokens_epoch / r["tokens_per_s"], 1) if r.get("tokens_per_s") else None
    r["final_loss"] = last.get("loss")
    return r


def _cuda_memory() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        import resource

        return {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    return {"max_allocated_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "max_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def _allocator_state() -> dict[str, Any]:
    """Whether expandable segments are really in effect (PYTORCH_CUDA_ALLOC_CONF is read once, when CUDA
    initialises: a value set later is silently ignored), and how many segments the allocator holds."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    out: dict[str, Any] = {}
    try:
        segments = torch.cuda.memory._snapshot()["segments"]
        flags = [bool(s["is_expandable"]) for s in segments if "is_expandable" in s]
        out["expandable_in_effect"] = any(flags) if flags else None
        out["allocator_segments"] = len(segments)
    except Exception as exc:  # noqa: BLE001 - private API: informative only
        out["expandable_in_effect"] = None
        out["allocator_state_error"] = repr(exc)[:200]
    try:
        out["allocator_settings"] = torch._C._accelerator_getAllocatorSettings()
    except Exception:  # noqa: BLE001 - absent in older torch
        pass
    return out


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


class _MemorySplit:
    """What the loop reads from a split (len, rows by index list, Arrow token columns), without ``datasets``."""

    def __init__(self, input_ids: list[list[int]], labels: list[list[int]]):
        self.input_ids, self.labels = input_ids, labels
        try:
            import pyarrow as pa

            self.data = pa.table({"input_ids": input_ids, "labels": labels})
        except ImportError:
            self.data = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, indices):
        if isinstance(indices, int):
            return {"input_ids": self.input_ids[indices], "labels": self.labels[indices]}
        idx = list(indices)
        return {"input_ids": [self.input_ids[i] for i in idx], "labels": [self.labels[i] for i in idx]}


def _serve_splits_from_memory(work: Path) -> None:
    """Prepared.datasets() without the ``datasets`` package: the same rows, from tokens.json, in memory."""
    import numpy as np

    from threadsum.data import prepared as prepared_mod
    from threadsum.train import loop

    tokens = json.loads((work / "tokens.json").read_text())
    split = _MemorySplit(tokens["input_ids"], tokens["labels"])
    prepared_mod.Prepared.datasets = lambda self: {"train": split}
    if split.data is None:  # the loop reads token lengths from Arrow columns; pyarrow is missing too
        real = loop.token_lengths
        loop.token_lengths = lambda ds: (
            (np.array([len(x) for x in ds.input_ids], dtype=np.int64), np.array([len(y) for y in ds.labels], dtype=np.int64))
            if isinstance(ds, _MemorySplit) else real(ds))


def child_train(spec: dict[str, Any], work: Path, result_path: Path) -> None:
    """One training variant: threadsum.train.loop.train(cfg) on the prepared folder, stopped at its cap."""
    from threadsum.config import config_from_dict
    from threadsum.train.loop import train

    if spec["data_path"] == "memory":
        _serve_splits_from_memory(work)
    out_dir = work / "runs" / spec["name"]
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = config_from_dict({
        "name": f"bench-gpu-{spec['name']}",
        "data": {"prepared_dir": str(work / "prepared"), "max_source_tokens": MAX_SRC, "max_target_tokens": MAX_TGT},
        "model": {"init": "random", "name_or_path": None, "attn_implementation": "sdpa",
                  "gradient_checkpointing": bool(spec.get("gc")),
                  "tiny": dict(DIMS),
                  "lora": {"enabled": bool(spec.get("lora")), "r": 16, "alpha": 32}},
        "train": {"output_dir": str(out_dir), "seed": 0, "epochs": 1, "max_steps": 0,
                  "max_tokens": spec["max_tokens"], "batch_tokens": spec["max_tokens"],  # accumulation 1, like the anchor
                  "max_batch_size": spec["max_batch_size"], "pad_to_multiple_of": spec["pad_to"],
                  "precision": "auto" if TINY else "bf16", "lr": 2e-4 if spec.get("lora") else 5e-5,
                  "warmup_steps": 10, "eval_every_steps": 0, "checkpoint_every_steps": 0,
                  "checkpoint_every_minutes": 0, "keep_last": 1, "resume": "none", "log_every_steps": 1,
                  "loss_chunk_tokens": spec.get("loss_chunk", 1024), "compile": bool(spec.get("compile"))},
        "track": {"tracking_uri": "none"},
    }, origin=f"bench_gpu {spec['name']}")
    metrics = out_dir / "metrics.jsonl"
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    state = {"stopped_by": None}

    def result(status: str, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        r = {"status": status, "stopped_by": state["stopped_by"], **times, **_cuda_memory(), **_allocator_state(),
             "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), "wall_s": round(time.perf_counter() - t0, 1)}
        r.update(extra or {})
        return r

    def watch() -> None:
        # the cap counts training time only: from the first step's record to now
        first, seen = None, 0
        while True:
            time.sleep(0.25)
            steps = [x for x in _metrics_records(metrics) if "event" not in x]
            if len(steps) > seen:
                seen = len(steps)
                times["last_step_seen_s"] = round(time.perf_counter() - t0, 2)
            if steps and first is None:
                first = time.perf_counter()
                # imports, model init, moving it to the device: up to the first step's start
                times["setup_s"] = round(first - t0 - steps[0].get("train_seconds", 0), 1)
            if first is None:
                continue
            over_time = time.perf_counter() - first >= spec["cap_s"]
            over_steps = bool(spec.get("cap_steps")) and len(steps) >= spec["cap_steps"]
            # the epoch is done: the rest (final checkpoint, export) only matters for the main variant
            epoch_done = not spec.get("finish") and len(steps) >= spec.get("epoch_steps", math.inf)
            if not (over_time or over_steps or epoch_done):
                continue
            state["stopped_by"] = "epoch_end" if epoch_done else "cap_steps" if over_steps else "cap_s"
            if spec.get("finish"):
                times["stop_signal_at_s"] = round(time.perf_counter() - t0, 1)
                os.kill(os.getpid(), signal.SIGTERM)  # the loop finishes the step, checkpoints, returns
                return
            # the numbers are in metrics.jsonl; checkpoint and export would only cost device time
            _write_json(result_path, result("capped"))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    summary = train(cfg)
    end = time.perf_counter()
    if "stop_signal_at_s" in times:
        times["stop_to_return_s"] = round(end - t0 - times["stop_signal_at_s"], 1)
    elif "last_step_seen_s" in times:
        # the final checkpoint (+ export of model/ when the epoch ended) after the last step, +-0.25 s
        times["finish_s"] = round(end - t0 - times["last_step_seen_s"], 1)
    keep = ("status", "exit_code", "real_tokens_per_s", "padding_fraction", "peak_mem_gb", "train_seconds", "oom_events",
            "compute_max_tokens", "precision", "n_params", "n_trainable_params", "steps")
    _write_json(result_path, result(str(summary.get("status")), {"loop_summary": {k: summary.get(k) for k in keep}}))


def _flop_check(model, device, dims: dict[str, Any]) -> dict[str, Any]:
    """torch's FLOP counter on one forward+backward of the real model vs forward_flops() (unpadded, batch 1)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    ls, lt = (48, 16) if TINY else (512, 96)
    ids = torch.randint(5, dims["vocab_size"], (1, ls), device=device)
    dec = torch.randint(5, dims["vocab_size"], (1, lt), device=device)
    was_training = model.training
    model.train()
    counter = FlopCounterMode(display=False)
    # the math backend is plain bmm, which the counter sees on every device (CPU's fused kernel it does not)
    with sdpa_kernel([SDPBackend.MATH]), counter:
        logits = model(input_ids=ids, decoder_input_ids=dec).logits
        F.cross_entropy(logits.float().view(-1, logits.shape[-1]), dec.view(-1)).backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    counted = counter.get_total_flops()
    formula = 3 * forward_flops(ls, lt, dims)
    return {"shape": [ls, lt], "counted_G": round(counted / 1e9, 3), "formula_G": round(formula / 1e9, 3),
            "ratio": round(counted / formula, 4)}


def child_generate(spec: dict[str, Any], work: Path, result_path: Path) -> None:
    """Beam search through Summarizer.from_pretrained(...).generate, batch 32: threadsum's and the anchor's settings."""
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    from threadsum.config import config_from_dict
    from threadsum.inference.summarizer import Summarizer, quiet_loading

    t0 = time.perf_counter()
    cuda = torch.cuda.is_available()
    dtype = "bf16" if cuda else "fp32"
    tok = AutoTokenizer.from_pretrained(str(work / "prepared" / "tokenizer"))
    d = DIMS
    bart = BartConfig(vocab_size=len(tok), d_model=d["d_model"], encoder_layers=d["encoder_layers"],
                      decoder_layers=d["decoder_layers"], encoder_attention_heads=d["attention_heads"],
                      decoder_attention_heads=d["attention_heads"], encoder_ffn_dim=d["ffn_dim"],
                      decoder_ffn_dim=d["ffn_dim"], max_position_embeddings=d["max_position_embeddings"],
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model_dir = work / "gen-model"
    model = BartForConditionalGeneration._from_config(bart, attn_implementation="sdpa")
    model.to(torch.bfloat16 if cuda else torch.float32).save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    del model
    quiet_loading()
    summ = Summarizer.from_pretrained(str(model_dir), device="auto", dtype=dtype)
    setup_s = round(time.perf_counter() - t0, 1)
    out: dict[str, Any] = {"status": "finished", "setup_s": setup_s, "device": str(summ.device), "dtype": dtype}
    try:
        out["flop_check"] = _flop_check(summ.model, summ.device, d)
    except Exception as exc:  # noqa: BLE001 - the check is informative, generation still runs
        out["flop_check"] = {"error": repr(exc)[:300]}
    summ.model.eval()

    src, _ = anchor_examples()
    batch = 4 if TINY else 32
    new_tokens = 12 if TINY else 128
    texts = [" ".join(f"t{i}" for i in ids) for ids in src[: batch * (3 if TINY else 5)]]
    warm, timed = texts[:batch], texts[batch:]
    settings = {
        # gpu_anchor.py's: every summary exactly max_new_tokens long, no n-gram blocking
        "anchor_settings": {"num_beams": 4, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens,
                            "no_repeat_ngram_size": 0, "batch_size": batch},
        # what `threadsum summarize`/serve do: the config's generation section (4 beams, n-gram blocking)
        "threadsum_settings": {"num_beams": 4, "max_new_tokens": new_tokens, "batch_size": batch},
    }
    runs = []
    budget_end = time.perf_counter() + spec["cap_s"]
    for name, gen in settings.items():
        summ.cfg = config_from_dict({"data": {"max_source_tokens": MAX_SRC}, "eval": {"generation": gen}})
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            summ.generate(warm, batch_size=batch)  # first call pays for kernel selection and allocator growth
            n, words, dt = 0, 0, 0.0
            for i in range(0, len(timed), batch):
                if time.perf_counter() > budget_end and n:
                    break
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                summaries = summ.generate(timed[i:i + batch], batch_size=batch)
                if cuda:
                    torch.cuda.synchronize()
                dt += time.perf_counter() - t
                n += len(summaries)
                # one word per token with this tokenizer; special tokens (the forced final </s>) are not counted
                words += sum(len(s.split()) for s in summaries)
            runs.append({"name": f"{spec['name']}/{name}", "threads_per_s": round(n / dt, 2), "threads": n,
                         "mean_new_tokens": round(words / max(n, 1), 1), "settings": gen, **_cuda_memory()})
        except Exception as exc:  # noqa: BLE001 - recorded, the other setting still runs
            traceback.print_exc()
            runs.append({"name": f"{spec['name']}/{name}", "error": f"{type(exc).__name__}: {exc}"[:400]})
    runs += _generate_ctranslate2(spec, model_dir, warm, timed, batch, settings["anchor_settings"], budget_end)
    out["runs"] = runs
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    _write_json(result_path, out)


def _generate_ctranslate2(spec: dict[str, Any], model_dir: Path, warm: list[str], timed: list[str], batch: int,
                          gen: dict[str, Any], budget_end: float) -> list[dict[str, Any]]:
    """The same model through ``threadsum export`` (float16 on CUDA, int8 on CPU) and the CTranslate2
    engine, with the anchor's settings: the fast engine's threads/s beside torch's. Skipped (and said
    so) when ctranslate2 is not installed."""
    import importlib.util

    import torch

    from threadsum.config import config_from_dict
    from threadsum.inference.export import export_model
    from threadsum.inference.summarizer import Summarizer

    name = f"{spec['name']}/ctranslate2_anchor_settings"
    if importlib.util.find_spec("ctranslate2") is None:
        return [{"name": name, "error": "ctranslate2 is not installed (pip install 'threadsum[fast]')"}]
    quant = "float16" if torch.cuda.is_available() else "int8"
    try:
        ct2_dir = export_model(str(model_dir), str(model_dir.parent / f"gen-model-ct2-{quant}"), "ctranslate2",
                               quant, force=True)
        summ = Summarizer.from_pretrained(str(ct2_dir), device="auto")
        summ.cfg = config_from_dict({"data": {"max_source_tokens": MAX_SRC}, "eval": {"generation": gen}})
        summ.generate(warm, batch_size=batch)
        n, words, dt = 0, 0, 0.0
        for i in range(0, len(timed), batch):
            if time.perf_counter() > budget_end + 30 and n:
                break
            t = time.perf_counter()
            summaries = summ.generate(timed[i:i + batch], batch_size=batch)
            dt += time.perf_counter() - t
            n += len(summaries)
            words += sum(len(s.split()) for s in summaries)
        return [{"name": name, "threads_per_s": round(n / dt, 2), "threads": n, "compute_type": quant,
                 "mean_new_tokens": round(words / max(n, 1), 1), "settings": gen}]
    except Exception as exc:  # noqa: BLE001 - recorded; the torch rows stand on their own
        traceback.print_exc()
        return [{"name": name, "error": f"{type(exc).__name__}: {exc}"[:400]}]


def child_matmul(spec: dict[str, Any], work: Path, result_path: Path) -> None:
    """The ceiling for MFU: a large bf16 matmul (as gpu_anchor.py measures it)."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    n, iters = (8192, 20) if dev == "cuda" else (512, 5)
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    if dev == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    if dev == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / iters
    tflops = 2 * n**3 / dt / 1e12
    info = {"status": "finished", "bf16_matmul_tflops": float(f"{tflops:.4g}"), "n": n, "device": dev,
            "torch": torch.__version__, "cuda": torch.version.cuda}
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gb=round(p.total_memory / 2**30, 1),
                    tf32_matmul_default=torch.backends.cuda.matmul.allow_tf32)
    _write_json(result_path, info)


def child_main(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    spec = json.loads(args.spec)
    fn = {"train": child_train, "generate": child_generate, "matmul": child_matmul}[spec["kind"]]
    fn(spec, Path(args.work), Path(args.result))
    return 0


# ---------------------------------------------------------------------------------------- parent
def run_child(spec: dict[str, Any], work: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run one variant in a fresh interpreter; whatever happens, return a record (with 'error' on failure)."""
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result_path = work / f"result-{spec['name']}.json"
    result_path.unlink(missing_ok=True)
    child_env = dict(env)
    if spec.get("alloc_conf"):
        child_env["PYTORCH_CUDA_ALLOC_CONF"] = spec["alloc_conf"]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--spec", json.dumps(spec), "--work", str(work),
           "--result", str(result_path)]
    t = time.perf_counter()
    with open(logs / f"{spec['name']}.log", "w") as log_fh:
        proc = subprocess.Popen(cmd, env=child_env, stdout=log_fh, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: nothing else is in this group
            proc.wait()
            rc = None
    rec: dict[str, Any] = {"name": spec["name"], "kind": spec["kind"], "child_wall_s": round(time.perf_counter() - t, 1)}
    if result_path.exists():
        rec.update(json.loads(result_path.read_text()))
    if rc is None:
        rec["error"] = f"killed after {timeout:.0f} s (time limit of this variant)"
    elif rc != 0:
        tail = (logs / f"{spec['name']}.log").read_text(errors="replace").strip().splitlines()[-6:]
        rec["error"] = f"exit code {rc}: " + " | ".join(tail)[-600:]
    if spec["kind"] == "train":
        run_dir = work / "runs" / spec["name"]
        records = _metrics_records(run_dir / "metrics.jsonl")
        if records:
            (OUT / "logs" / f"{spec['name']}.metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))
        rec.update(summarize_metrics(records, spec["real_tokens_epoch"]))
        rec["epoch_steps"] = spec["epoch_steps"]
        if rec.get("steps", 0) >= spec["epoch_steps"]:
            rec["epoch_s_measured"] = rec.get("train_seconds")  # the loop's clock over the whole epoch
        for k in ("max_tokens", "gc", "lora", "alloc_conf", "cap_s"):
            if k in spec:
                rec.setdefault(k, spec[k])
        shutil.rmtree(run_dir, ignore_errors=True)  # a BART-large checkpoint is ~5 GB
    return rec


def pick_workdir() -> Path:
    if os.environ.get("WORK"):
        p = Path(os.environ["WORK"])
        p.mkdir(parents=True, exist_ok=True)
        return p
    base = None
    try:  # checkpoints of BART-large are ~5 GB: RAM-backed /dev/shm writes them in a second or two
        if not TINY and shutil.disk_usage("/dev/shm").free > 24 * 2**30:
            base = "/dev/shm"
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="threadsum-bench-gpu-", dir=base))


def anchor_lookup(anchor: dict[str, Any], names: list[str], field: str) -> Optional[tuple[str, float]]:
    for want in names:
        for r in anchor.get("runs", []):
            if r.get("name") == want and isinstance(r.get(field), (int, float)):
                return want, float(r[field])
    return None


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        if v and abs(v) < 0.01:
            return f"{v:.3g}"
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(results: dict[str, Any]) -> str:
    env, data = results["env"], results["data"]
    lines = [f"## bench_gpu.py · {env.get('gpu') or env.get('device')} · torch {env.get('torch')} · "
             f"transformers {env.get('transformers')}" + (" · TINY (CPU smoke test)" if TINY else ""), "",
             f"Data: {data['n']:,} threads, {data['real_tokens']:,} real tokens per epoch, source median "
             f"{data['src_median']} (p90 {data['src_p90']}, {100 * data['frac_src_at_max']:.0f}% at {MAX_SRC}), "
             f"target median {data['tgt_median']}; read through the {data['data_path']} path. "
             f"bf16 matmul ceiling: {_fmt(env.get('bf16_matmul_tflops'))} TFLOP/s. "
             f"Model FLOPs per real token: {_fmt(results['flops']['full_G_per_token'])} G (full), "
             f"{_fmt(results['flops']['lora_G_per_token'])} G (LoRA). Anchor results: "
             f"{results.get('anchor_file') or 'none found (run gpu_anchor.py first in the same command)'}.", "",
             "| variant | tokens/s (steady) | vs anchor | MFU | peak alloc GB | peak reserved GB | expandable segments | "
             "epoch s (proj.) | steps | padding | OOM events | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        if r["kind"] != "train":
            continue
        notes = r.get("error") or r.get("skipped") or (f"stopped by {r['stopped_by']}" if r.get("stopped_by") else r.get("status", ""))
        if r.get("epoch_s_measured") is not None:
            notes += f"; full epoch measured: {r['epoch_s_measured']:.1f} s"
        if r.get("stop_to_return_s") is not None:
            notes += f"; SIGTERM to return (checkpoint) {r['stop_to_return_s']} s"
        if r.get("finish_s") is not None:
            notes += f"; final checkpoint + export {r['finish_s']} s"
        if r.get("anchor"):
            notes += f"; anchor: {r['anchor']['name']} {r['anchor']['value']:,.0f}"
        lines.append(
            f"| {r['name']} | {_fmt(r.get('tokens_per_s'))} | {_fmt(r.get('vs_anchor'))}{'x' if r.get('vs_anchor') else ''} | {_fmt(r.get('mfu'), pct=True)} | "
            f"{_fmt(r.get('max_allocated_gb', r.get('peak_rss_gb')))} | {_fmt(r.get('max_reserved_gb'))} | "
            f"{_fmt(r.get('expandable_in_effect'))} | {_fmt(r.get('epoch_s_projected'))} | {_fmt(r.get('steps'))} | {_fmt(r.get('padding_fraction'), pct=True)} | "
            f"{_fmt(r.get('oom_events'))} | {notes} |")
    gens = [g for r in results["runs"] if r["kind"] == "generate" for g in r.get("runs", [])]
    gens += [r for r in results["runs"] if r["kind"] == "generate" and not r.get("runs")]
    if gens:
        lines += ["", "| generation | threads/s | vs anchor | mean new tokens | peak alloc GB | notes |", "|---|---|---|---|---|---|"]
        for g in gens:
            lines.append(f"| {g['name']} | {_fmt(g.get('threads_per_s'))} | {_fmt(g.get('vs_anchor'))}{'x' if g.get('vs_anchor') else ''} | "
                         f"{_fmt(g.get('mean_new_tokens'))} | {_fmt(g.get('max_allocated_gb', g.get('peak_rss_gb')))} | "
                         f"{g.get('error') or g.get('skipped') or ''} |")
    fc = results.get("flop_check")
    if fc:
        lines += ["", f"FLOP formula check (torch flop counter / formula, one thread {fc.get('shape')}): {fc.get('ratio', fc)}"]
    lines += ["", f"Goals: full fine-tune >= {GOALS['full_tokens_per_s']:,} tokens/s (~{100 * GOALS['full_mfu']:.0f}% MFU), "
              f"epoch < {GOALS['epoch_s']:.0f} s; LoRA >= {GOALS['lora_tokens_per_s']:,} tokens/s; generation >= "
              f"{GOALS['generate_threads_per_s']:.0f} threads/s.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args)

    t_start = time.perf_counter()
    budget = float(os.environ.get("BUDGET_S") or (115 if TINY else 360))
    OUT.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO / "src"), env.get("PYTHONPATH", "")] if p)
    sys.path.insert(0, str(REPO / "src"))
    deps = check_dependencies(env)
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]

    import importlib.util

    mode = os.environ.get("BENCH_DATA", "auto")
    has_datasets = importlib.util.find_spec("datasets") is not None
    if mode == "auto":
        mode = "disk" if has_datasets else "memory"
    if mode == "disk" and not has_datasets:
        print("BENCH_DATA=disk needs the 'datasets' package; use BENCH_DATA=memory (or auto)", file=sys.stderr)
        return 2

    work = pick_workdir()
    results: dict[str, Any] = {"env": {}, "data": {}, "flops": {}, "runs": [], "deps": deps}
    try:
        import numpy
        import transformers

        results["env"] = {"python": platform.python_version(), "transformers": transformers.__version__,
                          "numpy": numpy.__version__, "machine": platform.machine(), "tiny": TINY,
                          "work": str(work), "budget_s": budget}
        for mod in ("accelerate", "peft", "datasets", "pyarrow", "pydantic"):
            try:
                results["env"][mod] = __import__(mod).__version__
            except Exception:  # noqa: BLE001 - absent or broken: recorded as such
                results["env"][mod] = None
        try:
            results["env"]["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                                          capture_output=True, text=True).stdout.strip() or None
        except OSError:
            results["env"]["git_commit"] = None
        t = time.perf_counter()
        results["data"] = write_workdir(work, mode)
        results["data"]["write_s"] = round(time.perf_counter() - t, 1)
        results["flops"] = {"full_G_per_token": round(train_flops_per_real_token(False) / 1e9, 4),
                            "lora_G_per_token": round(train_flops_per_real_token(True) / 1e9, 4)}
        print("data", json.dumps(results["data"]), "\nflops", json.dumps(results["flops"]), flush=True)

        anchor_path = OUT / "anchor.json"
        anchor = json.loads(anchor_path.read_text()) if anchor_path.exists() else {}
        results["anchor_file"] = str(anchor_path) if anchor else None

        only = [x for x in os.environ.get("ONLY", "").split(",") if x]
        known = {v["name"] for v in VARIANTS}
        unknown = [x for x in only if x not in known]
        if unknown:
            print(f"ONLY names unknown variants {unknown}; known: {', '.join(sorted(known))}", file=sys.stderr)
            return 2
        plan = [v for v in VARIANTS if (v["name"] in only if only else (not TINY or v["name"] in TINY_VARIANTS))]
        max_batch_size, pad_to = 1024, 8
        for v in plan:
            spec = dict(v, data_path=mode, max_batch_size=max_batch_size, pad_to=pad_to,
                        real_tokens_epoch=results["data"]["real_tokens"])
            if TINY:  # a few steps per variant; the main one still goes through SIGTERM -> checkpoint
                spec["cap_s"], spec["cap_steps"] = 10, 4
            if v["kind"] == "train":
                spec["epoch_steps"] = epoch_steps(v["max_tokens"], max_batch_size, pad_to)
            main = next((r for r in results["runs"] if r["name"] == "full_bf16_16k"), {})
            duplicate = {"full_bf16_16k_no_expandable": False, "full_bf16_16k_expandable_env": True}.get(v["name"])
            if duplicate is not None and main.get("expandable_in_effect") is duplicate:
                results["runs"].append({"name": v["name"], "kind": v["kind"], "skipped": (
                    f"same allocator setting as full_bf16_16k (expandable segments in effect: {duplicate})")})
                continue
            left = budget - (time.perf_counter() - t_start)
            need = spec.get("cap_s", 10) + CHILD_OVERHEAD_S
            if left < need:
                results["runs"].append({"name": v["name"], "kind": v["kind"],
                                        "skipped": f"out of time budget ({left:.0f} s left, needs ~{need} s; BUDGET_S={budget:.0f})"})
                print(f"-- {v['name']}: skipped ({left:.0f} s left)", flush=True)
                continue
            print(f"-- {v['name']} ...", flush=True)
            timeout = min(spec.get("cap_s", 10) + (90 if TINY else 180), max(30.0, left + 30))
            try:
                rec = run_child(spec, work, env, timeout)
            except Exception as exc:  # noqa: BLE001 - recorded, the next variant runs
                traceback.print_exc()
                rec = {"name": v["name"], "kind": v["kind"], "error": f"{type(exc).__name__}: {exc}"[:400]}
            if rec["kind"] == "matmul" and rec.get("bf16_matmul_tflops"):
                results["env"].update({k: rec[k] for k in ("bf16_matmul_tflops", "gpu", "gpu_memory_gb", "torch", "cuda", "device")
                                       if k in rec})
            peak = results["env"].get("bf16_matmul_tflops")
            if rec["kind"] == "train" and rec.get("tokens_per_s"):
                per_token = results["flops"]["lora_G_per_token" if v.get("lora") else "full_G_per_token"] * 1e9
                rec["mfu"] = round(rec["tokens_per_s"] * per_token / (peak * 1e12), 4) if peak else None
                match = anchor_lookup(anchor, ANCHOR_MATCH.get(v["name"], []), "tokens_per_s")
                if match:
                    rec["anchor"] = {"name": match[0], "value": match[1]}
                    rec["vs_anchor"] = round(rec["tokens_per_s"] / match[1], 2)
            if rec["kind"] == "generate":
                if rec.get("flop_check"):
                    results["flop_check"] = rec["flop_check"]
                for g in rec.get("runs", []):
                    match = anchor_lookup(anchor, ANCHOR_MATCH.get(g["name"], []), "threads_per_s")
                    if match and g.get("threads_per_s"):
                        g["anchor"] = {"name": match[0], "value": match[1]}
                        g["vs_anchor"] = round(g["threads_per_s"] / match[1], 2)
            results["runs"].append(rec)
            brief = {k: rec.get(k) for k in ("tokens_per_s", "mfu", "max_allocated_gb", "max_reserved_gb", "steps",
                                             "oom_events", "bf16_matmul_tflops", "child_wall_s", "error") if rec.get(k) is not None}
            if rec.get("runs"):
                brief["generate"] = {g["name"]: g.get("threads_per_s", g.get("error")) for g in rec["runs"]}
            print(f"   {json.dumps(brief)}", flush=True)
            _write_json(OUT / "bench_gpu.json", results)
    finally:
        results["env"]["total_wall_s"] = round(time.perf_counter() - t_start, 1)
        _write_json(OUT / "bench_gpu.json", results)
        if os.environ.get("KEEP_WORK") != "1":
            shutil.rmtree(work, ignore_errors=True)
    table = markdown(results)
    (OUT / "bench_gpu.md").write_text(table)
    print("\n" + table, flush=True)
    failed = [r["name"] for r in results["runs"] if r.get("error")]
    if failed:
        print(f"variants with errors: {', '.join(failed)} (details in {OUT / 'bench_gpu.json'} and {OUT / 'logs'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
