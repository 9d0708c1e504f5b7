"""Real MLflow on a local sqlite backend: a successful, a failed and a resumed run; the experiment log."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from threadsum.config import config_from_dict  # noqa: E402
from threadsum.hashing import folder_sha256  # noqa: E402
from threadsum.runs import (  # noqa: E402
    collect_runs,
    find_runs,
    render_report,
    run_row,
    runs_report_command,
)
from threadsum.track import RunTracker  # noqa: E402


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """One sqlite database for the module: creating its schema costs seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    return root, str(root / "mlflow.db")


def _cfg(db: str, lr: float = 5e-5):
    return config_from_dict({"name": "tiny", "model": {"init": "random"}, "train": {"lr": lr, "max_steps": 20},
                             "track": {"tracking_uri": db, "experiment": "unit", "artifact_max_mb": 0.001}})


@pytest.mark.slow
def test_success_failure_resume_and_report(backend):
    root, db = backend
    runs = root / "outputs"

    # a successful run: params (the whole config), metric history, tags, an artifact
    ok = RunTracker(_cfg(db), runs / "ok", kind="train")
    ok.start()
    ok.log_params({"accumulation_steps": 4})
    for step, loss in ((1, 4.0), (2, 3.5), (3, 3.1)):
        ok.log_metrics({"loss": loss, "tokens_per_s": 1000.0 + step}, step=step)
    card = runs / "ok" / "README.md"
    card.write_text("# model card\n")
    ok.log_artifact(card)
    model = runs / "ok" / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "tokenizer" / "vocab.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 4096)  # above the 1 KB limit of this test
    ok.log_artifact(model)
    ok.finish("FINISHED", last_step=3, summary={"epochs": 1.0, "peak_memory_gb": 1.5, "cost_usd": 0.12,
                                                 "eval": {"test": {"rougeL": 0.31, "rouge1": 0.4, "rouge2": 0.1,
                                                                   "baseline.lead3.rougeL": 0.2, "n_threads": 9}}})

    # a deliberately failed run: the cause and the last step are recorded in MLflow and run.json
    with pytest.raises(RuntimeError):
        with RunTracker(_cfg(db, lr=1.0), runs / "bad", kind="train") as bad:
            bad.log_metrics({"loss": 9.0}, step=5)
            raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")

    client = MlflowClient(f"sqlite:///{db}")
    r_ok = client.get_run(ok.run_id)
    r_bad = client.get_run(bad.run_id)
    assert r_ok.info.status == "FINISHED" and r_bad.info.status == "FAILED"
    assert r_bad.data.tags["threadsum.cause"].startswith("OOM: RuntimeError: CUDA out of memory")
    assert r_bad.data.tags["threadsum.last_step"] == "5"
    assert sorted((m.step, m.value) for m in client.get_metric_history(ok.run_id, "loss")) == [(1, 4.0), (2, 3.5), (3, 3.1)]
    assert r_ok.data.params["train.lr"] == "5e-05" and r_bad.data.params["train.lr"] == "1.0"
    assert r_ok.data.params["accumulation_steps"] == "4"
    assert r_ok.data.metrics["summary.peak_memory_gb"] == 1.5
    for tag in ("host", "device", "threadsum.version", "instance_type", "threadsum.kind"):
        assert r_ok.data.tags[tag]
    assert sorted(a.path for a in client.list_artifacts(ok.run_id)) == ["README.md", "model"]
    assert sorted(a.path for a in client.list_artifacts(ok.run_id, "model")) == ["model/config.json", "model/tokenizer"]
    assert [a.path for a in client.list_artifacts(ok.run_id, "model/tokenizer")] == ["model/tokenizer/vocab.json"]
    assert r_ok.data.tags["artifacts.not_copied.model"] == "model.safetensors"
    assert r_ok.info.artifact_uri.startswith((root / "mlartifacts").as_uri())  # beside the db, not ./mlruns
    assert json.loads((runs / "bad" / "run.json").read_text())["mlflow"]["run_id"] == bad.run_id

    # resuming the failed run continues the same MLflow run; a changed setting is kept as a tag
    again = RunTracker(_cfg(db, lr=0.5), runs / "bad", kind="train")
    again.start()
    assert again.run_id == bad.run_id
    run = client.get_run(bad.run_id)
    assert run.info.status == "RUNNING" and "threadsum.cause" not in run.data.tags
    assert run.data.tags["threadsum.previous_cause"].startswith("OOM:")
    assert run.data.tags["resumed.train.lr"] == "0.5" and run.data.params["train.lr"] == "1.0"
    again.log_metrics({"loss": 8.0}, step=6)
    again.finish("KILLED", cause="preempted: spot interruption", last_step=6)
    run = client.get_run(bad.run_id)
    assert run.info.status == "KILLED" and run.data.tags["threadsum.cause"] == "preempted: spot interruption"
    assert sorted(m.step for m in client.get_metric_history(bad.run_id, "loss")) == [5, 6]

    # the experiment log lists both runs, and the failed one with its causes
    records = find_runs(runs)
    assert [r["_id"] for r in records] == ["ok", "bad"]
    rows = {r["_id"]: run_row(r) for r in records}
    assert rows["ok"]["best_rougeL"] == pytest.approx(0.31) and rows["ok"]["cost_usd"] == pytest.approx(0.12)
    assert rows["bad"]["cause"] == "preempted: spot interruption" and rows["bad"]["steps"] == 6
    path = runs_report_command(str(runs))
    text = path.read_text()
    assert path == runs / "EXPERIMENTS.md"
    assert text.split("\n", 3)[3] == render_report(records, str(runs)).split("\n", 3)[3]  # past the dated line
    assert "### ok (train, FINISHED)" in text and "### bad (train, KILLED)" in text
    assert "RL 31.00 (lead baseline RL 20.00)" in text
    failed = text.split("## Failed approaches", 1)[1]
    assert "| bad |" in failed and "preempted: spot interruption" in failed and "OOM: RuntimeError: CUDA out of memory" in failed
    assert "| ok |" not in failed
    assert "`train.lr`: 5e-05 -> 1.0" in text or "`train.lr`: 5e-05 -> 0.5" in text

    # the same runs read back from MLflow alone (output folders elsewhere, e.g. SageMaker jobs)
    from_mlflow = collect_runs(root / "elsewhere", tracking_uri=f"sqlite:///{db}")
    by_run = {r["mlflow"]["run_id"]: run_row(r) for r in from_mlflow}
    assert set(by_run) == {ok.run_id, bad.run_id}
    assert by_run[bad.run_id]["status"] == "KILLED" and by_run[bad.run_id]["cause"] == "preempted: spot interruption"
    assert by_run[bad.run_id]["steps"] == 6 and by_run[ok.run_id]["peak_memory_gb"] == pytest.approx(1.5)
    assert by_run[ok.run_id]["model"].startswith("random")
    text = render_report(from_mlflow, "mlflow")
    failed = text.split("## Failed approaches", 1)[1]
    assert "preempted: spot interruption" in failed and "OOM: RuntimeError" in failed
    # both sources together: each run once
    assert len(collect_runs(runs, tracking_uri=f"sqlite:///{db}")) == 2


