"""Readers: Kaggle CSV/JSON, .eml, .mbox, JSONL; safe `to` parsing; time order."""
import csv
import json
from datetime import datetime
from email.message import EmailMessage

import pytest

from threadsum.data.readers import (
    parse_mail_bytes,
    parse_recipients,
    parse_timestamp,
    read_path,
    read_source,
    thread_emails,
)
from threadsum.data.synth import write_kaggle_csv, write_kaggle_json


def test_parse_recipients_is_safe_and_regroups_enron_names():
    assert parse_recipients("['Giron', 'Darron C. Dgiron', 'Love', 'Phillip M. Plove']") == (
        ["Giron, Darron C. Dgiron", "Love, Phillip M. Plove"], True)
    assert parse_recipients("['Kay Mann']") == (["Kay Mann"], True)
    got, ok = parse_recipients("['\"Bass', 'Jason\" <Jason.Bass2@COMPAQ.com> @ ENRON']")
    assert ok and got == ['"Bass, Jason" <Jason.Bass2@COMPAQ.com> @ ENRON']
    # never evaluated: a call expression falls back to a comma split, flagged not ok
    got, ok = parse_recipients("[__import__('os').system('echo hi')]")
    assert not ok and isinstance(got, list)
    assert parse_recipients("a@x.com, b@y.com") == (["a@x.com", "b@y.com"], False)


def test_parse_timestamp_forms():
    want = datetime(2002, 1, 29, 11, 23, 42)
    assert parse_timestamp("2002-01-29 11:23:42") == want
    epoch = 1012303422  # 2002-01-29 11:23:42 UTC
    assert parse_timestamp(epoch) == want
    assert parse_timestamp(epoch * 1000) == want
    assert parse_timestamp(str(epoch)) == want
    assert parse_timestamp("Tue, 29 Jan 2002 13:23:42 +0200") == want
    assert parse_timestamp("yesterday") is None and parse_timestamp("") is None


def test_kaggle_csv_sorted_by_time(tmp_path):
    write_kaggle_csv(tmp_path, 30, seed=5)
    res = read_source(tmp_path)
    assert res.counts["threads"] == {"input": 30, "kept": 30, "rejected": 0, "by_reason": {}}
    n_rows = sum(1 for _ in csv.reader((tmp_path / "email_thread_details.csv").open())) - 1
    assert res.counts["emails"]["input"] == n_rows == res.counts["emails"]["kept"]
    for t in res.threads:
        dates = [e.date for e in t.emails]
        assert dates == sorted(dates)
        assert t.summary.startswith("The email thread discusses")


def test_ties_keep_file_order(tmp_path):
    (tmp_path / "email_thread_details.csv").write_text(
        "thread_id,subject,timestamp,from,to,body\n"
        "1,S,2001-01-01 10:00:00,B,['x'],second\n"
        "1,S,2001-01-01 09:00:00,A,['x'],first\n"
        "1,S,2001-01-01 10:00:00,C,['x'],third\n")
    (tmp_path / "email_thread_summaries.csv").write_text("thread_id,summary\n1,sum\n")
    t = read_source(tmp_path).threads[0]
    assert [e.body for e in t.emails] == ["first", "second", "third"]


def test_json_copies_match_csv(tmp_path):
    write_kaggle_csv(tmp_path / "csv", 12, seed=9)
    write_kaggle_json(tmp_path / "ms", 12, seed=9, epoch="ms")
    write_kaggle_json(tmp_path / "s", 12, seed=9, epoch="s")
    a = read_source(tmp_path / "csv")
    for sub in ("ms", "s"):
        b = read_source(tmp_path / sub)
        assert [t.to_dict() for t in b.threads] == [t.to_dict() for t in a.threads]
    # pandas orient='columns' layout
    recs = json.loads((tmp_path / "s" / "email_thread_details.json").read_text())
    cols = {k: {str(i): r[k] for i, r in enumerate(recs)} for k in recs[0]}
    (tmp_path / "s" / "email_thread_details.json").write_text(json.dumps(cols))
    assert len(read_source(tmp_path / "s").threads) == 12


def _msg(subject, frm, to, date, body, mid, reply=None, html=None, charset="utf-8"):
    m = EmailMessage()
    m["Subject"], m["From"], m["To"], m["Date"], m["Message-ID"] = subject, frm, to, date, mid
    if reply:
        m["In-Reply-To"] = reply
        m["References"] = reply
    if html and body is None:
        m.set_content(html, subtype="html")
    else:
        m.set_content(body, charset=charset)
        if html:
            m.add_alternative(html, subtype="html")
    return m


