"""Mail fidelity (issue 14): cleaning never deletes unique text outside matched boilerplate blocks (and
says what it removed), RFC 4155 mbox, dates by reply chain, lying charsets, full quoted-printable, HTML
bodies in every reader, pasted threads."""
import json
from datetime import datetime

import pytest

from threadsum.config import CleanConfig
from threadsum.data.clean import (
    STEPS,
    audit_step,
    clean_thread,
    clean_threads,
    decode_qp_artifacts,
    new_audit,
    new_stats,
    strip_signature_blocks,
)
from threadsum.data.readers import (
    looks_like_html,
    parse_date_text,
    parse_mail_bytes,
    parse_pasted_thread,
    read_source,
    split_mbox,
)
from threadsum.data.synth import write_kaggle_csv
from threadsum.data.types import Email, Thread

HEADER = "thread_id,subject,timestamp,from,to,body\n"


def _unmatched(stats):
    return {s: stats["steps"][s]["audit"]["unique_words_unmatched"] for s in STEPS}


def _text(thread):
    return "\n".join(e.body for e in thread.emails)


# ------------------------------------------------------------------------- 1. cleaning audit
def test_public_sample_thread_9_keeps_quoted_conversation_and_audit_is_clean(kaggle_sample):
    res = read_source(kaggle_sample)
    stats = new_stats()
    cleaned = {t.thread_id: clean_thread(t, CleanConfig(), stats) for t in res.threads}
    t9 = " ".join(_text(cleaned["9"]).split())
    assert "its going to cost 45 to rent one from aztec" in t9
    assert "Was unable to make contact about the trailer" in t9
    assert "property of Bridgeline" not in t9  # the disclaimer block itself still goes
    assert _unmatched(stats) == {s: 0 for s in STEPS}
    sig = stats["steps"]["strip_signatures"]["audit"]
    assert sig["blocks"]["disclaimer"] >= 2 and sig["unique_words"] == sig["unique_words_matched"] > 0
    assert all(ex["block"] for ex in sig["examples"])
    # thread 5: 'From: X on DATE' Lotus headers keep author and date in the label
    t5 = _text(cleaned["5"])
    assert "[Earlier message from Reagan Rorschach/ENRON@enronXgate, 04/27/2001 04:04 PM] To: Kay Mann" in t5
    assert "[Earlier message]" not in "\n".join(_text(t) for t in cleaned.values())


def test_synthetic_corpus_audit_is_clean(tmp_path):
    write_kaggle_csv(tmp_path, 80, seed=3)
    _, stats = clean_threads(read_source(tmp_path).threads, CleanConfig())
    assert _unmatched(stats) == {s: 0 for s in STEPS}
    quoted = stats["steps"]["remove_quoted_history"]["audit"]
    assert quoted["removed_words"] > 1000 and quoted["removed_chars"] > quoted["removed_words"]
    json.dumps(stats)  # what prepare.json stores


def test_audit_flags_unique_text_removed_outside_blocks():
    """The audit is not a tautology: a removal of text found nowhere else is counted and shown."""
    before = [Email("A", body="We agreed the rent is 45 dollars per day.\n\nThanks a lot for the help today."),
              Email("B", body="Thanks a lot for the help today.")]
    after = [Email("A", body="Thanks a lot for the help today."), before[1]]
    rec = new_audit()
    audit_step(rec, "t", [(e.sender, "", "", e.body) for e in before], after, [0, 1], [])
    assert rec["removed_words"] == 9 and rec["unique_words"] == rec["unique_words_unmatched"] == 9
    assert rec["unmatched_examples"][0]["text"] == "We agreed the rent is 45 dollars per day."
    rec = new_audit()  # the same removal declared as a matched block is counted as matched
    audit_step(rec, "t", [(e.sender, "", "", e.body) for e in before], after, [0, 1],
               [("disclaimer", "We agreed the rent is 45 dollars per day.")])
    assert rec["unique_words_unmatched"] == 0 and rec["unique_words_matched"] == 9


DISCLAIMER = ("This e-mail is the property of Acme Corp. and may contain confidential and privileged material for "
              "the sole use of the intended recipient. Any review or distribution by others is strictly prohibited.")


