"""Grounding in `evaluate`: every system checked against the rendered thread; the report section."""
from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from threadsum.evaluate.report import grounding_line, write_report  # noqa: E402
from threadsum.evaluate.run import grounding  # noqa: E402

# a prepared record's source: the renderer's default template (Subject once, From/To/Date per email)
RECORD = {
    "thread_id": "7", "subject": "Q3 budget",
    "source": "Subject: Q3 budget\nFrom: Ann Smith\nTo: Bob Jones\nDate: 2002-01-29 11:00\n"
              "Bob, can you send the revised Q3 budget by Friday? The total is $45,000.\n---\n"
              "From: Bob Jones\nTo: Ann Smith\nDate: 2002-01-29 12:00\nYes, I will send it Thursday.",
}


def test_grounding_per_system_against_the_rendered_thread():
    systems = {
        "model": ["Bob asks Ann to send the revised Q3 budget by Friday. The total is $54,000."],
        "lead3": ["Bob, can you send the revised Q3 budget by Friday?"],
        "reference": ["Ann asks Bob to send the revised Q3 budget by Friday. On Tuesday, January 29, Bob agrees to send "
                      "it Thursday."],
    }
    stats, claims = grounding([RECORD], systems)
    assert stats["model"]["flagged_share"] == 1.0
    assert stats["model"]["attribution_errors"] == 1  # Bob never asked
    assert stats["model"]["unsupported_per_summary"]["money"] == 1.0
    assert stats["lead3"]["flagged_share"] == 0.0
    # Tuesday January 29 is the emails' date (the rendering's Date: lines) and Bob wrote a yes
    assert stats["reference"]["flagged_share"] == 0.0, [(c.text, c.reason) for c in claims["reference"][0]]
    assert "model 100%" in grounding_line(stats) and "reference 0%" in grounding_line(stats)


def test_report_lists_the_worst_examples_with_flagged_spans(tmp_path):
    stats, claims = grounding([RECORD], {"model": ["Carl Diaz asks Bob for $54,000."], "reference": ["Ann asks Bob."]})
    s = lambda m: {"mean": m, "ci95": [m, m]}  # noqa: E731
    result = {"model_dir": "m", "split": "test", "n_threads": 1, "model": {k: s(0.3) for k in
              ("rouge1", "rouge2", "rougeL", "rougeLsum")}, "baselines": {}, "lengths": {}, "grounding": stats}
    rows = [{"thread_id": "7", "source_tokens": 50, "prediction_words": 6, "reference_words": 3,
             "prediction": "Carl Diaz asks Bob for $54,000.", "reference": "Ann asks Bob.", "rouge1": 0.3,
             "rouge2": 0.1, "rougeL": 0.3, "rougeLsum": 0.3, "unsupported": [c for c in claims["model"][0] if not c.supported]}]
    text = write_report(result, rows, tmp_path).read_text()
    assert "## Grounding" in text and "| **model** | 100.0% |" in text and "| reference | 0.0% |" in text
    assert "**Carl Diaz** (person)" in text and "**$54,000** (money)" in text
