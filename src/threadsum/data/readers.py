"""Readers: raw mail in several formats -> ``Thread`` records, with every rejected row accounted for.

Formats (``FORMATS``, one table that ``read_source``, ``detect_format``, prepare, summarize and the
archive job all use): the Kaggle CSV pair (``email_thread_details.csv`` + ``email_thread_summaries.csv``)
and its JSON copies (epoch timestamps), Maildirs (Maildir++ subfolders included), ``.eml`` files,
``.mbox`` files, Gmail API threads and Microsoft Graph messages saved as JSON (``threadsum.data.mail_api``),
and JSONL of threads ``{thread_id, subject?, emails: [{from, to, cc?, date, subject?, body}], summary?}``.
Mail is threaded by the service's thread id where there is one and by Message-ID / In-Reply-To /
References across every source. An Outlook ``.msg`` file is refused with a message naming how to save
it as ``.eml``, whatever format is asked for.

Memory: files are read in a stream and a body is cut to ``max_body_chars`` while it is read
(``threadsum.data.stream``: each CSV field, JSON string or MIME part to ``max_part_bytes``), so peak
memory follows that limit and not the size of the file or of its largest body.

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
import mailbox
import re
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Any, Callable, ContextManager, Iterable, Iterator, Optional

from dateutil import parser as dateutil_parser

from threadsum.data import mail_api
from threadsum.data.charset import Utf8OrCp1252Decoder, control_share, decode_bytes, looks_binary
from threadsum.data.ledger import Ledger
from threadsum.data.mail_api import ApiMessage, ApiPart
from threadsum.data.stream import (
    BYTES_PER_CHAR,
    CHUNK,
    SNIFF_BYTES,
    CsvFieldCutter,
    JsonStringCutter,
    MessageCutter,
    NulFilter,
    PartCut,
    bounded_lines,
    complete_utf8,
    cut_message,
    file_chunks,
    text_lines,
    uncut,
)
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
W_FIELD_CUT = "field_cut_while_reading"
W_MISSING_SENDER = "missing_sender"
W_MISSING_DATE = "missing_date"
W_UNREADABLE_DATE = "unreadable_date"
W_CHARSET = "charset_not_as_declared"
W_MBOX_SPLIT_NO_BLANK = "mbox_separator_without_blank_line"
W_MBOX_DOUBTFUL_FROM = "mbox_doubtful_from_line"
R_UNSUPPORTED_FILE = "unsupported_file"
R_MAILDIR_TMP = "maildir_unfinished_delivery"
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
def max_part_bytes(max_body_chars: int) -> int:
    """The byte limit of one field, JSON string or mail part read from a file for a body limit of
    ``max_body_chars`` characters: large enough that every body keeps at least that many
    characters whatever its encoding (``threadsum.data.stream.BYTES_PER_CHAR``)."""
    return BYTES_PER_CHAR * max_body_chars


def _head(path: Path, n: int = SNIFF_BYTES) -> bytes:
    """The first ``n`` bytes of a file (b'' when it cannot be read)."""
    try:
        with path.open("rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _is_blank(path: Path) -> bool:
    """Whether a file holds nothing but whitespace (read in chunks, stopping at the first other byte)."""
    with path.open("rb") as fh:
        return all(not c.strip() for c in file_chunks(fh))


class _DataFile:
    """A data file (CSV, JSON, JSONL: no declared charset) read as text in a stream: NUL bytes removed,
    each field or string over ``max_bytes`` cut and marked (``threadsum.data.stream``), the bytes
    decoded as UTF-8 with each byte that is not UTF-8 read as cp1252. :meth:`finish` records the
    warnings for the removed NUL bytes and the first byte that was not UTF-8."""

    def __init__(self, path: Any, cutter, open_bytes: Optional[Callable[[], ContextManager[IO[bytes]]]] = None):
        """``path``: where the warnings say the text came from; ``open_bytes``: opens the bytes (default:
        the local file ``path``)."""
        self.path, self.cutter = path, cutter
        self._open = open_bytes or (lambda: Path(path).open("rb"))
        self._nul = NulFilter()
        self._decoder = Utf8OrCp1252Decoder()

    def text(self) -> Iterator[str]:
        """The file's text, in chunks of about ``CHUNK`` characters."""
        with self._open() as fh:
            for b in self.cutter.cut(self._nul.filter(file_chunks(fh))):
                yield self._decoder.decode(b)
        yield self._decoder.decode(b"", final=True)

    def finish(self, led: Ledger) -> None:
        """Record what reading repaired (call after :meth:`text` is exhausted)."""
        if self._nul.removed:
            led.warn(W_NUL_BYTES, f"{self._nul.removed} NUL byte(s) removed", self.path)
        if self._decoder.first_bad is not None:
            led.warn(W_INVALID_UTF8, f"invalid UTF-8 at byte {self._decoder.first_bad}; bytes that are not UTF-8 "
                     f"read as cp1252", self.path)


_CUTS = "\x00cuts"  # the key under which a record keeps {field: size in the file} of its fields cut while reading


