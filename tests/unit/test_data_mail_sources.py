"""Mail sources people have: Maildir, Gmail API and Microsoft Graph JSON, Outlook .msg (refused with a
way out); threading by the services' own ids and by Message-ID across formats; automatic detection."""
import base64
import json
import mailbox
from email.message import EmailMessage
from pathlib import Path
from typing import get_args

import pytest
from typer.testing import CliRunner

import threadsum.cli
from threadsum.config import DataConfig
from threadsum.data.readers import (
    FORMATS,
    R_OUTLOOK_MSG,
    DataError,
    detect_format,
    parse_mail_bytes,
    read_source,
)
from threadsum.errors import InputError
from threadsum.inference.inputs import read_threads, threads_from_text


TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def _msg(subject, frm, to, date, body, mid, reply=None, html=None):
    m = EmailMessage()
    m["Subject"], m["From"], m["To"], m["Date"], m["Message-ID"] = subject, frm, to, date, mid
    if reply:
        m["In-Reply-To"] = m["References"] = reply
    m.set_content(body)
    if html:
        m.add_alternative(html, subtype="html")
    return m


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")  # Gmail leaves the padding off


def _outlook_msg() -> bytes:
    """The start of an Outlook .msg: the OLE2 header, NUL padding and UTF-16LE property strings."""
    return (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 16 + b"\x3e\x00\x03\x00\xfe\xff\x09\x00" + b"\x00" * 480
            + "Quarterly volumes".encode("utf-16-le") + b"\x00" * 64 + "Kay Mann".encode("utf-16-le"))


# ------------------------------------------------------------------------------------------ Maildir
def _maildir(root):
    md = mailbox.Maildir(str(root), create=True)
    first = mailbox.MaildirMessage(_msg("Gas volumes", "Kay Mann <kay@enron.com>", "Sara <sara@enron.com>",
                                        "Mon, 1 Jan 2001 10:00:00 +0000", "Can you send the volumes?", "<v1@x>"))
    first.set_subdir("cur")
    first.add_flag("S")
    md.add(first)
    md.add(mailbox.MaildirMessage(_msg("Lunch", "Tom <tom@enron.com>", "Kay Mann <kay@enron.com>",
                                       "Tue, 2 Jan 2001 09:00:00 +0000", "Lunch at noon?", "<l1@x>")))  # new/
    sent = md.add_folder("Sent")  # Maildir++: .Sent with its own cur/ new/ tmp/
    reply = mailbox.MaildirMessage(_msg("RE: Gas volumes", "Sara <sara@enron.com>", "Kay Mann <kay@enron.com>",
                                        "Mon, 1 Jan 2001 11:00:00 +0000", "Attached: 5 bcf.", "<v2@x>", reply="<v1@x>"))
    reply.set_subdir("cur")
    sent.add(reply)
    return md


def test_maildir_cur_new_and_maildirplus_folders_thread_together(tmp_path):
    _maildir(tmp_path / "Mail")
    (tmp_path / "Mail" / "dovecot-uidlist").write_text("3 V1 N4\n")  # a server's index: not mail, not a reject
    (tmp_path / "Mail" / "summaries.csv").write_text("thread_id,summary\nv1@x,Kay asks Sara for the volumes.\n")
    assert detect_format(tmp_path / "Mail") == "maildir"
    res = read_source(tmp_path / "Mail", require_summary=False)
    by = {t.thread_id: t for t in res.threads}
    assert set(by) == {"v1@x", "l1@x"}
    assert [e.body.strip() for e in by["v1@x"].emails] == ["Can you send the volumes?", "Attached: 5 bcf."]
    assert by["v1@x"].summary == "Kay asks Sara for the volumes."
    assert res.counts["emails"] == {"input": 3, "kept": 3, "rejected": 0, "by_reason": {}}
    assert res.rejects == []
    # the same folder under a plain parent (mbsync-style layouts) is found too
    assert len(read_source(tmp_path, require_summary=False).threads) == 2


