"""SIGTERM delivered to ONE rank of a 2-rank DDP run: every rank stops after the same step, one
complete checkpoint is written, all ranks exit 75 (the launcher returns 75), and a 2-rank resume
finishes on the trajectory of the uninterrupted single-process run."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from dist_fixture import (  # noqa: E402
    STEPS,
    dist_config,
    launcher_cmd,
    losses,
    worker_env,
    write_config,
)
from train_fixture import make_prepared  # noqa: E402

from threadsum.errors import ExitCode  # noqa: E402
from threadsum.train.checkpoint import list_checkpoints  # noqa: E402
from threadsum.train.launch import child_pids  # noqa: E402
from threadsum.train.loop import train  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("prepared"))


def _rank_of(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(e for e in env if e.startswith(b"RANK=")).split(b"=", 1)[1])


def _workers(launcher: subprocess.Popen, n: int, timeout: float = 120) -> dict[int, int]:
    """rank -> pid of the worker processes (grandchildren of the launcher: launcher -> torchrun -> workers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise AssertionError(f"launcher exited early: {launcher.stdout.read()[-3000:]}")
        workers = [w for t in child_pids(launcher.pid) for w in child_pids(t)]
        try:
            ranks = {_rank_of(w): w for w in workers}
        except (OSError, StopIteration):
            ranks = {}
        if len(ranks) == n:
            return ranks
        time.sleep(0.2)
    raise AssertionError("workers did not start")


def _wait_for_step(launcher: subprocess.Popen, metrics: Path, step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise AssertionError(f"training exited early with {launcher.returncode}")
        if metrics.exists() and max(losses(metrics.parent) or {0: 0}) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def test_sigterm_to_one_rank_stops_all_with_one_checkpoint_then_resumes(prepared, tmp_path):
    out = tmp_path / "run"
    # checkpoints only on the signal, so the one on disk is the signal's
    cfg = dist_config(prepared, out, strategy="ddp", checkpoint_every_steps=0)
    path = write_config(cfg, tmp_path, "run")
    launcher = subprocess.Popen(launcher_cmd(path, 2), env=worker_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        ranks = _workers(launcher, 2)
        _wait_for_step(launcher, out / "metrics.jsonl", 3)
        import os

        os.kill(ranks[1], signal.SIGTERM)  # rank 1 only: rank 0 learns it from the per-step all-reduce
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == ExitCode.PREEMPTED, output[-4000:]
    # the ranks exited by themselves with 75 after the checkpoint: none was killed by torchrun
    assert "exitcode  : 75" in output and "Signal 15" not in output and "SIGKILL" not in output, output[-4000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks.values())

    ckpts = list_checkpoints(out / "checkpoints")
    assert len(ckpts) == 1 and 3 <= ckpts[0][0] < STEPS, ckpts
    assert not any(p.name.startswith(".tmp-") for p in (out / "checkpoints").iterdir())
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "KILLED" and record["cause"] == "preempted (SIGTERM)"
    assert record["last_step"] == ckpts[0][0]
    assert max(losses(out)) == ckpts[0][0]  # every logged step is in the checkpoint

    resumed = subprocess.run(launcher_cmd(path, 2), env=worker_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    reference = train(dist_config(prepared, tmp_path / "single", checkpoint_every_steps=0))
    assert reference["status"] == "finished"
    got, want = losses(out), losses(tmp_path / "single")
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-5), f"step {s}"