@pytest.mark.parametrize("text,kept,gone", [
    # a paragraph that runs on from the author's words into a disclaimer is not a disclaimer block
    ("Please call me about the trailer tomorrow. " + DISCLAIMER, "Please call me about the trailer", None),
    ("Call me.\n\n" + DISCLAIMER, "Call me.", "property of Acme"),
    # '>'-only lines separate paragraphs inside a quote
    (">Was unable to make contact about the trailer.\n>\n>" + "*" * 40 + "\n>" + DISCLAIMER + "\n>" + "*" * 40 + "\n>",
     "Was unable to make contact about the trailer.", "property of Acme"),
    # a text that merely mentions the phrases stays
    ("Bob says the draft is not intended to be an offer, and sharing it is strictly prohibited by the desk.",
     "Bob says the draft is not intended to be an offer", None),
])
def test_disclaimers_only_as_whole_blocks(text, kept, gone):
    out, blocks = strip_signature_blocks(text)
    assert kept in out
    if gone:
        assert gone not in out and any(k == "disclaimer" for k, _ in blocks)
    else:
        assert out == text and blocks == []


def test_quote_with_one_new_sentence_is_kept():
    """80% of a quoted paragraph being elsewhere is not enough: every word must be."""
    own = ("We need to move the delivery of the turbines to the north site before the end of the month "
           "because the south site is not ready and the crane is booked elsewhere.")
    quoted = own + " The deposit of 45 dollars was paid on Monday."
    t = Thread("1", "s", [Email("A", body=own, date=datetime(2001, 1, 1)),
                          Email("B", body="Fine.\n\n-----Original Message-----\nFrom: A\nSent: Monday\n\n" + quoted,
                                date=datetime(2001, 1, 2))])
    stats = new_stats()
    c = clean_thread(t, CleanConfig(), stats)
    assert "The deposit of 45 dollars was paid on Monday." in _text(c)
    dup = Thread("2", "s", [t.emails[0], Email("B", body="Fine.\n\n-----Original Message-----\nFrom: A\n"
                                                         "Sent: Monday\n\n" + own, date=datetime(2001, 1, 2))])
    assert _text(clean_thread(dup, CleanConfig(), stats)).count("turbines") == 1
    assert _unmatched(stats) == {s: 0 for s in STEPS}


def test_earlier_message_label_keeps_author_and_date_when_the_time_wraps():
    body = ("Fine by me.\n\nFrom: Reagan Rorschach/ENRON@enronXgate on 04/27/2001 04:04\nPM\n"
            "To: Kay Mann/Corp/Enron@Enron\ncc:\nSubject: RE: confirm\n\nThe turbines ship on the 14th, not the 12th.")
    c = clean_thread(Thread("1", "s", [Email("Kay", body=body, date=datetime(2001, 4, 27))]), CleanConfig())
    assert c.emails[0].body == ("Fine by me.\n\n[Earlier message from Reagan Rorschach/ENRON@enronXgate, 04/27/2001 "
                                "04:04 PM] To: Kay Mann/Corp/Enron@Enron | Subject: RE: confirm\n\n"
                                "The turbines ship on the 14th, not the 12th.")


# ------------------------------------------------------------------------------- 2. mbox
MBOX = (b"From ann@example.com Mon May 14 09:12:00 2001\n"
        b"From: Ann Lee <ann@example.com>\nMessage-ID: <m1@example.com>\nSubject: Q3 budget\n\n"
        b"Can you send the revised Q3 budget by Friday?\n\n"
        b"From the numbers I saw last week, travel is 20% over plan.\nPlease cut it back before legal signs off.\n\n"
        b"From bob@example.com Mon May 14 11:40:00 2001\n"
        b"From: Bob Stone <bob@example.com>\nIn-Reply-To: <m1@example.com>\nSubject: Re: Q3 budget\n\n"
        b"Yes, I will send it Thursday after legal signs off.\n>From now on travel goes through Carla.\n")