def test_maildir_tmp_file_is_a_reject_and_a_msg_inside_is_never_a_body(tmp_path):
    root = tmp_path / "Maildir"
    _maildir(root)
    (root / "tmp" / "1700000000.M1P2.host").write_bytes(b"From: a@b.c\n\npartial")
    (root / "new" / "1700000001.M2P3.host").write_bytes(_outlook_msg())
    res = read_source(root, "maildir", require_summary=False)
    reasons = sorted(r["reason"] for r in res.rejects)
    assert reasons == ["maildir_unfinished_delivery", R_OUTLOOK_MSG]
    assert all("\x00" not in e.body for t in res.threads for e in t.emails)
    assert "tmp/" in next(r["detail"] for r in res.rejects if r["reason"] == "maildir_unfinished_delivery")


# ---------------------------------------------------------------------------------------- Gmail API
def _gmail_full_message(mid, tid, subject, frm, date, text, html=None, reply=None, charset="UTF-8"):
    headers = [{"name": "From", "value": frm}, {"name": "To", "value": "Sara Shackleton <sara@enron.com>"},
               {"name": "Subject", "value": subject}, {"name": "Date", "value": date},
               {"name": "Message-ID", "value": f"<{mid}@mail.gmail.com>"}]
    if reply:
        headers += [{"name": "In-Reply-To", "value": reply}, {"name": "References", "value": reply}]
    data = text.encode(charset)
    plain = {"partId": "0", "mimeType": "text/plain", "filename": "",
             "headers": [{"name": "Content-Type", "value": f"text/plain; charset=\"{charset}\""},
                         {"name": "Content-Transfer-Encoding", "value": "quoted-printable"}],
             "body": {"size": len(data), "data": _b64url(data)}}
    parts = [plain]
    if html:
        parts.append({"partId": "1", "mimeType": "text/html", "filename": "",
                      "headers": [{"name": "Content-Type", "value": "text/html; charset=\"UTF-8\""}],
                      "body": {"size": len(html), "data": _b64url(html.encode())}})
    parts.append({"partId": "2", "mimeType": "application/pdf", "filename": "deal.pdf",
                  "headers": [{"name": "Content-Disposition", "value": "attachment; filename=\"deal.pdf\""}],
                  "body": {"attachmentId": "ANGjdJ8", "size": 48213}})
    return {"id": mid, "threadId": tid, "labelIds": ["INBOX", "UNREAD"], "snippet": text[:40],
            "historyId": "912345", "internalDate": "978343200000", "sizeEstimate": 52311,
            "payload": {"partId": "", "mimeType": "multipart/mixed", "filename": "", "headers": headers,
                        "body": {"size": 0}, "parts": [{"partId": "", "mimeType": "multipart/alternative",
                                                        "filename": "", "headers": [], "body": {"size": 0},
                                                        "parts": parts}]}}


def _gmail_thread(tmp_path):
    a = _gmail_full_message("18c1", "18c1", "Credit watch list", "Tana Jones <tana@enron.com>",
                            "Mon, 1 Jan 2001 10:00:00 -0600", "Please add EPMI to the watch list.\n",
                            html="<p>Please add <b>EPMI</b> to the watch list.</p>")
    b = _gmail_full_message("18c2", "18c1", "Re: Credit watch list", "Sara Shackleton <sara@enron.com>",
                            "Mon, 1 Jan 2001 12:00:00 -0600", "Done. Prix: 5 €\n", charset="ISO-8859-15")
    raw = _msg("Re: Credit watch list", "Tana Jones <tana@enron.com>", "Sara Shackleton <sara@enron.com>",
               "Mon, 1 Jan 2001 13:00:00 -0600", "Thanks, Sara.", "<18c3@mail.gmail.com>")
    c = {"id": "18c3", "threadId": "18c1", "labelIds": ["SENT"], "snippet": "Thanks", "historyId": "912399",
         "internalDate": "978375600000", "sizeEstimate": 812, "raw": _b64url(bytes(raw))}  # format=raw
    thread = {"id": "18c1", "historyId": "912399", "messages": [a, b, c]}
    # another Gmail thread with the same subject: Gmail's threadId keeps it apart
    other = {"id": "19d7", "historyId": "913000", "messages": [_gmail_full_message(
        "19d7", "19d7", "Credit watch list", "Kay Mann <kay@enron.com>", "Tue, 2 Jan 2001 10:00:00 -0600",
        "A new list for the West desk.\n")]}
    (tmp_path / "thread-18c1.json").write_text(json.dumps(thread, indent=2))
    (tmp_path / "thread-19d7.json").write_text(json.dumps(other))
    return thread