def _model_folder(path, fill: float):
    """A model folder as export writes it: weights in safetensors, config, tokenizer."""
    import torch
    from safetensors.torch import save_file

    (path / "tokenizer").mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "tokenizer" / "vocab.json").write_text("{}")
    save_file({"w": torch.full((64, 64), fill)}, str(path / "model.safetensors"))
    return path


def _artifact_files(run) -> list[str]:
    """Every file of the run's artifact folder (mlartifacts/<experiment>/<run>/artifacts), relative."""
    root = Path(urlparse(run.info.artifact_uri).path)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("log_model", [False, True])
def test_model_weights_are_recorded_by_hash_and_copied_only_when_asked(backend, log_model):
    root, db = backend
    out = root / f"weights-{log_model}"
    model = _model_folder(out / "model", fill=float(log_model))
    cfg = config_from_dict({"name": "tiny", "model": {"init": "random"},
                            "track": {"tracking_uri": db, "experiment": "unit-weights", "log_model": log_model}})
    tracker = RunTracker(cfg, out, kind="train")
    tracker.start()
    tracker.log_model(model)
    tracker.finish("FINISHED", last_step=1)

    run = MlflowClient(f"sqlite:///{db}").get_run(tracker.run_id)
    files = _artifact_files(run)
    assert "model/config.json" in files and "model/tokenizer/vocab.json" in files
    assert ("model/model.safetensors" in files) is log_model
    assert any(f.endswith(".safetensors") for f in files) is log_model
    digest = folder_sha256(model, (".safetensors",))
    assert run.data.tags["model.sha256"] == digest and run.data.tags["model.path"] == str(model.resolve())
    record = json.loads((out / "run.json").read_text())["model"]
    assert record == {"path": str(model.resolve()), "sha256": digest, "weights": ["model.safetensors"],
                      "bytes": (model / "model.safetensors").stat().st_size, "copied": log_model}
    assert (run.data.tags.get("artifacts.not_copied.model") == "model.safetensors") is not log_model


def test_model_hash_follows_the_weights_not_the_folder(tmp_path):
    a = _model_folder(tmp_path / "a", fill=1.0)
    b = _model_folder(tmp_path / "b", fill=1.0)
    (b / "config.json").write_text('{"other": 1}')  # not a weight file: same hash
    c = _model_folder(tmp_path / "c", fill=2.0)
    weights = (".safetensors",)
    assert folder_sha256(a, weights) == folder_sha256(b, weights) != folder_sha256(c, weights)
    assert folder_sha256(a) != folder_sha256(b)  # every file counts without a suffix filter
