"""A small prepared-data folder (per threadsum/data/prepared.py's contract) and a tiny training config.

Built with the real tokenizer trainer and datasets' save_to_disk, so the training tests do not
depend on the data pipeline. Importable by the training tests (pytest puts this folder on sys.path).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi"]
TOPICS = ["budget review", "launch plan", "hiring committee", "server migration", "quarterly report", "offsite agenda"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
FILLER = [
    "Let me know if that works for everyone.", "I attached the latest numbers.", "Thanks for the quick reply.",
    "We still need sign-off from finance.", "Please review before the call.", "I can join remotely if needed.",
]


def _thread(rng: random.Random, i: int) -> dict[str, Any]:
    a, b = rng.sample(NAMES, 2)
    topic, day, day2 = rng.choice(TOPICS), rng.choice(DAYS), rng.choice(DAYS)
    n_extra = rng.randint(0, 4)
    emails = [f"From: {a}\nTo: {b}\nHi {b}, the {topic} meeting moves to {day}. " + " ".join(rng.sample(FILLER, 2))]
    emails.append(f"From: {b}\nTo: {a}\nThanks {a}. {day} is fine, but can we do {day2} for the follow-up? "
                  + " ".join(rng.sample(FILLER, n_extra)))
    source = f"Subject: {topic}\n" + "\n---\n".join(emails)
    summary = f"{a} moved the {topic} meeting to {day}; {b} agreed and asked for a {day2} follow-up."
    return {"thread_id": f"t{i:04d}", "subject": topic, "source": source, "summary": summary,
            "first_email": emails[0], "n_emails": len(emails)}


def make_prepared(root: str | Path, n_train: int = 48, n_val: int = 8, n_test: int = 8, seed: int = 0,
                  vocab_size: int = 600, family: str = "seq2seq") -> Path:
    """``family='causal'``: a ChatML tokenizer, prompt ids (the default ``data.prompt``) and
    summary + end-token labels, as ``prepare`` writes them for a decoder-only model."""
    from datasets import Dataset, DatasetDict

    from threadsum.config import PromptConfig
    from threadsum.family import get_family
    from threadsum.model import train_causal_tokenizer, train_tokenizer

    root = Path(root)
    rng = random.Random(seed)
    threads = [_thread(rng, i) for i in range(n_train + n_val + n_test)]
    splits = {"train": threads[:n_train], "validation": threads[n_train : n_train + n_val],
              "test": threads[n_train + n_val :]}
    fam = get_family(family)
    trainer = train_causal_tokenizer if family == "causal" else train_tokenizer
    tok = trainer((t["source"] + "\n" + t["summary"] for t in splits["train"]), vocab_size, root / "tokenizer")
    source_tok = fam.source_tokenizer(tok, PromptConfig())
    dd = {}
    (root / "threads").mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        ids = [source_tok(r["source"], truncation=True, max_length=256)["input_ids"] for r in rows]
        labels = fam.target_ids(tok, PromptConfig(), [r["summary"] for r in rows], 64)
        dd[name] = Dataset.from_dict({"thread_id": [r["thread_id"] for r in rows], "input_ids": ids, "labels": labels})
        with (root / "threads" / f"{name}.jsonl").open("w") as fh:
            for r, x in zip(rows, ids):
                fh.write(json.dumps({**r, "source_tokens": len(x), "truncated": False}) + "\n")
    DatasetDict(dd).save_to_disk(str(root / "tokenized"))
    (root / "prepare.json").write_text(json.dumps({"counts": {k: len(v) for k, v in splits.items()},
                                                   "family": family}))
    return root


def tiny_config(prepared: str | Path, output_dir: str | Path, architecture: str = "bart", lora: bool = False,
                **train_overrides: Any):
    """A 2+2-layer d_model 64 random-init BART (or, ``architecture='llama'``, a 2-layer decoder-only
    Llama) trained for a handful of steps; ``lora``: adapters on the family's default targets."""
    from threadsum.config import config_from_dict

    train = {
        "output_dir": str(output_dir), "seed": 7, "max_steps": 12, "max_tokens": 1024, "batch_tokens": 2048,
        "max_batch_size": 16, "precision": "fp32", "lr": 3e-3, "warmup_steps": 2, "schedule": "linear",
        "label_smoothing": 0.1, "eval_every_steps": 0, "checkpoint_every_steps": 3, "keep_last": 2,
        "log_every_steps": 1, "resume": "auto",
    }
    train.update(train_overrides)
    return config_from_dict({
        "name": "tiny-test",
        "data": {"prepared_dir": str(prepared)},
        "model": {"init": "random", "name_or_path": None,
                  "tiny": {"architecture": architecture, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
                           "attention_heads": 4, "ffn_dim": 128, "vocab_size": 600, "max_position_embeddings": 512,
                           "dropout": 0.1},
                  "lora": {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.1}},
        "train": train,
        "eval": {"generation": {"num_beams": 1, "max_new_tokens": 32, "min_new_tokens": 1, "batch_size": 8}},
        "track": {"tracking_uri": "none"},
    }, origin="tiny test config")