def test_gmail_full_and_raw_messages_thread_by_thread_id(tmp_path):
    _gmail_thread(tmp_path)
    assert detect_format(tmp_path / "thread-18c1.json") == "gmail_json"
    assert detect_format(tmp_path) == "gmail_json"
    res = read_source(tmp_path, require_summary=False)
    assert res.rejects == [] and res.counts["emails"]["kept"] == 4
    by = {t.thread_id: t for t in res.threads}
    assert set(by) == {"18c1@mail.gmail.com", "19d7@mail.gmail.com"}
    t = by["18c1@mail.gmail.com"]
    assert [e.body.strip() for e in t.emails] == ["Please add EPMI to the watch list.", "Done. Prix: 5 €",
                                                  "Thanks, Sara."]
    assert t.emails[0].sender == "Tana Jones <tana@enron.com>"
    assert t.emails[1].recipients == ["Sara Shackleton <sara@enron.com>"]
    assert {e.conversation_id for e in t.emails} == {"gmail:18c1"}
    assert not any("deal.pdf" in e.body for e in t.emails)


def test_gmail_metadata_format_and_threads_list_are_rejected_with_the_fix(tmp_path):
    msg = _gmail_full_message("1a", "1a", "S", "a@b.c", "Mon, 1 Jan 2001 10:00:00 +0000", "x")
    for part in msg["payload"]["parts"][0]["parts"]:
        part["body"].pop("data", None)  # format=metadata: headers only
    (tmp_path / "meta.json").write_text(json.dumps({"id": "1a", "historyId": "1", "messages": [msg]}))
    (tmp_path / "list.json").write_text(json.dumps({"threads": [{"id": "1b", "snippet": "hi", "historyId": "2"}]}))
    res = read_source(tmp_path, "gmail_json", require_summary=False)
    details = " | ".join(r["detail"] for r in res.rejects)
    assert "format=metadata" in details and "users.threads.get" in details
    assert res.counts["emails"] == {"input": 1, "kept": 0, "rejected": 1, "by_reason": {"empty_body": 1}}


# ------------------------------------------------------------------------------- Microsoft Graph
def _graph_message(mid, conv, subject, name, address, sent, body, kind="html", imid=None, to=(), headers=None):
    m = {"@odata.etag": 'W/"CQAAABYAAAA"', "id": mid, "createdDateTime": sent, "receivedDateTime": sent,
         "sentDateTime": sent, "hasAttachments": False, "subject": subject, "bodyPreview": body[:40],
         "importance": "normal", "conversationId": conv, "isRead": True, "isDraft": False,
         "body": {"contentType": kind, "content": body},
         "sender": {"emailAddress": {"name": name, "address": address}},
         "from": {"emailAddress": {"name": name, "address": address}},
         "toRecipients": [{"emailAddress": {"name": n, "address": a}} for n, a in to], "ccRecipients": []}
    if imid:
        m["internetMessageId"] = imid
    if headers:
        m["internetMessageHeaders"] = [{"name": k, "value": v} for k, v in headers]
    return m


