"""prepare explains a failed run (rejects.jsonl + prepare.json) and counts a summary kept only when paired."""
import json

import pytest

from threadsum.config import load_config
from threadsum.data.prepare import PrepareError, StrictModeError, prepare
from threadsum.data.prepared import PreparedDataError, open_prepared

pytestmark = pytest.mark.slow

HEADER = "thread_id,subject,timestamp,from,to,body\n"


def _cfg(tmp_path, src, **extra):
    over = [f"data.source={src}", f"data.prepared_dir={tmp_path / 'prepared'}", "data.max_source_tokens=128",
            "data.max_target_tokens=32", "model.init=random", "model.name_or_path=null", "model.tiny.vocab_size=400"]
    return load_config(None, over + [f"{k}={v}" for k, v in extra.items()])


def _corpus(tmp_path, details, summaries):
    src = tmp_path / "src"
    src.mkdir()
    (src / "email_thread_details.csv").write_text(HEADER + details)
    (src / "email_thread_summaries.csv").write_text("thread_id,summary\n" + summaries)
    return src


@pytest.mark.parametrize("strict", [False, True])
def test_failed_prepare_still_writes_rejects_and_counts(tmp_path, strict):
    src = _corpus(tmp_path, "1,S,never,A,[],hello\n1,S,,B,[],hi\n", "1,A summary.\n2,An orphan.\n")
    with pytest.raises(StrictModeError if strict else PrepareError) as err:
        prepare(_cfg(tmp_path, src, **({"data.strict": "true"} if strict else {})))
    out = tmp_path / "prepared"
    assert str(out / "rejects.jsonl") in str(err.value)
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["bad_timestamp", "bad_timestamp", "summary_without_thread",
                                                    "thread_without_valid_emails"]
    info = json.loads((out / "prepare.json").read_text())
    assert info["status"] == "failed" and info["emails"]["input"] == 2 and info["emails"]["rejected"] == 2
    assert info["summaries"] == {"input": 2, "kept": 0, "rejected": 0, "unpaired": 2, "by_reason": {}}
    with pytest.raises(PreparedDataError):  # nothing can train on a failed folder
        open_prepared(out)


def test_report_counts_only_paired_summaries(tmp_path):
    rows = "".join(f"{i},S{i},2001-01-0{i} 10:00:00,A,['B'],Body of thread {i} about the budget.\n" for i in (1, 2, 3))
    src = _corpus(tmp_path, rows, "1,One.\n2,Two.\n3,Three.\n4,Four has no thread.\n5,Five neither.\n")
    info = prepare(_cfg(tmp_path, src))
    assert info["summaries"] == {"input": 5, "kept": 3, "rejected": 0, "unpaired": 2, "by_reason": {}}
    report = (tmp_path / "prepared" / "report.md").read_text()
    assert "| summary rows | 5 | 3 | 2 |" in report
    assert "What each step removed (audit)" in report and "| strip_signatures |" in report
    assert info["status"] == "ok"
    assert all(st["audit"]["unique_words_unmatched"] == 0 for st in info["cleaning"]["steps"].values())
