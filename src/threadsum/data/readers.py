"""Readers: raw mail in several formats -> ``Thread`` records, with every rejected row accounted for.

Formats: the Kaggle CSV pair (``email_thread_details.csv`` + ``email_thread_summaries.csv``) and its
JSON copies (epoch timestamps), a folder of ``.eml`` files, an ``.mbox`` file, and JSONL of threads
``{thread_id, subject?, emails: [{from, to, cc?, date, subject?, body}], summary?}``.

Bad input never raises out of ``read_source``: a bad row, summary or file becomes a reject record
``{level, reason, detail, source, line, thread_id}`` and is counted, so ``input = kept + rejected``
holds for emails, summaries and threads. Repairs that keep the data (an unparseable ``to`` split at
commas, bytes that are not UTF-8 read as cp1252, a mail part whose declared charset lies, a missing or
unreadable date, NUL bytes removed, an oversized body cut) are counted as warnings. Bytes are decoded
by the rule in ``threadsum.data.charset``; HTML bodies are converted to text in every format.
Only a source that does not exist at all raises ``DataError``.
"""
from __future__ import annotations

import ast
import csv
import email
import email.policy
import hashlib
import io
import json
import re
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterable, Optional

from dateutil import parser as dateutil_parser

from threadsum.data.charset import control_share, decode_bytes, decode_utf8_or_cp1252, looks_binary
from threadsum.data.ledger import Ledger
from threadsum.data.types import Email, Thread
from threadsum.errors import UserError

DETAILS_CSV = "email_thread_details.csv"
SUMMARIES_CSV = "email_thread_summaries.csv"
DETAILS_JSON = "email_thread_details.json"
SUMMARIES_JSON = "email_thread_summaries.json"
DETAIL_COLUMNS = ("thread_id", "subject", "timestamp", "from", "to", "body")
SUMMARY_COLUMNS = ("thread_id", "summary")
DEFAULT_MAX_BODY_CHARS = 200_000
KAGGLE_DATASET = "marawanxmamdouh/email-thread-summary-dataset"

# reasons (stable strings: tests, reports and rejects.jsonl use them)
R_EMPTY_FILE = "empty_file"
R_MISSING_FILE = "missing_file"
R_MISSING_COLUMN = "missing_column"
R_WRONG_DELIMITER = "wrong_delimiter"
R_UNREADABLE_FILE = "unreadable_file"
R_MALFORMED_ROW = "malformed_row"
R_MISSING_THREAD_ID = "missing_thread_id"
R_BAD_THREAD_ID = "bad_thread_id"
R_BAD_TIMESTAMP = "bad_timestamp"
R_EMPTY_BODY = "empty_body"
R_EMPTY_SUMMARY = "empty_summary"
R_DUPLICATE_SUMMARY = "duplicate_summary"
R_NO_SUMMARY = "thread_without_summary"
R_ORPHAN_SUMMARY = "summary_without_thread"
R_NO_VALID_EMAILS = "thread_without_valid_emails"
R_INVALID_JSON = "invalid_json"
R_NOT_A_THREAD = "not_a_thread_object"
R_UNPARSEABLE_MAIL = "unparseable_mail"
# warnings (the data is kept, repaired)
W_TO_UNPARSED = "to_not_a_list_literal"
W_INVALID_UTF8 = "invalid_utf8_replaced"
W_NUL_BYTES = "nul_bytes_removed"
W_BODY_CUT = "body_cut_to_max_chars"
W_MISSING_SENDER = "missing_sender"
W_MISSING_DATE = "missing_date"
W_UNREADABLE_DATE = "unreadable_date"
W_CHARSET = "charset_not_as_declared"
W_MBOX_SPLIT_NO_BLANK = "mbox_separator_without_blank_line"
W_MBOX_DOUBTFUL_FROM = "mbox_doubtful_from_line"
R_UNSUPPORTED_FILE = "unsupported_file"
R_BINARY_FILE = "binary_file"

_KAGGLE_ID = re.compile(r"^\d+(?:\.0)?$")
_SAFE_ID = re.compile(r"^[^\s\x00-\x1f]{1,200}$")


class DataError(UserError):
    """The input cannot be read at all; the message says what to fix."""


@dataclass
class ReadResult:
    """What a reader returns: the kept threads, the rejected rows/threads/files with their reasons, the
    counts per level (``emails``/``threads``/``summaries``: input = kept + rejected), the repaired-row
    warnings and the files read.
    """
    threads: list[Thread] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------ field parsing
_PLAIN_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
# a list literal of plain quoted strings (printable ASCII, no backslash): what ast.literal_eval
# returns for it is just the text between the quotes, without its ~40 us parse per row
_SIMPLE_LIST = re.compile(r"\[ *(?:(?:'[ !#-&(-\[\]-~]*'|\"[ !#-\[\]-~]*\") *, *)*"
                          r"(?:'[ !#-&(-\[\]-~]*'|\"[ !#-\[\]-~]*\")? *\]")
_SIMPLE_ITEM = re.compile(r"'([ !#-&(-\[\]-~]*)'|\"([ !#-\[\]-~]*)\"")


def parse_timestamp(value: Any) -> Optional[datetime]:
    """'YYYY-MM-DD HH:MM:SS', ISO 8601, RFC 2822 or epoch seconds/milliseconds -> naive UTC datetime."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        v = float(value)
        if v != v:  # NaN
            return None
        if abs(v) > 1e11:  # milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973
            v /= 1000.0
        try:
            return datetime.fromtimestamp(v, tz=timezone.utc).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            return None
    s = str(value).strip()
    if not s:
        return None
    if re.fullmatch(r"-?\d+(\.\d+)?", s):
        return parse_timestamp(float(s))
    if _PLAIN_TIME.fullmatch(s):  # the Kaggle layout: fromisoformat reads it ~20x faster than strptime
        try:
            return datetime.fromisoformat(s)
        except ValueError:
            pass  # e.g. month 13: the slow path below decides
    return parse_date_text(s)


# Two defaults that differ in year, month and day: a text that leaves any of them to the default
# ('Tuesday afternoon', '10:30', 'May 14') parses differently under each and is not a date.
_DEFAULTS = (datetime(1900, 1, 1), datetime(1904, 2, 2))


def parse_date_text(text: str) -> Optional[datetime]:
    """A date in a mail header or a data file -> naive UTC datetime, or None when it names no full date.

    python-dateutil's parser reads RFC 2822 (``Mon, 14 May 2001 09:12:00 -0500``), ISO 8601
    (``2001-05-14 09:00:00``), asctime (``Mon May 14 09:12:00 2001``), Outlook's ``Monday, May 14, 2001
    9:12 AM``, ``05/14/2001 9:00 AM`` (month first where ambiguous, as US mail writes them); what it
    refuses goes to ``email.utils`` (obsolete RFC 2822 forms).
    Year, month and day must all be in the text; a missing time of day is midnight. Never raises.
    """
    s = str(text).strip()
    if not s:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dateutil warns about time zone names it does not know
            d, d2 = (dateutil_parser.parse(s, default=x) for x in _DEFAULTS)
        if d.replace(tzinfo=None) != d2.replace(tzinfo=None):
            return None  # part of the date came from the default
    except (ValueError, OverflowError, TypeError, dateutil_parser.ParserError):
        # obsolete RFC 2822 forms dateutil refuses, e.g. a trailing '(CDT)' comment
        try:
            d = parsedate_to_datetime(s)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if d is None:
            return None
    if d.tzinfo is not None:
        try:
            d = d.astimezone(timezone.utc).replace(tzinfo=None)
        except (OverflowError, ValueError):
            return None
    return d


_SURNAME = re.compile(r"^[A-Za-z][A-Za-z'\-\.]*(?: (?:Jr|Sr)\.?| III| II)?$")


def regroup_enron_names(items: list[str]) -> list[str]:
    """Undo the export's split at commas: ['Murphy', 'Melissa Mmurphy'] -> ['Murphy, Melissa Mmurphy']."""
    out: list[str] = []
    i = 0
    while i < len(items):
        cur = items[i].strip()
        nxt = items[i + 1].strip() if i + 1 < len(items) else None
        if nxt is not None:
            opens_quote = cur[:1] in ("\"", "'") and cur.count(cur[0]) == 1  # (an empty item opens nothing)
            if opens_quote or (_SURNAME.match(cur) and " " in nxt and "@" not in nxt and "<" not in nxt):
                out.append(f"{cur}, {nxt}")
                i += 2
                continue
        if cur:
            out.append(cur)
        i += 1
    return out