def test_mbox_separators_follow_rfc_4155(tmp_path):
    box = tmp_path / "mail.mbox"
    box.write_bytes(MBOX)
    res = read_source(box, require_summary=False)
    assert res.rejects == [] and len(res.threads) == 1
    t = res.threads[0]
    assert t.thread_id == "m1@example.com" and t.subject == "Q3 budget"
    ann, bob = t.emails
    assert "From the numbers I saw last week, travel is 20% over plan.\nPlease cut it back" in ann.body
    assert bob.body.splitlines()[-1] == "From now on travel goes through Carla."
    # no Date headers: the separator's date stands in
    assert (ann.date, bob.date) == (datetime(2001, 5, 14, 9, 12), datetime(2001, 5, 14, 11, 40))
    assert res.counts["warnings"] == {}
    assert [x.thread_id for x in parse_mail_bytes(MBOX)] == ["m1@example.com"]
    assert len(split_mbox(MBOX)) == 2


def test_thread_ids_are_stable_without_message_ids(tmp_path):
    raw = MBOX.replace(b"Message-ID: <m1@example.com>\n", b"").replace(b"In-Reply-To: <m1@example.com>\n", b"")
    ids = {parse_mail_bytes(raw)[0].thread_id for _ in range(3)}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mbox").write_bytes(raw)
    ids.add(read_source(tmp_path / "a" / "x.mbox", require_summary=False).threads[0].thread_id)
    assert len(ids) == 1 and ids.pop().startswith("t-")


def test_unread_and_broken_files_in_a_folder_are_rejected(tmp_path):
    (tmp_path / "a.eml").write_bytes(b"From: a@x\nSubject: hi\nMessage-ID: <m1@x>\nDate: Mon, 14 May 2001 09:00:00 +0000"
                                     b"\n\nhello")
    (tmp_path / "broken.mbox").write_bytes(b"this is not a mailbox\n")
    (tmp_path / "notes.txt").write_text("todo")
    res = read_source(tmp_path, require_summary=False)
    got = sorted((r["level"], r["reason"], r["source"].rsplit("/", 1)[-1]) for r in res.rejects)
    assert got == [("file", "unreadable_file", "broken.mbox"), ("file", "unsupported_file", "notes.txt")]
    assert res.counts["files"] == {"rejected": 2, "by_reason": {"unreadable_file": 1, "unsupported_file": 1}}
    assert len(res.threads) == 1


# ------------------------------------------------------------------------------- 3. dates
def _eml(mid, date=None, reply_to=None, subject="Budget", body="text"):
    h = [f"From: {mid}@example.com", f"Message-ID: <{mid}@x>", f"Subject: {subject}"]
    h += [f"Date: {date}"] if date else []
    h += [f"In-Reply-To: <{reply_to}@x>", f"References: <{reply_to}@x>"] if reply_to else []
    return ("\n".join(h) + "\n\n" + body + "\n").encode()


def test_missing_and_unreadable_dates_order_by_reply_chain(tmp_path):
    # file names sort a2 first: the order must come from the reply chain, not from the files
    (tmp_path / "0.eml").write_bytes(_eml("a2", reply_to="a1", subject="Re: Budget", body="second"))
    (tmp_path / "1.eml").write_bytes(_eml("a4", "Tuesday afternoon", reply_to="a3", subject="Re: Budget", body="fourth"))
    (tmp_path / "2.eml").write_bytes(_eml("a1", "Mon, 14 May 2001 09:00:00 +0000", body="first"))
    (tmp_path / "3.eml").write_bytes(_eml("a3", "2001-05-14 11:00:00", reply_to="a2", subject="Re: Budget",
                                          body="third"))
    (tmp_path / "summaries.csv").write_text("thread_id,summary\na1@x,Budget talk.\n")
    res = read_source(tmp_path)
    assert res.counts["threads"] == {"input": 1, "kept": 1, "rejected": 0, "by_reason": {}}
    t = res.threads[0]
    assert t.thread_id == "a1@x" and t.subject == "Budget" and t.summary == "Budget talk."
    assert [e.body.strip() for e in t.emails] == ["first", "second", "third", "fourth"]
    assert t.emails[2].date == datetime(2001, 5, 14, 11, 0)  # ISO, not RFC 2822: read
    assert res.counts["warnings"] == {"missing_date": 1, "unreadable_date": 1}
    details = {w["reason"]: w["detail"] for w in res.warnings}
    assert "<a2@x>" in details["missing_date"] and "<a4@x>" in details["unreadable_date"]
    assert "Tuesday afternoon" in details["unreadable_date"]


