"""Bounded reading: fields, JSON strings and mail parts cut while they are read, the rest of the file
read exactly as without cutting; every reader cuts a huge body with a warning that gives its size."""
import base64
import csv
import io
import json
import mailbox
import random
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from threadsum.data.readers import W_BODY_CUT, max_part_bytes, read_source
from threadsum.data.stream import (
    CsvFieldCutter,
    JsonStringCutter,
    MessageCutter,
    bounded_lines,
    cut_message,
    text_lines,
    uncut,
)

PIECES = ["a", "b", " ", '"', ",", "\n", "\r\n", "\r", "é", "€", "😀", "xxxxx"]


def _chunks(data: bytes, rnd: random.Random, most: int = 30) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        k = rnd.randint(1, most)
        out.append(data[i:i + k])
        i += k
    return out


@pytest.mark.parametrize("seed", range(3))
def test_csv_cutter_keeps_rows_fields_and_line_numbers(seed):
    rnd = random.Random(seed)
    for _ in range(150):
        rows = [["".join(rnd.choice(PIECES) for _ in range(rnd.choice([0, 1, 4, 30, 120])))
                 for _ in range(rnd.randint(1, 4))] for _ in range(rnd.randint(1, 8))]
        buf = io.StringIO(newline="")
        csv.writer(buf, lineterminator=rnd.choice(["\r\n", "\n"])).writerows(rows)
        data = buf.getvalue()
        limit = rnd.choice([5, 20, 60, 10**6])
        cutter = CsvFieldCutter(limit)
        out = b"".join(cutter.cut(_chunks(data.encode(), rnd))).decode()
        ref = csv.reader(io.StringIO(data, newline=""))
        got = csv.reader(text_lines(out[i:i + 7] for i in range(0, len(out), 7)))
        want_rows = [(row, ref.line_num) for row in ref]
        got_rows = [(row, cutter.file_line(got.line_num)) for row in got]
        assert [n for _, n in got_rows] == [n for _, n in want_rows]
        for (g, _), (w, _) in zip(got_rows, want_rows):
            assert len(g) == len(w)
            for gv, wv in zip(g, w):
                value, size = uncut(gv)
                if size is None:
                    assert value == wv
                else:  # a prefix of at most the limit, and the size the field had in the file
                    assert wv.startswith(value) and len(value.encode()) <= limit < size


@pytest.mark.parametrize("seed", range(3))
def test_json_cutter_never_breaks_the_document_or_an_escape(seed):
    rnd = random.Random(seed)

    def value(depth=0):
        t = rnd.random()
        if depth > 3 or t < 0.4:
            return "".join(rnd.choice(['a', '"', '\\', '\n', 'é', '😀', '\u2028', '/', '\x01'])
                           for _ in range(rnd.choice([0, 2, 10, 50])))
        if t < 0.6:
            return rnd.randint(-5, 5)
        if t < 0.8:
            return [value(depth + 1) for _ in range(rnd.randint(0, 3))]
        return {rnd.choice("abcdefgh"): value(depth + 1) for _ in range(rnd.randint(0, 3))}

    def same(a, b, limit):
        if isinstance(a, str):
            v, size = uncut(b)
            assert a == b if size is None else (a.startswith(v) and size > limit)
        elif isinstance(a, dict):
            assert list(a) == list(b)  # keys are short: never cut
            for k in a:
                same(a[k], b[k], limit)
        elif isinstance(a, list):
            assert len(a) == len(b)
            for x, y in zip(a, b):
                same(x, y, limit)
        else:
            assert a == b

    for _ in range(200):
        docs = [value() for _ in range(rnd.randint(1, 4))]
        data = "\n".join(json.dumps(d, ensure_ascii=rnd.random() < 0.5) for d in docs).encode()
        limit = rnd.choice([3, 8, 30, 10**6])
        out = b"".join(JsonStringCutter(limit).cut(_chunks(data, rnd, 40))).decode()
        for want, line in zip(docs, out.split("\n"), strict=True):
            same(want, json.loads(line), limit)


def _mime(text_first: bool, n: int):
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = "a@b.c", "d@e.f", "Deal", "<big@x>"
    m.set_content("The deal closes Friday.\n" + "More detail. " * n)
    m.add_alternative("<p>The deal closes <b>Friday</b>.</p>", subtype="html")
    if not text_first:  # an attachment before the text: the text must survive the cut
        outer = EmailMessage()
        for k in ("From", "To", "Subject", "Message-ID"):
            outer[k] = m[k]
        outer.make_mixed()
        outer.attach(_pdf(5000))
        outer.attach(m)
        return outer
    m.add_attachment(b"%PDF-1.4 " * 5000, maintype="application", subtype="pdf", filename="deal.pdf")
    return m


def _pdf(n):
    part = EmailMessage()
    part.set_content(b"%PDF-1.4 " * n, maintype="application", subtype="pdf", filename="first.pdf")
    return part