def parse_recipients(value: Any) -> tuple[list[str], bool]:
    """The ``to`` field: a Python list literal (parsed with ast.literal_eval, never eval) or a list.

    Returns (recipients, ok); ok=False means the value was not a list literal and was split at commas.
    """
    if value is None:
        return [], True
    if isinstance(value, list):
        return regroup_enron_names([str(v) for v in value]), True
    s = str(value).strip()
    if not s:
        return [], True
    if _SIMPLE_LIST.fullmatch(s):
        return regroup_enron_names([a or b for a, b in _SIMPLE_ITEM.findall(s)]), True
    if s.startswith("["):
        try:
            parsed = ast.literal_eval(s)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            parsed = None
        if isinstance(parsed, (list, tuple)) and all(isinstance(v, str) for v in parsed):
            return regroup_enron_names(list(parsed)), True
        s = s.strip("[]")
    return [p.strip().strip("'\"") for p in re.split(r"[,;]", s) if p.strip().strip("'\"")], False


def _norm_thread_id(raw: Any, kaggle: bool) -> tuple[Optional[str], Optional[str]]:
    """(thread_id, reject_reason)."""
    if raw is None or (isinstance(raw, float) and raw != raw):
        return None, R_MISSING_THREAD_ID
    if isinstance(raw, bool):
        return None, R_BAD_THREAD_ID
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    s = str(raw).strip()
    if not s:
        return None, R_MISSING_THREAD_ID
    if kaggle:
        if not _KAGGLE_ID.match(s):
            return None, R_BAD_THREAD_ID
        return str(int(float(s))), None
    if not _SAFE_ID.match(s):
        return None, R_BAD_THREAD_ID
    return s, None


# ------------------------------------------------------------------------------- file decoding
def _decode(data: bytes, path: Path, led: Ledger) -> str:
    if b"\x00" in data:
        n_nul = data.count(b"\x00")
        led.warn(W_NUL_BYTES, f"{n_nul} NUL byte(s) removed", path)
        data = data.replace(b"\x00", b"")
    text, bad = decode_utf8_or_cp1252(data)
    if bad is not None:
        led.warn(W_INVALID_UTF8, f"invalid UTF-8 at byte {bad}; bytes that are not UTF-8 read as cp1252", path)
    return text


def _csv_records(path: Path, required: tuple[str, ...], led: Ledger, level: str
                 ) -> Optional[list[tuple[int, dict[str, str]]]]:
    """Rows of a CSV file as (line, {column: value}); None when the file itself is unusable."""
    if not path.exists():
        led.reject("file", R_MISSING_FILE, f"'{path.name}' not found next to the other Kaggle file; "
                   f"put both {DETAILS_CSV} and {SUMMARIES_CSV} in one folder", path)
        return None
    data = path.read_bytes()
    if not data.strip():
        led.reject("file", R_EMPTY_FILE, f"'{path.name}' is empty; re-download or re-export it", path)
        return None
    text = _decode(data, path, led)
    # 10 MB bodies are legal in the corpus' format; the default field limit is 128 KB
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except (StopIteration, csv.Error) as exc:
        led.reject("file", R_UNREADABLE_FILE, f"'{path.name}' has no readable header: {exc}", path)
        return None
    missing = [c for c in required if c not in header]
    if missing:
        joined = ",".join(header)
        for delim, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
            if len(header) < len(required) and all(c in joined for c in required) and delim in joined:
                led.reject("file", R_WRONG_DELIMITER,
                           f"'{path.name}' is delimited by {name}, not commas; re-save it as comma-separated "
                           f"CSV with columns {','.join(required)}", path)
                return None
        led.reject("file", R_MISSING_COLUMN,
                   f"'{path.name}' lacks column(s) {', '.join(missing)}; expected {','.join(required)} "
                   f"(found {','.join(header) or 'nothing'})", path)
        return None
    out: list[tuple[int, dict[str, str]]] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            led.inputs[level] += 1
            led.reject(level, R_MALFORMED_ROW, f"CSV error: {exc}", path, reader.line_num)
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        led.inputs[level] += 1
        if len(row) != len(header):
            led.reject(level, R_MALFORMED_ROW,
                       f"{len(row)} fields where the header has {len(header)} (an unquoted comma or newline?)",
                       path, reader.line_num, thread_id=row[0].strip() if row else None)
            continue
        rec = dict(zip(header, row))
        if any("\ufffd" in v for v in row):
            led.warn(W_INVALID_UTF8, "field holds replaced invalid UTF-8", path, reader.line_num, rec.get("thread_id"))
        out.append((reader.line_num, rec))
    return out


