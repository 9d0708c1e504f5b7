"""CPU training throughput: threadsum against what users run today, and the levers of threadsum's own loop.

    python bench/bench_train_cpu.py --modes defaults --shapes base,large --reps 3
    python bench/bench_train_cpu.py --modes full,lora,bf16 --reps 3
    python bench/bench_train_cpu.py --modes compile --compile-steps 300

Data (every mode): random token ids with the Kaggle corpus's email-like lengths at BART's limits,
1,024 source / 256 target tokens (``threadsum.train.memory.kaggle_like_lengths``: the generator whose
4,167 threads sum to the planner's 3.05M tokens), a word-level tokenizer of BART's 50,265 ids, and
one random-init model folder per shape that every framework loads (identical weights). Each run is its
own subprocess (peak RSS = its own ru_maxrss); runs alternate within a repetition, ``--reps``
repetitions, and medians of the per-repetition numbers are reported, so a slow period of the shared
machine hits every side. Every record names the CPU, its bf16/AMX/VNNI flags and the load average.

Modes:

- ``defaults``: one epoch over the same ``--threads-base`` (``--threads-large``) threads, three recipes:
  threadsum's defaults (``train.precision=auto``, token-budget micro-batches of ``train.max_tokens``,
  chunked loss; ``train.batch_tokens`` set so it takes the Trainer's number of optimizer steps);
  ``Seq2SeqTrainer``'s defaults (fp32, batch 8, random order, ``DataCollatorForSeq2Seq`` dynamic
  padding to the longest thread of a batch; BART-base only: batch 8 at BART-large does not fit 23 GiB);
  and the seed team's recipe (the Trainer, batch 1, inputs padded to 1,024 and targets to 256, fp32,
  gradient accumulation 8: the same effective batch). Reported: real (non-pad) tokens/s, and the
  projected hours of one epoch of the Kaggle corpus's 3,334 training threads (2.44M real tokens):
  real tokens / rate for threadsum and the Trainer's defaults, 3,334 x seconds per thread for the seed
  recipe (every thread costs the same padded 1,280 tokens).
- ``full`` / ``lora``: equal work at ``--precision`` (fp32 unless given): the Trainer gets threadsum's
  token-budget plan as its batch sampler, so both train the same micro-batches in the same order
  (real token counts are checked); LoRA with the same peft settings on both sides.
- ``bf16``: ``full`` with both sides in bf16 autocast; only where the CPU has native bf16
  (avx512_bf16 or amx_bf16), otherwise the record says it does not apply (emulated bf16 here is far
  slower than fp32, so no bf16 goal is claimed on such a CPU).
- ``compile``: threadsum eager against ``train.compile=true`` (inductor, bucketed shapes) at a small
  shape over ``--compile-steps`` optimizer steps, the same bucket ladder for both; reports the total
  time, the steady-state step time after every bucket pair was seen, and the break-even step count.

Goals (issue: CPU bf16), checked only on a CPU with native bf16: defaults >= 2.0x the Trainer's
defaults at BART-base shape; equal work in bf16 >= 1.0x; seed recipe >= 4x longer projected epoch at
BART-large shape. Where bf16 is emulated the record says so and the figures are fp32.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

VOCAB = 50265
SHAPES = {
    "base": dict(d_model=768, layers=6, heads=12, ffn=3072),
    "large": dict(d_model=1024, layers=12, heads=16, ffn=4096),
    # the compile mode's shape: small enough that a long run fits a few minutes on 2 cores
    "small": dict(d_model=256, layers=2, heads=4, ffn=1024),
}
MAX_SRC, MAX_TGT = 1024, 256
KAGGLE_TRAIN_THREADS = 3334  # 80% of the 4,167 threads (the planner's split)
SEED_ACCUMULATION = 8  # the seed recipe's effective batch, equal to the Trainer's default batch of 8
# BART-large at threadsum's default max_tokens=4096 plans a 22.5 GiB fp32 step: more than this machine
# has; 2048 (plan: ~15 GiB) leaves room for the other jobs. BART-base keeps the default.
MAX_TOKENS = {"base": 4096, "large": 2048, "small": 2048}


# ------------------------------------------------------------------------------------------- data
def write_tokenizer(out_dir: Path) -> None:
    """Word-level tokenizer whose every id is one word 't<id>', with BART's special ids (<s>=0, <pad>=1, </s>=2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"t{i}": i for i in range(len(specials), VOCAB)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>", mask_token="<mask>").save_pretrained(str(out_dir))