@pytest.mark.parametrize("text,want", [
    ("2001-05-14 09:00:00", datetime(2001, 5, 14, 9)), ("Mon, 14 May 2001 09:12:00 -0500", datetime(2001, 5, 14, 14, 12)),
    ("Sunday, May 13, 2001 8:00 PM", datetime(2001, 5, 13, 20)), ("04/27/2001 04:04 PM", datetime(2001, 4, 27, 16, 4)),
    ("Tuesday afternoon", None), ("Tuesday", None), ("10:30", None), ("", None),
])
def test_date_forms(text, want):
    assert parse_date_text(text) == want


# ------------------------------------------------------------------------------ 4. charsets
def _mail(ctype: bytes, body: bytes) -> bytes:
    return (b"From: a@x\nTo: b@x\nSubject: s\nMessage-ID: <c1@x>\nDate: Mon, 14 May 2001 09:00:00 +0000\n"
            b"MIME-Version: 1.0\n" + ctype + b"\nContent-Transfer-Encoding: 8bit\n\n" + body)


@pytest.mark.parametrize("ctype,encoding", [
    (b'Content-Type: text/plain; charset="us-ascii"', "utf-8"),  # declared ASCII, holds UTF-8
    (b"Content-Type: text/plain", "cp1252"),  # no charset, cp1252 bytes
    (b'Content-Type: text/plain; charset="utf-8"', "cp1252"),  # declared UTF-8, holds cp1252
])
def test_charsets_that_lie(tmp_path, ctype, encoding):
    text = "Jürgen confirmed the café booking for François. Grüße aus München."
    (tmp_path / "m.eml").write_bytes(_mail(ctype, text.encode(encoding)))
    res = read_source(tmp_path, require_summary=False)
    body = res.threads[0].emails[0].body
    assert body.strip() == text and "\ufffd" not in body
    assert res.counts["warnings"] == {"charset_not_as_declared": 1}


def test_data_files_read_non_utf8_bytes_as_cp1252(tmp_path):
    (tmp_path / "email_thread_details.csv").write_bytes(
        HEADER.encode() + "1,S,2001-01-01 10:00:00,A,[],Caf\xe9 f\xfcr Jürgen\n".encode("utf-8", "surrogateescape")
        .replace("\xe9".encode(), b"\xe9").replace("\xfc".encode(), b"\xfc"))
    (tmp_path / "email_thread_summaries.csv").write_text("thread_id,summary\n1,S.\n")
    res = read_source(tmp_path)
    assert res.threads[0].emails[0].body == "Café für Jürgen"
    assert res.counts["warnings"] == {"invalid_utf8_replaced": 1}


# ------------------------------------------------------------------------ 5. quoted-printable
@pytest.mark.parametrize("raw,want", [
    ("Viele Gr=C3=BC=C3=9Fe aus M=C3=BCnchen", "Viele Grüße aus München"),
    ("Price 4=2E5, see the attach=\nment", "Price 4.5, see the attachment"),  # a soft break proves QP
    ("Caf=E9 tonight=20\nat 8", "Café tonight \nat 8"),
    ("Caf=E9 tonight", "Caf=E9 tonight"),  # a lone escape proves nothing: left as written
    ("From: =09White, Stac=\ney W. =20\nx=3Dy", "From: \tWhite, Stacey W.  \nx=y"),
    ("a = b, price=20 dollars", "a = b, price=20 dollars"),  # no hint of QP: untouched
])
def test_quoted_printable_fully(raw, want):
    assert decode_qp_artifacts(raw) == want


def test_quoted_printable_in_csv_bodies_reaches_the_model_decoded(tmp_path):
    rows = ["1,S,2001-01-01 10:00:00,A,[],Viele Gr=C3=BC=C3=9Fe aus M=C3=BCnchen\n",
            "1,S,2001-01-01 11:00:00,B,[],\"Price 4=2E5 for the attach=\nment\"\n",
            "1,S,2001-01-01 12:00:00,C,[],\"Caf=E9=20\nor bar\"\n"]
    (tmp_path / "email_thread_details.csv").write_text(HEADER + "".join(rows))
    (tmp_path / "email_thread_summaries.csv").write_text("thread_id,summary\n1,S.\n")
    c = clean_thread(read_source(tmp_path).threads[0], CleanConfig())
    assert [e.body for e in c.emails] == ["Viele Grüße aus München", "Price 4.5 for the attachment", "Café\nor bar"]