def _json_records(path: Path, required: tuple[str, ...], led: Ledger, level: str
                  ) -> Optional[list[tuple[int, dict[str, Any]]]]:
    """Records of a Kaggle JSON copy: a list of objects, pandas 'columns' layout, or JSON lines."""
    if not path.exists():
        led.reject("file", R_MISSING_FILE, f"'{path.name}' not found", path)
        return None
    data = path.read_bytes()
    if not data.strip():
        led.reject("file", R_EMPTY_FILE, f"'{path.name}' is empty; re-download it", path)
        return None
    text = _decode(data, path, led)
    records: list[Any]
    try:
        obj = json.loads(text)
        if isinstance(obj, dict) and all(isinstance(v, dict) for v in obj.values()):
            # pandas orient='columns': {column: {row_index: value}}
            index = sorted({k for col in obj.values() for k in col}, key=lambda k: (len(k), k))
            records = [{c: obj[c].get(i) for c in obj} for i in index]
        elif isinstance(obj, dict) and "data" in obj and isinstance(obj["data"], list):
            records = obj["data"]
        elif isinstance(obj, list):
            records = obj
        else:
            led.reject("file", R_UNREADABLE_FILE, f"'{path.name}' is JSON but not a list of records", path)
            return None
    except json.JSONDecodeError:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                led.inputs[level] += 1
                led.reject(level, R_INVALID_JSON, f"line is not JSON: {exc.msg}", path, n)
    out = []
    for n, rec in enumerate(records, 1):
        led.inputs[level] += 1
        if not isinstance(rec, dict):
            led.reject(level, R_MALFORMED_ROW, f"record {n} is a {type(rec).__name__}, not an object", path, n)
            continue
        missing = [c for c in required if c not in rec]
        if missing and n == 1 and len(missing) == len(required):
            led.reject("file", R_MISSING_COLUMN, f"'{path.name}' records lack {', '.join(missing)}", path)
            led.inputs[level] -= 1
            return None
        out.append((n, rec))
    return out


# --------------------------------------------------------------------------------- Kaggle pair
def _email_from_record(rec: dict[str, Any], src: Path, line: int, led: Ledger, max_body_chars: int,
                       kaggle: bool = True) -> Optional[tuple[str, Email]]:
    tid, why = _norm_thread_id(rec.get("thread_id"), kaggle)
    if why:
        led.reject("email", why, f"thread_id {rec.get('thread_id')!r} is {'empty' if why == R_MISSING_THREAD_ID else 'not a valid id'}"
                   + ("; Kaggle thread ids are integers" if kaggle and why == R_BAD_THREAD_ID else ""), src, line)
        return None
    raw_ts = rec.get("timestamp", rec.get("date"))
    date = parse_timestamp(raw_ts)
    if date is None:
        led.reject("email", R_BAD_TIMESTAMP, f"timestamp {str(raw_ts)[:60]!r} is not a date "
                   f"(expected 'YYYY-MM-DD HH:MM:SS' or epoch seconds/milliseconds)", src, line, tid)
        return None
    body = rec.get("body")
    body = "" if body is None else body_text(str(body))  # HTML bodies read as text, as mail parts are
    if not body.strip():
        led.reject("email", R_EMPTY_BODY, "body is empty", src, line, tid)
        return None
    if len(body) > max_body_chars:
        led.warn(W_BODY_CUT, f"body of {len(body):,} characters cut to {max_body_chars:,} (data.max_body_chars)",
                 src, line, tid)
        body = body[:max_body_chars]
    to, ok = parse_recipients(rec.get("to"))
    if not ok:
        led.warn(W_TO_UNPARSED, f"to {str(rec.get('to'))[:60]!r} is not a list literal; split at commas", src, line, tid)
    cc, _ = parse_recipients(rec.get("cc"))
    sender = str(rec.get("from") or "").strip()
    if not sender:
        led.warn(W_MISSING_SENDER, "from is empty", src, line, tid)
    return tid, Email(sender=sender, recipients=to, body=body, date=date, subject=str(rec.get("subject") or "").strip(),
                      cc=cc)


def _summaries_from_records(records: Optional[list], src: Path, led: Ledger) -> dict[str, str]:
    out: dict[str, str] = {}
    for line, rec in records or []:
        tid, why = _norm_thread_id(rec.get("thread_id"), True)
        if why:
            led.reject("summary", why, f"summary row has thread_id {rec.get('thread_id')!r}", src, line)
            continue
        text = str(rec.get("summary") or "").strip()
        if not text:
            led.reject("summary", R_EMPTY_SUMMARY, "summary is empty", src, line, tid)
            continue
        if tid in out:
            same = "the same text" if out[tid] == text else "a different text"
            led.reject("summary", R_DUPLICATE_SUMMARY, f"second summary for thread {tid} ({same}); the first is kept",
                       src, line, tid)
            continue
        out[tid] = text
    return out


def _assemble(emails: dict[str, list[Email]], summaries: dict[str, Optional[str]], led: Ledger, src: Any,
              require_summary: bool, subjects: Optional[dict[str, str]] = None,
              seen_ids: Iterable[str] = ()) -> list[Thread]:
    """Group emails into threads (sorted by time, stable), pair with summaries, reject what cannot train."""
    threads: list[Thread] = []
    seen_ids = set(seen_ids)
    all_ids = set(emails) | {k for k, v in summaries.items() if v is not None} | seen_ids
    led.inputs["thread"] += len(all_ids)
    for tid in sorted(all_ids, key=_id_sort_key):
        mails = emails.get(tid, [])
        summary = summaries.get(tid)
        if not mails:
            if tid in emails or tid in seen_ids:
                led.reject("thread", R_NO_VALID_EMAILS, f"every email of thread {tid} was rejected (see its email rejects)",
                           src, thread_id=tid)
            else:
                led.reject("thread", R_ORPHAN_SUMMARY, f"summary for thread {tid} has no emails in the details file",
                           src, thread_id=tid)
            continue
        if require_summary and not summary:
            led.reject("thread", R_NO_SUMMARY, f"thread {tid} has {len(mails)} email(s) but no summary",
                       src, thread_id=tid, n_emails=len(mails))
            continue
        mails = order_emails(mails)  # by date (stable), by reply chain where dates are missing
        subject = (subjects or {}).get(tid) or next((e.subject for e in mails if e.subject), "")
        threads.append(Thread(thread_id=tid, subject=subject, emails=mails, summary=summary))
    return threads


def _id_sort_key(tid: str) -> tuple:
    return (0, int(tid), "") if tid.isdigit() else (1, 0, tid)


