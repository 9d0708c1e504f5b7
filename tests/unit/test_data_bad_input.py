"""Bad input never crashes the readers: each kind is rejected (or repaired) with its reason, counts reconcile."""
import json

import pytest

from threadsum.data.readers import read_source

HEADER = "thread_id,subject,timestamp,from,to,body\n"
GOOD = ("1,Budget,2001-01-01 10:00:00,\"Mann, Kay KMANN\",\"['Sara Jones']\",Can you send the budget?\n"
        "1,RE: Budget,2001-01-01 11:00:00,Sara Jones,\"['Kay Mann']\",Sent it.\n"
        "2,Lunch,2001-02-01 09:00:00,Tom,\"['Ann']\",Lunch at noon?\n")
SUMS = "thread_id,summary\n1,Kay asks Sara for the budget.\n2,Tom proposes lunch.\n"


def _write(tmp_path, details=HEADER + GOOD, summaries=SUMS, raw_details=None):
    (tmp_path / "email_thread_details.csv").write_bytes(raw_details if raw_details is not None else details.encode())
    (tmp_path / "email_thread_summaries.csv").write_text(summaries)
    return read_source(tmp_path)


def _reconciled(res):
    for what in ("emails", "threads"):
        c = res.counts[what]
        assert c["input"] == c["kept"] + c["rejected"], (what, c)
        assert c["rejected"] == sum(c["by_reason"].values())
    assert res.counts["emails"]["kept"] == sum(len(t.emails) for t in res.threads)
    assert res.counts["threads"]["kept"] == len(res.threads)


# (name, extra detail rows, summaries file, level, reason)
ROW_CASES = [
    ("missing thread_id", ",X,2001-01-01 10:00:00,A,\"['B']\",hello\n", SUMS, "email", "missing_thread_id"),
    ("bad thread_id", "abc,X,2001-01-01 10:00:00,A,\"['B']\",hello\n", SUMS, "email", "bad_thread_id"),
    ("empty body", "2,X,2001-01-01 10:00:00,A,\"['B']\",\"  \"\n", SUMS, "email", "empty_body"),
    ("unparseable timestamp", "2,X,29th of Jan,A,\"['B']\",hello\n", SUMS, "email", "bad_timestamp"),
    ("missing timestamp", "2,X,,A,\"['B']\",hello\n", SUMS, "email", "bad_timestamp"),
    ("too many fields", "2,X,2001-01-01 10:00:00,A,\"['B']\",hello,extra\n", SUMS, "email", "malformed_row"),
    ("too few fields", "2,X,2001-01-01 10:00:00\n", SUMS, "email", "malformed_row"),
    ("thread without summary", "3,X,2001-01-01 10:00:00,A,\"['B']\",hello\n", SUMS, "thread", "thread_without_summary"),
    ("summary without thread", "", SUMS + "9,Orphan summary.\n", "thread", "summary_without_thread"),
    ("duplicate summary", "", SUMS + "1,Another summary.\n", "summary", "duplicate_summary"),
    ("empty summary", "3,X,2001-01-01 10:00:00,A,\"['B']\",hello\n", SUMS + "3,\n", "summary", "empty_summary"),
    ("bad summary id", "", SUMS + "x-1,Something.\n", "summary", "bad_thread_id"),
    ("all emails of a thread bad", "3,X,never,A,\"['B']\",hello\n", SUMS + "3,S3.\n", "thread",
     "thread_without_valid_emails"),
]