def build_data(work: Path, n: int, name: str, seed: int) -> dict:
    """A prepared folder (prepared.py's contract) of ``n`` threads of Kaggle-like lengths, ids framed by <s> ... </s>."""
    import numpy as np

    from threadsum.train.memory import kaggle_like_lengths

    prepared = work / f"prepared-{name}"
    if not (prepared / "tokenized").exists():
        from datasets import Dataset, DatasetDict

        write_tokenizer(prepared / "tokenizer")
        (prepared / "threads").mkdir(parents=True, exist_ok=True)
        (prepared / "threads" / "train.jsonl").write_text("")
        src_len, tgt_len = kaggle_like_lengths(n, MAX_SRC, MAX_TGT, seed)
        rng = np.random.default_rng(seed + 1)
        src = [[0] + rng.integers(5, VOCAB, int(s) - 2).tolist() + [2] for s in src_len]
        tgt = [[0] + rng.integers(5, VOCAB, int(t) - 2).tolist() + [2] for t in tgt_len]
        ds = Dataset.from_dict({"thread_id": [f"t{i}" for i in range(n)], "input_ids": src, "labels": tgt})
        DatasetDict({"train": ds}).save_to_disk(str(prepared / "tokenized"))
        (prepared / "prepare.json").write_text(json.dumps({"counts": {"train": n}, "family": "seq2seq"}))
    from datasets import load_from_disk

    ds = load_from_disk(str(prepared / "tokenized"))["train"]
    real = sum(len(a) + len(b) for a, b in zip(ds["input_ids"], ds["labels"]))
    return {"prepared": str(prepared), "n": len(ds), "real_tokens": real}


def build_init(work: Path, shape: str) -> Path:
    """A random-init BART of ``shape`` with BART's vocabulary, saved once: every framework loads these weights."""
    init = work / f"init-{shape}"
    if (init / "config.json").exists():
        return init
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    write_tokenizer(init)
    s = SHAPES[shape]
    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=VOCAB, d_model=s["d_model"], encoder_layers=s["layers"], decoder_layers=s["layers"],
                     encoder_attention_heads=s["heads"], decoder_attention_heads=s["heads"],
                     encoder_ffn_dim=s["ffn"], decoder_ffn_dim=s["ffn"], max_position_embeddings=1024,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                     forced_eos_token_id=2)
    BartForConditionalGeneration(cfg).save_pretrained(str(init))
    PreTrainedTokenizerFast.from_pretrained(str(init))  # loadable
    return init


# --------------------------------------------------------------------------------------- configs
def threadsum_overrides(spec: dict, work: Path) -> list[str]:
    """threadsum's config of one run: its defaults except where ``spec`` says (bookkeeping aside)."""
    o = [f"data.prepared_dir={spec['prepared']}", "model.init=pretrained", f"model.name_or_path={spec['init']}",
         f"model.tokenizer={spec['init']}", f"train.output_dir={work / ('out-' + spec['name'])}", "train.resume=none",
         "train.eval_every_steps=0", "train.checkpoint_every_steps=0", "train.seed=0", "track.tracking_uri=none",
         f"train.log_every_steps={spec.get('log_every', 1000)}"]
    if spec.get("lora"):
        o.append("model.lora.enabled=true")
    for key in ("precision", "max_tokens", "batch_tokens", "max_steps", "epochs", "warmup_steps", "lr",
                "pad_buckets", "compile", "label_smoothing"):
        if key in spec:
            v = spec[key]
            o.append(f"train.{key}={json.dumps(v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else v}")
    return o + list(spec.get("variant") or [])