def read_kaggle(details: Path, summaries: Path, fmt: str = "csv", max_body_chars: int = DEFAULT_MAX_BODY_CHARS,
                require_summary: bool = True) -> ReadResult:
    """Read the Kaggle corpus: the details file (one email per row) and the summaries file.

    Bad rows and a missing or empty file become rejects; a body over ``max_body_chars`` is cut, with a warning.

    Args:
        details: ``email_thread_details.csv`` (or ``.json``).
        summaries: ``email_thread_summaries.csv`` (or ``.json``).
        fmt: ``"csv"`` or ``"json"`` (any other value reads JSON).
        max_body_chars: longest email body kept, in characters (longer ones are cut, with a warning).
        require_summary: reject threads that have no summary.

    Returns:
        The threads grouped by thread_id, with rejects, counts and warnings.
    """
    led = Ledger()
    read = _csv_records if fmt == "csv" else _json_records
    rows = read(details, DETAIL_COLUMNS, led, "email")
    srows = read(summaries, SUMMARY_COLUMNS, led, "summary")
    by_thread: dict[str, list[Email]] = defaultdict(list)
    seen: set[str] = set()
    for line, rec in rows or []:
        got = _email_from_record(rec, details, line, led, max_body_chars)
        if got:
            by_thread[got[0]].append(got[1])
        else:
            tid, why = _norm_thread_id(rec.get("thread_id"), True)
            if not why:
                seen.add(tid)
    summ = _summaries_from_records(srows, summaries, led)
    threads = _assemble(by_thread, summ, led, details, require_summary, seen_ids=seen)
    return ReadResult(threads, led.rejects, led.counts(threads), led.warnings, [p for p in (details, summaries) if p.exists()])


# ---------------------------------------------------------------------------------------- mail
class _HTMLText(HTMLParser):
    """HTML -> plain text: block tags become line breaks, scripts and styles are dropped."""

    _BLOCK = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """HTML -> plain text (stdlib ``html.parser``): block tags become line breaks, entities are decoded
    (``&nbsp;`` reads as a space), scripts, styles and the head are dropped. The one converter for
    HTML mail parts and HTML bodies found in CSV/JSON/JSONL rows."""
    p = _HTMLText()
    p.feed(html)
    p.close()
    text = "".join(p.parts)
    text = re.sub(r"[ \t\r\f\v\xa0]+", " ", text)
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", text).strip()


_HTML_TAG = re.compile(r"<(?:!doctype\s+html|/?(?:html|head|body|p|div|br|span|font|table|tr|td|th|ul|ol|li|b|i|u|em|"
                       r"strong|a|h[1-6]|blockquote|pre|img|hr|center)\b[^<>]{0,500}>)", re.I)
_HTML_CLOSE = re.compile(r"</(?:html|body|p|div|span|font|table|tr|td|li|b|i|u|em|strong|a|h[1-6])\s*>|<br\s*/?>|"
                         r"<!doctype\s+html|<html\b", re.I)


def looks_like_html(text: str) -> bool:
    """Whether a body is HTML: at least two HTML tags, one of them closing (``</p>``), ``<br>`` or
    ``<html>``. Enron-style ``<joe@example.com>`` addresses and ``<<File: a.doc>>`` notes are not tags."""
    if "<" not in text:
        return False
    head = text[:50_000]
    return _HTML_CLOSE.search(head) is not None and len(_HTML_TAG.findall(head, 0, 50_000)[:2]) >= 2


def body_text(body: str) -> str:
    """A body as the model reads it: HTML converted to text (``looks_like_html``), anything else as is."""
    return html_to_text(body) if looks_like_html(body) else body


def _part_text(part, notes: Optional[list] = None) -> str:
    """A text part's content: transfer encoding undone, bytes decoded by ``threadsum.data.charset``'s rule
    (declared charset strictly, UTF-8, charset-normalizer, cp1252); a fallback is noted in ``notes``."""
    try:
        payload = part.get_payload(decode=True)
    except (LookupError, UnicodeError, AssertionError, KeyError, ValueError):
        payload = None
    if payload is None:
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    text, note = decode_bytes(payload, part.get_param("charset"))
    if note and notes is not None:
        notes.append((W_CHARSET, note))
    return text


def message_body(msg, notes: Optional[list] = None) -> str:
    """The readable body: the first text/plain part, else HTML converted to text. HTML sent as
    text/plain is converted too. Charset fallbacks are noted in ``notes`` as (reason, detail)."""
    plain = html = None
    for part in (msg.walk() if msg.is_multipart() else [msg]):
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain" and plain is None:
            plain = _part_text(part, notes)
        elif ctype == "text/html" and html is None:
            html = _part_text(part, notes)
    if plain and plain.strip():
        return body_text(plain)
    if html:
        return html_to_text(html)
    return plain or ""


def _addr_list(values) -> list[str]:
    out = []
    for name, addr in getaddresses([str(v) for v in values if v]):
        if name and addr:
            out.append(f"{name} <{addr}>")
        elif name or addr:
            out.append(name or addr)
    return out


def _msg_ids(value) -> list[str]:
    return re.findall(r"<[^<>\s]+>", str(value or ""))


def email_from_message(msg, notes: Optional[list] = None, envelope_date: Optional[datetime] = None) -> Email:
    """An ``email.message.Message`` -> ``Email``. What was repaired or is missing goes to ``notes`` as
    (warning reason, detail): a charset fallback, a missing or unreadable Date header. An mbox
    separator's date (``envelope_date``) stands in for a missing Date header."""
    def header(name: str) -> str:
        try:
            v = msg.get(name)
        except Exception:  # a malformed header must not cost the whole message
            v = None
        return str(v).strip() if v is not None else ""

    raw_date = header("Date")
    date = parse_date_text(raw_date) if raw_date else envelope_date
    if notes is not None:
        if not raw_date and envelope_date is None:
            notes.append((W_MISSING_DATE, "no Date header; placed by its reply chain"))
        elif date is None:
            notes.append((W_UNREADABLE_DATE, f"Date {raw_date[:60]!r} is not a date; placed by its reply chain"))
    return Email(
        sender=(_addr_list([header("From")]) or [""])[0],
        recipients=_addr_list(msg.get_all("To") or []),
        cc=_addr_list(msg.get_all("Cc") or []),
        body=message_body(msg, notes),
        date=date,
        subject=header("Subject"),
        message_id=(_msg_ids(header("Message-ID")) or [""])[0],
        in_reply_to=(_msg_ids(header("In-Reply-To")) or [""])[0],
        references=_msg_ids(header("References")),
    )


def _email_name(e: Email) -> str:
    """How warnings name an email: its Message-ID, else sender and subject."""
    return e.message_id or f"from {e.sender or 'unknown'!r}, subject {e.subject[:60]!r}"


def _read_message(data: bytes, where: str, led: Ledger, envelope_date: Optional[datetime] = None) -> Email:
    """Parse one raw message; its notes become counted warnings naming the email."""
    notes: list = []
    e = email_from_message(_parse_message(data), notes, envelope_date)
    for reason, detail in notes:
        led.warn(reason, f"{detail} (email {_email_name(e)})", where)
    return e


_SUBJ_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv)\s*(\[\d+\])?\s*:\s*)+", re.I)


def normalize_subject(subject: str) -> str:
    """The subject without reply/forward prefixes (Re:, Fw:, Fwd:, AW:, WG:, SV:, repeated), with
    whitespace collapsed and lower-cased; the key for threading mail that lacks threading headers.
    """
    return re.sub(r"\s+", " ", _SUBJ_PREFIX.sub("", subject or "")).strip().lower()


