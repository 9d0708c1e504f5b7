"""Divergence is a failure: a non-finite loss or gradient norm stops the run at the step it happens
(exit 4, run record FAILED, no checkpoint of that step, the last good one kept, no model/), or with
train.on_nonfinite=skip the update is skipped and counted until too many come in a row. Export
refuses weights that hold NaN/inf.

The divergence is real, not injected: lr=1e4 without warmup blows the tiny model up within a few steps.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

from train_fixture import make_prepared, tiny_config  # noqa: E402

from threadsum.errors import DivergedError, ExitCode  # noqa: E402
from threadsum.train.checkpoint import list_checkpoints  # noqa: E402
from threadsum.train.loop import train  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("prepared"), n_train=24)


def _diverging(prepared, out, **kw):
    return tiny_config(prepared, out, max_steps=8, lr=1e4, warmup_steps=0, checkpoint_every_steps=1, keep_last=20, **kw)


def _finite(path) -> bool:
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path / "model.safetensors")).values())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_divergence_stops_at_its_step_and_keeps_the_last_good_checkpoint(prepared, tmp_path, precision):
    out = tmp_path / "run"
    with pytest.raises(DivergedError, match="became non-finite at step") as info:
        train(_diverging(prepared, out, precision=precision))
    assert info.value.exit_code == ExitCode.DIVERGED == 4
    bad = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    assert 2 <= bad <= 8

    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "FAILED" and f"non-finite at step {bad}" in record["cause"]
    assert not (out / "model").exists()
    # every step before the bad one was checkpointed; the bad step was not
    ckpts = list_checkpoints(out / "checkpoints")
    assert [s for s, _ in ckpts] == list(range(1, bad))
    assert _finite(ckpts[-1][1]) and f"step-{bad - 1:08d}" in str(info.value)
    losses = [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert len(losses) == bad - 1 and all(x == x and abs(x) != float("inf") for x in losses)


def test_skip_leaves_weights_unchanged_counts_and_stops_after_max_in_a_row(prepared, tmp_path):
    out = tmp_path / "run"
    cfg = _diverging(prepared, out, on_nonfinite="skip", max_nonfinite_skips=3)
    with pytest.raises(DivergedError, match="3th non-finite step in a row") as info:
        train(cfg)
    last = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    first_bad = last - 2
    events = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"nonfinite"' in ln]
    assert [(e["step"], e["in_a_row"]) for e in events] == [(first_bad, 1), (first_bad + 1, 2), (last, 3)]
    # the skipped steps were checkpointed with the last good step's weights, bit for bit
    from safetensors.torch import load_file

    ckpts = dict(list_checkpoints(out / "checkpoints"))
    assert sorted(ckpts) == list(range(1, last))
    good = load_file(str(ckpts[first_bad - 1] / "model.safetensors"))
    for step in (first_bad, first_bad + 1):
        skipped = load_file(str(ckpts[step] / "model.safetensors"))
        assert all(torch.equal(good[k], skipped[k]) for k in good), f"step {step} changed the weights"
    state = torch.load(ckpts[first_bad + 1] / "state.pt", weights_only=False)
    assert state["counters"]["nonfinite_steps"] == 2 and state["counters"]["nonfinite_in_a_row"] == 2
    assert not (out / "model").exists()


def test_cli_reproduction_exits_4_with_one_line(prepared, tmp_path):
    """The reported case: tiny config, lr=1e4, 6 steps, no warmup, no eval or checkpoints."""
    out = tmp_path / "run"
    cfg_path = tiny_config(prepared, out).save(tmp_path, filename="tiny.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "threadsum", "train", "-c", str(cfg_path), "train.lr=1e4", "train.max_steps=6",
         "train.warmup_steps=0", "train.eval_every_steps=0", "train.checkpoint_every_steps=0",
         "track.tracking_uri=none"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "non-finite at step" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "FAILED" and "non-finite at step" in record["cause"]
    assert not (out / "model").exists() and not (out / "checkpoints").exists()


def test_export_refuses_nonfinite_weights(prepared, tmp_path):
    from threadsum.model import load_model, load_tokenizer
    from threadsum.train.export import export_model

    cfg = tiny_config(prepared, tmp_path / "run")
    tokenizer = load_tokenizer(str(prepared / "tokenizer"))
    model = load_model(cfg, tokenizer)
    with torch.no_grad():
        model.model.encoder.layers[0].fc1.weight[0, 0] = float("nan")
        model.model.decoder.layers[1].fc2.bias[0] = float("inf")
    with pytest.raises(DivergedError, match=r"^2 of \d+ weight tensors hold NaN or inf"):
        export_model(model, tokenizer, cfg, tmp_path / "run", {}, {})
    assert not (tmp_path / "run" / "model").exists()
