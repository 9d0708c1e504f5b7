"""CPU training throughput: threadsum train vs Hugging Face Seq2SeqTrainer on the same job.

    python bench/bench_train_cpu.py --steps 24 --out bench/results_train_cpu.md

Same model (BART-base size: 6+6 layers, d_model 768, vocab 50,265, random init, identical weights
loaded from one folder), same prepared synthetic data, same precision (bf16 autocast by default),
about the same effective batch (threads per optimizer step). The Trainer gets its best comparable
flags: bf16, length-grouped sampling, fused AdamW, pad_to_multiple_of=8. Each framework runs in its
own subprocess so peak RSS (ru_maxrss) is its own. Reported speed counts real (non-padding) source +
target tokens only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


# ----------------------------------------------------------------------------------- children
def run_threadsum(args) -> dict:
    import torch

    from threadsum.config import load_config
    from threadsum.train.loop import train

    work = Path(args.work)
    info = json.loads((work / "info.json").read_text())
    # effective batch = batch_size * accumulation threads: a token budget that holds as many on average
    batch_tokens = int(args.batch_size * args.accumulation * info["mean_tokens"] * 1.05)
    cfg = load_config(None, [
        f"data.prepared_dir={work / 'prepared'}", "model.init=pretrained", f"model.name_or_path={work / 'init'}",
        f"model.tokenizer={work / 'init'}", "model.attn_implementation=sdpa",
        f"train.output_dir={work / 'out-threadsum'}", "train.resume=none", f"train.precision={args.precision}",
        "train.optimizer=adamw", "train.lr=1e-4", "train.warmup_steps=5", f"train.max_steps={args.steps}",
        f"train.batch_tokens={batch_tokens}", f"train.max_tokens={batch_tokens // args.accumulation + 1}",
        "train.label_smoothing=0.1", "train.eval_every_steps=0", "train.checkpoint_every_steps=0",
        f"train.log_every_steps={max(1, args.steps // 4)}", "train.seed=0", "track.tracking_uri=none",
    ])
    r = train(cfg)
    return {"framework": "threadsum", "real_tokens": r["real_tokens"], "seconds": r["train_seconds"],
            "real_tokens_per_s": r["real_tokens_per_s"], "padding_fraction": r["padding_fraction"],
            "steps": r["steps"], "threads_per_step": None, "torch_threads": torch.get_num_threads()}


def run_trainer(args) -> dict:
    import torch
    from datasets import load_from_disk
    from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                              Seq2SeqTrainingArguments, TrainerCallback)

    work = Path(args.work)
    tok = AutoTokenizer.from_pretrained(str(work / "init"))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(work / "init"), attn_implementation="sdpa")
    ds = load_from_disk(str(work / "prepared" / "tokenized"))["train"].remove_columns(["thread_id"])
    base = DataCollatorForSeq2Seq(tok, model=model, pad_to_multiple_of=8, label_pad_token_id=-100)
    counted = {"real": 0, "padded": 0, "threads": 0}

    def collate(features):
        counted["real"] += sum(len(f["input_ids"]) + len(f["labels"]) for f in features)
        counted["threads"] += len(features)
        batch = base(features)
        counted["padded"] += batch["input_ids"].numel() + batch["labels"].numel()
        return batch

    times = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["t0"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            times["t1"] = time.perf_counter()

    targs = Seq2SeqTrainingArguments(
        output_dir=str(work / "out-trainer"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulation, max_steps=args.steps, learning_rate=1e-4, warmup_steps=5,
        bf16=args.precision == "bf16", train_sampling_strategy="group_by_length", optim="adamw_torch_fused",
        label_smoothing_factor=0.1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
        logging_steps=max(1, args.steps // 4), dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=ds, data_collator=collate, callbacks=[Clock()])
    trainer.train()
    secs = times["t1"] - times["t0"]
    return {"framework": "transformers Seq2SeqTrainer", "real_tokens": counted["real"], "seconds": secs,
            "real_tokens_per_s": counted["real"] / secs, "padding_fraction": 1 - counted["real"] / counted["padded"],
            "steps": args.steps, "threads_per_step": counted["threads"] / args.steps,
            "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------- parent
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per framework")
    ap.add_argument("--batch-size", type=int, default=4, help="Trainer threads per micro-batch")
    ap.add_argument("--accumulation", type=int, default=2, help="micro-batches per optimizer step")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--n-threads-corpus", type=int, default=240, help="synthetic email threads to prepare")
    ap.add_argument("--work", default="/tmp/threadsum-bench-train-cpu")
    ap.add_argument("--out", default=str(REPO / "bench" / "results_train_cpu.md"))
    ap.add_argument("--run", choices=["threadsum", "trainer"], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.run:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        res = (run_threadsum if args.run == "threadsum" else run_trainer)(args)
        res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = build_workdir(work, args.n_threads_corpus, 512, 128)
    (work / "info.json").write_text(json.dumps(info))
    results = []
    for which in ("threadsum", "trainer"):
        cmd = [sys.executable, __file__, "--run", which, "--work", str(work), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--accumulation", str(args.accumulation),
               "--precision", args.precision, "--threads", str(args.threads)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            return 1
        res = json.loads(line[-1][len("RESULT "):])
        res["wall_s"] = time.perf_counter() - t
        results.append(res)
        print(json.dumps(res), flush=True)

    ts, hf = results
    ratio = ts["real_tokens_per_s"] / hf["real_tokens_per_s"]
    rss_ratio = ts["peak_rss_gb"] / hf["peak_rss_gb"]
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    load = os.getloadavg()
    lines = [
        "## CPU training: threadsum vs transformers Seq2SeqTrainer",
        "",
        f"Command: `python bench/bench_train_cpu.py --steps {args.steps} --batch-size {args.batch_size} "
        f"--accumulation {args.accumulation} --precision {args.precision}"
        f"{' --threads %d' % args.threads if args.threads else ''}`",
        "",
        f"Machine: {cpu}, {os.cpu_count()} logical cores, torch threads {ts['torch_threads']}; "
        f"load average at the end {load[0]:.1f} (the machine is shared: absolute numbers are noisy, "
        f"both runs saw similar load; the run is kept short, {args.steps} optimizer steps each).",
        f"Model: BART-base shape (6+6 layers, d_model 768, vocab 50,265), random init, same weights for both; "
        f"{args.precision}; data: {info['n_train']} synthetic train threads (mean {info['mean_tokens']:.0f} "
        f"source+target tokens), source <= 512, target <= 128 tokens; effective batch about "
        f"{args.batch_size * args.accumulation} threads per step ({args.accumulation} micro-batches).",
        "",
        "| framework | real tokens/s | padding | peak RSS (GB) | steps | train seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['framework']} | {r['real_tokens_per_s']:.0f} | {100 * r['padding_fraction']:.1f}% | "
                     f"{r['peak_rss_gb']:.2f} | {r['steps']} | {r['seconds']:.1f} |")
    lines += ["", f"Ratio (threadsum / Trainer): **{ratio:.2f}x** real tokens/s at {rss_ratio:.2f}x the peak RSS "
                  f"(goal: >= 1.5x at no more memory).", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
