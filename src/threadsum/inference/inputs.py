"""What a user asks to summarize, read and checked by one set of rules.

The Python API (``Summarizer``), the CLI (``threadsum summarize``) and the HTTP service all turn
their input into ``Thread`` objects here and refuse bad input with ``InputError`` (CLI exit 2,
HTTP 422), so "nothing to summarize" means the same thing everywhere:

- bytes that are not text or mail (NUL bytes, or more than ``MAX_CONTROL_SHARE`` of control
  bytes: a binary file, random data) are refused, naming what was expected;
- text that is not valid Unicode (lone surrogate code points, which JSON's ``\\ud800`` escapes
  produce) is repaired: each is replaced by U+FFFD and counted in a warning naming the field;
- after the training cleaning path, a thread whose bodies hold no word character (empty,
  whitespace, HTML tags, entities, quoted history or a signature only) is refused
  (``check_has_body_text``).

Pasted text may hold several emails, each starting with a ``From:/To:/Subject:`` header block (or
an ``-----Original Message-----`` separator); :func:`threadsum.data.readers.parse_pasted_thread`, the
one parser of pasted threads, cuts it into emails. Thread ids that are not given
are derived from the whole content, so equal content gets equal ids and different content
different ids.
"""
from __future__ import annotations

import email.message
import email.policy
import hashlib
import json
import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Union

from threadsum.data.charset import MAX_CONTROL_SHARE, control_share  # noqa: F401 - MAX_CONTROL_SHARE re-exported
from threadsum.data.clean import has_body_text
from threadsum.data.readers import (
    OLE2_MAGIC,
    is_outlook_msg,
    outlook_msg_message,
    parse_pasted_thread,
    threads_from_api_json,
)
from threadsum.data.types import Email, Thread
from threadsum.errors import InputError

ThreadLike = Union[Thread, str, email.message.Message, dict]


EXPECTED_FORMS = ("an .eml message, an .mbox file, a JSON thread {thread_id, emails: [{from, to, date, body}]} "
                  "(or a list / JSON lines of those), a Gmail API thread or Microsoft Graph messages saved as "
                  "JSON, or plain UTF-8 text")
# an Outlook .msg file's first bytes as they read once decoded as text (UTF-8 with replacement, as a
# browser's File.text() does, or a single-byte charset)
_OLE2_AS_TEXT = tuple({OLE2_MAGIC.decode("utf-8", "replace"), OLE2_MAGIC.decode("latin-1"),
                       OLE2_MAGIC.decode("cp1252", "replace")})




# -------------------------------------------------------------------------- text repair
_SURROGATE = re.compile("[\ud800-\udfff]")


def repair_text(value: str, field: str, warnings: Optional[list[str]] = None) -> str:
    """``value`` with lone surrogate code points replaced by U+FFFD; one warning per repaired field.

    JSON allows escapes such as ``\\ud800`` that decode to code points no UTF-8 encoder accepts;
    passed on, they crash the tokenizer or the response encoder.
    """
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    fixed, n = _SURROGATE.subn("\ufffd", value)
    if warnings is not None:
        warnings.append(f"{field}: {n} lone surrogate code point{'s' if n != 1 else ''} (not valid Unicode) "
                        f"replaced by U+FFFD")
    return fixed