def _take_cuts(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` with the cut marks of its string values removed and their sizes under ``_CUTS``."""
    cuts = {}
    for k, v in rec.items():
        if isinstance(v, str) and v.endswith("\x00"):
            rec[k], size = uncut(v)
            if size is not None:
                cuts[k] = size
    if cuts:
        rec[_CUTS] = cuts
    return rec


def _warn_cut_fields(rec: dict[str, Any], led: Ledger, src: Path, line: Optional[int], tid: Optional[str],
                     skip: tuple[str, ...] = ("body",)) -> None:
    """A warning for each field of ``rec`` (other than ``skip``) that was cut while reading."""
    for name, size in (rec.get(_CUTS) or {}).items():
        if name not in skip:
            led.warn(W_FIELD_CUT, f"field '{name}' of {size:,} bytes cut to its first {len(str(rec[name])):,} "
                     f"characters while reading (longer than any body data.max_body_chars allows)", src, line, tid)


def _refuse_outlook(path: Path, led: Ledger, head: Optional[bytes] = None) -> bool:
    """A file reject naming how to export when ``path`` is an Outlook .msg file; True when it was one."""
    if not is_outlook_msg(_head(path, len(OLE2_MAGIC)) if head is None else head):
        return False
    led.reject("file", R_OUTLOOK_MSG, outlook_msg_message(path.name), path)
    return True


def _csv_records(path: Path, required: tuple[str, ...], led: Ledger, level: str,
                 max_body_chars: int = DEFAULT_MAX_BODY_CHARS) -> Optional[list[tuple[int, dict[str, str]]]]:
    """Rows of a CSV file as (line, {column: value}); None when the file itself is unusable. The file is
    read in a stream, each field cut to ``max_part_bytes(max_body_chars)`` (sizes under ``_CUTS``)."""
    if not path.exists():
        led.reject("file", R_MISSING_FILE, f"'{path.name}' not found next to the other Kaggle file; "
                   f"put both {DETAILS_CSV} and {SUMMARIES_CSV} in one folder", path)
        return None
    if _refuse_outlook(path, led):
        return None
    if _is_blank(path):
        led.reject("file", R_EMPTY_FILE, f"'{path.name}' is empty; re-download or re-export it", path)
        return None
    cutter = CsvFieldCutter(max_part_bytes(max_body_chars))
    source = _DataFile(path, cutter)
    # a field is at most max_part_bytes here; the default limit is 128 KB
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(text_lines(source.text()))
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
            led.reject(level, R_MALFORMED_ROW, f"CSV error: {exc}", path, cutter.file_line(reader.line_num))
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        led.inputs[level] += 1
        line = cutter.file_line(reader.line_num)
        if len(row) != len(header):
            led.reject(level, R_MALFORMED_ROW,
                       f"{len(row)} fields where the header has {len(header)} (an unquoted comma or newline?)",
                       path, line, thread_id=uncut(row[0])[0].strip() if row else None)
            continue
        rec = _take_cuts(dict(zip(header, row))) if cutter.n_cut else dict(zip(header, row))
        if any("\ufffd" in v for v in row):
            led.warn(W_INVALID_UTF8, "field holds replaced invalid UTF-8", path, line, rec.get("thread_id"))
        out.append((line, rec))
    source.finish(led)
    return out


def _json_text(path: Path, led: Ledger, max_body_chars: int) -> Optional[str]:
    """A JSON file's text with every string cut to ``max_part_bytes(max_body_chars)`` (marked), or None
    (a file reject) when the file is missing, empty or an Outlook .msg."""
    if not path.exists():
        led.reject("file", R_MISSING_FILE, f"'{path.name}' not found", path)
        return None
    if _refuse_outlook(path, led):
        return None
    if _is_blank(path):
        led.reject("file", R_EMPTY_FILE, f"'{path.name}' is empty; re-download or re-export it", path)
        return None
    source = _DataFile(path, JsonStringCutter(max_part_bytes(max_body_chars)))
    text = "".join(source.text())
    source.finish(led)
    return text


def _json_records(path: Path, required: tuple[str, ...], led: Ledger, level: str,
                  max_body_chars: int = DEFAULT_MAX_BODY_CHARS) -> Optional[list[tuple[int, dict[str, Any]]]]:
    """Records of a Kaggle JSON copy: a list of objects, pandas 'columns' layout, or JSON lines; each
    string cut to ``max_part_bytes(max_body_chars)`` while reading (sizes under ``_CUTS``)."""
    text = _json_text(path, led, max_body_chars)
    if text is None:
        return None
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
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                led.inputs[level] += 1
                led.reject(level, R_INVALID_JSON, f"line is not JSON: {exc.msg}", path, n)
    del text
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
        out.append((n, _take_cuts(rec)))
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
    body = cut_body(body, max_body_chars, (rec.get(_CUTS) or {}).get("body"), led, src, line, tid)
    _warn_cut_fields(rec, led, src, line, tid)
    to, ok = parse_recipients(rec.get("to"))
    if not ok:
        led.warn(W_TO_UNPARSED, f"to {str(rec.get('to'))[:60]!r} is not a list literal; split at commas", src, line, tid)
    cc, _ = parse_recipients(rec.get("cc"))
    sender = str(rec.get("from") or "").strip()
    if not sender:
        led.warn(W_MISSING_SENDER, "from is empty", src, line, tid)
    return tid, Email(sender=sender, recipients=to, body=body, date=date, subject=str(rec.get("subject") or "").strip(),
                      cc=cc)


def cut_body(body: str, max_body_chars: int, file_bytes: Optional[int], led: Ledger, where: Any,
             line: Optional[int] = None, thread_id: Optional[str] = None) -> str:
    """``body`` cut to ``max_body_chars`` characters, with one ``W_BODY_CUT`` warning when it was longer
    or when reading already cut it (``file_bytes``: its size in the file then, in bytes)."""
    if file_bytes is None and len(body) <= max_body_chars:
        return body
    if file_bytes is not None:
        detail = (f"body of {file_bytes:,} bytes in the file cut while reading, to {min(len(body), max_body_chars):,} "
                  f"characters (data.max_body_chars={max_body_chars:,})")
    else:
        detail = f"body of {len(body):,} characters cut to {max_body_chars:,} (data.max_body_chars)"
    led.warn(W_BODY_CUT, detail, where, line, thread_id)
    return body[:max_body_chars]


def _summaries_from_records(records: Optional[list], src: Path, led: Ledger) -> dict[str, str]:
    out: dict[str, str] = {}
    for line, rec in records or []:
        tid, why = _norm_thread_id(rec.get("thread_id"), True)
        if why:
            led.reject("summary", why, f"summary row has thread_id {rec.get('thread_id')!r}", src, line)
            continue
        _warn_cut_fields(rec, led, src, line, tid, skip=())
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
    rows = read(details, DETAIL_COLUMNS, led, "email", max_body_chars)
    srows = read(summaries, SUMMARY_COLUMNS, led, "summary", max_body_chars)
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


def email_from_message(msg, notes: Optional[list] = None, envelope_date: Optional[datetime] = None,
                       body: Optional[str] = None) -> Email:
    """An ``email.message.Message`` -> ``Email``. What was repaired or is missing goes to ``notes`` as
    (warning reason, detail): a charset fallback, a missing or unreadable Date header. An mbox
    separator's date (``envelope_date``) stands in for a missing Date header. ``body``, when given,
    is used instead of the message's own parts (a mail service's JSON gives headers and body apart)."""
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
        body=message_body(msg, notes) if body is None else body,
        date=date,
        subject=header("Subject"),
        message_id=(_msg_ids(header("Message-ID")) or [""])[0],
        in_reply_to=(_msg_ids(header("In-Reply-To")) or [""])[0],
        references=_msg_ids(header("References")),
    )


def _email_name(e: Email) -> str:
    """How warnings name an email: its Message-ID, else sender and subject."""
    return e.message_id or f"from {e.sender or 'unknown'!r}, subject {e.subject[:60]!r}"


def _read_message(data: bytes, where: str, led: Ledger, envelope_date: Optional[datetime] = None,
                  max_body_chars: Optional[int] = None, part_cuts: Iterable[PartCut] = ()) -> Email:
    """Parse one raw message; its notes become counted warnings naming the email. With
    ``max_body_chars`` its body is cut to it (``cut_body``; a text part cut while reading counts).

    Raises:
        DataError: the bytes are an Outlook .msg file, not a mail message (whatever format was asked).
    """
    if is_outlook_msg(data):
        raise DataError(outlook_msg_message(where))
    notes: list = []
    e = email_from_message(_parse_message(data), notes, envelope_date)
    for reason, detail in notes:
        led.warn(reason, f"{detail} (email {_email_name(e)})", where)
    if max_body_chars is not None:
        text_cut = next((c.size for c in part_cuts if c.content_type.startswith(("text/", "message/"))
                         and c.disposition != "attachment"), None)
        e.body = cut_body(e.body, max_body_chars, text_cut, led, where)
    return e


def _read_api_message(m: ApiMessage, where: str, led: Ledger, max_body_chars: int) -> Email:
    """An ``ApiMessage`` (Gmail or Graph JSON) -> ``Email``, by the rules of any mail: headers as
    ``email_from_message`` reads them, the first text/plain part else HTML converted, bytes decoded by
    ``threadsum.data.charset``'s rule; the service's thread id kept as ``conversation_id``."""
    where = f"{where} {m.where}"
    if m.raw is not None:
        raw = m.raw
        cuts: list[PartCut] = []
        if m.raw_cut_from is not None or len(raw) > max_part_bytes(max_body_chars):
            raw, cuts = cut_message(raw, max_part_bytes(max_body_chars))
            cuts = cuts or [PartCut("text/plain", None, m.raw_cut_from or len(m.raw))]
        e = _read_message(raw, where, led, parse_timestamp(m.date), max_body_chars, cuts)
    else:
        text = "\n".join(f"{name}: {' '.join(str(value).splitlines())}" for name, value in m.headers)
        msg = email.parser.HeaderParser(policy=email.policy.default).parsestr(text + "\n\n")
        notes: list = []
        plain = next((p for p in m.parts if p.mime_type == "text/plain" and _part_str(p, notes).strip()), None)
        part = plain or next((p for p in m.parts if p.mime_type == "text/html"), None)
        body = "" if part is None else (body_text if part is plain else html_to_text)(_part_str(part, notes))
        e = email_from_message(msg, notes, parse_timestamp(m.date), body=body)
        for reason, detail in notes:
            led.warn(reason, f"{detail} (email {_email_name(e)})", where)
        e.body = cut_body(e.body, max_body_chars, part.cut_from if part is not None else None, led, where)
    e.conversation_id = m.conversation_id
    return e


def _part_str(part: ApiPart, notes: list) -> str:
    """The text of an API message part (bytes decoded once; the result is kept on the part)."""
    if isinstance(part.content, bytes):
        data = part.content[:complete_utf8(part.content)] if part.cut_from is not None else part.content
        part.content, note = decode_bytes(data, part.charset)
        if note:
            notes.append((W_CHARSET, note))
    return part.content


_SUBJ_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv)\s*(\[\d+\])?\s*:\s*)+", re.I)


def normalize_subject(subject: str) -> str:
    """The subject without reply/forward prefixes (Re:, Fw:, Fwd:, AW:, WG:, SV:, repeated), with
    whitespace collapsed and lower-cased; the key for threading mail that lacks threading headers.
    """
    return re.sub(r"\s+", " ", _SUBJ_PREFIX.sub("", subject or "")).strip().lower()


def thread_emails(emails: list[Email]) -> list[list[Email]]:
    """Group emails into threads: by the mail service's own thread id (``conversation_id``: Gmail's
    threadId, Graph's conversationId), and by Message-ID / In-Reply-To / References across all of them
    (so a reply read from one source joins its thread read from another); an email with neither
    service id nor threading headers joins the first earlier email with its normalized subject."""
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
        if e.conversation_id:
            union(k, "conversation:" + e.conversation_id)
        for ref in ([e.in_reply_to] if e.in_reply_to else []) + list(e.references):
            union(k, "id:" + ref)
    first_by_subject: dict[str, str] = {}
    for k, e in sorted(zip(keys, emails), key=lambda ke: ke[1].date or datetime.min):
        s = normalize_subject(e.subject)
        if not s:
            continue
        if not (e.in_reply_to or e.references or e.conversation_id) and s in first_by_subject:
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


def _message_file(path: Path, max_body_chars: int) -> tuple[bytes, list[PartCut]]:
    """A message file's bytes, each MIME part cut to ``max_part_bytes(max_body_chars)`` while it is read."""
    limit = max_part_bytes(max_body_chars)
    if path.stat().st_size <= limit:
        return path.read_bytes(), []
    cutter = MessageCutter(limit)
    with path.open("rb") as fh:
        for piece, start in bounded_lines(fh):
            cutter.add(piece, start)
    return cutter.finish()


def _refuse_binary(name: str, head: bytes, led: Ledger, where: Any) -> bool:
    """An email reject when a message file's first bytes are not text or mail; True when they were not."""
    if not looks_binary(head):  # the email package parses any bytes; noise must not become a thread
        return False
    led.reject("email", R_BINARY_FILE, f"'{name}' is not mail: {control_share(head):.0%} control bytes "
               f"(binary data); remove it or export the message again", where)
    return True


def _eml_emails(files: list[Path], led: Ledger, max_body_chars: int = DEFAULT_MAX_BODY_CHARS
                ) -> list[tuple[Email, str]]:
    """One email per message file (.eml, or a Maildir message); an Outlook .msg file is a file reject."""
    emails = []
    for p in files:
        if _refuse_outlook(p, led):
            continue
        led.inputs["email"] += 1
        if _is_blank(p):
            led.reject("email", R_EMPTY_FILE, f"'{p.name}' is empty", p)
            continue
        if _refuse_binary(p.name, _head(p), led, p):
            continue
        try:
            data, cuts = _message_file(p, max_body_chars)
            emails.append((_read_message(data, str(p), led, None, max_body_chars, cuts), str(p)))
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


class NotAnMbox(Exception):
    """The stream does not start with an mbox separator line."""


class _MboxMessage:
    """The lines of one mbox message as they stream in: a blank line is held back until the next line
    shows whether it is the blank line before a separator (which belongs to the format)."""

    def __init__(self, line: int, separator: bytes, max_part_bytes: Optional[int]):
        self.line, self.separator = line, separator
        self._sink: Any = MessageCutter(max_part_bytes) if max_part_bytes else []
        self._held: Optional[bytes] = None

    def _put(self, piece: bytes, start: bool) -> None:
        if isinstance(self._sink, list):
            self._sink.append(piece)
        else:
            self._sink.add(piece, start)

    def add(self, piece: bytes, start: bool) -> None:
        if self._held is not None:
            self._put(self._held, True)
            self._held = None
        if start and not piece.strip():
            self._held = piece
            return
        if start and piece.startswith(b">") and _MBOX_ESCAPED.match(piece):
            piece = piece[1:]  # mboxrd: one '>' less on '>From ', '>>From ', ...
        self._put(piece, start)

    def finish(self, at_end: bool) -> tuple[int, bytes, Optional[datetime], list[PartCut]]:
        # the blank line before a separator belongs to the format; at the end of the file a last
        # blank line ending in a newline stays (the file's final newline is the one dropped)
        if self._held is not None and at_end and self._held.endswith(b"\n"):
            self._put(self._held, True)
        if isinstance(self._sink, list):
            raw, cuts = b"".join(self._sink), []
        else:
            raw, cuts = self._sink.finish()
        return self.line, raw[:-1] if raw.endswith(b"\n") else raw, _separator_date(self.separator), cuts


def iter_mbox(pieces: Iterable[tuple[bytes, bool]], notes: Optional[list] = None,
              max_part_bytes: Optional[int] = None) -> Iterator[tuple[int, bytes, Optional[datetime], list[PartCut]]]:
    """The messages of an mbox stream as (line number of the separator, raw message bytes, separator
    date, parts cut), one at a time (see :func:`split_mbox` for the rules).

    Args:
        pieces: the file's lines as :func:`threadsum.data.stream.bounded_lines` gives them.
        notes: when given, (warning reason, line number, detail) is appended for each doubtful line.
        max_part_bytes: cut each message's MIME parts to this many bytes while reading (None: keep all).
    Raises:
        NotAnMbox: the first line that is not blank is not a separator (nothing is yielded then).
    """
    msg: Optional[_MboxMessage] = None
    n, prev_blank = 0, False
    for piece, start in pieces:
        if start:
            n += 1
        if msg is None:
            if not piece.strip():
                continue
            line = piece.rstrip(b"\n")
            if not start or not _is_separator(line):
                raise NotAnMbox(n)
            msg, prev_blank = _MboxMessage(n, line, max_part_bytes), False
            continue
        if start and piece.startswith(b"From "):
            line = piece.rstrip(b"\n")
            full = _MBOX_FULL.fullmatch(line.rstrip(b"\r")) is not None
            if (prev_blank and _is_separator(line)) or full:
                if not prev_blank and notes is not None:
                    notes.append((W_MBOX_SPLIT_NO_BLANK, n, f"line {n} is a full mbox separator without the "
                                  f"blank line before it ({_shown(line)}); a new message starts there"))
                yield msg.finish(at_end=False)
                msg, prev_blank = _MboxMessage(n, line, max_part_bytes), False
                continue
            if notes is not None and (_MBOX_ADDRESSY.match(line) or _is_separator(line)):
                notes.append((W_MBOX_DOUBTFUL_FROM, n, f"line {n} starts like an mbox separator but is "
                              f"not one ({_shown(line)}); kept as text of the message above"))
        if start:
            prev_blank = not piece.strip()
        msg.add(piece, start)
    if msg is None:
        raise NotAnMbox(n)
    yield msg.finish(at_end=True)


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
    try:
        return [m[:3] for m in iter_mbox(bounded_lines(io.BytesIO(data)), notes)]
    except NotAnMbox:
        return None


def _shown(line: bytes) -> str:
    return repr(line.rstrip(b"\r")[:100].decode("utf-8", "replace"))


def _separator_date(line: bytes) -> Optional[datetime]:
    m = _MBOX_FROM.fullmatch(line.rstrip(b"\r"))
    return parse_date_text(m.group(2).decode("ascii", "replace")) if m else None


def _is_separator(line: bytes) -> bool:
    return line.startswith(b"From ") and _separator_date(line) is not None


def _mbox_emails(path: Path, led: Ledger, max_body_chars: int = DEFAULT_MAX_BODY_CHARS) -> list[tuple[Email, str]]:
    """The emails of an mbox file, read one message at a time, each MIME part cut to
    ``max_part_bytes(max_body_chars)`` while it is read."""
    if _refuse_outlook(path, led):
        return []
    if _is_blank(path):
        led.reject("file", R_EMPTY_FILE, f"'{path.name}' is empty", path)
        return []
    notes: list[tuple[str, int, str]] = []
    emails = []
    try:
        with path.open("rb") as fh:
            for k, (line, raw, envelope, cuts) in enumerate(
                    iter_mbox(bounded_lines(fh), notes, max_part_bytes(max_body_chars)), 1):
                led.inputs["email"] += 1
                where = f"{path}#{k}"
                try:
                    emails.append((_read_message(raw, where, led, envelope, max_body_chars, cuts), where))
                except Exception as exc:  # the email package raises many types on broken input
                    led.reject("email", R_UNPARSEABLE_MAIL, f"message {k}: {type(exc).__name__}: {exc}", path, line)
    except NotAnMbox:
        led.reject("file", R_UNREADABLE_FILE, f"'{path.name}' is not an mbox: it does not start with a "
                   f"'From <address> <date>' separator line (RFC 4155); save the mail as .mbox or as .eml files", path)
        return []
    for reason, line, detail in notes:
        led.warn(reason, f"'{path.name}': {detail}", path, line)
    return emails


# -------------------------------------------------------------------------------------- Maildir
# files a mail server keeps in a Maildir besides the messages (Dovecot, Courier, Maildir++ quota)
_MAILDIR_META = re.compile(r"^(?:dovecot|courier|maildirfolder$|maildirsize$|subscriptions$)")


def is_maildir(folder: Path) -> bool:
    """A Maildir: a folder with ``cur/`` and ``new/`` (``tmp/`` is often missing from copies)."""
    return (folder / "cur").is_dir() and (folder / "new").is_dir()


def maildirs(folder: Path) -> list[Path]:
    """The Maildirs in ``folder``: itself when it is one, its Maildir++ subfolders (``.Sent``,
    ``.Archive.2020``; ``mailbox.Maildir.list_folders``), and Maildirs in plain subfolders (layouts such
    as mbsync's ``SubFolders Verbatim``), searched to any depth. Sorted."""
    found: set[Path] = set()

    def visit(d: Path) -> None:
        if is_maildir(d):
            found.add(d)
            md = mailbox.Maildir(str(d), factory=None, create=False)
            for name in md.list_folders():
                visit(d / f".{name}")
        for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not (is_maildir(d) and sub.name in ("cur", "new", "tmp")):
                visit(sub)

    visit(folder)
    return sorted(found)


def _maildir_emails(folder: Path, led: Ledger, max_body_chars: int) -> tuple[list[tuple[Email, str]], list[Path]]:
    """The emails of one Maildir (its ``cur/`` and ``new/``, read by ``mailbox.Maildir``) and the files
    taken; a file left in ``tmp/`` (a delivery not finished) is a file reject."""
    md = mailbox.Maildir(str(folder), factory=None, create=False)
    files = sorted(f for sub in ("cur", "new") for f in (folder / sub).iterdir() if f.is_file())
    emails = []
    for key in sorted(md.iterkeys()):
        with md.get_file(key) as fh:
            head = fh.read(SNIFF_BYTES)
        where = str(folder / key)
        if is_outlook_msg(head):
            led.reject("file", R_OUTLOOK_MSG, outlook_msg_message(key), where)
            continue
        led.inputs["email"] += 1
        if _refuse_binary(key, head, led, where):
            continue
        cutter = MessageCutter(max_part_bytes(max_body_chars))
        with md.get_file(key) as fh:
            for piece, start in bounded_lines(fh):
                cutter.add(piece, start)
        raw, cuts = cutter.finish()
        if not raw.strip():
            led.reject("email", R_EMPTY_FILE, f"Maildir message '{key}' is empty", where)
            continue
        try:
            emails.append((_read_message(raw, where, led, None, max_body_chars, cuts), where))
        except Exception as exc:  # the email package raises many types on broken input
            led.reject("email", R_UNPARSEABLE_MAIL, f"{type(exc).__name__}: {exc}", where)
    tmp = folder / "tmp"
    for f in sorted(tmp.iterdir()) if tmp.is_dir() else []:
        if f.is_file():
            led.reject("file", R_MAILDIR_TMP, f"'{f.relative_to(folder)}' is in a Maildir's tmp/: a delivery "
                       f"that did not finish; not read (deliveries move to new/ when they finish)", f)
            files.append(f)
    return emails, files


def _maildir_tree_emails(folder: Path, led: Ledger, max_body_chars: int) -> tuple[list[tuple[Email, str]], list[Path]]:
    emails, files = [], []
    for d in maildirs(folder):
        e, f = _maildir_emails(d, led, max_body_chars)
        emails += e
        files += f
    return emails, files


# ------------------------------------------------------------------------ mail services' JSON
def _api_emails(path: Path, led: Ledger, max_body_chars: int, kind: str) -> list[tuple[Email, str]]:
    """The emails of a Gmail API or Microsoft Graph JSON file (``threadsum.data.mail_api``): one JSON
    value or JSON lines, every string cut to ``max_part_bytes(max_body_chars)`` while it is read."""
    text = _json_text(path, led, max_body_chars)
    if text is None:
        return []
    try:
        values = [json.loads(text)]
    except json.JSONDecodeError as first:
        values = []
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError:
                led.reject("file", R_INVALID_JSON, f"'{path.name}' is not JSON (nor JSON lines): {first.msg} at line "
                           f"{first.lineno}, column {first.colno}", path, first.lineno)
                return []
    del text
    return _api_values_emails(values, str(path), led, max_body_chars, kind)


def _api_values_emails(values: list, where: str, led: Ledger, max_body_chars: int, kind: str
                       ) -> list[tuple[Email, str]]:
    read = mail_api.gmail_messages if kind == mail_api.GMAIL else mail_api.graph_messages
    service = "Gmail API" if kind == mail_api.GMAIL else "Microsoft Graph"
    emails = []
    for i, value in enumerate(values):
        try:
            messages, problems = read(value, f"[{i}]" if len(values) > 1 else "")
        except ValueError as exc:  # a body that is not base64url
            led.inputs["email"] += 1
            led.reject("email", R_UNPARSEABLE_MAIL, f"{service} JSON: {exc}", where)
            continue
        for at, detail in problems:
            led.reject("file", R_UNREADABLE_FILE, f"{service} JSON, {at}: {detail}", where)
        for m in messages:
            led.inputs["email"] += 1
            if m.problem:
                led.reject("email", R_EMPTY_BODY, f"{service} message {m.where}: {m.problem}", where)
                continue
            try:
                emails.append((_read_api_message(m, where, led, max_body_chars), f"{where} {m.where}"))
            except Exception as exc:  # the email package raises many types on broken input
                led.reject("email", R_UNPARSEABLE_MAIL, f"{m.where}: {type(exc).__name__}: {exc}", where)
    return emails


def _gmail_emails(path: Path, led: Ledger, max_body_chars: int) -> list[tuple[Email, str]]:
    return _api_emails(path, led, max_body_chars, mail_api.GMAIL)


def _graph_emails(path: Path, led: Ledger, max_body_chars: int) -> list[tuple[Email, str]]:
    return _api_emails(path, led, max_body_chars, mail_api.GRAPH)


def threads_from_api_json(value: Any, name: str = "<input>", max_body_chars: int = DEFAULT_MAX_BODY_CHARS
                          ) -> Optional[list[Thread]]:
    """Threads of a parsed Gmail API or Microsoft Graph JSON value (summarize, the service), or None when
    the value has neither shape. Messages that cannot be read are left out."""
    kind = mail_api.kind_of(value)
    if kind is None:
        return None
    led = Ledger()
    emails = _api_values_emails([value], name, led, max_body_chars, kind)
    return _mail_threads(emails, led, {}, False, name)


# ------------------------------------------------------------------------------- mail folders
def _mail_file_format(path: Path) -> Optional[str]:
    """The mail format of one file (``eml``, ``mbox``, ``gmail_json``, ``graph_json``) or None."""
    fmt = _file_format(path)
    return fmt if fmt is not None and FORMATS[fmt].mail else None


def read_mail_folder(folder: Path, require_summary: bool = True,
                     max_body_chars: int = DEFAULT_MAX_BODY_CHARS) -> ReadResult:
    """A folder of mail, searched recursively and threaded together: Maildirs (``maildirs``), and each
    other file whose format is a mail format (.eml, .mbox, Gmail API or Graph JSON; see ``FORMATS``).
    Summaries, if any, come from a ``summaries.csv`` / ``summaries.jsonl`` in the folder."""
    led = Ledger()
    emails, files = _maildir_tree_emails(folder, led, max_body_chars)
    boxes = set(maildirs(folder))
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts) or \
                (p.parent.name in ("cur", "new", "tmp") and p.parent.parent in boxes):
            continue  # hidden, or a Maildir's message (read above)
        fmt = _mail_file_format(p)
        if fmt is None:
            continue
        files.append(p)
        emails += FORMATS[fmt].emails(p, led, max_body_chars)
    threads = _mail_threads(emails, led, _sidecar_summaries(folder, led), require_summary, folder)
    return ReadResult(threads, led.rejects, led.counts(threads), led.warnings, files)


def read_eml_folder(folder: Path, require_summary: bool = True) -> ReadResult:
    """``read_mail_folder`` (kept under its old name)."""
    return read_mail_folder(folder, require_summary)


def read_mbox(path: Path, require_summary: bool = True, max_body_chars: int = DEFAULT_MAX_BODY_CHARS) -> ReadResult:
    """One mbox file (RFC 4155, see ``split_mbox``)."""
    return _read_mail_file(path, "mbox", max_body_chars, require_summary)


def _read_mail_file(path: Path, fmt: str, max_body_chars: int, require_summary: bool) -> ReadResult:
    """One file of a mail format, threaded; summaries from a sidecar file next to it."""
    led = Ledger()
    emails = FORMATS[fmt].emails(path, led, max_body_chars)
    threads = _mail_threads(emails, led, _sidecar_summaries(path.parent, led), require_summary, path)
    return ReadResult(threads, led.rejects, led.counts(threads), led.warnings, [path])


def _read_mail(path: Path, fmt: str, max_body_chars: int, require_summary: bool) -> ReadResult:
    """A mail format's reader: a folder is read by ``read_mail_folder``, a file as ``fmt``."""
    if path.is_dir():
        return read_mail_folder(path, require_summary, max_body_chars)
    return _read_mail_file(path, fmt, max_body_chars, require_summary)


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
    result = read_jsonl_stream(lambda: path.open("rb"), path, path.name, max_body_chars, require_summary)
    result.files = [path]
    return result


def read_jsonl_stream(open_bytes: Callable[[], ContextManager[IO[bytes]]], where: Any, name: str,
                      max_body_chars: int = DEFAULT_MAX_BODY_CHARS, require_summary: bool = True) -> ReadResult:
    """:func:`read_jsonl` on bytes from anywhere (a local file, an S3 object): the same rules, rejects
    and warnings, in the same bounded memory (the bytes stream through ``threadsum.data.stream``).

    Args:
        open_bytes: opens a new binary stream of the bytes from their start; called twice, the first
            stream closed after its first ``CHUNK`` bytes unless they are all whitespace (the empty-file
            and Outlook checks), the second read to its end.
        where: the ``source`` of every reject and warning (a path, an ``s3://`` URI).
        name: the file's name in messages.
        max_body_chars, require_summary: as :func:`read_jsonl`.

    Returns:
        The ``ReadResult``, its ``files`` empty (the caller knows what it opened).
    Raises:
        whatever ``open_bytes`` or its stream's ``read`` raises.
    """
    led = Ledger()
    with open_bytes() as fh:
        first = fh.read(CHUNK)
        outlook = is_outlook_msg(first)
        blank = not outlook and not first.strip() and all(not c.strip() for c in file_chunks(fh))
    if outlook:
        led.reject("file", R_OUTLOOK_MSG, outlook_msg_message(name), where)
        return ReadResult([], led.rejects, led.counts([]), led.warnings, [])
    if blank:
        led.reject("file", R_EMPTY_FILE, f"'{name}' is empty", where)
        return ReadResult([], led.rejects, led.counts([]), led.warnings, [])
    # read a line at a time, each string cut to max_part_bytes while it is read (a string holds no
    # raw newline, so the lines are the file's)
    source = _DataFile(where, JsonStringCutter(max_part_bytes(max_body_chars)), open_bytes)
    by_thread: dict[str, list[Email]] = defaultdict(list)
    summaries: dict[str, Optional[str]] = {}
    subjects: dict[str, str] = {}
    seen: set[str] = set()
    for n, line in enumerate(text_lines(source.text()), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            led.inputs["thread"] += 1
            led.reject("thread", R_INVALID_JSON, f"line is not JSON: {exc.msg} (column {exc.colno})", where, n)
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("emails"), list):
            led.inputs["thread"] += 1
            led.reject("thread", R_NOT_A_THREAD, "expected an object with an 'emails' list", where, n)
            continue
        tid, why = _norm_thread_id(obj.get("thread_id"), False)
        if why:
            led.inputs["thread"] += 1
            led.inputs["email"] += len(obj["emails"])
            led.reject("thread", why, f"thread_id {obj.get('thread_id')!r} is missing or invalid", where, n,
                       n_emails=len(obj["emails"]))
            continue
        if tid in seen:
            led.inputs["thread"] += 1
            led.inputs["email"] += len(obj["emails"])
            led.reject("thread", "duplicate_thread_id", f"thread {tid} appears again; the first is kept", where, n, tid,
                       n_emails=len(obj["emails"]))
            continue
        seen.add(tid)
        cut = source.cutter.n_cut > 0  # the line was read, so a cut in it has been made
        if cut:
            _take_cuts(obj)
            _warn_cut_fields(obj, led, where, n, tid, skip=("emails",))
        subjects[tid] = str(obj.get("subject") or "")
        s = obj.get("summary")
        summaries[tid] = str(s).strip() if s and str(s).strip() else None
        led.inputs["summary"] += summaries[tid] is not None
        for e in obj["emails"]:
            led.inputs["email"] += 1
            if not isinstance(e, dict):
                led.reject("email", R_MALFORMED_ROW, "email entry is not an object", where, n, tid)
                continue
            rec = _take_cuts(dict(e, thread_id=tid)) if cut else dict(e, thread_id=tid)
            rec.setdefault("timestamp", e.get("date"))
            got = _email_from_record(rec, where, n, led, max_body_chars, kaggle=False)
            if got:
                by_thread[tid].append(got[1])
    source.finish(led)
    threads = _assemble(by_thread, summaries, led, where, require_summary, subjects, seen_ids=seen)
    return ReadResult(threads, led.rejects, led.counts(threads), led.warnings, [])


# -------------------------------------------------------------------------------------- dispatch
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
"""The first bytes of an OLE2 compound file: Outlook's .msg (and old Office documents)."""
R_OUTLOOK_MSG = "outlook_msg"


def is_outlook_msg(head: bytes) -> bool:
    """Whether bytes start like an Outlook .msg file (an OLE2 compound file, ``OLE2_MAGIC``)."""
    return head[:len(OLE2_MAGIC)] == OLE2_MAGIC


def outlook_msg_message(name: Any) -> str:
    """The one-line message for an Outlook .msg file: what it is and how to save the mail as .eml."""
    return (f"'{name}' is an Outlook .msg file (OLE2), which threadsum does not read; save the mail as .eml "
            f"instead: in new Outlook or Outlook on the web open the message and use Save as / Download, in "
            f"Outlook for Mac drag the messages to a Finder folder; or convert .msg files with `msgconvert "
            f"FILE.msg` (Debian/Ubuntu package libemail-outlook-message-perl) or the Python package extract-msg "
            f"(`extract_msg.openMsg(path).asEmailMessage()`)")


