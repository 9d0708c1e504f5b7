"""What a thread can support: its people, authors, values and sentences, each with its place.

``index_thread(thread)`` reads every email once and keeps:

- lines: (email index, line) for evidence, split into header lines (From:/Sent:/To:, Lotus
  "Name / 04/18/2000 11:47 AM" stamps) and content lines;
- segments: each email's own text and every quoted or forwarded message inside it, with the
  author the quoted header or the sign-off names ("Jennifer" at the end of a forwarded note);
- names: every person named in headers, addresses, sign-offs and bodies;
- name keys: every line's words as ``names.name_key`` compares organisation names (plurals,
  possessives, abbreviations and case evened out), joined across lines so that a name wrapped
  over two lines is still found;
- values: money, numbers, dates, times and weekdays of content lines, and the dates of the
  emails (their Date field and quoted Sent: lines) kept apart, since an email's date supports
  "on Tuesday Kim wrote" but not "by Tuesday".
"""
from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import date
from typing import Optional

from threadsum.data.clean import Segment as CleanSegment
from threadsum.data.clean import decode_qp_artifacts, segment_body
from threadsum.data.types import Thread
from threadsum.verify.names import Name, fold, name_key, parse_name, same_person
from threadsum.verify.values import Value, find_values

_HEADER = re.compile(r"^\s*>*\s*(from|sent|to|cc|bcc|date|subject)\s*:\s*(.*)$", re.I)
_NAME_ON = re.compile(r"^\s*(?!.*forwarded by)(.{2,60}?)\s+on\s+\d{1,2}/\d{1,2}/\d{2,4}\b", re.I)
_WROTE = re.compile(r"^\s*>*\s*(?:on\s.+?,\s*)?(.{2,60}?)\s+wrote:\s*$", re.I)
_NAME_LINE = re.compile(r"^\s*[\"']?[A-Z][\w.'’-]*(?:\s+[A-Z][\w.'’-]*){0,3}[\"']?(?:\s*<[^>]*>?)?(?:@\w+)?\s*$")
_SIGNOFF_WORDS = {"thanks", "thank", "regards", "best", "cheers", "sincerely", "ps", "fyi", "attached",
                  "yes", "no", "ok", "okay", "hi", "hello", "dear", "sent", "subject", "to", "cc", "from"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z0-9])")


@dataclass
class Segment:
    """One authored piece of an email: its own text, or a quoted/forwarded message inside it."""

    email: int
    authors: list[Name] = field(default_factory=list)
    recipients: list[Name] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    """Content lines only (header lines are left out)."""
    author_lines: list[str] = field(default_factory=list)
    """For each author, the line that names them ('' for the email's own sender)."""


@dataclass
class Unit:
    """One sentence of a segment's content, the grain at which content is attributed."""

    email: int
    text: str
    words: frozenset[str]
    segment: Segment


@dataclass
class ThreadIndex:
    """Everything ``check`` looks up; built once per thread by ``index_thread``."""

    lines: list[tuple[int, str, bool]]
    """(email index, line, is_header) for every body line, plus one header line per email field."""
    segments: list[Segment]
    units: list[Unit]
    names: list[tuple[Name, int, str]]
    """(name, email index, line) for every person mention found."""
    authors: list[tuple[Name, int, str]]
    """(name, email index, line) for every sender, quoted author and sign-off."""
    content_values: list[tuple[Value, int, str]]
    date_values: list[tuple[Value, int, str]]
    """Values of email dates: Date fields and quoted Sent:/Date: lines and Lotus stamps."""
    folded_text: str
    """All lines, folded (lower case, no diacritics), words separated by single spaces."""
    senders: list[Optional[Name]] = field(default_factory=list)
    """The parsed From of each email (None when it has none)."""
    subjects: list[str] = field(default_factory=list)
    """Each email's own subject (the thread's when the email has none)."""
    lower_words: frozenset[str] = frozenset()
    """Words the thread writes in lower case ('deal', 'rice'): a capitalised one opening a summary
    sentence is then an ordinary word, not a name."""
    name_text: str = " "
    """The keys (``names.name_key``) of every line's words, space-separated, lines joined by a space:
    ' epmi power credit watch list ... '."""
    name_line_starts: list[int] = field(default_factory=list)
    """Offset in ``name_text`` where each entry of ``lines`` begins (same order)."""

    def line_of_name(self, keys: tuple[str, ...]) -> Optional[tuple[int, str]]:
        """(email index, line) where the key sequence ``keys`` occurs (the line it starts on when a
        line break splits it), or None when the thread never writes it."""
        if not keys:
            return None
        at = self.name_text.find(" " + " ".join(keys) + " ")
        if at < 0:
            return None
        i = max(0, bisect_right(self.name_line_starts, at + 1) - 1)
        email, line, _ = self.lines[i]
        return email, line