def repair_json(obj: Any, path: str = "", warnings: Optional[list[str]] = None) -> Any:
    """Every string of a JSON value repaired (``repair_text``), fields named by their path."""
    if isinstance(obj, str):
        return repair_text(obj, path or "value", warnings)
    if isinstance(obj, list):
        return [repair_json(v, f"{path}[{i}]", warnings) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return {repair_text(k, f"{path}.<key>", warnings) if isinstance(k, str) else k:
                repair_json(v, f"{path}.{k}" if path else str(k), warnings) for k, v in obj.items()}
    return obj


def repair_thread(thread: Thread, warnings: Optional[list[str]] = None) -> Thread:
    """``thread`` with every text field repaired (``repair_text``); the same object when clean."""
    fields = [thread.subject, thread.thread_id] + [x for e in thread.emails
                                                   for x in (e.sender, e.body, e.subject, *e.recipients, *e.cc)]
    if not any(_SURROGATE.search(x) for x in fields if isinstance(x, str)):
        return thread
    subject = repair_text(thread.subject, "subject", warnings)
    tid = repair_text(thread.thread_id, "thread_id", warnings)
    emails = []
    for i, e in enumerate(thread.emails):
        w = f"emails[{i}]"
        emails.append(replace(
            e, sender=repair_text(e.sender, f"{w}.from", warnings), body=repair_text(e.body, f"{w}.body", warnings),
            subject=repair_text(e.subject, f"{w}.subject", warnings),
            recipients=[repair_text(r, f"{w}.to", warnings) for r in e.recipients],
            cc=[repair_text(r, f"{w}.cc", warnings) for r in e.cc]))
    return replace(thread, thread_id=tid, subject=subject, emails=emails)


# ------------------------------------------------------------------ nothing to summarize
TEXT_PATTERN = r"[^\W_]"
"""A letter or digit: what every email body and pasted text must hold (the service's schema states it)."""


def check_has_body_text(cleaned: Thread) -> None:
    """Refuse a cleaned thread with nothing to summarize (raises InputError naming the thread)."""
    if not any(has_body_text(e.body) for e in cleaned.emails):
        raise InputError(
            f"thread '{cleaned.thread_id}' has no body text to summarize: after cleaning, its "
            f"{len(cleaned.emails)} email{'s' if len(cleaned.emails) != 1 else ''} hold only whitespace, HTML "
            f"tags/entities, quoted history or signatures; give at least one email with text")


# ------------------------------------------------------------------------------- ids
def content_id(thread: Thread) -> str:
    """An id derived from everything a thread says (subject, and each email's header and body)."""
    h = hashlib.sha1(thread.subject.encode("utf-8", "replace"))
    for e in thread.emails:
        h.update(json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True).encode("utf-8", "replace"))
    return "t-" + h.hexdigest()[:12]


def _with_given(thread: Thread, thread_id: Any = None, subject: Optional[str] = None) -> Thread:
    """The thread with the caller's id and subject when given, else a content id and its own subject."""
    tid = str(thread_id) if thread_id not in (None, "") else content_id(thread)
    return replace(thread, thread_id=tid, subject=subject or thread.subject)


# ---------------------------------------------------------------------- structured form
def _parse_date(value: Any, where: str, warnings: Optional[list[str]] = None) -> Optional[datetime]:
    """The readers' timestamp parsing (naive UTC). A date that is not understood leaves the email
    undated with a warning naming it (as prepare does), so a thread is never refused for its dates."""
    from threadsum.data.readers import parse_timestamp

    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"{where}.date must be a string or a number (epoch seconds), got {type(value).__name__}")
    parsed = parse_timestamp(value)
    if parsed is None and warnings is not None:
        warnings.append(f"{where}.date {str(value)[:60]!r} is not understood (use ISO 8601 '2002-01-29 11:23:42', "
                        f"an RFC 2822 date or epoch seconds); the email is treated as undated")
    return parsed


def _names(value: Any, where: str) -> list[str]:
    """Recipients as the readers parse them (Kaggle list literals, Enron 'Last, First' pairs)."""
    from threadsum.data.readers import parse_recipients

    if value is None:
        return []
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return parse_recipients([v for v in value if v.strip()])[0]
    if isinstance(value, str):
        return parse_recipients(value)[0]
    raise InputError(f"{where} must be a string or a list of strings, got {type(value).__name__}")


def _str_field(e: dict, keys: tuple[str, ...], where: str) -> str:
    value = next((e[k] for k in keys if k in e), None)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{where} must be a string, got {type(value).__name__}")
    return value


