"""The JSON run record (MLflow off): lifecycle, resume, failure causes, tracking URI resolution."""
from __future__ import annotations

import json

import pytest

from threadsum.config import config_from_dict
from threadsum.deps import MissingExtraError
from threadsum.track import RunTracker, classify_failure, resolve_tracking_uri


def _cfg(uri="none", **extra):
    return config_from_dict({"name": "rec", "track": {"tracking_uri": uri}, **extra})


def test_record_lifecycle_and_resume(tmp_path):
    t = RunTracker(_cfg(), tmp_path, kind="train")
    t.start()
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["status"] == "RUNNING" and rec["kind"] == "train" and rec["config"]["name"] == "rec"
    assert {"host", "device", "threadsum.version", "instance_type"} <= set(rec["tags"])
    t.log_params({"accumulation": 4})
    t.log_metrics({"loss": 3.0, "lr": 1e-4}, step=10)
    t.log_metrics({"loss": 3.5, "val_loss": 3.2, "rougeL": 0.2}, step=20)
    t.log_metrics({"loss": float("nan"), "rougeL": 0.1, "note": "text is not a metric"}, step=30)
    # every log call rewrites the record, so a process killed with -9 still leaves its last step
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["last_step"] == 30 and rec["params"] == {"accumulation": 4}
    assert rec["best"] == {"loss": 3.0, "val_loss": 3.2, "rougeL": 0.2}
    assert "note" not in rec["metrics"]
    t.finish("killed", cause="preempted: spot interruption", last_step=30)
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["status"] == "KILLED" and rec["cause"] == "preempted: spot interruption" and rec["ended"]

    again = RunTracker(_cfg(), tmp_path, kind="train")
    again.start()
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["status"] == "RUNNING" and rec["resumed"] == 1 and "cause" not in rec
    assert rec["history"][0]["previous_cause"] == "preempted: spot interruption"
    assert rec["history"][0]["from_step"] == 30
    again.finish("FINISHED", last_step=50, summary={"epochs": 2.0, "eval": {"test": {"rougeL": 0.3}}})
    again.update_summary({"eval": {"validation": {"rougeL": 0.25}}})
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["status"] == "FINISHED" and rec["last_step"] == 50
    assert rec["summary"] == {"epochs": 2.0, "eval": {"test": {"rougeL": 0.3}, "validation": {"rougeL": 0.25}}}
    with pytest.raises(ValueError, match="not one of"):
        again.finish("DONE")


def test_context_manager_records_failure_and_reraises(tmp_path):
    with pytest.raises(RuntimeError):
        with RunTracker(_cfg(), tmp_path) as t:
            t.log_metrics({"loss": 2.0}, step=7)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["status"] == "FAILED" and rec["last_step"] == 7
    assert rec["cause"].startswith("OOM: RuntimeError: CUDA out of memory")

    with RunTracker(_cfg(), tmp_path / "ok"):
        pass
    assert json.loads((tmp_path / "ok" / "run.json").read_text())["status"] == "FINISHED"


class PreemptedError(Exception):
    pass


@pytest.mark.parametrize("exc,status,prefix", [
    (MemoryError(), "FAILED", "OOM: MemoryError"),
    (RuntimeError("CUDA out of memory"), "FAILED", "OOM:"),
    (PreemptedError("SIGTERM from SageMaker"), "KILLED", "preempted:"),
    (KeyboardInterrupt(), "KILLED", "killed:"),
    (SystemExit(143), "KILLED", "killed:"),
    (ValueError("bad shape"), "FAILED", "crashed: ValueError: bad shape"),
])
def test_classify_failure(exc, status, prefix):
    got_status, cause = classify_failure(exc)
    assert got_status == status and cause.startswith(prefix)


def test_disabled_tracker_writes_nothing(tmp_path):
    t = RunTracker(_cfg(), tmp_path / "rank1", enabled=False)
    t.start()
    t.log_metrics({"loss": 1.0}, step=1)
    t.finish("FINISHED")
    assert not (tmp_path / "rank1").exists()


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(_cfg(""), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri(_cfg("none"), tmp_path) is None
    assert resolve_tracking_uri(_cfg("NONE"), tmp_path) is None
    assert resolve_tracking_uri(_cfg("http://mlflow:5000"), tmp_path) == "http://mlflow:5000"
    assert resolve_tracking_uri(_cfg(str(tmp_path / "shared.db")), tmp_path) == f"sqlite:///{tmp_path.resolve()}/shared.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(_cfg(""), tmp_path) == "http://env:5000"
    assert resolve_tracking_uri(_cfg("none"), tmp_path) is None  # the config wins over the environment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "none")
    assert resolve_tracking_uri(_cfg(""), tmp_path) is None


def test_without_mlflow_installed(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # default backend: training goes on with the JSON record and a warning naming the extra
    with pytest.warns(UserWarning, match=r"threadsum\[track\]"):
        t = RunTracker(_cfg(""), tmp_path / "a")
        t.start()
    t.finish("FINISHED")
    assert json.loads((tmp_path / "a" / "run.json").read_text())["status"] == "FINISHED"
    # an explicit tracking URI is a request for MLflow: fail early and say how to fix it
    with pytest.raises(MissingExtraError, match=r"pip install 'threadsum\[track\]'"):
        RunTracker(_cfg("http://mlflow:5000"), tmp_path / "b").start()
