"""Helpers of the distributed tests: a tiny dropout-free config, torchrun runs, metrics readers.

Every multi-process run here is a real ``torchrun`` (gloo backend, one thread per rank) started by
``threadsum.train.launch``; the single-process reference runs ``train()`` in the test process.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from train_fixture import tiny_config  # noqa: E402

STEPS = 20


def dist_config(prepared: str | Path, out: str | Path, **train: Any):
    """d_model-32 1+1-layer BART, no dropout: the gradient is pure arithmetic of the batch, so a step
    split over ranks equals the same step accumulated in one process up to float summation order.
    1024-token micro-batches, 2048 tokens per step: 2 micro-batches per step on 1 or 2 ranks."""
    base = {"max_steps": STEPS, "checkpoint_every_steps": 10, "keep_last": 3, "log_every_steps": 1,
            "max_tokens": 1024, "batch_tokens": 2048, "warmup_steps": 2}
    cfg = tiny_config(prepared, out, **{**base, **train})
    t = cfg.model.tiny
    t.d_model, t.ffn_dim, t.encoder_layers, t.decoder_layers, t.attention_heads, t.dropout = 32, 64, 1, 1, 2, 0.0
    return cfg


def write_config(cfg, folder: Path, name: str) -> Path:
    return cfg.save(folder, filename=f"{name}.yaml")


def worker_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def launcher_cmd(config_path: Path, nproc: int) -> list[str]:
    """``python -m threadsum.train.launch NPROC CONFIG``: the code path of ``threadsum train --nproc``."""
    return [sys.executable, "-m", "threadsum.train.launch", str(nproc), str(config_path)]


def losses(out: Path) -> dict[int, float]:
    """Training loss per optimizer step from metrics.jsonl (log_every_steps=1)."""
    rows = [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def final_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "model" / "model.safetensors"))
