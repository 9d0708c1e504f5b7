"""The planner's epoch time on this machine against a measured epoch: `plan --calibrate --cost`, then train.

    python bench/bench_plan_time.py --reps 2 --out bench/results_plan_time.md

Per repetition, each in a fresh process: ``threadsum plan --calibrate --cost`` (the real command, a
calibration of ``--calibrate-seconds``) predicts this machine's epoch; then ``threadsum train`` runs
that epoch (``train.epochs=1``, about ``--steps`` optimizer steps) and its own step time
(``train_seconds``: the sum of the optimizer steps, without model build, validation or export) is
the measurement. Goal: predicted within 20% of measured.

Model: a small random-init BART (d_model 256, 2+2 layers, 8,000-token vocabulary) so a 200-step epoch
fits a few minutes on 2 vCPUs. Data: random ids of Kaggle-like lengths at 512 source / 128 target
tokens (``threadsum.train.memory.kaggle_like_lengths``) in a prepared folder, which the calibration
samples its lengths from (as it does for a user's prepared data).

``--one-thread`` also calibrates with one torch thread (``OMP_NUM_THREADS=1``), giving the one
measured doubling of the vCPU scaling (1 -> 2 threads on this machine), which the planner otherwise
assumes at 1.5x per doubling.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

VOCAB, MAX_SRC, MAX_TGT = 8000, 512, 128
MAX_TOKENS, BATCH_TOKENS = 2048, 4096


def build(work: Path, n: int) -> Path:
    """A prepared folder of ``n`` threads of Kaggle-like lengths with a word-level tokenizer of VOCAB ids."""
    import numpy as np

    prepared = work / f"prepared-{n}"
    if (prepared / "tokenized").exists():
        return prepared
    from datasets import Dataset, DatasetDict
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"t{i}": i for i in range(len(specials), VOCAB)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>", mask_token="<mask>").save_pretrained(str(prepared / "tokenizer"))
    from threadsum.train.memory import kaggle_like_lengths

    src_len, tgt_len = kaggle_like_lengths(n, MAX_SRC, MAX_TGT, seed=21)
    rng = np.random.default_rng(22)
    src = [[0] + rng.integers(5, VOCAB, int(s) - 2).tolist() + [2] for s in src_len]
    tgt = [[0] + rng.integers(5, VOCAB, int(t) - 2).tolist() + [2] for t in tgt_len]
    (prepared / "threads").mkdir(parents=True, exist_ok=True)
    (prepared / "threads" / "train.jsonl").write_text("")
    DatasetDict({"train": Dataset.from_dict({"thread_id": [f"t{i}" for i in range(n)], "input_ids": src,
                                             "labels": tgt})}).save_to_disk(str(prepared / "tokenized"))
    (prepared / "prepare.json").write_text(json.dumps({"counts": {"train": n}, "family": "seq2seq"}))
    return prepared


def config(work: Path, prepared: Path) -> Path:
    from threadsum.config import config_from_dict

    cfg = config_from_dict({
        "name": "bench-plan-time",
        "data": {"prepared_dir": str(prepared), "max_source_tokens": MAX_SRC, "max_target_tokens": MAX_TGT,
                 "validation_fraction": 0.0, "test_fraction": 0.0},
        "model": {"init": "random", "name_or_path": None,
                  "tiny": {"d_model": 256, "encoder_layers": 2, "decoder_layers": 2, "attention_heads": 4,
                           "ffn_dim": 1024, "vocab_size": VOCAB, "max_position_embeddings": 1024}},
        "train": {"output_dir": str(work / "run"), "epochs": 1, "max_tokens": MAX_TOKENS, "batch_tokens": BATCH_TOKENS,
                  "precision": "auto", "eval_every_steps": 0, "checkpoint_every_steps": 0, "resume": "none",
                  "log_every_steps": 50, "seed": 0},
        "track": {"tracking_uri": "none"},
    }, origin="bench_plan_time")
    return cfg.save(work, "bench.yaml")


def steps_of(prepared: Path) -> int:
    import math

    import numpy as np
    from datasets import load_from_disk

    from threadsum.train.batching import plan_micro_batches

    ds = load_from_disk(str(prepared / "tokenized"))["train"]
    mbs = plan_micro_batches(np.array([len(x) for x in ds["input_ids"]]), np.array([len(x) for x in ds["labels"]]),
                             MAX_TOKENS, 64, 8, seed=0, epoch=0)
    return math.ceil(len(mbs) / math.ceil(BATCH_TOKENS / MAX_TOKENS))


def run(cmd: list[str], env: dict) -> tuple[str, float]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return p.stdout + p.stderr, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps the epoch should have (sets the threads)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--calibrate-seconds", type=float, default=60.0)
    ap.add_argument("--one-thread", action="store_true", help="also calibrate with 1 thread (the measured doubling)")
    ap.add_argument("--work", default="/tmp/threadsum-bench-plan-time")
    ap.add_argument("--out", default=str(REPO / "bench" / "results_plan_time.md"))
    args = ap.parse_args()
    from threadsum.config import load_config
    from threadsum.devices import cpu_summary
    from threadsum.train import calibrate as cal
    from threadsum.train.cost import this_machine

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    n = max(64, round(args.steps * BATCH_TOKENS / 430))  # ~430 padded tokens per thread at 512/128
    prepared = build(work, n)
    while steps_of(prepared) < args.steps * 0.95 or steps_of(prepared) > args.steps * 1.05:
        n = round(n * args.steps / steps_of(prepared))
        prepared = build(work, n)
    cfg_path = config(work, prepared)
    cfg = load_config(cfg_path)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", cal.CACHE_ENV: str(work / "cache")}
    os.environ[cal.CACHE_ENV] = env[cal.CACHE_ENV]
    py = [sys.executable, "-m", "threadsum"]
    lines = ["# Planner: predicted vs measured epoch time on this machine", "",
             f"Command: `python bench/bench_plan_time.py {' '.join(sys.argv[1:])}`", "",
             f"CPU: {cpu_summary()}. Load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.", "",
             f"Model: random-init BART, d_model 256, 2+2 layers, vocabulary {VOCAB}; train.precision=auto. Data: {n} "
             f"threads of Kaggle-like lengths at {MAX_SRC}/{MAX_TGT} tokens; one epoch = {steps_of(prepared)} optimizer "
             f"steps of {BATCH_TOKENS} padded tokens ({MAX_TOKENS}-token micro-batches, accumulation "
             f"{BATCH_TOKENS // MAX_TOKENS}). Prediction: `threadsum plan --calibrate --calibrate-seconds "
             f"{args.calibrate_seconds:g} --cost` ('this machine'); measurement: `threadsum train`'s `train_seconds`.", "",
             "| rep | calibration s (wall) | predicted epoch s | measured epoch s (train_seconds) | wall s | error | load avg (plan / train) |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    errors = []
    for rep in range(args.reps):
        load_p = os.getloadavg()[0]
        _, plan_wall = run(py + ["plan", "-c", str(cfg_path), "--calibrate", "--calibrate-seconds",
                                 str(args.calibrate_seconds), "--cost", "--device", "cpu"], env)
        here = this_machine(cfg)
        predicted = here["epoch_hours"] * 3600
        load_t = os.getloadavg()[0]
        _, train_wall = run(py + ["train", "-c", str(cfg_path)], env)
        run_json = json.loads((work / "run" / "run.json").read_text())
        summary = run_json.get("summary") or run_json
        measured = float(summary["train_seconds"])
        err = predicted / measured - 1
        errors.append(err)
        lines.append(f"| {rep + 1} | {plan_wall:.0f} | {predicted:.0f} | {measured:.0f} ({summary.get('steps')} steps, "
                     f"{summary.get('real_tokens_per_s', 0):.0f} real tokens/s) | {train_wall:.0f} | {err:+.1%} | "
                     f"{load_p:.1f} / {load_t:.1f}-{os.getloadavg()[0]:.1f} |")
        print(lines[-1], flush=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    worst = max(errors, key=abs)
    lines += ["", f"Largest error {worst:+.1%} (goal: within 20%): {'met' if abs(worst) <= 0.2 else 'NOT met'}.", ""]
    if args.one_thread:
        run(py + ["plan", "-c", str(cfg_path), "--calibrate", "--calibrate-seconds", str(args.calibrate_seconds)],
            {**env, "OMP_NUM_THREADS": "1"})
        entries = list(cal.read_calibrations().values())
        one = [e for e in entries if e["threads"] == 1]
        two = [e for e in entries if e["threads"] == 2]
        if one and two:
            r1 = cal.rate_for(one[-1], BATCH_TOKENS)
            r2 = cal.rate_for(two[-1], BATCH_TOKENS)
            lines += [f"Threads 1 -> 2 (the one measured doubling of the planner's vCPU scaling): {r1:.0f} -> {r2:.0f} "
                      f"real tokens/s, {r2 / r1:.2f}x (the planner assumes 1.5x per doubling); load average "
                      f"{one[-1]['loadavg'][0]:.1f}-{one[-1]['loadavg'][1]:.1f} during the 1-thread calibration.", ""]
    lines += ["Calibrations stored (the cache file of this benchmark):", "", "```json",
              json.dumps(list(cal.read_calibrations().values()), indent=1), "```", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines[-12:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