def _mails():
    return [
        _msg("Budget", "Kay Mann <kay@enron.com>", "Sara <sara@enron.com>", "Mon, 1 Jan 2001 10:00:00 +0000",
             "Can you send the budget?", "<a1@x>"),
        _msg("RE: Budget", "Sara <sara@enron.com>", "Kay Mann <kay@enron.com>", "Mon, 1 Jan 2001 11:00:00 +0000",
             "Sent. Prix: 5 €", "<a2@x>", reply="<a1@x>", charset="iso-8859-15"),
        _msg("Lunch", "Tom <tom@enron.com>", "All <all@enron.com>", "Tue, 2 Jan 2001 09:00:00 +0000",
             None, "<b1@x>", html="<html><body><p>Lunch at <b>noon</b></p><script>x()</script></body></html>"),
        # no threading headers: joins 'Lunch' by normalized subject
        _msg("Re: lunch", "Ann <ann@enron.com>", "Tom <tom@enron.com>", "Tue, 2 Jan 2001 09:30:00 +0000",
             "I'll come", "<b2@x>"),
    ]


def test_eml_folder_threads_mime_and_charsets(tmp_path):
    for i, m in enumerate(_mails()):
        (tmp_path / f"{i}.eml").write_bytes(bytes(m))
    (tmp_path / "summaries.csv").write_text("thread_id,summary\na1@x,Budget talk\nb1@x,Lunch plan\n")
    res = read_source(tmp_path)
    by = {t.thread_id: t for t in res.threads}
    assert set(by) == {"a1@x", "b1@x"}
    assert [e.body.strip() for e in by["a1@x"].emails] == ["Can you send the budget?", "Sent. Prix: 5 €"]
    lunch = by["b1@x"]
    assert lunch.emails[0].body == "Lunch at noon" and "x()" not in lunch.emails[0].body
    assert lunch.emails[1].sender == "Ann <ann@enron.com>"
    assert res.counts["emails"] == {"input": 4, "kept": 4, "rejected": 0, "by_reason": {}}


def test_mbox_and_single_message(tmp_path):
    box = tmp_path / "mail.mbox"
    import mailbox

    mb = mailbox.mbox(str(box))
    for m in _mails():
        mb.add(m)
    mb.flush()
    res = read_source(box, require_summary=False)
    assert sorted(len(t.emails) for t in res.threads) == [2, 2]
    threads = parse_mail_bytes(bytes(_mails()[0]))
    assert len(threads) == 1 and threads[0].emails[0].body.strip() == "Can you send the budget?"
    assert len(read_path(box)) == 2


def test_threading_by_references_beats_subject():
    from threadsum.data.types import Email

    a = Email("a", body="x", subject="Same", message_id="<1@x>", date=datetime(2001, 1, 1))
    b = Email("b", body="y", subject="Other", message_id="<2@x>", in_reply_to="<1@x>", date=datetime(2001, 1, 2))
    c = Email("c", body="z", subject="Same", message_id="<3@x>", in_reply_to="<9@x>", date=datetime(2001, 1, 3))
    groups = sorted(thread_emails([a, b, c]), key=len)
    assert [e.sender for e in groups[1]] == ["a", "b"] and [e.sender for e in groups[0]] == ["c"]


def test_jsonl_threads(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in [
        {"thread_id": "x1", "subject": "Hi", "summary": "S1", "emails": [
            {"from": "A", "to": ["B"], "date": "2001-01-02 10:00:00", "body": "later"},
            {"from": "B", "to": "['A']", "date": 978343200, "body": "earlier"}]},
        {"thread_id": 2, "emails": [{"from": "A", "to": [], "date": "2001-01-01", "body": "b"}], "summary": "S2"},
    ]))
    res = read_source(p)
    assert [t.thread_id for t in res.threads] == ["2", "x1"]
    assert [e.body for e in res.threads[1].emails] == ["earlier", "later"]
    assert res.counts["emails"]["kept"] == 3