@dataclass(frozen=True)
class SourceFormat:
    """One input format: its ``data.format`` name, how it is recognized and how it is read.

    A *mail* format yields emails that are threaded by ids (``thread_emails``), its summaries coming
    from a sidecar ``summaries.csv`` / ``summaries.jsonl``; the others hold threads with their ids and
    summaries. Every reader cuts bodies to ``max_body_chars`` while it reads (bounded memory).
    """

    name: str
    what: str
    """What it reads, in the words messages and docs use."""
    mail: bool
    file: Callable[[Path, bytes], bool]
    """Whether a file is of this format, from its path and first ``SNIFF_BYTES`` bytes."""
    read: Callable[[Path, int, bool], ReadResult]
    """(path, max_body_chars, require_summary) -> the threads of a file or folder in this format."""
    folder: Callable[[Path], bool] = lambda p: False
    """Whether a folder as a whole is of this format (the Kaggle pair, a Maildir)."""
    emails: Optional[Callable[[Path, Ledger, int], list[tuple[Email, str]]]] = None
    """A mail format's emails of one file: (path, ledger, max_body_chars) -> [(email, where)]."""


def _kaggle_json_file(path: Path, head: bytes) -> bool:
    name = path.name.lower()
    if name in (DETAILS_JSON, SUMMARIES_JSON):
        return True
    return name.endswith(".json") and mail_api.sniff(head) is None


