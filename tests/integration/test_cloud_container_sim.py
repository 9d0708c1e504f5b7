"""A local simulation of a SageMaker training container: a temporary /opt/ml tree, the job's
config files, the real entry point and the tiny model. Stopped mid-run, then started again (what a
spot restart does), the job resumes from /opt/ml/checkpoints and writes the model to the model dir."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
train_fixture = pytest.importorskip("train_fixture")

from threadsum.cloud import container  # noqa: E402

MAX_STEPS = 100  # long enough that SIGTERM, forwarded by the entry point, lands mid-run on a fast CPU (8 steps took 1 s)


def _job_tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "opt_ml"
    prepared = train_fixture.make_prepared(root / "input" / "data" / "prepared", n_train=16, n_val=4, n_test=4)
    # output_dir and resume are replaced by the container overrides; the local values must not leak in
    cfg = train_fixture.tiny_config(prepared, tmp_path / "local-run-not-used", max_steps=MAX_STEPS,
                                    max_tokens=512, batch_tokens=512, checkpoint_every_steps=2, resume="none")
    config_file = cfg.save(tmp_path / "code")
    conf = root / "input" / "config"
    conf.mkdir(parents=True)
    (conf / "hyperparameters.json").write_text(json.dumps({
        "config": str(config_file), "checkpoint_every_minutes": "10", "distribution": "none", "nproc_per_node": "1",
    }))
    (conf / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (conf / "inputdataconfig.json").write_text(json.dumps({"prepared": {"TrainingInputMode": "File"}}))
    return root, config_file


def _start(root: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, container.ROOT_ENV: str(root), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    for key in [k for k in env if k.startswith("SM_")]:
        env.pop(key)
    fh = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "threadsum.cloud.container"], env=env, stdout=fh,
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_stopped_job_resumes_and_exports_model(tmp_path):
    from threadsum.train.checkpoint import CHECKPOINTS_DIR, list_checkpoints

    root, _ = _job_tree(tmp_path)
    ckpts = root / "checkpoints" / CHECKPOINTS_DIR

    # first attempt: stop it once a checkpoint exists (SIGTERM to the entry point only: it must
    # forward the signal to `threadsum train`, which checkpoints and exits 75)
    first = _start(root, tmp_path / "first.log")
    deadline = time.monotonic() + 240
    while not list_checkpoints(ckpts) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, "training ended before it could be stopped:\n" + (tmp_path / "first.log").read_text()
    first.send_signal(signal.SIGTERM)
    rc = first.wait(timeout=120)
    log1 = (tmp_path / "first.log").read_text()
    assert rc == 75, log1
    stopped_at = max(step for step, _ in list_checkpoints(ckpts))
    assert 0 < stopped_at < MAX_STEPS
    assert not (root / "model" / "config.json").exists()
    assert "exited with status 75" in (root / "output" / "failure").read_text()

    # second attempt: same job description, resumes and finishes
    second = _start(root, tmp_path / "second.log")
    rc = second.wait(timeout=300)
    log2 = (tmp_path / "second.log").read_text()
    assert rc == 0, log2
    assert "resumed from" in log2 and f"step-{stopped_at:08d}" in log2
    assert (root / "model" / "config.json").is_file()
    assert (root / "output" / "data" / "metrics.jsonl").is_file()
    steps = [json.loads(line).get("step") for line in (root / "output" / "data" / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == MAX_STEPS

    # the exported folder is what `fetch` hands to summarize/serve
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(root / "model")
    assert model.config.d_model == 64
