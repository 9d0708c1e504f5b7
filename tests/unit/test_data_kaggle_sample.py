"""The real Kaggle rows load with counts matching their files (skipped when the sample is absent)."""
import csv

from threadsum.data.readers import read_source


def test_real_sample_counts_match_files(kaggle_sample):
    with (kaggle_sample / "email_thread_details.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with (kaggle_sample / "email_thread_summaries.csv").open(newline="", encoding="utf-8") as fh:
        sums = list(csv.DictReader(fh))
    res = read_source(kaggle_sample)
    assert len(rows) == 55 and len(sums) == 10
    assert res.counts["emails"] == {"input": 55, "kept": 55, "rejected": 0, "by_reason": {}}
    assert res.counts["threads"] == {"input": 10, "kept": 10, "rejected": 0, "by_reason": {}}
    assert res.rejects == [] and res.counts["warnings"] == {}
    by = {t.thread_id: t for t in res.threads}
    assert [len(by[str(i)].emails) for i in range(1, 11)] == [5, 7, 6, 4, 8, 4, 4, 5, 5, 7]
    for t in res.threads:
        assert [e.date for e in t.emails] == sorted(e.date for e in t.emails)
        assert t.summary == next(s["summary"] for s in sums if s["thread_id"] == t.thread_id)
    first = by["1"].emails[0]
    assert first.sender == "Gossett, Jeffrey C. JGOSSET"
    assert first.recipients == ["Giron, Darron C. Dgiron", "Love, Phillip M. Plove"]
    assert str(first.date) == "2002-01-29 11:23:42"
    assert by["3"].emails[0].recipients == ['"CHOBY, C." <G7PWC3@stennis.navy.mil']