def _jsonl_file(path: Path, head: bytes) -> bool:
    return path.name.lower().endswith(".jsonl") and mail_api.sniff(head) is None


def _eml_file(path: Path, head: bytes) -> bool:
    if path.name.lower().endswith(".eml"):
        return True
    # a message file without the extension (Maildir copies, 'message.txt'): its first lines are headers
    return (not path.suffix or path.suffix.lower() == ".txt") and looks_like_mail_headers(head)


def _mbox_file(path: Path, head: bytes) -> bool:
    name = path.name.lower()
    if name.endswith((".mbox", ".mbx")) or name == "mbox":
        return True
    first = head.lstrip().split(b"\n", 1)[0]
    return not path.suffix and _is_separator(first.rstrip(b"\r"))


def _api_file(kind: str) -> Callable[[Path, bytes], bool]:
    return lambda path, head: path.name.lower().endswith((".json", ".jsonl")) and mail_api.sniff(head) == kind


_HEADER_FIELD = re.compile(rb"([A-Za-z][A-Za-z0-9-]*):[ \t]")
_MAIL_FIELDS = {b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
                b"received", b"return-path", b"mime-version", b"content-type", b"delivered-to"}


def looks_like_mail_headers(head: bytes) -> bool:
    """Whether bytes start with an RFC 822 header block naming From or Subject and another mail field."""
    names = set()
    for line in head.lstrip(b"\xef\xbb\xbf").replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].split(b"\n")[:200]:
        if line[:1] in (b" ", b"\t") and names:
            continue
        m = _HEADER_FIELD.match(line)
        if m is None:
            return False
        names.add(m.group(1).lower())
    return bool(names & {b"from", b"subject"}) and len(names & _MAIL_FIELDS) >= 2