def thread_from_dict(data: dict, default_id: Optional[str] = None, warnings: Optional[list[str]] = None) -> Thread:
    """A Thread from the JSONL thread form ``{thread_id?, subject?, emails: [{from, to, cc?, date, subject?,
    body}], summary?}``; raises InputError naming the bad field.

    Without ``thread_id`` the id is ``default_id`` or, when that is None, derived from the content.
    """
    if not isinstance(data, dict):
        raise InputError(f"a thread must be a JSON object, got {type(data).__name__}")
    data = repair_json(data, "", warnings)
    emails_in = data.get("emails")
    if not isinstance(emails_in, list) or not emails_in:
        raise InputError("thread needs 'emails': a non-empty list of {from, to, date, body} objects")
    emails: list[Email] = []
    for i, e in enumerate(emails_in):
        where = f"emails[{i}]"
        if not isinstance(e, dict):
            raise InputError(f"{where} must be an object with from, to, date, body")
        if not isinstance(e.get("body"), str):
            raise InputError(f"{where}.body is required and must be a string")
        if not re.search(TEXT_PATTERN, e["body"]):
            raise InputError(f"{where}.body holds no text (no letter or digit); every email needs a body with text")
        emails.append(Email(
            sender=_str_field(e, ("from", "sender"), f"{where}.from"),
            recipients=_names(e.get("to", e.get("recipients")), f"{where}.to"),
            cc=_names(e.get("cc"), f"{where}.cc"),
            body=e["body"],
            date=_parse_date(e.get("date", e.get("timestamp")), where, warnings),
            subject=_str_field(e, ("subject",), f"{where}.subject"),
        ))
    subject = data.get("subject") or next((e.subject for e in emails if e.subject), "")
    if not isinstance(subject, str):
        raise InputError("thread 'subject' must be a string")
    summary = data.get("summary")
    thread = Thread(thread_id="", subject=subject, emails=emails, summary=summary if isinstance(summary, str) else None)
    return _with_given(thread, data.get("thread_id") if data.get("thread_id") not in (None, "") else default_id)


# --------------------------------------------------------------------------- mail / text
_HEADER_LINE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*:[ \t]")
_MAIL_HEADERS = {"from", "to", "cc", "subject", "date", "sent", "message-id", "in-reply-to", "references", "sender"}
_MBOX_SEPARATOR = re.compile(r"^From \S+ .*\d{4}\s*$")


def _header_names(lines: list[str]) -> Optional[set[str]]:
    """Lower-cased header names of a header block, or None when a line is not a header."""
    names: set[str] = set()
    for line in lines:
        if line[:1] in (" ", "\t") and names:  # folded continuation of the previous header
            continue
        if line.startswith("From ") and not names:  # mbox separator line
            continue
        if not _HEADER_LINE.match(line) and not line.rstrip().endswith(":"):
            return None
        names.add(line.split(":", 1)[0].strip().lower())
    return names


def looks_like_rfc822(text: str) -> bool:
    """True when ``text`` starts with a block of mail headers (From or Subject, and another one)."""
    head = text.lstrip("\ufeff").replace("\r\n", "\n").split("\n\n", 1)[0]
    lines = head.splitlines()
    if not lines or not (_HEADER_LINE.match(lines[0]) or lines[0].startswith("From ")):
        return False
    names = _header_names(lines)
    return names is not None and bool(names & {"from", "subject"}) and len(names & _MAIL_HEADERS) >= 2


def threads_from_mail_bytes(data: bytes) -> list[Thread]:
    """Threads of one .eml / .mbox payload, parsed by the same reader that prepare uses."""
    from threadsum.data.readers import parse_mail_bytes

    try:
        threads = parse_mail_bytes(data)
    except Exception as exc:  # noqa: BLE001 - the reader's own error types are its business
        raise InputError(f"could not parse the mail message: {exc}") from exc
    if not threads:
        raise InputError("the mail message holds no email with a body (no text/plain or text/html part)")
    return threads