def thread_emails(emails: list[Email]) -> list[list[Email]]:
    """Group emails into threads by Message-ID / In-Reply-To / References, else by normalized subject."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb

    keys = []
    for i, e in enumerate(emails):
        k = f"mail:{i}"
        keys.append(k)
        if e.message_id:
            union(k, "id:" + e.message_id)
        for ref in ([e.in_reply_to] if e.in_reply_to else []) + list(e.references):
            union(k, "id:" + ref)
    first_by_subject: dict[str, str] = {}
    for k, e in sorted(zip(keys, emails), key=lambda ke: ke[1].date or datetime.min):
        s = normalize_subject(e.subject)
        if not s:
            continue
        if not (e.in_reply_to or e.references) and s in first_by_subject:
            union(k, first_by_subject[s])  # no threading headers: fall back to the subject
        first_by_subject.setdefault(s, k)
    groups: dict[str, list[Email]] = defaultdict(list)
    for k, e in zip(keys, emails):
        groups[find(k)].append(e)
    return [order_emails(g) for g in groups.values()]


def order_emails(emails: list[Email]) -> list[Email]:
    """The emails of one thread in reading order.

    With every date known: by date (stable: equal dates keep their input order). Where dates are
    missing or unreadable the reply chain decides (In-Reply-To, else the nearest References entry in
    the thread): an undated reply sorts right after its parent, an undated message whose replies are
    dated right before the earliest of them, and one with neither dates nor relations at the end.
    """
    if all(e.date is not None for e in emails):
        return sorted(emails, key=lambda e: e.date)
    by_id = {e.message_id: e for e in emails if e.message_id}
    parent: dict[int, Email] = {}
    children: dict[int, list[Email]] = defaultdict(list)
    for e in emails:
        for ref in ([e.in_reply_to] if e.in_reply_to else []) + list(reversed(e.references)):
            p = by_id.get(ref)
            if p is not None and p is not e:
                parent[id(e)] = p
                children[id(p)].append(e)
                break
    memo: dict[int, tuple[datetime, int]] = {}

    def key(e: Email, seen: frozenset = frozenset()) -> tuple[datetime, int]:
        if id(e) in memo:
            return memo[id(e)]
        if e.date is not None:
            k = (e.date, 0)
        elif id(e) in parent and id(parent[id(e)]) not in seen:
            pd, depth = key(parent[id(e)], seen | {id(e)})
            k = (pd, depth + 1)
        else:
            below = [key(c, seen | {id(e)}) for c in children.get(id(e), []) if id(c) not in seen]
            k = (min(below)[0], -1) if below and min(below)[0] != datetime.max else (datetime.max, 0)
        memo[id(e)] = k
        return k

    order = {id(e): i for i, e in enumerate(emails)}
    return sorted(emails, key=lambda e: (*key(e), order[id(e)]))


def content_thread_id(emails: list[Email]) -> str:
    """A thread id that depends only on the content: the root message's Message-ID when it has a usable
    one, else ``t-`` + 12 hex digits of a SHA-1 over the first email's sender, date, subject and body.
    The same mail gives the same id on every run, wherever the file lies."""
    root = emails[0].message_id.strip("<>") if emails and emails[0].message_id else ""
    if root and _SAFE_ID.match(root):
        return root
    e = emails[0] if emails else Email("")
    key = "\x00".join([e.sender, e.date.isoformat() if e.date else "", e.subject, e.body[:2000]])
    return "t-" + hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _mail_threads(emails: list[tuple[Email, str]], led: Ledger, summaries: dict[str, str],
                  require_summary: bool, src: Any) -> list[Thread]:
    kept: list[Email] = []
    for e, where in emails:
        if not e.body.strip():
            led.reject("email", R_EMPTY_BODY, "message has no text/plain or text/html body", where)
            continue
        kept.append(e)
    by_id: dict[str, list[Email]] = {}
    for group in thread_emails(kept):
        by_id.setdefault(content_thread_id(group), []).extend(group)
    by_id = {tid: order_emails(g) for tid, g in by_id.items()}
    subjects = {tid: g[0].subject for tid, g in by_id.items()}
    summ: dict[str, Optional[str]] = dict(summaries)
    return _assemble(by_id, summ, led, src, require_summary, subjects)


def _sidecar_summaries(folder: Path, led: Ledger) -> dict[str, str]:
    """Optional summaries next to mail files: summaries.csv / summaries.jsonl with thread_id,summary."""
    for name in ("summaries.csv", "summaries.jsonl"):
        p = folder / name
        if p.exists():
            recs = _csv_records(p, SUMMARY_COLUMNS, led, "summary") if name.endswith(".csv") \
                else _json_records(p, SUMMARY_COLUMNS, led, "summary")
            out: dict[str, str] = {}
            for line, rec in recs or []:
                tid, why = _norm_thread_id(str(rec.get("thread_id", "")).strip("<>"), False)
                text = str(rec.get("summary") or "").strip()
                if why or not text:
                    led.reject("summary", why or R_EMPTY_SUMMARY, "bad summary row", p, line)
                elif tid in out:
                    led.reject("summary", R_DUPLICATE_SUMMARY, f"second summary for {tid}", p, line, tid)
                else:
                    out[tid] = text
            return out
    return {}


def _parse_message(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def _eml_emails(files: list[Path], led: Ledger) -> list[tuple[Email, str]]:
    emails = []
    for p in files:
        led.inputs["email"] += 1
        data = p.read_bytes()
        if not data.strip():
            led.reject("email", R_EMPTY_FILE, f"'{p.name}' is empty", p)
            continue
        if looks_binary(data):  # the email package parses any bytes; noise must not become a thread
            led.reject("email", R_BINARY_FILE, f"'{p.name}' is not mail: {control_share(data):.0%} control bytes "
                       f"(binary data); remove it or export the message again", p)
            continue
        try:
            emails.append((_read_message(data, str(p), led), str(p)))
        except Exception as exc:  # the email package raises many types on broken input
            led.reject("email", R_UNPARSEABLE_MAIL, f"{type(exc).__name__}: {exc}", p)
    return emails


# An mbox separator (RFC 4155): 'From ', the envelope sender, then a date (asctime form by the RFC;
# whether the rest is a full date is left to parse_date_text). Any other line starting 'From ' is text.
_MBOX_FROM = re.compile(rb"From (\S+) +(.+?)\s*")
_MBOX_ESCAPED = re.compile(rb">+From ")
# A full separator, beyond doubt: an address (or MAILER-DAEMON) and an asctime date, as mail programs
# write it ('From ann@example.com Mon May 14 09:12:00 2001', a zone before the year allowed).
_MBOX_FULL = re.compile(rb"From (?:\S+@\S+|MAILER-DAEMON) +(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +"
                        rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +\d{1,2} +\d{1,2}:\d{2}(?::\d{2})? +"
                        rb"(?:[A-Z]{2,5} +|[+-]\d{4} +)?\d{4}\s*")
# a line that starts like a separator (an address after 'From ') but is not one of the forms above
_MBOX_ADDRESSY = re.compile(rb"From \S+@\S+")


def split_mbox(data: bytes, notes: Optional[list] = None) -> Optional[list[tuple[int, bytes, Optional[datetime]]]]:
    """The messages of an mbox file as (line number of the separator, raw message bytes, separator date).

    A separator is a line 'From <address> <date>' at the start of the file or after a blank line
    (RFC 4155), so body lines like 'From the numbers I saw...' stay in their message. A line that is a
    full separator beyond doubt (``_MBOX_FULL``: an address and an asctime date) also splits where no
    blank line precedes it (mail programs that skip the blank line), and says so in ``notes``; any
    other line that starts like a separator ('From ann@example.com ...') without being one stays in its
    message, also with a note. Escaped body lines are unescaped (mboxrd: one '>' is removed from
    '>From ', '>>From ', ...; this reads mboxo files too).

    Args:
        data: the file's bytes.
        notes: when given, (warning reason, line number, detail) is appended for each doubtful line.
    Returns:
        The messages, or None when the file does not start with a separator (not an mbox). Never raises.
    """
    lines = data.split(b"\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None or not _is_separator(lines[first]):
        return None
    out: list[tuple[int, bytes, Optional[datetime]]] = []
    start = first
    body: list[bytes] = []
    for i in range(first + 1, len(lines) + 1):
        line = lines[i] if i < len(lines) else None
        split = line is None
        if line is not None and line.startswith(b"From "):
            blank = not lines[i - 1].strip()
            full = _MBOX_FULL.fullmatch(line.rstrip(b"\r")) is not None
            if blank and _is_separator(line):
                split = True
            elif full:
                split = True
                if notes is not None:
                    notes.append((W_MBOX_SPLIT_NO_BLANK, i + 1, f"line {i + 1} is a full mbox separator without the "
                                  f"blank line before it ({_shown(line)}); a new message starts there"))
            elif notes is not None and (_MBOX_ADDRESSY.match(line) or _is_separator(line)):
                notes.append((W_MBOX_DOUBTFUL_FROM, i + 1, f"line {i + 1} starts like an mbox separator but is "
                              f"not one ({_shown(line)}); kept as text of the message above"))
        if split:
            if body and not body[-1].strip():
                body.pop()  # the blank line before a separator belongs to the format
            out.append((start + 1, b"\n".join(body), _separator_date(lines[start])))
            start, body = i, []
            continue
        body.append(line[1:] if line.startswith(b">") and _MBOX_ESCAPED.match(line) else line)
    return out


def _shown(line: bytes) -> str:
    return repr(line.rstrip(b"\r")[:100].decode("utf-8", "replace"))


def _separator_date(line: bytes) -> Optional[datetime]:
    m = _MBOX_FROM.fullmatch(line.rstrip(b"\r"))
    return parse_date_text(m.group(2).decode("ascii", "replace")) if m else None


def _is_separator(line: bytes) -> bool:
    return line.startswith(b"From ") and _separator_date(line) is not None


def _mbox_emails(path: Path, led: Ledger) -> list[tuple[Email, str]]:
    data = path.read_bytes()
    if not data.strip():
        led.reject("file", R_EMPTY_FILE, f"'{path.name}' is empty", path)
        return []
    notes: list[tuple[str, int, str]] = []
    messages = split_mbox(data, notes)
    for reason, line, detail in notes:
        led.warn(reason, f"'{path.name}': {detail}", path, line)
    if messages is None:
        led.reject("file", R_UNREADABLE_FILE, f"'{path.name}' is not an mbox: it does not start with a "
                   f"'From <address> <date>' separator line (RFC 4155); save the mail as .mbox or as .eml files", path)
        return []
    emails = []
    for n, (line, raw, envelope) in enumerate(messages, 1):
        led.inputs["email"] += 1
        where = f"{path}#{n}"
        try:
            emails.append((_read_message(raw, where, led, envelope), where))
        except Exception as exc:  # the email package raises many types on broken input
            led.reject("email", R_UNPARSEABLE_MAIL, f"message {n}: {type(exc).__name__}: {exc}", path, line)
    return emails


def read_mail_folder(folder: Path, require_summary: bool = True) -> ReadResult:
    """A folder of .eml and .mbox files (searched recursively), threaded together."""
    led = Ledger()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".eml", ".mbox", ".mbx"))
    emails = _eml_emails([p for p in files if p.suffix.lower() == ".eml"], led)
    for p in files:
        if p.suffix.lower() != ".eml":
            emails += _mbox_emails(p, led)
    threads = _mail_threads(emails, led, _sidecar_summaries(folder, led), require_summary, folder)
    return ReadResult(threads, led.rejects, led.counts(threads), led.warnings, files)


def read_eml_folder(folder: Path, require_summary: bool = True) -> ReadResult:
    """``read_mail_folder`` (kept under its old name)."""
    return read_mail_folder(folder, require_summary)


def read_mbox(path: Path, require_summary: bool = True) -> ReadResult:
    """One mbox file (RFC 4155, see ``split_mbox``)."""
    led = Ledger()
    emails = _mbox_emails(path, led)
    threads = _mail_threads(emails, led, _sidecar_summaries(path.parent, led), require_summary, path)
    return ReadResult(threads, led.rejects, led.counts(threads), led.warnings, [path])


# --------------------------------------------------------------------------------------- JSONL
def read_jsonl(path: Path, max_body_chars: int = DEFAULT_MAX_BODY_CHARS, require_summary: bool = True) -> ReadResult:
    """Read a JSONL file with one thread per line (``thread_id``, ``subject``, ``emails``, ``summary``).

    An empty file, lines that are not JSON or not a thread, bad or repeated thread ids and bad
    emails become rejects (the first of a repeated thread id is kept).

    Args:
        path: the .jsonl file.
        max_body_chars: longest email body kept, in characters (longer ones are cut, with a warning).
        require_summary: reject threads that have no summary.

    Raises:
        FileNotFoundError: ``path`` does not exist (``read_source`` checks this first).
    """
    led = Ledger()
    data = path.read_bytes()
    if not data.strip():
        led.reject("file", R_EMPTY_FILE, f"'{path.name}' is empty", path)
        return ReadResult([], led.rejects, led.counts([]), led.warnings, [path])
    text = _decode(data, path, led)
    by_thread: dict[str, list[Email]] = defaultdict(list)
    summaries: dict[str, Optional[str]] = {}
    subjects: dict[str, str] = {}
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            led.inputs["thread"] += 1
            led.reject("thread", R_INVALID_JSON, f"line is not JSON: {exc.msg} (column {exc.colno})", path, n)
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("emails"), list):
            led.inputs["thread"] += 1
            led.reject("thread", R_NOT_A_THREAD, "expected an object with an 'emails' list", path, n)
            continue
        tid, why = _norm_thread_id(obj.get("thread_id"), False)
        if why:
            led.inputs["thread"] += 1
            led.inputs["email"] += len(obj["emails"])
            led.reject("thread", why, f"thread_id {obj.get('thread_id')!r} is missing or invalid", path, n,
                       n_emails=len(obj["emails"]))
            continue
        if tid in seen:
            led.inputs["thread"] += 1
            led.inputs["email"] += len(obj["emails"])
            led.reject("thread", "duplicate_thread_id", f"thread {tid} appears again; the first is kept", path, n, tid,
                       n_emails=len(obj["emails"]))
            continue
        seen.add(tid)
        subjects[tid] = str(obj.get("subject") or "")
        s = obj.get("summary")
        summaries[tid] = str(s).strip() if s and str(s).strip() else None
        led.inputs["summary"] += summaries[tid] is not None
        for e in obj["emails"]:
            led.inputs["email"] += 1
            if not isinstance(e, dict):
                led.reject("email", R_MALFORMED_ROW, "email entry is not an object", path, n, tid)
                continue
            rec = dict(e, thread_id=tid)
            rec.setdefault("timestamp", e.get("date"))
            got = _email_from_record(rec, path, n, led, max_body_chars, kaggle=False)
            if got:
                by_thread[tid].append(got[1])
    threads = _assemble(by_thread, summaries, led, path, require_summary, subjects, seen_ids=seen)
    return ReadResult(threads, led.rejects, led.counts(threads), led.warnings, [path])


# -------------------------------------------------------------------------------------- dispatch
def detect_format(path: Path) -> str:
    """The reader for ``path``: kaggle_csv, kaggle_json, eml, mbox or jsonl.

    A folder is judged by the files in it (the Kaggle details file first), a file by its extension.

    Raises:
        DataError: the folder holds none of those files, or the file name has no known extension.
    """
    if path.is_dir():
        if (path / DETAILS_CSV).exists():
            return "kaggle_csv"
        if (path / DETAILS_JSON).exists():
            return "kaggle_json"
        if any(path.rglob("*.eml")):
            return "eml"
        if any(path.glob("*.mbox")):
            return "mbox"
        if any(path.glob("*.jsonl")):
            return "jsonl"
        raise DataError(f"'{path}' holds no {DETAILS_CSV}, {DETAILS_JSON}, *.eml, *.mbox or *.jsonl; "
                        f"point data.source at one of those (or set data.format)")
    name = path.name.lower()
    if name.endswith(".csv"):
        return "kaggle_csv"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "kaggle_json"
    if name.endswith(".eml"):
        return "eml"
    if name.endswith((".mbox", ".mbx")) or name == "mbox":
        return "mbox"
    raise DataError(f"cannot tell the format of '{path}' from its name; set data.format to one of "
                    f"kaggle_csv, kaggle_json, eml, mbox, jsonl")


def _kaggle_pair(path: Path, ext: str) -> tuple[Path, Path]:
    if path.is_dir():
        return path / f"email_thread_details.{ext}", path / f"email_thread_summaries.{ext}"
    if "summar" in path.name:
        return path.with_name(f"email_thread_details.{ext}"), path
    return path, path.with_name(f"email_thread_summaries.{ext}")


def read_source(path: str | Path, fmt: str = "auto", max_body_chars: int = DEFAULT_MAX_BODY_CHARS,
                require_summary: bool = True) -> ReadResult:
    """Read threads from ``path``; bad rows become rejects, only a missing path raises DataError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data source '{p}' does not exist. Set data.source to a Kaggle folder/CSV, a .json copy, "
                        f"a folder of .eml, an .mbox or a .jsonl (or run `threadsum synth` to make a corpus)")
    if fmt == "auto":
        fmt = detect_format(p)
    result = _read_format(p, fmt, max_body_chars, require_summary)
    return _with_unread_files(p, result) if p.is_dir() else result


