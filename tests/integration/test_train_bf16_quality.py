"""Quality guard of bf16 autocast: a bf16 run's validation loss tracks the fp32 run's.

Same data, seed, weights and steps; only ``train.precision`` differs. The tolerance: bf16 keeps 8 bits
of mantissa (a relative rounding of 2**-9 per value), the LM head and loss run in fp32 (train/loss.py),
and AdamW's state stays fp32, so after a short run the two validation losses differ by rounding noise
that grows with the steps (measured here: 3e-5 of the loss after 6 steps); 1% of the loss leaves room
for longer runs and other CPUs and still fails a precision path that learns differently (a loss
computed in bf16, gradients that underflow, an update skipped). The run is tiny because
bf16 may be emulated here (no avx512_bf16: each bf16 matmul is ~50x slower than fp32).
"""
from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from train_fixture import make_prepared, tiny_config  # noqa: E402

from threadsum.train.loop import train  # noqa: E402

TOLERANCE = 0.01  # relative; see the module docstring


def _val_losses(path):
    return [r["val_loss"] for r in map(json.loads, path.read_text().splitlines()) if "val_loss" in r]


def test_bf16_validation_loss_tracks_fp32(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", n_train=16, n_val=8, n_test=2, vocab_size=300)
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(prepared, tmp_path / precision, precision=precision, max_steps=6, eval_every_steps=3,
                          checkpoint_every_steps=0, max_tokens=1024, batch_tokens=1024)
        cfg.model.tiny.dropout = 0.0  # the two runs differ in precision only
        cfg.model.tiny.d_model = 32
        cfg.model.tiny.ffn_dim = 64
        result = train(cfg)
        assert result["status"] == "finished" and result["precision"] == precision
        runs[precision] = _val_losses(tmp_path / precision / "metrics.jsonl")
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert len(fp32) == len(bf16) == 2
    assert fp32[-1] < math.log(300)  # it learned something: below the loss of a uniform guess
    for a, b in zip(fp32, bf16):
        assert abs(b - a) <= TOLERANCE * a, (fp32, bf16)