def _read_kaggle_source(fmt: str) -> Callable[[Path, int, bool], ReadResult]:
    ext = "csv" if fmt == "kaggle_csv" else "json"
    return lambda p, max_body_chars, require_summary: read_kaggle(
        *_kaggle_pair(p, ext), fmt=ext, max_body_chars=max_body_chars, require_summary=require_summary)


def _read_jsonl_source(p: Path, max_body_chars: int, require_summary: bool) -> ReadResult:
    if p.is_dir():
        return _merge([read_jsonl(j, max_body_chars, require_summary) for j in sorted(p.glob("*.jsonl"))
                       if _jsonl_file(j, _head(j))])
    return read_jsonl(p, max_body_chars, require_summary)


def _mail_format(name: str, what: str, file: Callable[[Path, bytes], bool],
                 emails: Callable[[Path, Ledger, int], list[tuple[Email, str]]],
                 folder: Callable[[Path], bool] = lambda p: False) -> SourceFormat:
    return SourceFormat(name, what, True, file, lambda p, m, r: _read_mail(p, name, m, r), folder, emails)


def _maildir_read(p: Path, max_body_chars: int, require_summary: bool) -> ReadResult:
    if p.is_dir():
        return read_mail_folder(p, require_summary, max_body_chars)
    return _read_mail_file(p, "eml", max_body_chars, require_summary)  # one message file of a Maildir