def _read_format(p: Path, fmt: str, max_body_chars: int, require_summary: bool) -> ReadResult:
    if fmt == "kaggle_csv":
        return read_kaggle(*_kaggle_pair(p, "csv"), fmt="csv", max_body_chars=max_body_chars, require_summary=require_summary)
    if fmt == "kaggle_json":
        return read_kaggle(*_kaggle_pair(p, "json"), fmt="json", max_body_chars=max_body_chars, require_summary=require_summary)
    if fmt in ("eml", "mbox"):
        if p.is_dir():
            return read_mail_folder(p, require_summary)
        return read_eml_files([p], require_summary) if fmt == "eml" else read_mbox(p, require_summary)
    if fmt == "jsonl":
        if p.is_dir():
            return _merge([read_jsonl(j, max_body_chars, require_summary) for j in sorted(p.glob("*.jsonl"))])
        return read_jsonl(p, max_body_chars, require_summary)
    raise DataError(f"unknown data.format '{fmt}'; use auto, kaggle_csv, kaggle_json, eml, mbox or jsonl")


# files a folder source may hold besides the ones read: summaries next to mail, and the Kaggle copies
# in the format not chosen (the release ships both)
_SIDE_FILES = {"summaries.csv", "summaries.jsonl", DETAILS_CSV, SUMMARIES_CSV, DETAILS_JSON, SUMMARIES_JSON}