def threads_from_text(text: str, warnings: Optional[list[str]] = None, field: str = "text") -> list[Thread]:
    """All threads of pasted text: an mbox (several threads possible), pasted emails with header
    blocks (one thread), one RFC 822 message, or plain text (the body of one email)."""
    if not isinstance(text, str):
        raise InputError(f"{field} must be a string, got {type(text).__name__}")
    text = repair_text(text, field, warnings).lstrip("\ufeff")
    if not text.strip():
        raise InputError(f"{field} is empty; paste an email thread or an RFC 822 message")
    if not re.search(TEXT_PATTERN, text):
        raise InputError(f"{field} holds no text (no letter or digit); paste an email thread or an RFC 822 message")
    if text.lstrip().startswith(_OLE2_AS_TEXT):
        raise InputError(outlook_msg_message(field))
    api = _api_threads_in_text(text, field)
    if api is not None:
        return api
    first = text.lstrip().split("\n", 1)[0]
    if _MBOX_SEPARATOR.match(first):
        return [_with_given(t) for t in threads_from_mail_bytes(text.lstrip().encode("utf-8"))]
    # several pasted header blocks (or "-----Original Message-----" chains): the readers' parser, the
    # same one for CLI stdin, the page and {"text": ...}; a single message keeps the MIME-aware path
    pasted = parse_pasted_thread(text)
    if len(pasted.emails) > 1:
        return [_with_given(replace(pasted, thread_id=""))]
    if looks_like_rfc822(text):
        return [_with_given(t) for t in threads_from_mail_bytes(text.encode("utf-8"))]
    return [_with_given(Thread(thread_id="", subject="", emails=[Email(sender="", body=text)]))]


def _api_threads_in_text(text: str, name: str) -> Optional[list[Thread]]:
    """The threads of Gmail API / Microsoft Graph JSON pasted as text, or None for any other text."""
    stripped = text.strip()
    if stripped[:1] not in ("{", "["):
        return None
    try:
        value = json.loads(stripped)
    except (json.JSONDecodeError, RecursionError):
        return None
    return _api_threads(value, name)


def _api_threads(value: Any, name: str) -> Optional[list[Thread]]:
    """Threads of a parsed Gmail/Graph JSON value (readers' rules), None for another shape; raises
    InputError when the value has that shape but no message with a body."""
    threads = threads_from_api_json(value, name)
    if threads is None:
        return None
    if not threads:
        raise InputError(f"{name} is Gmail API or Microsoft Graph JSON without any message that has a body; save "
                         f"threads with users.threads.get (format=full or raw) or messages with GET /me/messages")
    return [_with_given(t) for t in threads]


def thread_from_text(text: str, thread_id: Any = None, subject: Optional[str] = None,
                     warnings: Optional[list[str]] = None) -> Thread:
    """Exactly one thread from pasted text (see ``threads_from_text``); raises InputError for several."""
    threads = threads_from_text(text, warnings)
    if len(threads) > 1:
        raise InputError(f"the text holds {len(threads)} threads; summarize one thread at a time, or send the "
                         f"text to POST /v1/summarize/batch as {{\"text\": ...}} (CLI: threadsum summarize FILE) "
                         f"for one summary per thread")
    return _with_given(threads[0], thread_id, subject) if (thread_id or subject) else threads[0]


def to_thread(item: ThreadLike, index: int = 0, warnings: Optional[list[str]] = None) -> Thread:
    """Coerce any accepted input to a Thread with repaired text (raises InputError)."""
    if isinstance(item, Thread):
        if not item.emails:
            raise InputError(f"thread '{item.thread_id}' has no emails")
        return repair_thread(item, warnings)
    if isinstance(item, str):
        return thread_from_text(item, warnings=warnings)
    if isinstance(item, email.message.Message):
        try:
            data = item.as_bytes(policy=email.policy.compat32)
        except (UnicodeError, ValueError) as exc:
            raise InputError(f"the email message cannot be serialized ({exc}); pass its text instead") from None
        return threads_from_mail_bytes(data)[0]
    if isinstance(item, dict):
        return thread_from_dict(item, warnings=warnings)
    raise InputError(
        f"cannot summarize a {type(item).__name__}; pass a Thread, a str, an email.message.Message "
        f"or a dict {{thread_id, emails: [{{from, to, date, body}}]}}"
    )