FORMATS: dict[str, SourceFormat] = {f.name: f for f in [
    SourceFormat("kaggle_csv", "the Kaggle CSV pair (email_thread_details.csv + email_thread_summaries.csv)", False,
                 lambda p, head: p.name.lower().endswith(".csv"), _read_kaggle_source("kaggle_csv"),
                 lambda p: (p / DETAILS_CSV).exists()),
    SourceFormat("kaggle_json", "the Kaggle JSON copies (email_thread_details.json + email_thread_summaries.json)",
                 False, _kaggle_json_file, _read_kaggle_source("kaggle_json"), lambda p: (p / DETAILS_JSON).exists()),
    SourceFormat("maildir", "a Maildir (cur/ and new/, Maildir++ subfolders included)", True,
                 lambda p, head: False, _maildir_read, lambda p: bool(maildirs(p)),
                 lambda p, led, m: _eml_emails([p], led, m)),
    _mail_format("eml", ".eml files (one RFC 822 message each)", _eml_file, lambda p, led, m: _eml_emails([p], led, m)),
    _mail_format("mbox", "an .mbox file", _mbox_file, _mbox_emails),
    _mail_format("gmail_json", "Gmail API threads or messages saved as JSON (users.threads.get, format=full or raw)",
                 _api_file(mail_api.GMAIL), _gmail_emails),
    _mail_format("graph_json", "Microsoft Graph messages saved as JSON (GET /me/messages)",
                 _api_file(mail_api.GRAPH), _graph_emails),
    SourceFormat("jsonl", "JSONL of threads {thread_id, emails: [{from, to, date, body}], summary}", False,
                 _jsonl_file, _read_jsonl_source),
]}
"""Every input format, in the order ``detect_format`` tries them. ``data.format`` takes these names."""