def _with_unread_files(folder: Path, result: ReadResult) -> ReadResult:
    """``result`` plus a file reject for each file in ``folder`` that no reader took (hidden files aside)."""
    taken = {f.resolve() for f in result.files}
    extra = Ledger()
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if not f.is_file() or f.resolve() in taken or f.name in _SIDE_FILES \
                or any(part.startswith(".") for part in rel.parts):
            continue
        extra.reject("file", R_UNSUPPORTED_FILE, f"'{rel}' was not read: no reader for this kind of file next to "
                     f"the {', '.join(sorted({x.suffix or x.name for x in result.files})) or 'other'} files; "
                     f"move it out of the folder or convert it", f)
    if not extra.rejects:
        return result
    return _merge([result, ReadResult([], extra.rejects, extra.counts([]), [], [])])


def read_eml_files(files: list[Path], require_summary: bool = False) -> ReadResult:
    """Read single-message ``.eml`` files and group them into threads (see ``thread_emails``).

    Args:
        files: the .eml files.
        require_summary: reject threads that have no summary (mail carries none, so all are rejected).
    """
    led = Ledger()
    emails = _eml_emails(files, led)
    threads = _mail_threads(emails, led, {}, require_summary, files[0] if files else None)
    return ReadResult(threads, led.rejects, led.counts(threads), led.warnings, list(files))


