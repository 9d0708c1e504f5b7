"""DDP and FSDP on 2 CPU ranks (gloo) against one process at the same global batch.

The reference is one process with 2 accumulated 1024-token micro-batches per step; the 2-rank runs
take 1 micro-batch per rank per step (the same micro-batches: the sampler deals the step's batches
to ranks). Dropout is off, so the only difference is float summation order: losses agree to ~1e-7
relative over 20 steps (tolerance 1e-5). A sharded FSDP checkpoint written by 2 ranks resumes on
1 rank and on 2 ranks and continues the same trajectory.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from dist_fixture import (  # noqa: E402
    STEPS,
    dist_config,
    final_weights,
    launcher_cmd,
    losses,
    worker_env,
    write_config,
)
from train_fixture import make_prepared  # noqa: E402

from threadsum.train.checkpoint import SHARDED_DIR, list_checkpoints  # noqa: E402
from threadsum.train.loop import train  # noqa: E402

RTOL = 1e-5
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    result = train(dist_config(prepared, out))
    assert result["status"] == "finished" and result["accumulation"] == 2
    return out


def _torchrun(cfg, folder: Path, name: str, nproc: int = 2) -> subprocess.CompletedProcess:
    path = write_config(cfg, folder, name)
    proc = subprocess.run(launcher_cmd(path, nproc), env=worker_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _assert_same_trajectory(expected: dict[int, float], got: dict[int, float], steps) -> None:
    assert sorted(got) == sorted(steps), f"logged steps {sorted(got)}"
    for s in steps:
        assert got[s] == pytest.approx(expected[s], rel=RTOL), f"step {s}: {got[s]} vs {expected[s]}"


def _assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs")


def test_ddp_two_ranks_match_one_process_with_twice_the_batch(prepared, reference, tmp_path):
    out = tmp_path / "ddp"
    _torchrun(dist_config(prepared, out, strategy="ddp"), tmp_path, "ddp")
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "FINISHED" and record["params"]["world_size"] == 2
    assert record["params"]["accumulation"] == 1  # per rank: the global step is the same 2 micro-batches
    _assert_same_trajectory(losses(reference), losses(out), range(1, STEPS + 1))
    _assert_close_weights(reference, out)


@pytest.fixture(scope="module")
def fsdp_run(prepared, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    out = folder / "run"
    _torchrun(dist_config(prepared, out, strategy="fsdp"), folder, "fsdp")
    return out


def test_fsdp_two_ranks_match_one_process(reference, fsdp_run):
    _assert_same_trajectory(losses(reference), losses(fsdp_run), range(1, STEPS + 1))
    # model/ is one consolidated Hugging Face folder, loadable without torch.distributed
    _assert_close_weights(reference, fsdp_run)
    from transformers import AutoModelForSeq2SeqLM

    assert AutoModelForSeq2SeqLM.from_pretrained(str(fsdp_run / "model")).config.d_model == 32
    ckpts = list_checkpoints(fsdp_run / "checkpoints")
    assert [s for s, _ in ckpts] == [10, 20]
    shards = sorted(p.name for p in (ckpts[0][1] / SHARDED_DIR).iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one shard per rank + global metadata
    assert not (ckpts[0][1] / "model.safetensors").exists()


def _copy_until_step(src: Path, dst: Path, step: int) -> None:
    """A run folder as it was right after the checkpoint of ``step`` (later records are redone)."""
    (dst / "checkpoints").mkdir(parents=True)
    name = f"step-{step:08d}"
    shutil.copytree(src / "checkpoints" / name, dst / "checkpoints" / name)
    shutil.copy(src / "metrics.jsonl", dst / "metrics.jsonl")


def test_fsdp_checkpoint_of_two_ranks_resumes_on_one_rank(prepared, fsdp_run, tmp_path, caplog):
    out = tmp_path / "resumed1"
    _copy_until_step(fsdp_run, out, 10)
    with caplog.at_level("INFO", logger="threadsum.train"):
        result = train(dist_config(prepared, out, strategy="fsdp"))  # one process: plain model, sharded load
    assert "resumed from" in caplog.text and "step-00000010" in caplog.text
    assert "data order will differ" not in caplog.text  # 2 ranks x 1 == 1 rank x 2 micro-batches per step
    assert result["status"] == "finished" and result["steps"] == STEPS
    _assert_same_trajectory(losses(fsdp_run), losses(out), range(1, STEPS + 1))
    _assert_close_weights(fsdp_run, out)


def test_fsdp_checkpoint_of_two_ranks_resumes_on_two_ranks(prepared, fsdp_run, tmp_path):
    out = tmp_path / "resumed2"
    _copy_until_step(fsdp_run, out, 10)
    proc = _torchrun(dist_config(prepared, out, strategy="fsdp"), tmp_path, "resumed2")
    assert "step-00000010" in proc.stdout + proc.stderr
    _assert_same_trajectory(losses(fsdp_run), losses(out), range(1, STEPS + 1))
    _assert_close_weights(fsdp_run, out)