def _file_format(path: Path) -> Optional[str]:
    """The format of one file (the first in ``FORMATS`` that takes it), or None."""
    head = _head(path)
    if is_outlook_msg(head):
        return None
    return next((f.name for f in FORMATS.values() if f.file(path, head)), None)


def _names() -> str:
    return ", ".join(FORMATS)


def detect_format(path: Path) -> str:
    """The format of ``path``, a name in ``FORMATS``.

    A folder: the Kaggle pair by its file names, a Maildir (itself or inside it), else the format of
    the files in it (searched recursively, hidden ones aside), a mail format first. A file: the first
    format of ``FORMATS`` that takes its name and first bytes (Gmail and Graph JSON are told apart
    from Kaggle JSON and JSONL by the keys they hold).

    Raises:
        DataError: an Outlook .msg file (the message says how to export it), or nothing is recognized.
    """
    if path.is_dir():
        for f in FORMATS.values():
            if f.folder(path):
                return f.name
        found = []
        for p in sorted(path.rglob("*")):
            if p.is_file() and not any(x.startswith(".") for x in p.relative_to(path).parts) \
                    and p.name not in _SIDE_FILES:
                fmt = _file_format(p)
                if fmt is not None and FORMATS[fmt].mail:
                    return fmt
                if fmt is not None:
                    found.append(fmt)
        if "jsonl" in found:
            return "jsonl"
        raise DataError(f"'{path}' holds no {DETAILS_CSV}, {DETAILS_JSON}, Maildir (cur/, new/), *.eml, *.mbox, "
                        f"Gmail or Graph JSON or *.jsonl; point data.source at one of those (or set data.format)")
    head = _head(path)
    if is_outlook_msg(head):
        raise DataError(outlook_msg_message(path))
    fmt = next((f.name for f in FORMATS.values() if f.file(path, head)), None)
    if fmt is None:
        raise DataError(f"cannot tell the format of '{path}' from its name or first bytes; set data.format to one "
                        f"of {_names()}")
    return fmt


