"""The evaluation report from fixed results: markdown content, plots, loss curves from metrics.jsonl."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from threadsum.evaluate.report import read_loss_curves, write_report  # noqa: E402


def _result():
    s = lambda m: {"mean": m, "ci95": [m - 0.02, m + 0.02]}  # noqa: E731
    return {
        "model_dir": "outputs/run/model", "split": "test", "n_threads": 4, "empty_predictions": 0,
        "model": {k: s(0.40) for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")},
        "baselines": {"lead3": {k: s(0.25) for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")},
                      "subject": {k: s(0.05) for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}},
        "lengths": {"prediction_words": {"n": 4, "mean": 80.0, "median": 80, "p10": 70, "p90": 90, "max": 95},
                    "reference_words": {"n": 4, "mean": 83.0, "median": 83, "p10": 70, "p90": 95, "max": 99}},
        "speed": {"seconds": 2.0, "threads_per_s": 2.0, "generated_tokens_per_s": 100.0},
        "device": "cpu", "dtype": "float32", "generation": {"num_beams": 4}, "bootstrap_samples": 100,
    }


def _rows():
    return [{"thread_id": str(i), "source_tokens": 100 * (i + 1), "prediction_words": 70 + 5 * i,
             "reference_words": 80 + i, "prediction": f"pred {i}", "reference": f"ref {i}",
             "rouge1": 0.3 + 0.05 * i, "rouge2": 0.1, "rougeL": 0.2 + 0.1 * i, "rougeLsum": 0.3,
             "lead3.rougeL": 0.2, "subject.rougeL": 0.05} for i in range(4)]


def test_report_markdown_and_plots(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join([
        json.dumps({"step": 10, "loss": 4.0, "lr": 1e-4}),
        json.dumps({"step": 20, "loss": 3.0}),
        json.dumps({"step": 20, "val_loss": 3.5}),
        "not json",
        json.dumps({"loss": 9.9}),  # no step: ignored
        json.dumps({"step": 30, "eval_loss": 3.1, "loss": 2.5}),
    ]))
    curves = read_loss_curves(metrics)
    assert curves == {"loss": [(10, 4.0), (20, 3.0), (30, 2.5)], "val_loss": [(20, 3.5), (30, 3.1)]}

    path = write_report(_result(), _rows(), tmp_path / "eval", metrics)
    text = path.read_text()
    assert "| **model** | 40.00 (38.0-42.0) |" in text
    assert "| baseline: lead3 | 25.00 (23.0-27.0) |" in text
    assert "minus lead3: +15.00 points" in text
    assert "2.00 threads/s" in text
    assert "### lowest ROUGE-L: thread 0 (ROUGE-L 20.0)" in text and "### highest ROUGE-L: thread 3" in text
    for png in ("rouge_by_source_length.png", "lengths.png", "loss_curves.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:4] == b"\x89PNG"
        assert f"({png})" in text


def test_report_without_training_metrics(tmp_path):
    path = write_report(_result(), _rows(), tmp_path, None)
    assert not (tmp_path / "loss_curves.png").exists()
    assert "loss_curves" not in path.read_text()