@pytest.mark.parametrize("name,rows,sums,level,reason", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_row_level_rejects(tmp_path, name, rows, sums, level, reason):
    res = _write(tmp_path, HEADER + GOOD + rows, sums)
    assert any(r["level"] == level and r["reason"] == reason for r in res.rejects), res.rejects
    r = next(r for r in res.rejects if r["reason"] == reason)
    assert r["detail"] and r["source"]
    _reconciled(res)
    assert {t.thread_id for t in res.threads} >= {"1"}  # the good threads survive


def test_thread_without_summary_counts_its_emails(tmp_path):
    res = _write(tmp_path, HEADER + GOOD + "3,X,2001-01-01 10:00:00,A,\"['B']\",a\n3,X,2001-01-02 10:00:00,B,[],b\n")
    assert res.counts["emails"]["by_reason"] == {"thread_rejected:thread_without_summary": 2}
    _reconciled(res)


# (name, raw details bytes, warning reason, check)
REPAIR_CASES = [
    ("to not a list literal", (HEADER + GOOD + "2,X,2001-01-01 10:00:00,A,\"Ann, Bob\",hi\n").encode(),
     "to_not_a_list_literal"),
    ("to with code", (HEADER + GOOD + "2,X,2001-01-01 10:00:00,A,\"[open('x')]\",hi\n").encode(), "to_not_a_list_literal"),
    ("invalid utf-8", (HEADER + GOOD).encode() + b"2,X,2001-01-01 10:00:00,A,[],caf\xe9 \xff\n", "invalid_utf8_replaced"),
    ("nul bytes", (HEADER + GOOD).encode() + b"2,X,2001-01-01 10:00:00,A,[],nul\x00here\n", "nul_bytes_removed"),
    ("10 MB body", (HEADER + GOOD + "2,X,2001-01-01 10:00:00,A,[],\"" + "x" * 10_000_000 + "\"\n").encode(),
     "body_cut_to_max_chars"),
]


@pytest.mark.parametrize("name,raw,reason", REPAIR_CASES, ids=[c[0] for c in REPAIR_CASES])
def test_repairs_keep_the_row(tmp_path, name, raw, reason):
    res = _write(tmp_path, raw_details=raw)
    assert res.counts["warnings"].get(reason, 0) >= 1
    assert res.counts["emails"] == {"input": 4, "kept": 4, "rejected": 0, "by_reason": {}}
    t2 = next(t for t in res.threads if t.thread_id == "2")
    assert len(t2.emails) == 2
    assert all(len(e.body) <= 200_000 and "\x00" not in e.body for e in t2.emails)
    _reconciled(res)


FILE_CASES = [
    ("empty details file", b"", SUMS, "empty_file"),
    ("missing column", b"thread_id,subject,timestamp,from,to\n1,S,2001-01-01 10:00:00,A,[]\n", SUMS, "missing_column"),
    ("semicolon delimiter", (HEADER + GOOD).replace(",", ";").encode(), SUMS, "wrong_delimiter"),
    ("header only", HEADER.encode(), "thread_id,summary\n", None),
]


@pytest.mark.parametrize("name,raw,sums,reason", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_file_level_problems(tmp_path, name, raw, sums, reason):
    res = _write(tmp_path, sums, raw_details=raw) if False else _write(tmp_path, summaries=sums, raw_details=raw)
    if reason:
        rec = next(r for r in res.rejects if r["level"] == "file")
        assert rec["reason"] == reason and "email_thread_details.csv" in rec["detail"]
        # with the details file unusable every summary is an orphan: nothing is lost silently
        assert res.counts["threads"]["by_reason"] == {"summary_without_thread": 2}
    assert res.threads == []
    _reconciled(res)


def test_missing_summaries_file(tmp_path):
    (tmp_path / "email_thread_details.csv").write_text(HEADER + GOOD)
    res = read_source(tmp_path)
    assert res.counts["files"]["by_reason"] == {"missing_file": 1}
    assert res.counts["threads"]["by_reason"] == {"thread_without_summary": 2}
    _reconciled(res)


def test_jsonl_bad_lines(tmp_path):
    p = tmp_path / "t.jsonl"
    good = {"thread_id": "a", "summary": "S", "emails": [{"from": "A", "to": [], "date": "2001-01-01", "body": "x"}]}
    p.write_text("\n".join([
        json.dumps(good),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"thread_id": "b", "summary": "S", "emails": []}),
        json.dumps({"summary": "S", "emails": [{"body": "x", "date": "2001-01-01"}]}),
        json.dumps(good),
        json.dumps({"thread_id": "c", "summary": "S", "emails": ["oops", {"body": "", "date": "2001-01-01"}]}),
    ]))
    res = read_source(p)
    reasons = sorted(r["reason"] for r in res.rejects)
    assert reasons == sorted(["invalid_json", "not_a_thread_object", "thread_without_valid_emails", "missing_thread_id",
                              "duplicate_thread_id", "malformed_row", "empty_body", "thread_without_valid_emails"])
    assert [t.thread_id for t in res.threads] == ["a"]
    _reconciled(res)


def test_mail_bad_inputs(tmp_path):
    (tmp_path / "empty.eml").write_bytes(b"")
    (tmp_path / "nobody.eml").write_bytes(b"From: a@x\nSubject: hi\nContent-Type: image/png\n\nxxxx")
    (tmp_path / "ok.eml").write_bytes(b"From: a@x\nSubject: hi\nMessage-ID: <m1@x>\n\nhello")
    res = read_source(tmp_path, require_summary=False)
    assert sorted(r["reason"] for r in res.rejects) == ["empty_body", "empty_file"]
    assert len(res.threads) == 1
    _reconciled(res)
    empty_box = tmp_path / "x.mbox"
    empty_box.write_bytes(b"")
    assert read_source(empty_box).rejects[0]["reason"] == "empty_file"