def plan_of(spec: dict, work: Path) -> list[list[int]]:
    """threadsum's micro-batches for the run ``spec``, in order (what its loop will draw)."""
    import numpy as np
    from datasets import load_from_disk

    from threadsum.config import load_config
    from threadsum.train.batching import TokenBudgetSampler
    from threadsum.train.compiling import pad_rule
    from threadsum.train.distributed import accumulation_steps

    cfg = load_config(None, threadsum_overrides(spec, work))
    tc = cfg.train
    ds = load_from_disk(str(Path(spec["prepared"]) / "tokenized"))["train"]
    src = np.array([len(x) for x in ds["input_ids"]])
    tgt = np.array([len(x) for x in ds["labels"]])
    acc = accumulation_steps(tc.batch_tokens, tc.max_tokens, 1)
    sampler = TokenBudgetSampler(src, tgt, tc.max_tokens, tc.max_batch_size, pad_rule(tc), tc.seed, accumulation=acc)
    steps = tc.max_steps or max(1, math.ceil(tc.epochs * sampler.steps_per_epoch()))
    plan: list[list[int]] = []
    for _ in range(steps):
        plan += [list(map(int, mb)) for mb in sampler.next_step()]
    return plan


# -------------------------------------------------------------------------------------- children
def run_threadsum(spec: dict, work: Path) -> dict:
    import torch

    from threadsum.config import load_config
    from threadsum.train.loop import train

    cfg = load_config(None, threadsum_overrides(spec, work))
    r = train(cfg)
    out = {"real_tokens": int(r["real_tokens"]), "seconds": r["train_seconds"], "steps": r["steps"],
           "precision": r["precision"], "padded_tokens": None, "torch_threads": torch.get_num_threads()}
    if spec.get("compile") is not None:  # per-step times for the compile mode, from the loop's own records
        recs = [json.loads(line) for line in (work / ("out-" + spec["name"]) / "metrics.jsonl").read_text().splitlines()]
        out["step_records"] = [{k: x.get(k) for k in ("step", "train_seconds", "compiled_graphs", "real_tokens")}
                               for x in recs if "event" not in x and "loss" in x]
    return out


def run_trainer(spec: dict, work: Path) -> dict:
    """transformers' Seq2SeqTrainer: recipe 'plan' (threadsum's micro-batches, equal work), 'defaults' or 'seed'."""
    import torch
    from datasets import load_from_disk
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
    )

    from threadsum.config import Config

    recipe = spec["recipe"]
    tok = AutoTokenizer.from_pretrained(spec["init"])
    model = AutoModelForSeq2SeqLM.from_pretrained(spec["init"], attn_implementation="sdpa")
    if spec.get("lora"):
        from peft import LoraConfig, TaskType, get_peft_model

        lc = Config().model.lora
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=lc.r, lora_alpha=lc.alpha,
                                                 lora_dropout=lc.dropout, target_modules=list(lc.target_modules)
                                                 or ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]))
    ds = load_from_disk(str(Path(spec["prepared"]) / "tokenized"))["train"].remove_columns(["thread_id"])
    counted = {"real": 0, "padded": 0}
    if recipe == "seed":
        def base(features):  # the seed team's tokenizer call: padding="max_length", 1,024 / 256, labels -100
            ids = torch.full((len(features), MAX_SRC), tok.pad_token_id)
            att = torch.zeros((len(features), MAX_SRC), dtype=torch.long)
            lab = torch.full((len(features), MAX_TGT), -100)
            for i, f in enumerate(features):
                ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
                att[i, : len(f["input_ids"])] = 1
                lab[i, : len(f["labels"])] = torch.tensor(f["labels"])
            return {"input_ids": ids, "attention_mask": att, "labels": lab}
    else:
        base = DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100,
                                      pad_to_multiple_of=Config().train.pad_to_multiple_of if recipe == "plan" else None)

    def collate(features):
        counted["real"] += sum(len(f["input_ids"]) + len(f["labels"]) for f in features)
        b = base(features)
        counted["padded"] += int(b["input_ids"].numel() + b["labels"].numel())
        return b

    plan = json.loads((work / f"plan-{spec['plan_of']}.json").read_text()) if recipe == "plan" else None

    class PlannedBatches(Seq2SeqTrainer):
        """The Trainer with threadsum's micro-batches as its batch sampler (equal work)."""

        def get_train_dataloader(self):
            return self.accelerator.prepare(DataLoader(self.train_dataset, batch_sampler=plan, collate_fn=collate,
                                                       num_workers=0))

    times = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["t0"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            times["t1"] = time.perf_counter()

    common = dict(output_dir=str(work / f"out-{spec['name']}"), save_strategy="no", report_to="none", use_cpu=True,
                  seed=0, disable_tqdm=True, logging_steps=1000)
    if recipe == "plan":  # configured well: threadsum's batches, fused AdamW, same schedule and smoothing
        targs = Seq2SeqTrainingArguments(
            **common, per_device_train_batch_size=1, gradient_accumulation_steps=spec["accumulation"],
            max_steps=spec["max_steps"], learning_rate=1e-4, warmup_steps=2, optim="adamw_torch_fused",
            label_smoothing_factor=0.1, dataloader_num_workers=0, remove_unused_columns=False,
            bf16=spec.get("precision") == "bf16")
        trainer = PlannedBatches(model=model, args=targs, train_dataset=ds, data_collator=collate, callbacks=[Clock()])
    elif recipe == "defaults":  # as a user writes it: every setting the Trainer's default, one epoch
        targs = Seq2SeqTrainingArguments(**common, num_train_epochs=1)
        trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=ds, data_collator=collate, callbacks=[Clock()])
    else:  # the seed recipe: batch 1, max_length padding, fp32, accumulation to the same effective batch
        targs = Seq2SeqTrainingArguments(**common, num_train_epochs=1, per_device_train_batch_size=1,
                                         gradient_accumulation_steps=SEED_ACCUMULATION)
        trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=ds, data_collator=collate, callbacks=[Clock()])
    trainer.train()
    return {"real_tokens": counted["real"], "padded_tokens": counted["padded"], "seconds": times["t1"] - times["t0"],
            "steps": trainer.state.global_step, "precision": "bf16" if targs.bf16 else "fp32",
            "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------- parent
def child(spec: dict, work: Path) -> dict:
    """Run one side in a fresh process; returns its result with tokens/s, peak RSS and the load average."""
    spec_path = work / f"spec-{spec['name']}.json"
    spec_path.write_text(json.dumps(spec))
    load0 = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, __file__, "--child", str(spec_path), "--work", str(work)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                               "PYTHONPATH": str(REPO / "src")})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"{spec['name']} failed")
    res = json.loads(line[-1][len("RESULT "):])
    res.update(name=spec["name"], label=spec.get("label", spec["name"]), load=[load0, os.getloadavg()[0]],
               real_tokens_per_s=res["real_tokens"] / res["seconds"])
    print(json.dumps({k: v for k, v in res.items() if k != "step_records"}), flush=True)
    return res