@pytest.mark.parametrize("literal", ["['Kay Mann', 'Sara Shackleton']", "[ 'Murphy', 'Melissa Mmurphy' ,]", "[]",
                                     "[\"O'Neil, Pat\", 'b@x.com']", "['a',  \"b\"]", "['a\\\\b', 'c']",
                                     "['Jos\u00e9 Ruiz']", "['a' 'b']", "['a', ['b']]"])
def test_recipient_list_fast_path_matches_literal_eval(literal):
    import ast

    from threadsum.data.readers import parse_recipients, regroup_enron_names

    parsed = ast.literal_eval(literal)
    if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
        assert parse_recipients(literal) == (regroup_enron_names(parsed), True)
    else:
        assert parse_recipients(literal)[1] is False


def test_empty_recipient_item_is_dropped_not_a_crash():
    from threadsum.data.readers import parse_recipients

    assert parse_recipients("['', 'Kay Mann']") == (["Kay Mann"], True)
    assert parse_recipients('["", "Murphy", "Melissa Mmurphy"]') == (["Murphy, Melissa Mmurphy"], True)


def test_plain_timestamps_fast_path():
    from datetime import datetime

    from threadsum.data.readers import parse_timestamp

    assert parse_timestamp("2001-05-14 16:39:00") == datetime(2001, 5, 14, 16, 39)
    assert parse_timestamp("2001-13-14 16:39:00") is None  # not a date in any accepted format
    assert parse_timestamp("2001-5-4 1:02:03") == datetime(2001, 5, 4, 1, 2, 3)  # strptime still reads it


# ------------------------------------------------------------------ mbox separators in doubt
def _box(between: bytes) -> bytes:
    return (b"From ann@example.com Mon May 14 09:12:00 2001\nFrom: Ann <ann@example.com>\nMessage-ID: <m1@example.com>\n"
            b"Subject: Q3 budget\n\nPlease cut travel back.\n" + between +
            b"From: Bob <bob@example.com>\nIn-Reply-To: <m1@example.com>\nSubject: Re: Q3 budget\n\nWill do.\n")


@pytest.mark.parametrize("sep", [b"From bob@example.com Mon May 14 11:40:00 2001\n",
                                 b"From bob@example.com  Mon May 14  11:40 2001\n",
                                 b"From bob@example.com Mon May 14 11:40:00 PDT 2001\n",
                                 b"From MAILER-DAEMON Mon May 14 11:40:00 -0700 2001\n"])
def test_a_full_separator_without_a_blank_line_splits_with_a_warning(tmp_path, sep):
    box = tmp_path / "mail.mbox"
    box.write_bytes(_box(sep))
    res = read_source(box, require_summary=False)
    assert res.rejects == [] and res.counts["emails"]["input"] == 2
    ann, bob = res.threads[0].emails
    assert ann.body.strip() == "Please cut travel back." and bob.body.strip() == "Will do."
    assert [w["reason"] for w in res.warnings] == ["mbox_separator_without_blank_line"]
    assert res.warnings[0]["line"] == 7 and "new message starts there" in res.warnings[0]["detail"]


@pytest.mark.parametrize("line", [b"From bob@example.com about the budget\n",
                                  b"From bob@example.com 2001-05-14\n",  # a date, but no blank line before it
                                  b"From carla@example.com, who wrote back\n"])
def test_a_doubtful_from_line_stays_text_with_a_warning(tmp_path, line):
    box = tmp_path / "mail.mbox"
    box.write_bytes(b"From ann@example.com Mon May 14 09:12:00 2001\nFrom: Ann <ann@example.com>\nSubject: S\n\n"
                    b"Notes:\n" + line + b"end of notes\n")
    res = read_source(box, require_summary=False)
    assert res.counts["emails"]["input"] == 1
    body = res.threads[0].emails[0].body
    assert line.decode().strip() in body and "end of notes" in body
    assert [w["reason"] for w in res.warnings] == ["mbox_doubtful_from_line"]
    assert "kept as text" in res.warnings[0]["detail"]


def test_prose_from_lines_are_silent(tmp_path):
    box = tmp_path / "mail.mbox"
    box.write_bytes(b"From ann@example.com Mon May 14 09:12:00 2001\nFrom: Ann <ann@example.com>\nSubject: S\n\n"
                    b"From the numbers I saw, travel is over.\n\nFrom now on it goes through Carla.\n")
    res = read_source(box, require_summary=False)
    assert res.warnings == [] and res.counts["emails"]["input"] == 1
