"""The synthetic corpus: exact Kaggle layout, real quirks, deterministic learnable summaries."""
import ast
import csv
import re
from datetime import datetime

from threadsum.data.synth import (
    DETAILS_COLUMNS,
    SUMMARIES_COLUMNS,
    generate,
    write_kaggle_csv,
)


def _read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_layout_and_fields(tmp_path):
    details, summaries = write_kaggle_csv(tmp_path, 40, seed=3)
    rows, srows = _read(details), _read(summaries)
    assert rows[0] == DETAILS_COLUMNS and srows[0] == SUMMARIES_COLUMNS
    assert len(srows) == 41
    ids = [int(r[0]) for r in rows[1:]]
    assert set(ids) == set(range(1, 41))
    assert ids != sorted(ids)  # rows are shuffled, as in copies of the real corpus
    for tid, subject, ts, sender, to, body in rows[1:]:
        datetime.strptime(ts, "%Y-%m-%d %H:%M:%S")
        recipients = ast.literal_eval(to)
        assert isinstance(recipients, list) and recipients and all(isinstance(x, str) for x in recipients)
        assert sender and body.strip() and subject
    # Enron names are split at the comma in the list literal: a bare surname followed by 'First Userid'
    assert any(re.match(r"^\['[A-Z][a-z]+', '[A-Z][a-z]+( [A-Z]\.)? [A-Z][a-z]+'", r[4]) for r in rows[1:])


def test_deterministic_by_seed(tmp_path):
    a = write_kaggle_csv(tmp_path / "a", 15, seed=7)
    b = write_kaggle_csv(tmp_path / "b", 15, seed=7)
    c = write_kaggle_csv(tmp_path / "c", 15, seed=8)
    assert a[0].read_bytes() == b[0].read_bytes() and a[1].read_bytes() == b[1].read_bytes()
    assert a[1].read_bytes() != c[1].read_bytes()


def test_quirks_present(tmp_path):
    details, _ = write_kaggle_csv(tmp_path, 200, seed=0)
    bodies = [r[5] for r in _read(details)[1:]]
    share = lambda pat: sum(bool(re.search(pat, b)) for b in bodies) / len(bodies)  # noqa: E731
    assert share(r"-----Original Message-----") > 0.3
    assert share(r"Forwarded by") > 0.05
    assert share(r"=09|=20|=\n") > 0.02
    assert share(r"property of Enron Corp") > 0.01
    assert max(len(ast.literal_eval(r[4])) for r in _read(details)[1:]) > 20  # a long distribution list
    emails_per_thread = (len(bodies)) / 200
    assert 4.5 < emails_per_thread < 6.0  # DATA.md: about 5.2


def test_summary_is_a_function_of_copyable_facts():
    for t in generate(50, seed=1):
        f = t.facts
        text = "\n".join(m.body for m in t.mails)
        assert t.summary.startswith(f"The email thread discusses {f['topic']}.")
        for fact in (f["topic"], f["request"], f["decision"]):
            assert fact in text.replace("=\n", "")  or fact in re.sub(r"=\n", "", text)
        assert f["asker"] in t.summary and f["decider"] in t.summary
        if f["forward"]:
            assert f["forward"] in re.sub(r"\s+", " ", text.replace("=\n", ""))
            assert f["forward"] in t.summary
    # same facts -> same summary (regenerating gives identical text)
    assert [t.summary for t in generate(5, 2)] == [t.summary for t in generate(5, 2)]