def test_graph_page_threads_by_conversation_id_and_reads_html_and_text(tmp_path):
    html = ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8"><style>p{margin:0}'
            '</style></head><body><div><p>The <b>Mid-C</b> desk needs 40 MW for Friday.</p></div></body></html>')
    page = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users('kay')/messages",
            "value": [
                _graph_message("AAMk1", "AAQk-conv1", "Mid-C power", "Mann, Kay", "kay@enron.com",
                               "2001-05-14T14:12:00Z", html, to=[("Lee, Ann", "ann@enron.com")]),
                # no internetMessageId, no threading headers, another subject: only conversationId joins it
                _graph_message("AAMk2", "AAQk-conv1", "Answer", "Lee, Ann", "ann@enron.com",
                               "2001-05-14T15:00:00Z", "We can do 25 MW.", kind="text"),
                _graph_message("AAMk3", "AAQk-conv2", "Mid-C power", "Tom", "tom@enron.com",
                               "2001-05-15T09:00:00Z", "Different thread, same subject.", kind="text",
                               imid="<tom1@enron.com>"),
            ],
            "@odata.nextLink": "https://graph.microsoft.com/v1.0/me/messages?$skip=3"}
    (tmp_path / "messages.json").write_text(json.dumps(page))
    assert detect_format(tmp_path / "messages.json") == "graph_json"
    res = read_source(tmp_path / "messages.json", require_summary=False)
    assert res.rejects == []
    threads = sorted(res.threads, key=lambda t: len(t.emails))
    assert [len(t.emails) for t in threads] == [1, 2]
    first, second = threads[1].emails
    assert first.body == "The Mid-C desk needs 40 MW for Friday." and "margin" not in first.body
    assert first.sender == "Mann, Kay <kay@enron.com>" and first.recipients == ["Lee, Ann <ann@enron.com>"]
    assert second.body == "We can do 25 MW." and first.date < second.date
    assert threads[0].thread_id == "tom1@enron.com"


def test_one_thread_across_gmail_graph_mbox_and_maildir_by_message_ids(tmp_path):
    """A reply's In-Reply-To / References join it to its parent whatever source each was read from."""
    _gmail_thread(tmp_path)
    graph = _graph_message("AAMk9", "AAQk-conv9", "RE: Credit watch list", "Ann Lee", "ann@enron.com",
                           "2001-01-01T20:00:00Z", "Also add Enron Canada.", kind="text",
                           imid="<ann9@enron.com>", headers=[("In-Reply-To", "<18c3@mail.gmail.com>")])
    (tmp_path / "graph-message.json").write_text(json.dumps(graph))  # a single message, not a page
    box = mailbox.mbox(str(tmp_path / "archive.mbox"))
    box.add(_msg("RE: Credit watch list", "Tana Jones <tana@enron.com>", "Ann Lee <ann@enron.com>",
                 "Tue, 2 Jan 2001 08:00:00 -0600", "Added both.", "<tana10@enron.com>", reply="<ann9@enron.com>"))
    box.flush()
    md = mailbox.Maildir(str(tmp_path / "Maildir"), create=True)
    md.add(_msg("RE: Credit watch list", "Sara Shackleton <sara@enron.com>", "Tana Jones <tana@enron.com>",
                "Tue, 2 Jan 2001 09:00:00 -0600", "Confirmed.", "<sara11@enron.com>", reply="<tana10@enron.com>"))
    res = read_source(tmp_path, require_summary=False)
    assert res.rejects == []
    t = next(t for t in res.threads if t.thread_id == "18c1@mail.gmail.com")
    assert [e.body.strip() for e in t.emails] == ["Please add EPMI to the watch list.", "Done. Prix: 5 €",
                                                  "Thanks, Sara.", "Also add Enron Canada.", "Added both.",
                                                  "Confirmed."]
    assert len(res.threads) == 2  # and the other Gmail thread with the same subject stays apart


def test_api_json_through_summarize_and_service_inputs(tmp_path):
    thread = _gmail_thread(tmp_path)
    got = read_threads(json.dumps(thread).encode(), "thread.json")  # `threadsum summarize thread.json`
    assert len(got) == 1 and len(got[0].emails) == 3
    pasted = threads_from_text(json.dumps({"value": [_graph_message(
        "A1", "C1", "S", "Ann", "ann@x.com", "2001-05-14T14:12:00Z", "Pasted Graph JSON.", kind="text")]}))
    assert pasted[0].emails[0].body == "Pasted Graph JSON."


