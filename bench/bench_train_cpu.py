"""CPU training throughput at equal work: threadsum train vs Hugging Face Seq2SeqTrainer.

    python bench/bench_train_cpu.py --steps 6 --reps 3 --out bench/results_train_cpu.md

Equal work: both frameworks train the SAME micro-batches, in the same order, for the same number of
optimizer steps. The parent computes threadsum's token-budget plan (``TokenBudgetSampler`` with the
run's settings); threadsum's own loop draws exactly that plan, and the Trainer gets it as its
``batch_sampler`` (same threads per micro-batch, ``gradient_accumulation_steps`` = micro-batches per
step). The real (non-padding) token counts of both runs are compared and printed: a run whose count
differs is reported as invalid, not as a ratio.

Modes: full fine-tune and LoRA (threadsum's LoRA settings; the Trainer gets a peft ``LoraConfig``
with the same rank, alpha, dropout and target modules). Same model (BART-base shape: 6+6 layers,
d_model 768, vocab 50,265, random init, identical weights loaded from one folder), fp32, AdamW, label
smoothing 0.1, sdpa attention. Each run is its own subprocess (peak RSS = its own ru_maxrss); the
frameworks alternate (threadsum, Trainer, threadsum, ...) ``--reps`` times per mode and the median of
the per-repetition ratios is reported, so a slow period of a shared machine hits both.

``--variant`` adds threadsum options to its side only (e.g. ``train.loss_chunk_tokens=1024``) to
measure one lever at a time; the Trainer side never changes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def build_workdir(work: Path, n_threads: int, src_tokens: int, tgt_tokens: int) -> dict:
    from threadsum.config import load_config
    from threadsum.data.prepare import prepare
    from threadsum.data.synth import write_kaggle_csv

    if not (work / "prepared" / "tokenized").exists():
        write_kaggle_csv(work / "corpus", n_threads, seed=0)
        cfg = load_config(None, [f"data.source={work / 'corpus'}", f"data.prepared_dir={work / 'prepared'}",
                                 f"data.max_source_tokens={src_tokens}", f"data.max_target_tokens={tgt_tokens}",
                                 "model.init=random", "model.name_or_path=null", "model.tiny.vocab_size=8000"])
        prepare(cfg)
    init = work / "init"
    if not (init / "config.json").exists():
        import torch
        from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

        tok = AutoTokenizer.from_pretrained(str(work / "prepared" / "tokenizer"))
        torch.manual_seed(0)
        # facebook/bart-base's shape; the vocabulary stays 50,265 so the LM head costs what it costs there
        bcfg = BartConfig(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
                          encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                          decoder_ffn_dim=3072, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id)
        BartForConditionalGeneration(bcfg).save_pretrained(str(init))
        tok.save_pretrained(str(init))
    from datasets import load_from_disk

    ds = load_from_disk(str(work / "prepared" / "tokenized"))["train"]
    lens = [len(a) + len(b) for a, b in zip(ds["input_ids"], ds["labels"])]
    return {"n_train": len(ds), "mean_tokens": sum(lens) / len(lens)}


def threadsum_overrides(args, work: Path, lora: bool) -> list[str]:
    """The threadsum config of a run (the plan below is computed from the same settings)."""
    return [
        f"data.prepared_dir={work / 'prepared'}", "model.init=pretrained", f"model.name_or_path={work / 'init'}",
        f"model.tokenizer={work / 'init'}", "model.attn_implementation=sdpa", f"model.lora.enabled={str(lora).lower()}",
        f"train.output_dir={work / ('out-threadsum-lora' if lora else 'out-threadsum')}", "train.resume=none",
        "train.precision=fp32", "train.optimizer=adamw", "train.lr=1e-4", "train.warmup_steps=2",
        f"train.max_steps={args.steps}", f"train.max_tokens={args.max_tokens}",
        f"train.batch_tokens={args.max_tokens * args.accumulation}", "train.label_smoothing=0.1",
        "train.eval_every_steps=0", "train.checkpoint_every_steps=0", f"train.log_every_steps={args.steps}",
        "train.seed=0", "track.tracking_uri=none",
    ]


def micro_batch_plan(args, work: Path) -> list[list[int]]:
    """threadsum's micro-batches for ``args.steps`` optimizer steps, in order (one process)."""
    import numpy as np
    from datasets import load_from_disk

    from threadsum.config import load_config
    from threadsum.train.batching import TokenBudgetSampler

    cfg = load_config(None, threadsum_overrides(args, work, lora=False))
    tc = cfg.train
    ds = load_from_disk(str(work / "prepared" / "tokenized"))["train"]
    src = np.array([len(x) for x in ds["input_ids"]])
    tgt = np.array([len(x) for x in ds["labels"]])
    sampler = TokenBudgetSampler(src, tgt, tc.max_tokens, tc.max_batch_size, tc.pad_to_multiple_of, tc.seed,
                                 accumulation=args.accumulation)
    plan: list[list[int]] = []
    for _ in range(args.steps):
        plan += [list(map(int, mb)) for mb in sampler.next_step()]
    return plan


# ----------------------------------------------------------------------------------- children
def run_threadsum(args) -> dict:
    import torch

    from threadsum.config import load_config
    from threadsum.train.loop import train

    work = Path(args.work)
    cfg = load_config(None, threadsum_overrides(args, work, args.mode == "lora") + list(args.variant or []))
    r = train(cfg)
    return {"framework": "threadsum", "real_tokens": int(r["real_tokens"]), "seconds": r["train_seconds"],
            "steps": r["steps"], "torch_threads": torch.get_num_threads()}