def content_words(text: str) -> frozenset[str]:
    """Folded, crudely stemmed words of 3+ letters, minus stop words: the unit of content overlap."""
    out = set()
    for w in re.findall(r"[^\W\d_]{3,}", fold(text)):
        if w in STOP_WORDS:
            continue
        out.add(stem(w))
    return frozenset(out)


def stem(word: str) -> str:
    """A light English suffix stripper (plural, -ing, -ed): enough to match 'redoing' with 'redo'."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


STOP_WORDS = frozenset("""
the and for that this with from have has had was were are is be been being will would shall should can could
may might must not but its it's they them their there then than what when where which who whom whose why how
all any some each every both few more most other such own same into onto upon about above below over under
again further once here also just only very too our ours you your yours his her hers him she he we us me my
mine let lets get got out off yet still even did does done doing make made its one ones thing things
email emails thread note message messages mail discusses discuss discussed regarding about asked asks
""".split())


def split_people(value: str) -> list[str]:
    """Entries of a To:/Cc: value: ';'-separated ('Theriot, Kim S.; Murphy, Melissa'), else ','-separated
    unless the value is one 'Last, First' name."""
    if ";" in value:
        return [v for v in value.split(";") if v.strip()]
    parts = [v for v in re.split(r",(?![^<]*>)", value) if v.strip()]
    if len(parts) == 2 and "@" not in value and "/" not in value and len(parts[0].split()) == 1:
        return [value]
    return parts


def _signoff(lines: list[str]) -> Optional[Name]:
    """A name on one of the last three non-empty content lines ('Jennifer', 'Ed Sacks', 'Kay')."""
    tail = [ln for ln in lines if ln.strip()][-3:]
    for ln in reversed(tail):
        if _NAME_LINE.match(ln) and fold(ln.split()[0].strip("\"'")) not in _SIGNOFF_WORDS:
            name = parse_name(ln.strip())
            if name is not None:
                return name
    return None


def _header_people(header: list[str]) -> tuple[list[Name], list[Name], list[str]]:
    """(authors, recipients, author lines) of a quoted header block; wrapped To:/Cc: lists are joined."""
    authors, recipients, author_lines = [], [], []
    fields: list[list[str]] = []
    for line in header:
        m = _HEADER.match(line)
        if m:
            fields.append([m.group(1).lower(), m.group(2)])
        elif fields:
            fields[-1][1] += " " + line.strip()
    for name, value in fields:
        # pasted one-line headers: 'From: Ann Smith / To: Bob Jones / Subject: Q3 budget'
        head = re.split(r"\s+/\s+|\s+(?:to|sent|subject|date|cc)\s*:", value, flags=re.I)[0]
        if name == "from":
            n = parse_name(head) if head.strip() else None
            if n is not None:
                authors.append(n)
                author_lines.append(f"From: {head.strip()}")
            for part in re.findall(r"\b(?:to|cc)\s*:\s*([^/]+)", value, flags=re.I):
                recipients.extend(x for x in map(parse_name, split_people(part)) if x)
        elif name in ("to", "cc"):
            recipients.extend(x for x in map(parse_name, split_people(head)) if x)
    return authors, recipients, author_lines


def _marker_author(seg: CleanSegment) -> tuple[Optional[Name], str]:
    """The author a Lotus stamp ('Tanya Rohauer / 06/29/99 09:12 AM', 'X on 04/27/2001 ...') or an
    'On ..., X wrote:' line names; forward markers name the forwarder, not the author."""
    if not seg.marker or seg.kind not in ("lotus", "wrote"):  # '-----Original Message-----' names no one
        return None, ""
    line = seg.marker[0].strip()
    if _HEADER.match(line):  # 'From: Ann Smith / To: Bob Jones' opening a Lotus or pasted block
        authors, _, lines = _header_people([line])
        return (authors[0], lines[0]) if authors else (None, "")
    m = _WROTE.match(line) or _NAME_ON.match(line)
    return parse_name(m.group(1) if m else line), line


def _split_segments(email_index: int, body: str, sender: Optional[Name], recipients: list[Name]
                    ) -> tuple[list[Segment], list[tuple[str, bool]]]:
    """Segments of one body (data.clean's segmentation, '>' quotes opened) and its lines marked header/content."""
    segments: list[Segment] = []
    marked: list[tuple[str, bool]] = []
    for cs in segment_body(body):
        if cs.kind == "quote":  # '>' quoted mail: open one level and segment it again
            inner = "\n".join(re.sub(r"^\s*>\s?", "", ln) for ln in cs.content)
            segs, lines = _split_segments(email_index, inner, None, [])
            segments.extend(segs)
            marked.extend(lines)
            continue
        authors, recips, author_lines = _header_people(cs.header)
        m_author, m_line = _marker_author(cs)
        if m_author is not None:
            authors.insert(0, m_author)
            author_lines.insert(0, m_line)
        if cs.kind == "own" and sender is not None:
            authors.insert(0, sender)
            author_lines.insert(0, "")
        seg = Segment(email_index, authors, recips or (list(recipients) if cs.kind == "own" else []), [], author_lines)
        segments.append(seg)
        marked.extend((ln, True) for ln in cs.marker + cs.header)
        for line in cs.content:
            # a pasted thread keeps its headers inline: 'From: Bob Jones / To: Ann Smith'
            if _HEADER.match(line) and line.strip().lower().startswith("from:"):
                a, r, al = _header_people([line])
                seg = Segment(email_index, a, r, [], al)
                segments.append(seg)
                marked.append((line, True))
                continue
            if _HEADER.match(line):
                marked.append((line, True))
                continue
            seg.lines.append(line)
            marked.append((line, False))
    for s in segments:
        sig = _signoff(s.lines)
        if sig is not None and not any(same_person(sig, a) for a in s.authors):
            s.authors.append(sig)
            s.author_lines.append(next(ln for ln in reversed(s.lines) if ln.strip()).strip())
    return segments, marked


def _units(seg: Segment) -> list[Unit]:
    text = re.sub(r"[ \t]*\n[ \t]*(?!\n)", " ", "\n".join(seg.lines))  # re-join hard-wrapped lines
    out = []
    for para in text.split("\n"):
        for sent in _SENTENCE_END.split(para):
            if sent.strip():
                out.append(Unit(seg.email, sent.strip(), content_words(sent), seg))
    return out


def _body_names(line: str) -> list[Name]:
    """People named in a content line: runs of two or three capitalised words and addresses."""
    found = []
    for m in re.finditer(r"\b[A-Z][a-z]+(?:\s+[A-Z]\.)?(?:\s+[A-Z][\w'’-]+){1,2}\b|[\w.+-]+@[\w-]+\.[\w.-]+", line):
        n = parse_name(m.group(0))
        if n is not None:
            found.append(n)
    return found


def _weekday_of(v: Value) -> Optional[Value]:
    """The weekday of a dated header value with a year ('Date: 2001-04-27 09:20' -> Friday)."""
    if v.kind != "date" or v.key[2] is None:
        return None
    try:
        return Value("weekday", date(v.key[2], v.key[0], v.key[1]).weekday(), v.start, v.end, v.text)
    except ValueError:
        return None


def _line_naming(name: Name, folded_lines: list[tuple[str, str]], cache: dict[str, Optional[str]]) -> Optional[str]:
    """The first (header) line that names ``name``; ``folded_lines`` are (folded, original) pairs."""
    key = name.last or name.first
    if key not in cache:
        cache[key] = next((line.strip() for low, line in folded_lines if key and key in low), None)
    return cache[key]


def index_thread(thread: Thread) -> ThreadIndex:
    """Index a thread for ``check``; linear in its text length. Raises nothing on odd mail."""
    lines: list[tuple[int, str, bool]] = []
    segments: list[Segment] = []
    names: list[tuple[Name, int, str]] = []
    authors: list[tuple[Name, int, str]] = []
    content_values: list[tuple[Value, int, str]] = []
    date_values: list[tuple[Value, int, str]] = []
    for i, e in enumerate(thread.emails):
        sender = parse_name(e.sender) if e.sender else None
        recips = [n for n in (parse_name(r) for r in list(e.recipients) + list(e.cc)) if n]
        header = [f"From: {e.sender}", "To: " + "; ".join(e.recipients), "Cc: " + "; ".join(e.cc),
                  f"Subject: {e.subject or thread.subject}"]
        if e.date is not None:
            stamp = f"Date: {e.date.strftime('%A, %B %d, %Y %I:%M %p')}"
            header.append(stamp)
            date_values.extend((v, i, stamp) for v in find_values(stamp[6:]))
            date_values.append((Value("number", float(e.date.year), 0, 0, str(e.date.year)), i, stamp))
        lines.extend((i, h, True) for h in header)
        content_values.extend((v, i, header[3]) for v in find_values(header[3]))
        if sender:
            names.append((sender, i, header[0]))
            authors.append((sender, i, header[0]))
        names.extend((n, i, header[1]) for n in recips)
        segs, marked = _split_segments(i, decode_qp_artifacts(e.body or ""), sender, recips)
        segments.extend(segs)
        folded_headers = [(fold(t), t) for t, is_header in marked if is_header]
        seen: dict[str, Optional[str]] = {}
        for s in segs:
            for a, line in zip(s.authors, s.author_lines):
                authors.append((a, i, line or header[0]))
                names.append((a, i, line or header[0]))
            names.extend((r, i, _line_naming(r, folded_headers, seen) or header[1]) for r in s.recipients)
        for text, is_header in marked:
            lines.append((i, text, is_header))
            vals = find_values(text) if is_header else []
            if is_header:
                date_values.extend((v, i, text.strip()) for v in vals if v.kind in ("date", "time", "weekday"))
                date_values.extend((w, i, text.strip()) for w in map(_weekday_of, vals) if w is not None)
            names.extend((n, i, text.strip()) for n in _body_names(text))
    units = [u for s in segments for u in _units(s)]
    # values are read from re-joined sentences: hard wrapping splits 'five\nmillion' and '1:30\np.m.'
    content_values.extend((v, u.email, u.text) for u in units for v in find_values(u.text))
    folded = " ".join(re.findall(r"[^\W_]+", fold(" \n ".join(t for _, t, _ in lines))))
    senders = [parse_name(e.sender) if e.sender else None for e in thread.emails]
    subjects = [e.subject or thread.subject or "" for e in thread.emails]
    lower = frozenset(w for _, t, _ in lines for w in re.findall(r"(?<![\w'’])[a-z][a-z'’-]+", t))
    name_text, starts = _name_text(lines)
    return ThreadIndex(lines, segments, units, names, authors, content_values, date_values, f" {folded} ", senders,
                       subjects, lower, name_text, starts)


def _name_text(lines: list[tuple[int, str, bool]]) -> tuple[str, list[int]]:
    """``ThreadIndex.name_text`` and ``name_line_starts`` for ``lines``."""
    parts, starts, at = [" "], [], 1
    for _, text, _ in lines:
        starts.append(at)
        keys = " ".join(name_key(text))
        if keys:
            parts.append(keys + " ")
            at += len(keys) + 1
    return "".join(parts), starts
