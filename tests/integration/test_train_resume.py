"""Exact resume of the training loop: kill -9, SIGTERM, a crash while checkpointing, pinned losses.

Each subprocess runs ``python -m threadsum.train.loop config.yaml`` on a 2+2-layer d_model-64 BART
with one torch thread (the reference runs in this process with one thread too: the same kernels, so
weights can be compared bit for bit).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

from train_fixture import make_prepared, tiny_config  # noqa: E402

from threadsum.errors import ExitCode  # noqa: E402
from threadsum.train.checkpoint import (  # noqa: E402
    FAULT_CHECKPOINT_CRASH_ENV,
    FAULT_EXIT_CODE,
    list_checkpoints,
)
from threadsum.train.loop import train  # noqa: E402

MAX_STEPS = 12


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("prepared"))


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    """The uninterrupted run: its final weights and metrics."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("reference")
        result = train(tiny_config(prepared, out, max_steps=MAX_STEPS))
    finally:
        torch.set_num_threads(old)
    assert result["status"] == "finished" and result["steps"] == MAX_STEPS
    return out


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differing, f"weights differ from the uninterrupted run in {len(differing)} tensors, e.g. {differing[:3]}"


def _spawn(cfg, out: Path, env_extra: dict | None = None) -> subprocess.Popen:
    path = cfg.save(out.parent, filename=f"{out.name}.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "threadsum.train.loop", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 180) -> int:
    """Poll metrics.jsonl until the run logged ``step``; returns the last logged step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        if metrics.exists():
            steps = [json.loads(ln).get("step", 0) for ln in metrics.read_text().splitlines() if ln.strip()]
            if steps and max(steps) >= step:
                return max(steps)
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout}s")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill9_then_resume_matches_uninterrupted_run_bit_for_bit(prepared, reference, tmp_path, one_thread, seed):
    out = tmp_path / "run"
    cfg = tiny_config(prepared, out, max_steps=MAX_STEPS)
    kill_at = random.Random(seed).randint(2, MAX_STEPS - 2)
    proc = _spawn(cfg, out)
    _wait_for_step(proc, out / "metrics.jsonl", kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model").exists()

    result = train(cfg)  # resume=auto picks the newest complete checkpoint
    assert result["status"] == "finished" and result["steps"] == MAX_STEPS
    _assert_bitwise_equal(reference, out)
    # the redone steps replaced the killed run's records: one training record per step
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert steps == list(range(1, MAX_STEPS + 1))


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_causal_kill9_then_resume_matches_uninterrupted_run_bit_for_bit(tmp_path_factory, tmp_path, one_thread, lora):
    """The same exactness for a decoder-only model (prompt + completion batches, label-only head),
    full fine-tune and LoRA (dropout on, so the RNG state must be restored too)."""
    prepared = make_prepared(tmp_path_factory.mktemp("prepared-causal"), family="causal")
    ref = tmp_path / "reference"
    assert train(tiny_config(prepared, ref, architecture="llama", lora=lora, max_steps=MAX_STEPS))["status"] == "finished"
    out = tmp_path / "run"
    cfg = tiny_config(prepared, out, architecture="llama", lora=lora, max_steps=MAX_STEPS)
    proc = _spawn(cfg, out)
    _wait_for_step(proc, out / "metrics.jsonl", 5 if lora else 7)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not (out / "model").exists()
    result = train(cfg)
    assert result["status"] == "finished" and result["steps"] == MAX_STEPS
    _assert_bitwise_equal(ref, out)


@pytest.mark.slow
def test_sigterm_writes_checkpoint_and_exits_with_documented_code(prepared, reference, tmp_path, one_thread):
    out = tmp_path / "run"
    cfg = tiny_config(prepared, out, max_steps=MAX_STEPS, checkpoint_every_steps=0)  # only the signal checkpoints
    proc = _spawn(cfg, out)
    _wait_for_step(proc, out / "metrics.jsonl", 4)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.PREEMPTED, output[-3000:]
    ckpts = list_checkpoints(out / "checkpoints")
    assert len(ckpts) == 1 and 4 <= ckpts[0][0] < MAX_STEPS
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "KILLED" and record["cause"] == "preempted (SIGTERM)"
    assert record["last_step"] == ckpts[0][0]

    result = train(cfg)
    assert result["status"] == "finished"
    _assert_bitwise_equal(reference, out)


@pytest.mark.slow
def test_crash_while_writing_checkpoint_keeps_previous_usable(prepared, reference, tmp_path, one_thread):
    out = tmp_path / "run"
    cfg = tiny_config(prepared, out, max_steps=MAX_STEPS, checkpoint_every_steps=3)
    proc = _spawn(cfg, out, {FAULT_CHECKPOINT_CRASH_ENV: "6"})
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == FAULT_EXIT_CODE, output[-3000:]
    # the half-written checkpoint of step 6 is a temporary folder; step 3 is the newest complete one
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [3]
    assert any(p.name.startswith(".tmp-") for p in (out / "checkpoints").iterdir())

    result = train(cfg)
    assert result["status"] == "finished" and result["steps"] == MAX_STEPS
    assert not any(p.name.startswith(".tmp-") for p in (out / "checkpoints").iterdir())
    _assert_bitwise_equal(reference, out)


def test_corrupt_newest_checkpoint_is_skipped_with_warning(prepared, reference, tmp_path, one_thread, caplog):
    out = tmp_path / "run"
    cfg = tiny_config(prepared, out, max_steps=6, checkpoint_every_steps=3, keep_last=3)
    assert train(cfg)["steps"] == 6
    newest = out / "checkpoints" / "step-00000006"
    with (newest / "state.pt").open("r+b") as fh:  # a torn write: same size, garbage content
        fh.write(b"\0" * 64)
    cfg12 = tiny_config(prepared, out, max_steps=MAX_STEPS, checkpoint_every_steps=3, keep_last=3)
    with caplog.at_level("WARNING", logger="threadsum.train"):
        result = train(cfg12)
    assert "cannot be read" in caplog.text and "step-00000006" in caplog.text
    # resumed from step 3 (not from scratch, not from the corrupt 6) and says the schedule changed
    assert "train.max_steps: 6 -> 12" in caplog.text
    assert result["steps"] == MAX_STEPS


# Losses of the first optimizer steps of the tiny config (fp32, seed 7, fixture data). A change
# here means the model init, data order, loss or optimizer changed: check it was intended.
PINNED_LOSSES = [6.29398, 6.19672, 6.01289, 5.71910]


def test_pinned_loss_values_of_tiny_config(prepared, tmp_path, one_thread):
    out = tmp_path / "run"
    result = train(tiny_config(prepared, out, max_steps=4, checkpoint_every_steps=0))
    losses = [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert losses == pytest.approx(PINNED_LOSSES, rel=2e-4)
    assert result["real_tokens"] > 0 and 0 <= result["padding_fraction"] < 0.3