@pytest.mark.parametrize("text_first", [True, False])
def test_message_cutter_cuts_parts_and_keeps_the_mime_structure(text_first):
    raw = bytes(_mime(text_first, 2000))
    kept, cuts = cut_message(raw, 2048)
    assert len(kept) < 8000 < len(raw)
    msg = message_from_bytes(kept, policy=policy.default)
    assert msg.get_body(("plain",)).get_content().startswith("The deal closes Friday.")
    assert "Friday" in msg.get_body(("html",)).get_content()
    assert [p.get_filename() for p in msg.iter_attachments()] == ["deal.pdf" if text_first else "first.pdf"]
    kinds = {c.content_type for c in cuts}
    assert "text/plain" in kinds and "application/pdf" in kinds and all(c.size > 2048 for c in cuts)
    # under the limit the message passes through untouched
    assert cut_message(raw, len(raw)) == (raw, [])


def test_message_cutter_bounds_a_line_without_newlines():
    body = b"<p>" + b"word " * 400_000 + b"</p>"  # HTML on one 2 MB line
    raw = b"From: a@b.c\nSubject: s\nContent-Type: text/html\n\n" + body
    cutter = MessageCutter(10_000)
    for piece, start in bounded_lines(io.BytesIO(raw), 4096):
        assert len(piece) <= 4096
        cutter.add(piece, start)
    kept, cuts = cutter.finish()
    assert len(kept) < 11_000 and cuts[0].content_type == "text/html" and cuts[0].size == len(body)


# ------------------------------------------------------------------------------- every reader
LIMIT = 120  # data.max_body_chars for these tests: the readers cut at max_part_bytes(LIMIT) bytes
BODY = "".join(f"Line {i} of the long report, with é and € in it.\n" for i in range(4000))  # ~210 KB


def _eml(body, mid="<long@x>"):
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Date"], m["Message-ID"] = "a@b.c", "d@e.f", "Report", \
        "Mon, 1 Jan 2001 10:00:00 +0000", mid
    m.set_content(body, cte=("quoted-printable"))
    return m


def _write(fmt, tmp_path):
    if fmt == "eml":
        (tmp_path / "long.eml").write_bytes(bytes(_eml(BODY)))
        return tmp_path
    if fmt == "mbox":
        box = mailbox.mbox(str(tmp_path / "long.mbox"))
        box.add(_eml(BODY))
        box.add(_eml("Short reply.", "<short@x>"))
        box.flush()
        return tmp_path / "long.mbox"
    if fmt == "kaggle_csv":
        with (tmp_path / "email_thread_details.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["thread_id", "subject", "timestamp", "from", "to", "body"])
            w.writerow(["1", "Report", "2001-01-01 10:00:00", "Ann", "['Bob']", BODY])
            fh.write("2,Broken,2001-01-01 11:00:00,Ann\n")  # a malformed row after the cut body
        (tmp_path / "email_thread_summaries.csv").write_text("thread_id,summary\n1,A report.\n")
        return tmp_path
    if fmt == "jsonl":
        (tmp_path / "t.jsonl").write_text(json.dumps({"thread_id": "1", "summary": "A report.", "emails": [
            {"from": "Ann", "to": ["Bob"], "date": "2001-01-01 10:00:00", "body": BODY}]}) + "\n")
        return tmp_path / "t.jsonl"
    if fmt == "gmail_json":
        data = base64.urlsafe_b64encode(BODY.encode()).decode()
        msg = {"id": "1", "threadId": "1", "internalDate": "978343200000", "payload": {
            "mimeType": "text/plain", "headers": [{"name": "From", "value": "a@b.c"},
                                                  {"name": "Subject", "value": "Report"},
                                                  {"name": "Content-Type", "value": "text/plain; charset=UTF-8"}],
            "body": {"size": len(BODY), "data": data}}}
        (tmp_path / "g.json").write_text(json.dumps({"id": "1", "historyId": "5", "messages": [msg]}))
        return tmp_path / "g.json"
    (tmp_path / "m.json").write_text(json.dumps({"value": [{
        "id": "1", "conversationId": "c1", "subject": "Report", "sentDateTime": "2001-01-01T10:00:00Z",
        "from": {"emailAddress": {"name": "Ann", "address": "ann@x.com"}}, "toRecipients": [],
        "body": {"contentType": "text", "content": BODY}}]}))
    return tmp_path / "m.json"


@pytest.mark.parametrize("fmt", ["eml", "mbox", "kaggle_csv", "jsonl", "gmail_json", "graph_json"])
def test_every_reader_cuts_a_huge_body_while_reading_and_says_so(tmp_path, fmt):
    res = read_source(_write(fmt, tmp_path), "auto", max_body_chars=LIMIT, require_summary=False)
    bodies = [e.body for t in res.threads for e in t.emails]
    assert BODY[:LIMIT] in [b[:LIMIT] for b in bodies] and max(len(b) for b in bodies) == LIMIT
    cut = [w for w in res.warnings if w["reason"] == W_BODY_CUT]
    assert len(cut) == 1 and "cut while reading" in cut[0]["detail"] and "bytes in the file" in cut[0]["detail"]
    size = int(cut[0]["detail"].split(" bytes")[0].split()[-1].replace(",", ""))
    assert size > max_part_bytes(LIMIT)
    if fmt == "kaggle_csv":  # the lines dropped with the body still count in the next row's line number
        bad = next(r for r in res.rejects if r["reason"] == "malformed_row")
        assert bad["line"] == 2 + BODY.count("\n") + 1
    if fmt == "mbox":
        assert "Short reply." in [b.strip() for b in bodies]