def _kaggle_pair(path: Path, ext: str) -> tuple[Path, Path]:
    if path.is_dir():
        return path / f"email_thread_details.{ext}", path / f"email_thread_summaries.{ext}"
    if "summar" in path.name:
        return path.with_name(f"email_thread_details.{ext}"), path
    return path, path.with_name(f"email_thread_summaries.{ext}")


def read_source(path: str | Path, fmt: str = "auto", max_body_chars: int = DEFAULT_MAX_BODY_CHARS,
                require_summary: bool = True) -> ReadResult:
    """Read threads from ``path`` in format ``fmt`` (a name in ``FORMATS``, or ``auto``: ``detect_format``).

    Bad rows, messages and files become rejects; bodies are cut to ``max_body_chars`` characters while
    they are read (peak memory follows that limit, not the file).

    Raises:
        DataError: ``path`` does not exist, is an Outlook .msg file (whatever ``fmt`` says), ``fmt`` is
            unknown, or ``auto`` recognizes nothing.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data source '{p}' does not exist. Set data.source to a Kaggle folder/CSV, a .json copy, "
                        f"a folder of .eml, a Maildir, an .mbox, Gmail or Graph JSON or a .jsonl (or run `threadsum "
                        f"synth` to make a corpus)")
    if p.is_file() and is_outlook_msg(_head(p, len(OLE2_MAGIC))):
        raise DataError(outlook_msg_message(p))
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt not in FORMATS:
        raise DataError(f"unknown data.format '{fmt}'; use auto or one of {_names()}")
    result = FORMATS[fmt].read(p, max_body_chars, require_summary)
    return _with_unread_files(p, result) if p.is_dir() else result


# files a folder source may hold besides the ones read: summaries next to mail, and the Kaggle copies
# in the format not chosen (the release ships both)
_SIDE_FILES = {"summaries.csv", "summaries.jsonl", DETAILS_CSV, SUMMARIES_CSV, DETAILS_JSON, SUMMARIES_JSON}


def _with_unread_files(folder: Path, result: ReadResult) -> ReadResult:
    """``result`` plus a file reject for each file in ``folder`` that no reader took (hidden files, and
    the index files mail servers keep in a Maildir, aside). An Outlook .msg file is named as one."""
    taken = {f.resolve() for f in result.files}
    taken |= {Path(r["source"]).resolve() for r in result.rejects if r["level"] == "file" and r.get("source")}
    extra = Ledger()
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if not f.is_file() or f.resolve() in taken or f.name in _SIDE_FILES or _MAILDIR_META.match(f.name) \
                or any(part.startswith(".") for part in rel.parts):
            continue
        if is_outlook_msg(_head(f, len(OLE2_MAGIC))):
            extra.reject("file", R_OUTLOOK_MSG, outlook_msg_message(rel), f)
            continue
        extra.reject("file", R_UNSUPPORTED_FILE, f"'{rel}' was not read: no reader for this kind of file next to "
                     f"the {', '.join(sorted({x.suffix or x.name for x in result.files})) or 'other'} files; "
                     f"move it out of the folder or convert it", f)
    if not extra.rejects:
        return result
    return _merge([result, ReadResult([], extra.rejects, extra.counts([]), [], [])])


def read_eml_files(files: list[Path], require_summary: bool = False,
                   max_body_chars: int = DEFAULT_MAX_BODY_CHARS) -> ReadResult:
    """Read single-message ``.eml`` files and group them into threads (see ``thread_emails``).

    Args:
        files: the .eml files.
        require_summary: reject threads that have no summary (mail carries none, so all are rejected).
        max_body_chars: longest body kept, in characters (longer ones are cut, with a warning).
    """
    led = Ledger()
    emails = _eml_emails(files, led, max_body_chars)
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
    """Threads from one raw message or an mbox file's bytes (for summarize/serve; no summary needed).

    Raises:
        DataError: the bytes are an Outlook .msg file (the message says how to save it as .eml).
    """
    if is_outlook_msg(data):
        raise DataError(outlook_msg_message("the input"))
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