# ------------------------------------------------------------------------------------- Outlook .msg
@pytest.mark.parametrize("fmt", ["auto", "eml", "mbox", "maildir", "gmail_json", "graph_json", "kaggle_csv",
                                 "kaggle_json", "jsonl"])
def test_msg_file_is_refused_with_export_routes_whatever_format_is_forced(tmp_path, fmt):
    p = tmp_path / "Re budget.eml"  # saved with the wrong extension, as happens
    p.write_bytes(_outlook_msg())
    with pytest.raises(DataError) as exc:
        read_source(p, fmt, require_summary=False)
    msg = str(exc.value)
    assert "\n" not in msg and "Outlook .msg" in msg and "msgconvert" in msg and "Save as" in msg


def test_msg_in_a_folder_is_a_file_reject_not_an_email(tmp_path):
    (tmp_path / "a.eml").write_bytes(bytes(_msg("S", "a@b.c", "d@e.f", "Mon, 1 Jan 2001 10:00:00 +0000",
                                                "Real mail.", "<a@x>")))
    (tmp_path / "b.msg").write_bytes(_outlook_msg())
    (tmp_path / "c.eml").write_bytes(_outlook_msg())
    res = read_source(tmp_path, require_summary=False)
    assert [e.body.strip() for t in res.threads for e in t.emails] == ["Real mail."]
    assert sorted(r["reason"] for r in res.rejects) == [R_OUTLOOK_MSG, R_OUTLOOK_MSG]
    assert res.counts["emails"]["input"] == 1


def test_msg_through_prepare_exits_2_and_summarize_inputs_refuse_it(tmp_path):
    p = tmp_path / "mail.msg"
    p.write_bytes(_outlook_msg())
    res = CliRunner().invoke(threadsum.cli.app, ["prepare", "-c", str(TINY), "--source", str(p),
                                                 f"data.prepared_dir={tmp_path / 'out'}"])
    assert res.exit_code == 2, res.output
    assert "Outlook .msg" in res.output and "Traceback" not in res.output
    for name in ("mail.msg", "mail.eml", "<stdin>"):
        with pytest.raises(InputError, match="Outlook .msg"):
            read_threads(_outlook_msg(), name)
    with pytest.raises(DataError, match="Outlook .msg"):
        parse_mail_bytes(_outlook_msg())
    # the page reads a chosen file with File.text() (UTF-8, bad bytes replaced) and sends it as text
    with pytest.raises(InputError, match="Outlook .msg"):
        threads_from_text(_outlook_msg().decode("utf-8", "replace"))


# ------------------------------------------------------------------------------------------- table
def test_data_format_accepts_every_reader_and_detection_reads_content():
    assert set(get_args(DataConfig.model_fields["format"].annotation)) == {"auto", *FORMATS}


def test_detection_by_content_for_names_that_do_not_say(tmp_path):
    (tmp_path / "message").write_bytes(bytes(_msg("S", "a@b.c", "d@e.f", "Mon, 1 Jan 2001 10:00:00 +0000",
                                                  "x", "<m@x>")))
    (tmp_path / "box").write_bytes(b"From a@b.c Mon Jan  1 10:00:00 2001\nFrom: a@b.c\nSubject: s\n\nx\n")
    (tmp_path / "kaggle.json").write_text(json.dumps([{"thread_id": 1, "subject": "s", "timestamp": 1,
                                                       "from": "a", "to": "[]", "body": "x"}]))
    (tmp_path / "threads.jsonl").write_text(json.dumps({"thread_id": "t", "emails": [{"body": "x"}]}) + "\n")
    (tmp_path / "gmail.jsonl").write_text(json.dumps({"id": "1", "threadId": "1", "raw": _b64url(b"x")}) + "\n")
    (tmp_path / "notes").write_text("just some words\n")
    want = {"message": "eml", "box": "mbox", "kaggle.json": "kaggle_json", "threads.jsonl": "jsonl",
            "gmail.jsonl": "gmail_json"}
    assert {n: detect_format(tmp_path / n) for n in want} == want
    with pytest.raises(DataError, match="set data.format"):
        detect_format(tmp_path / "notes")