def header(args) -> list[str]:
    import torch

    from threadsum.devices import cpu_has_native_bf16, cpu_summary

    native = cpu_has_native_bf16()
    return [
        f"Command: `python bench/bench_train_cpu.py {' '.join(sys.argv[1:])}`", "",
        f"CPU: {cpu_summary()}. torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"Load average (1/5/15 min) at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "", ("bf16 is native here: the bf16 rows and goals apply." if native else
             "**bf16 is emulated on this CPU** (no avx512_bf16 / amx_bf16): `train.precision=auto` resolves to "
             "fp32, every figure below is fp32, the bf16 rows do not apply and no goal is claimed."), "",
    ]


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def mode_defaults(args, work: Path) -> list[str]:
    from threadsum.train.cost import KAGGLE_EPOCH_TOKENS, KAGGLE_THREADS

    kaggle_tokens = KAGGLE_EPOCH_TOKENS * KAGGLE_TRAIN_THREADS / KAGGLE_THREADS
    lines = ["## threadsum defaults vs Seq2SeqTrainer defaults vs the seed recipe", ""]
    summary = []
    for shape in args.shapes:
        n = args.threads_base if shape == "base" else args.threads_large
        data = build_data(work, n, f"defaults-{n}", seed=11)
        init = str(build_init(work, shape))
        steps = math.ceil(n / SEED_ACCUMULATION)  # the Trainer's steps (batch 8, or 1 x 8 accumulated)
        ts = {"name": f"ts-{shape}", "label": "threadsum defaults", "kind": "threadsum", "prepared": data["prepared"],
              "init": init, "max_tokens": MAX_TOKENS[shape], "batch_tokens": MAX_TOKENS[shape], "epochs": 1}
        micro = len(plan_of(ts, work))
        ts["batch_tokens"] = MAX_TOKENS[shape] * max(1, math.ceil(micro / steps))  # the Trainer's step count
        sides = [ts]
        if shape == "base":
            sides.append({"name": f"hf-defaults-{shape}", "label": "Seq2SeqTrainer defaults", "kind": "trainer",
                          "recipe": "defaults", "prepared": data["prepared"], "init": init})
        sides.append({"name": f"seed-{shape}", "label": "seed recipe (Trainer, batch 1, 1024/256 padding)",
                      "kind": "trainer", "recipe": "seed", "prepared": data["prepared"], "init": init})
        results: dict[str, list[dict]] = {s["name"]: [] for s in sides}
        for rep in range(args.reps):
            for s in sides:
                results[s["name"]].append(child(s, work))
        lines += [f"### BART-{shape} shape ({SHAPES[shape]['layers']}+{SHAPES[shape]['layers']} layers, d_model "
                  f"{SHAPES[shape]['d_model']}, vocab {VOCAB}), {n} threads ({data['real_tokens']:,} real tokens), "
                  f"one epoch, {steps} Trainer steps", "",
                  "| recipe | rep | precision | steps | real tokens | padded tokens | seconds | real tokens/s | "
                  "load avg | peak RSS GB |", "|---|---:|---|---:|---:|---:|---:|---:|---|---:|"]
        for s in sides:
            for i, r in enumerate(results[s["name"]]):
                lines.append(f"| {s['label']} | {i + 1} | {r['precision']} | {r['steps']} | {r['real_tokens']:,} | "
                             f"{r['padded_tokens'] or '-'} | {r['seconds']:.1f} | {r['real_tokens_per_s']:.0f} | "
                             f"{r['load'][0]:.1f}-{r['load'][1]:.1f} | {r['peak_rss_gb']:.2f} |")
        med = {s["name"]: _median([r["real_tokens_per_s"] for r in results[s["name"]]]) for s in sides}
        per_thread = _median([r["seconds"] / n for r in results[f"seed-{shape}"]])
        hours = {f"ts-{shape}": kaggle_tokens / med[f"ts-{shape}"] / 3600,
                 f"seed-{shape}": KAGGLE_TRAIN_THREADS * per_thread / 3600}
        if f"hf-defaults-{shape}" in med:
            hours[f"hf-defaults-{shape}"] = kaggle_tokens / med[f"hf-defaults-{shape}"] / 3600
        lines += ["", "| recipe | median real tokens/s | projected Kaggle epoch (3,334 threads) |", "|---|---:|---:|"]
        for s in sides:
            basis = (f"{KAGGLE_TRAIN_THREADS} x {per_thread:.1f} s per thread" if s.get("recipe") == "seed"
                     else f"{kaggle_tokens / 1e6:.2f}M tokens / rate")
            lines.append(f"| {s['label']} | {med[s['name']]:.0f} | {hours[s['name']]:.2f} h ({basis}) |")
        ratios_hf = [a["real_tokens_per_s"] / b["real_tokens_per_s"]
                     for a, b in zip(results[f"ts-{shape}"], results.get(f"hf-defaults-{shape}", []))]
        ratios_seed = [(b["seconds"] / n * KAGGLE_TRAIN_THREADS) / (kaggle_tokens / a["real_tokens_per_s"])
                       for a, b in zip(results[f"ts-{shape}"], results[f"seed-{shape}"])]
        if ratios_hf:
            summary.append(f"BART-{shape}: threadsum defaults vs Trainer defaults, real tokens/s (median of "
                           f"{len(ratios_hf)} per-repetition ratios): {_median(ratios_hf):.2f}x "
                           f"({', '.join(f'{x:.2f}' for x in ratios_hf)})")
        summary.append(f"BART-{shape}: seed recipe epoch / threadsum defaults epoch (median of {len(ratios_seed)}): "
                       f"{_median(ratios_seed):.2f}x shorter with threadsum ({', '.join(f'{x:.2f}' for x in ratios_seed)}); "
                       f"projected {hours[f'seed-{shape}']:.1f} h vs {hours[f'ts-{shape}']:.1f} h")
        lines.append("")
    return lines + summary + [""]