def _merge(results: list[ReadResult]) -> ReadResult:
    out = ReadResult()
    for r in results:
        out.threads.extend(r.threads)
        out.files.extend(r.files)
    led = Ledger.merged((r.rejects, r.warnings, r.counts) for r in results)
    out.rejects, out.warnings = led.rejects, led.warnings
    out.counts = led.counts(out.threads)
    return out


# ---------------------------------------------------------------------------- single documents
def parse_mail_bytes(data: bytes) -> list[Thread]:
    """Threads from one raw message or an mbox file's bytes (for summarize/serve; no summary needed)."""
    led = Ledger()
    messages = split_mbox(data) if data.lstrip().startswith(b"From ") else None
    if messages is not None:
        emails = []
        for n, (_, raw, envelope) in enumerate(messages, 1):
            try:
                emails.append((_read_message(raw, f"message {n}", led, envelope), f"message {n}"))
            except Exception:  # the email package raises many types on broken input
                continue
        return _mail_threads(emails, led, {}, False, None)
    e = _read_message(data, "message", led)
    if not e.body.strip():
        return []
    return [Thread(thread_id=content_thread_id([e]), subject=e.subject, emails=[e])]


_PASTE_SEP = re.compile(r"^\s*-{2,}\s*(?:Original Message|Forwarded message|Forwarded by\b.*?)\s*-*\s*$", re.I)
_PASTE_HDR = re.compile(r"^\s*(From|Sent|Date|To|Cc|Subject)\s*:\s*(.*?)\s*$", re.I)
PASTE_HEADER_LINES = 12  # the most header lines one pasted block may have (wrapped recipient lists included)


def _paste_headers(lines: list[str], i: int) -> tuple[int, dict[str, str]]:
    """The header block starting at line i: (first line after it, {field: value}); ({} when none)."""
    fields: dict[str, str] = {}
    key = ""
    j = i
    while j < len(lines) and j - i < PASTE_HEADER_LINES:
        m = _PASTE_HDR.match(lines[j])
        if m:
            key = m.group(1).lower()
            fields.setdefault(key, m.group(2))
        elif key in ("to", "cc") and lines[j][:1] in (" ", "\t") and lines[j].strip():
            fields[key] += " " + lines[j].strip()  # a wrapped recipient list
        else:
            break
        j += 1
    if "from" not in fields or not ({"to", "subject", "date", "sent"} & set(fields)):
        return i, {}
    return j, fields


def _paste_recipients(value: str) -> list[str]:
    if ";" in value or "@" not in value:  # Outlook writes 'Mann, Kay; Rorschach, Reagan'
        return [x.strip() for x in re.split(r";" if ";" in value else r",", value) if x.strip()]
    return _addr_list([value])


def parse_pasted_thread(text: str, thread_id: Optional[str] = None) -> Thread:
    """Pasted mail text -> a ``Thread`` with one ``Email`` per pasted message.

    A message starts at a header block: consecutive ``From:``/``To:``/``Cc:``/``Subject:``/``Date:``/
    ``Sent:`` lines holding ``From:`` and at least one of the others, optionally under a
    ``-----Original Message-----`` (or ``Forwarded``) separator line. Its body runs to the next such
    block. Text above the first block is a message of its own (the reply written on top of a
    pasted chain), without sender or date. Dates are read with ``parse_date_text``.

    Order: by date when every message has one; otherwise, when the text is a reply chain (separator
    lines, or a reply on top), newest-first as pasted, so it is reversed; otherwise as pasted.
    Text without any header block is one message (sender unknown). Bodies are read by ``body_text``
    (HTML converted). ``thread_id`` defaults to ``content_thread_id``. Never raises.
    """
    lines = str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    starts: list[tuple[int, int, dict[str, str], bool]] = []  # (block start, body start, fields, separator)
    i = 0
    while i < len(lines):
        j, sep = i, bool(_PASTE_SEP.match(lines[i]))
        if sep:
            j += 1
            while j < len(lines) and not lines[j].strip() and j - i < 3:
                j += 1
        end, fields = _paste_headers(lines, j) if _PASTE_HDR.match(lines[j] if j < len(lines) else "") else (j, {})
        if fields:
            starts.append((i, end, fields, sep))
            i = end
            continue
        i += 1
    emails: list[Email] = []
    top = "\n".join(lines[:starts[0][0]] if starts else lines).strip()
    if top:
        emails.append(Email(sender="", body=body_text(top)))
    for k, (_, body_at, fields, _) in enumerate(starts):
        stop = starts[k + 1][0] if k + 1 < len(starts) else len(lines)
        sender = fields["from"] if "@" not in fields["from"] else (_addr_list([fields["from"]]) or [fields["from"]])[0]
        emails.append(Email(sender=sender,
                            recipients=_paste_recipients(fields.get("to", "")),
                            cc=_paste_recipients(fields.get("cc", "")),
                            body=body_text("\n".join(lines[body_at:stop]).strip()),
                            date=parse_date_text(fields.get("date") or fields.get("sent") or ""),
                            subject=fields.get("subject", "")))
    if emails and all(e.date is not None for e in emails):
        emails.sort(key=lambda e: e.date)
    elif starts and (any(sep for *_, sep in starts) or top):
        emails.reverse()
    subject = next((_SUBJ_PREFIX.sub("", e.subject).strip() for e in emails if e.subject), "")
    return Thread(thread_id=thread_id or content_thread_id(emails), subject=subject, emails=emails)


def read_path(path: str | Path) -> list[Thread]:
    """Threads from one file of any supported format, summaries optional (inference input)."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "eml":
        return parse_mail_bytes(p.read_bytes())
    return read_source(p, fmt, require_summary=False).threads


# -------------------------------------------------------------------------------------- Kaggle
def download_kaggle(dataset: str = KAGGLE_DATASET) -> Path:
    """Download the Kaggle corpus with kagglehub (needs network and Kaggle credentials)."""
    from threadsum.deps import require

    require("kagglehub", "kaggle")
    import kagglehub

    try:
        path = Path(kagglehub.dataset_download(dataset))
    except Exception as exc:  # kagglehub raises requests/HTTP/auth errors of many kinds
        raise DataError(
            f"could not download Kaggle dataset '{dataset}' ({type(exc).__name__}: {str(exc)[:200]}).\n"
            f"This machine may have no network or no Kaggle credentials. Fix one of:\n"
            f"  - on a machine with network: `kaggle datasets download -d {dataset}` (or the Download button on "
            f"https://www.kaggle.com/datasets/{dataset}), unzip, copy the folder here and set data.source=<folder>;\n"
            f"  - set KAGGLE_USERNAME/KAGGLE_KEY (or ~/.kaggle/kaggle.json) and retry;\n"
            f"  - or use a synthetic corpus: `threadsum synth data/synth` and data.source=data/synth."
        ) from exc
    found = list(path.rglob(DETAILS_CSV)) or list(path.rglob(DETAILS_JSON))
    return found[0].parent if found else path