# ------------------------------------------------------------------------- files / stdin
def refuse_binary(data: bytes, name: str) -> None:
    """Raise InputError when ``data`` is not text or mail (NUL bytes or too many control bytes); an
    Outlook .msg file gets a message saying how to save it as .eml."""
    if is_outlook_msg(data):
        raise InputError(outlook_msg_message(name))
    share = control_share(data)
    has_nul = b"\x00" in data[:65536]
    if has_nul or share > MAX_CONTROL_SHARE:
        nul = ", NUL bytes" if has_nul else ""
        raise InputError(f"{name} is not text or mail ({share:.0%} control bytes{nul}: binary data); "
                         f"expected {EXPECTED_FORMS}")


def decode_input(data: bytes, name: str, warnings: Optional[list[str]] = None) -> str:
    """Text of a file or stdin: refused when binary, strict UTF-8 (BOM dropped), else undecodable
    bytes replaced by U+FFFD with a warning giving the first bad byte's offset."""
    refuse_binary(data, name)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if warnings is not None:
            warnings.append(f"{name}: invalid UTF-8 at byte {exc.start}; undecodable bytes replaced by U+FFFD")
        return data.decode("utf-8", errors="replace").lstrip("\ufeff")


def _load_json_or_lines(text: str, lines: bool) -> Any:
    """One JSON document, or JSON lines (one thread per line)."""
    if not lines:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            if "\n" not in text:
                raise
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_threads(data: bytes, name: str = "<stdin>", warnings: Optional[list[str]] = None) -> list[Thread]:
    """Threads of an .eml / .mbox / JSON / JSONL payload or plain text (sniffed by content and name).

    Raises InputError for empty or binary input, invalid JSON (with line, column and character
    position) and JSON that is not a thread.
    """
    suffix = Path(name).suffix.lower()
    if not data.strip():
        raise InputError(f"{name} is empty; expected {EXPECTED_FORMS}")
    if suffix in {".eml", ".mbox"}:
        refuse_binary(data, name)
        return [_with_given(t) for t in threads_from_mail_bytes(data.lstrip())]
    text = decode_input(data, name, warnings)
    stripped = text.strip()
    if suffix in {".json", ".jsonl"} or stripped[:1] in "{[":
        try:
            records = _load_json_or_lines(stripped, lines=suffix == ".jsonl")
        except json.JSONDecodeError as exc:
            raise InputError(f"{name} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}, "
                             f"character position {exc.pos}); expected {EXPECTED_FORMS}") from None
        except RecursionError:
            raise InputError(f"{name} is JSON nested too deeply to read; expected {EXPECTED_FORMS}") from None
        api = _api_threads(records, name)
        if api is not None:
            return api
        if isinstance(records, dict) and isinstance(records.get("threads"), list):
            records = records["threads"]
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list) or not records:
            raise InputError(f"{name} holds no thread; expected a thread object or a list of them")
        threads = []
        for i, r in enumerate(records):
            try:
                threads.append(thread_from_dict(r, warnings=warnings))
            except InputError as exc:
                raise InputError(f"{name}: thread {i}: {exc}" if len(records) > 1 else f"{name}: {exc}") from None
        return threads
    if _MBOX_SEPARATOR.match(stripped.split("\n", 1)[0]):
        # mail is parsed from its bytes: each part's declared charset applies, not UTF-8
        return [_with_given(t) for t in threads_from_mail_bytes(data.lstrip())]
    return threads_from_text(text, warnings, field=name)