def mode_equal(args, work: Path, mode: str) -> list[str]:
    from threadsum.devices import cpu_has_native_bf16

    precision = "bf16" if mode == "bf16" else args.precision
    title = {"full": "full fine-tune", "lora": "LoRA", "bf16": "full fine-tune, both bf16"}[mode]
    if precision == "bf16" and not cpu_has_native_bf16():
        return [f"## Equal work, {title}", "", "Not applicable on this CPU: bf16 is emulated (no avx512_bf16 / "
                "amx_bf16; a 1024x1024x1024 bf16 matmul runs ~50x slower than fp32 here), so threadsum and the "
                "Trainer would both measure the emulation. Not run.", ""]
    data = build_data(work, args.threads_equal, f"equal-{args.threads_equal}", seed=3)
    init = str(build_init(work, "base"))
    ts = {"name": f"ts-{mode}", "label": "threadsum", "kind": "threadsum", "prepared": data["prepared"], "init": init,
          "precision": precision, "max_tokens": args.max_tokens, "batch_tokens": args.max_tokens * args.accumulation,
          "max_steps": args.steps, "warmup_steps": 2, "lr": 1e-4, "lora": mode == "lora"}
    plan = plan_of(ts, work)
    (work / f"plan-{ts['name']}.json").write_text(json.dumps(plan))
    hf = {"name": f"hf-{mode}", "label": "Seq2SeqTrainer", "kind": "trainer", "recipe": "plan", "plan_of": ts["name"],
          "prepared": data["prepared"], "init": init, "accumulation": args.accumulation, "max_steps": args.steps,
          "precision": precision, "lora": mode == "lora"}
    lines = [f"## Equal work, {title} ({precision}), BART-base shape", "",
             f"The same {len(plan)} micro-batches for both ({args.accumulation} per optimizer step, {args.steps} steps; "
             f"threadsum's token-budget plan as the Trainer's batch sampler).", "",
             "| rep | threadsum tokens/s | Trainer tokens/s | ratio | real tokens (both) | load avg | peak RSS GB (ts / Trainer) |",
             "|---:|---:|---:|---:|---:|---|---|"]
    ratios, rss = [], []
    for rep in range(args.reps):
        a, b = child(ts, work), child(hf, work)
        if a["real_tokens"] != b["real_tokens"]:
            lines.append(f"| {rep + 1} | invalid: unequal work ({a['real_tokens']} vs {b['real_tokens']}) | | | | | |")
            continue
        ratios.append(a["real_tokens_per_s"] / b["real_tokens_per_s"])
        rss.append(a["peak_rss_gb"] / b["peak_rss_gb"])
        lines.append(f"| {rep + 1} | {a['real_tokens_per_s']:.0f} | {b['real_tokens_per_s']:.0f} | {ratios[-1]:.2f}x | "
                     f"{a['real_tokens']} | {a['load'][0]:.1f}-{b['load'][1]:.1f} | {a['peak_rss_gb']:.2f} / {b['peak_rss_gb']:.2f} |")
    return lines + ["", f"Ratio at equal work, {title} (median of {len(ratios)}): {_median(ratios):.2f}x "
                        f"(peak RSS ratio {_median(rss):.2f}x)", ""]