# ------------------------------------------------------------------------------------ 6. HTML
HTML = "<html><body><p>Hello <b>team</b>,</p><p>The&nbsp;budget is due <i>Friday</i>.</p></body></html>"


def test_html_bodies_in_every_reader(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "email_thread_details.csv").write_text(HEADER + f'1,S,2001-01-01 10:00:00,A,[],"{HTML}"\n')
    (tmp_path / "csv" / "email_thread_summaries.csv").write_text("thread_id,summary\n1,S.\n")
    jl = tmp_path / "t.jsonl"
    jl.write_text(json.dumps({"thread_id": "a", "summary": "S", "emails": [
        {"from": "A", "to": [], "date": "2001-01-01", "body": HTML}]}) + "\n")
    (tmp_path / "eml").mkdir()
    (tmp_path / "eml" / "m.eml").write_bytes(_mail(b"Content-Type: text/html; charset=utf-8", HTML.encode()))
    bodies = [read_source(p, require_summary=False).threads[0].emails[0].body
              for p in (tmp_path / "csv", jl, tmp_path / "eml")]
    assert bodies == ["Hello team,\n\nThe budget is due Friday."] * 3
    assert not looks_like_html("Joe Parks <Joe.Parks@bridgeline.net> wrote: <<File: a.doc>>")


# --------------------------------------------------------------------------- 8. pasted threads
def test_pasted_reply_chain_becomes_emails():
    t = parse_pasted_thread(
        "Sounds good, see you then.\n\n-----Original Message-----\nFrom: Ann Lee <ann@example.com>\n"
        "Sent: Monday, May 14, 2001 9:12 AM\nTo: Bob Stone; Carla Diaz\nSubject: RE: Q3 budget\n\n"
        "Can you send the revised Q3 budget by Friday?\n\n-----Original Message-----\nFrom: Bob Stone\n"
        "Sent: Sunday, May 13, 2001 8:00 PM\nTo: Ann Lee\nSubject: Q3 budget\n\nHere is the draft.\n")
    assert [(e.sender, e.body) for e in t.emails] == [
        ("Bob Stone", "Here is the draft."),
        ("Ann Lee <ann@example.com>", "Can you send the revised Q3 budget by Friday?"),
        ("", "Sounds good, see you then.")]
    assert t.emails[0].date == datetime(2001, 5, 13, 20) and t.emails[1].recipients == ["Bob Stone", "Carla Diaz"]
    assert t.subject == "Q3 budget" and t.thread_id == parse_pasted_thread(
        "Sounds good, see you then.\n\n-----Original Message-----\nFrom: Ann Lee <ann@example.com>\n"
        "Sent: Monday, May 14, 2001 9:12 AM\nTo: Bob Stone; Carla Diaz\nSubject: RE: Q3 budget\n\n"
        "Can you send the revised Q3 budget by Friday?\n\n-----Original Message-----\nFrom: Bob Stone\n"
        "Sent: Sunday, May 13, 2001 8:00 PM\nTo: Ann Lee\nSubject: Q3 budget\n\nHere is the draft.\n").thread_id


def test_pasted_header_blocks_in_order_and_plain_text():
    t = parse_pasted_thread("From: Ann <ann@x.com>\nTo: Bob <bob@x.com>\nSubject: Lunch\n\nNoon?\n\n"
                            "From: Bob <bob@x.com>\nTo: Ann <ann@x.com>\nSubject: Re: Lunch\n\nYes.\n")
    assert [(e.sender, e.body) for e in t.emails] == [("Ann <ann@x.com>", "Noon?"), ("Bob <bob@x.com>", "Yes.")]
    one = parse_pasted_thread("From my side the numbers look fine.\nTo be checked: travel.")
    assert len(one.emails) == 1 and one.emails[0].body.startswith("From my side")