def run_trainer(args) -> dict:
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

    work = Path(args.work)
    plan = json.loads((work / "plan.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(work / "init"))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(work / "init"), attn_implementation="sdpa")
    if args.mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lc = Config().model.lora
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=lc.r, lora_alpha=lc.alpha,
                                                 lora_dropout=lc.dropout, target_modules=list(lc.target_modules)))
    ds = load_from_disk(str(work / "prepared" / "tokenized"))["train"].remove_columns(["thread_id"])
    base = DataCollatorForSeq2Seq(tok, model=model, pad_to_multiple_of=Config().train.pad_to_multiple_of,
                                  label_pad_token_id=-100)
    counted = {"real": 0}

    def collate(features):
        counted["real"] += sum(len(f["input_ids"]) + len(f["labels"]) for f in features)
        return base(features)

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

    targs = Seq2SeqTrainingArguments(
        output_dir=str(work / "out-trainer"), per_device_train_batch_size=1,
        gradient_accumulation_steps=args.accumulation, max_steps=args.steps, learning_rate=1e-4, warmup_steps=2,
        optim="adamw_torch_fused", label_smoothing_factor=0.1, save_strategy="no", report_to="none",
        use_cpu=True, seed=0, logging_steps=args.steps, dataloader_num_workers=0, disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = PlannedBatches(model=model, args=targs, train_dataset=ds, data_collator=collate, callbacks=[Clock()])
    trainer.train()
    secs = times["t1"] - times["t0"]
    return {"framework": "Seq2SeqTrainer" + (" + peft" if args.mode == "lora" else ""), "real_tokens": counted["real"],
            "seconds": secs, "steps": args.steps, "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------- parent
def _child(args, which: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--run", which, "--mode", mode, "--work", str(args.work), "--steps",
           str(args.steps), "--max-tokens", str(args.max_tokens), "--accumulation", str(args.accumulation)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    for v in args.variant or []:
        cmd += ["--variant", v]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"{which} ({mode}) failed")
    res = json.loads(line[-1][len("RESULT "):])
    res["real_tokens_per_s"] = res["real_tokens"] / res["seconds"]
    print(json.dumps({"mode": mode, **res}), flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    ap.add_argument("--max-tokens", type=int, default=1536, help="threadsum's padded tokens per micro-batch")
    ap.add_argument("--accumulation", type=int, default=2, help="micro-batches per optimizer step")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per mode (median reported)")
    ap.add_argument("--modes", default="full,lora")
    ap.add_argument("--variant", action="append", help="threadsum-only override, e.g. train.loss_chunk_tokens=1024")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--n-threads-corpus", type=int, default=240, help="synthetic email threads to prepare")
    ap.add_argument("--work", default="/tmp/threadsum-bench-train-cpu")
    ap.add_argument("--out", default=str(REPO / "bench" / "results_train_cpu.md"))
    ap.add_argument("--run", choices=["threadsum", "trainer"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.run:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        res = (run_threadsum if args.run == "threadsum" else run_trainer)(args)
        res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    from threadsum.devices import hardware_description

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = build_workdir(work, args.n_threads_corpus, 512, 128)
    plan = micro_batch_plan(args, work)
    (work / "plan.json").write_text(json.dumps(plan))
    threads_per_step = sum(len(mb) for mb in plan) / args.steps
    lines = [
        "## CPU training at equal work: threadsum vs transformers Seq2SeqTrainer",
        "",
        f"Command: `python bench/bench_train_cpu.py --steps {args.steps} --max-tokens {args.max_tokens} "
        f"--accumulation {args.accumulation} --reps {args.reps} --modes {args.modes}"
        + "".join(f" --variant {v}" for v in args.variant or []) + "`",
        "",
        f"Machine: {hardware_description()}; load average at the start {os.getloadavg()[0]:.1f}.",
        f"Model: BART-base shape (6+6 layers, d_model 768, vocab 50,265), random init, same weights for both; fp32. "
        f"Data: {info['n_train']} synthetic train threads (mean {info['mean_tokens']:.0f} source+target tokens). "
        f"Work: the same {len(plan)} micro-batches for both ({threads_per_step:.1f} threads and "
        f"{args.accumulation} micro-batches per optimizer step, {args.steps} steps), order alternating, "
        f"{args.reps} repetitions per mode.",
        "",
        "| mode | rep | threadsum tokens/s | Trainer tokens/s | ratio | real tokens (both) | peak RSS GB (ts / Trainer) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    summary = []
    for mode in args.modes.split(","):
        ratios, rss = [], []
        for rep in range(args.reps):
            ts = _child(args, "threadsum", mode)
            hf = _child(args, "trainer", mode)
            if ts["real_tokens"] != hf["real_tokens"]:
                lines.append(f"| {mode} | {rep + 1} | invalid: unequal work ({ts['real_tokens']} vs "
                             f"{hf['real_tokens']} real tokens) | | | | |")
                continue
            ratio = ts["real_tokens_per_s"] / hf["real_tokens_per_s"]
            ratios.append(ratio)
            rss.append(ts["peak_rss_gb"] / hf["peak_rss_gb"])
            lines.append(f"| {mode} | {rep + 1} | {ts['real_tokens_per_s']:.0f} | {hf['real_tokens_per_s']:.0f} | "
                         f"{ratio:.2f}x | {ts['real_tokens']} | {ts['peak_rss_gb']:.2f} / {hf['peak_rss_gb']:.2f} |")
        if ratios:
            name = "full fine-tune" if mode == "full" else "LoRA"
            summary.append(f"Ratio at equal work, {name} (median of {len(ratios)}): {statistics.median(ratios):.2f}x "
                           f"(peak RSS ratio {statistics.median(rss):.2f}x)")
    lines += ["", *summary, "", "Goal: >= 1.2x for both at no more memory (peak RSS ratio <= 1.00x).", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