def mode_compile(args, work: Path) -> list[str]:
    data = build_data(work, args.threads_compile, f"compile-{args.threads_compile}", seed=5)
    init = str(build_init(work, "small"))
    buckets = [128, 256, 512, 768, 1024]
    common = {"kind": "threadsum", "prepared": data["prepared"], "init": init, "max_tokens": MAX_TOKENS["small"],
              "batch_tokens": MAX_TOKENS["small"], "max_steps": args.compile_steps, "pad_buckets": buckets,
              "log_every": 1, "precision": "auto"}
    sides = [{**common, "name": "eager", "label": "eager", "compile": False},
             {**common, "name": "compiled", "label": "train.compile=true (inductor)", "compile": True}]
    res = {s["name"]: [] for s in sides}
    for rep in range(args.compile_reps):
        for s in sides:
            res[s["name"]].append(child(s, work))
    s = SHAPES["small"]
    lines = ["## torch.compile on CPU: eager vs compiled (threadsum's loop)", "",
             f"Shape: BART-like, {s['layers']}+{s['layers']} layers, d_model {s['d_model']}, vocab {VOCAB}; "
             f"{args.compile_steps} optimizer steps of one micro-batch of <= {MAX_TOKENS['small']} padded tokens, "
             f"both sides padded to the buckets {buckets} (so their work is equal), "
             f"{data['n']} threads of Kaggle-like lengths.", "",
             "| run | rep | total s | real tokens/s | graphs | steady step s (median, after the last new graph) | load avg |",
             "|---|---:|---:|---:|---:|---:|---|"]
    stats = {}
    for sd in sides:
        for i, r in enumerate(res[sd["name"]]):
            recs = r["step_records"]
            secs = [b["train_seconds"] - a["train_seconds"] for a, b in zip([{"train_seconds": 0}] + recs, recs)]
            last_new = 0
            for j in range(1, len(recs)):
                if (recs[j].get("compiled_graphs") or 0) > (recs[j - 1].get("compiled_graphs") or 0):
                    last_new = j
            steady = _median(secs[last_new + 1:]) if last_new + 1 < len(secs) else float("nan")
            stats.setdefault(sd["name"], []).append({"total": r["seconds"], "steady": steady, "warm_until": last_new + 1,
                                                     "graphs": recs[-1].get("compiled_graphs")})
            lines.append(f"| {sd['label']} | {i + 1} | {r['seconds']:.1f} | {r['real_tokens_per_s']:.0f} | "
                         f"{recs[-1].get('compiled_graphs', '-')} | {steady:.3f} (from step {last_new + 2}) | "
                         f"{r['load'][0]:.1f}-{r['load'][1]:.1f} |")
    e_tot = _median([x["total"] for x in stats["eager"]])
    c_tot = _median([x["total"] for x in stats["compiled"]])
    e_st = _median([x["steady"] for x in stats["eager"]])
    c_st = _median([x["steady"] for x in stats["compiled"]])
    overhead = c_tot - c_st * args.compile_steps
    gain = e_st - c_st
    breakeven = (f"{overhead / gain:,.0f} steps" if gain > 0 else "never (compiled steps are not faster)")
    lines += ["", f"Whole run, eager / compiled (median): {e_tot / c_tot:.2f}x; steady-state step, eager / compiled: "
                  f"{e_st / c_st:.2f}x; compile overhead about {overhead:.0f} s; break-even at {breakeven}.",
              "Rule: compile counts only if it beats eager by >= 1.1x over a run that amortises it.", ""]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="defaults", help="comma-separated: defaults, full, lora, bf16, compile")
    ap.add_argument("--shapes", default="base,large", help="defaults mode: base, large")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians reported)")
    ap.add_argument("--threads-base", type=int, default=24, help="defaults mode: threads of the BART-base epoch")
    ap.add_argument("--threads-large", type=int, default=8, help="defaults mode: threads of the BART-large epoch")
    ap.add_argument("--threads-equal", type=int, default=96, help="equal-work modes: threads the plan draws from")
    ap.add_argument("--steps", type=int, default=6, help="equal-work modes: optimizer steps")
    ap.add_argument("--max-tokens", type=int, default=1536, help="equal-work modes: padded tokens per micro-batch")
    ap.add_argument("--accumulation", type=int, default=2, help="equal-work modes: micro-batches per step")
    ap.add_argument("--precision", default="fp32", help="full/lora modes: precision of both sides")
    ap.add_argument("--compile-steps", type=int, default=300, help="compile mode: optimizer steps per run")
    ap.add_argument("--compile-reps", type=int, default=1, help="compile mode: repetitions")
    ap.add_argument("--threads-compile", type=int, default=400, help="compile mode: threads in the data")
    ap.add_argument("--work", default="/tmp/threadsum-bench-train-cpu")
    ap.add_argument("--out", default=str(REPO / "bench" / "results_train_cpu.md"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        res = (run_threadsum if spec["kind"] == "threadsum" else run_trainer)(spec, work)
        res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    args.shapes = [s for s in args.shapes.split(",") if s]
    lines = ["# CPU training: threadsum vs what users run", ""] + header(args)
    for mode in args.modes.split(","):
        if mode == "defaults":
            lines += mode_defaults(args, work)
        elif mode in ("full", "lora", "bf16"):
            lines += mode_equal(args, work, mode)
        elif mode == "compile":
            lines += mode_compile(args, work)
        else:
            raise SystemExit(f"unknown mode {mode!r}; use defaults, full, lora, bf16, compile")
        Path(args.out).write_text("\n".join(lines + [f"Load average at the end: "
                                                     f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.", ""]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
