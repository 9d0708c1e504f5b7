"""`threadsum runs` and `runs report` from JSON run records (MLflow off)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from threadsum.config import config_from_dict
from threadsum.errors import UserError
from threadsum.runs import find_runs, runs_command, runs_report_command
from threadsum.track import RunTracker


def _cfg(**train):
    return config_from_dict({"name": "exp", "model": {"name_or_path": "facebook/bart-base"},
                             "train": {"lr": 5e-5, **train}, "track": {"tracking_uri": "none"}})


@pytest.fixture
def outputs(tmp_path):
    root = tmp_path / "outputs"
    good = RunTracker(_cfg(), root / "bart-base", kind="train")
    good.start()
    good.log_metrics({"loss": 2.0, "val_loss": 2.4}, step=100)
    good.finish("FINISHED", last_step=100, summary={"epochs": 2.0, "train_seconds": 600.0, "peak_memory_mb": 2048,
                                                     "estimated_cost_usd": 1.5, "tokens_per_s": 4000.0})
    good.update_summary({"eval": {"test": {"rougeL": 0.28, "n_threads": 10}}})

    oom = RunTracker(_cfg(max_tokens=65536), root / "big-batch", kind="train")
    oom.start()
    oom.log_metrics({"loss": 5.0}, step=3)
    oom.finish("FAILED", cause="OOM: CUDA out of memory (max_tokens=65536 on a 24 GB GPU)", last_step=3)

    # a run whose process vanished (kill -9): it still says RUNNING
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    died = RunTracker(_cfg(lr=1e-3), root / "lr-1e-3", kind="train")
    died.start()
    died.log_metrics({"loss": 7.0}, step=42)
    rec = json.loads((root / "lr-1e-3" / "run.json").read_text())
    rec["pid"] = int(dead.stdout)
    (root / "lr-1e-3" / "run.json").write_text(json.dumps(rec))

    (root / "broken").mkdir()
    (root / "broken" / "run.json").write_text('{"status": "RUNN')  # cut mid-write
    return root


def test_runs_table(outputs, capsys):
    rows = runs_command(str(outputs))
    out = capsys.readouterr().out
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"bart-base", "big-batch", "lr-1e-3"}  # the broken record is skipped
    good = by_id["bart-base"]
    assert good["status"] == "FINISHED" and good["steps"] == 100 and good["epochs"] == 2.0
    assert good["time_per_epoch_s"] == pytest.approx(300.0)
    assert good["peak_memory_gb"] == pytest.approx(2.0) and good["cost_usd"] == pytest.approx(1.5)
    assert good["best_rougeL"] == pytest.approx(0.28) and good["model"] == "facebook/bart-base"
    assert by_id["big-batch"]["status"] == "FAILED" and by_id["big-batch"]["cause"].startswith("OOM:")
    assert by_id["lr-1e-3"]["status"] == "DIED" and by_id["lr-1e-3"]["steps"] == 42
    assert "bart-base" in out and "OOM: CUDA out of memory" in out


def test_runs_json(outputs, capsys):
    runs_command(str(outputs), as_json=True)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {x["id"] for x in lines} == {"bart-base", "big-batch", "lr-1e-3"}


def test_runs_report(outputs, tmp_path):
    path = runs_report_command(str(outputs), output=str(tmp_path / "log.md"))
    text = path.read_text()
    assert text.startswith("# Experiment log")
    assert "### bart-base (train, FINISHED)" in text
    assert "RL 28.00" in text and "5.0 min per epoch" in text and "estimated cost $1.50" in text
    assert "changed from the previous run: `train.max_tokens`: 4096 -> 65536" in text
    failed = text.split("## Failed approaches", 1)[1]
    assert "| big-batch |" in failed and "OOM: CUDA out of memory (max_tokens=65536 on a 24 GB GPU)" in failed
    assert "| lr-1e-3 |" in failed and "process ended without writing a final status" in failed
    assert "| bart-base |" not in failed


def test_runs_missing_root(tmp_path):
    with pytest.raises(UserError, match="--root"):
        find_runs(tmp_path / "nope")


def test_cost_estimate_from_instance_price(outputs):
    path = outputs / "bart-base" / "run.json"
    rec = json.loads(path.read_text())
    rec["tags"]["instance_type"] = "ml.g5.xlarge"
    rec["summary"].pop("estimated_cost_usd")
    rec["summary"]["train_seconds"] = 7200.0
    path.write_text(json.dumps(rec))
    from threadsum.train.cost import instance_catalog

    price = instance_catalog()["instances"]["ml.g5.xlarge"]["price"]
    row = {r["id"]: r for r in runs_command(str(outputs), as_json=True)}["bart-base"]
    assert row["cost_usd"] == pytest.approx(2 * price)
    assert row["device"].startswith("ml.g5.xlarge")
