"""Cleaning: what the model sees of each email. Every step is switchable and its effect is counted.

Steps, in order (each a key of ``CleanConfig``):

1. ``decode_quoted_printable``  ``=09`` / ``=20`` / ``=3D`` and soft line breaks ``=\\n`` (which split
   words: ``Stac=\\ney``) left by the Enron export.
2. ``drop_duplicate_emails``    exact duplicates (same sender, time and body) within a thread.
3. ``remove_quoted_history``    quoted blocks (``-----Original Message-----``, ``Forwarded by``,
   Lotus-Notes headers, ``On ... wrote:``, ``>`` lines) whose text already exists in the thread
   (as another email's own text or an earlier kept quote). Quoted text found nowhere else, such as
   the note a forward carries, is kept: only its first copy survives.
4. ``collapse_headers``         a kept quote's From/Sent/To/Cc/Subject block becomes one line, and
   recipient lists (headers and the email's own ``to``) show at most ``max_recipients_shown`` names.
5. ``normalize_names``          Enron names ``Theriot, Kim S. KTHERIO`` become ``Kim S. Theriot``.
6. ``strip_signatures``         ``-- `` signature blocks, mobile footers and legal disclaimers
   (conservative: only well-known patterns).
7. ``normalize_whitespace``     trailing/indent spaces, runs of blank lines.

``clean_thread`` is the one code path for training data and for inference (the Summarizer calls it
with the config saved next to the model), so what the model saw in training is what it sees later.
"""
from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from threadsum.data.types import Email, Thread

STEPS = ("decode_quoted_printable", "drop_duplicate_emails", "remove_quoted_history", "collapse_headers",
         "normalize_names", "strip_signatures", "normalize_whitespace")
SHINGLE = 5  # words per shingle: long enough to be specific, short enough to survive re-wrapping
DUPLICATE_SHARE = 0.8  # a quote is a duplicate when this share of its shingles exists elsewhere


# ------------------------------------------------------------------------------ 1. QP artifacts
_QP_SOFT = re.compile(r"=\r?\n")
_QP_HEX = re.compile(r"=(09|20|3D|A0|92|93|94|96|97)")
_QP_MAP = {"09": "\t", "20": " ", "3D": "=", "A0": " ", "92": "'", "93": '"', "94": '"', "96": "-", "97": "-"}
# tabs as =09, soft breaks, or =20 closing a line: plain text like 'price=20' is not a hint
_QP_HINT = re.compile(r"=09|=\r?\n|=20\r?$", re.M)


def decode_qp_artifacts(text: str) -> str:
    """Undo the quoted-printable residue; bodies without any hint of it are left untouched."""
    if not _QP_HINT.search(text):
        return text
    return _QP_HEX.sub(lambda m: _QP_MAP[m.group(1)], _QP_SOFT.sub("", text))


# ------------------------------------------------------------------------ body segmentation
_ORIG = re.compile(r"^\s*-{2,}\s*Original Message\s*-{2,}\s*$", re.I)
_FWD = re.compile(r"^\s*-{2,}.*\bForwarded by\b", re.I)
_WROTE = re.compile(r"^\s*On\b.{0,200}\bwrote:\s*$", re.I)
_HDR = re.compile(r"^\s*(From|Sent|To|Cc|Bcc|Subject|Date)\s*:", re.I)
_FROM_HDR = re.compile(r"^\s*From:\s*\S", re.I)
_LOTUS_DATE = re.compile(r"^\s*\d{1,2}/\d{1,2}/\d{2,4}\s+\d{1,2}:\d{2}(:\d{2})?\s*[AP]M\b", re.I)
_TO_LINE = re.compile(r"^\s*To:", re.I)


@dataclass
class Segment:
    kind: str  # own | original | forward | wrote | lotus | quote (">" lines)
    marker: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)

    @property
    def quoted(self) -> bool:
        return self.kind != "own"

    def text(self) -> str:
        return "\n".join(self.marker + self.header + self.content)


_CANDIDATE = re.compile(r"Original Message|Forwarded by|wrote:|From:", re.I)
# the same test on lower-cased ASCII text (4x faster than re.I; for other text re.I also folds e.g. 'ſ' to 's')
_CANDIDATE_ASCII = re.compile(r"original message|forwarded by|wrote:|from:")
_SLASH_START = re.compile(r"(?m)^[^\n/]{0,11}/")  # a line with '/' in its first 12 characters
_QUOTE_LINE = re.compile(r"(?m)^[^\S\n]*>")  # what line.lstrip().startswith(">") tests, per line
_LIST_HDR = re.compile(r"^\s*(To|Cc|Bcc)\s*:", re.I)


def _hit_lines(body: str, pattern: re.Pattern) -> set[int]:
    """Indices of the lines of ``body`` where ``pattern`` (which never spans lines) matches."""
    hits, line, last = set(), 0, 0
    for m in pattern.finditer(body):
        line += body.count("\n", last, m.start())
        last = m.start()
        hits.add(line)
    return hits


def _starts_segment(lines: list[str], i: int) -> Optional[str]:
    line = lines[i]
    nxt = lines[i + 1] if i + 1 < len(lines) else ""
    if not _CANDIDATE.search(line) and "/" not in nxt[:12]:
        return None  # fast path: most lines are plain text
    if _ORIG.match(line):
        return "original"
    if _FWD.match(line):
        return "forward"
    if _WROTE.match(line):
        return "wrote"
    if _FROM_HDR.match(line):
        window = lines[i + 1:i + 5]
        if any(_HDR.match(w) for w in window):
            return "lotus"
    if line.strip() and i + 1 < len(lines) and _LOTUS_DATE.match(lines[i + 1]) and not _HDR.match(line):
        if any(_TO_LINE.match(w) for w in lines[i + 2:i + 8]):
            return "lotus"
    return None


def segment_body(body: str) -> list[Segment]:
    """Split a body into its own text and the quoted/forwarded blocks below it."""
    lines = body.split("\n")
    segs = [Segment("own")]
    i = 0
    n = len(lines)
    # Lines that may start a segment or are '>' quotes, found by three C-level scans of the body:
    # every other line is plain text and is copied in runs (a per-line regex test costs ~5x more).
    hits = _hit_lines(body.lower(), _CANDIDATE_ASCII) if body.isascii() else _hit_lines(body, _CANDIDATE)
    if ">" in body:
        hits |= _hit_lines(body, _QUOTE_LINE)
    if "/" in body:
        hits |= {k - 1 for k in _hit_lines(body, _SLASH_START) if k > 0}
    special = sorted(hits)
    sp = 0
    while i < n:
        while sp < len(special) and special[sp] < i:
            sp += 1
        plain_to = special[sp] if sp < len(special) else n
        if i < plain_to:  # _starts_segment is None and no '>' on each of these lines
            if segs[-1].kind == "quote":
                segs.append(Segment("own"))
            segs[-1].content.extend(lines[i:plain_to])
            i = plain_to
            continue
        line = lines[i]
        kind = _starts_segment(lines, i)
        if kind is None and line.lstrip().startswith(">"):
            if segs[-1].kind != "quote":
                segs.append(Segment("quote"))
            segs[-1].content.append(line)
            i += 1
            continue
        if kind is None:
            if segs[-1].kind == "quote":  # text after a '>' block is the author's again
                segs.append(Segment("own"))
            segs[-1].content.append(line)
            i += 1
            continue
        seg = Segment(kind, marker=[line])
        i += 1
        if kind == "forward" and not line.rstrip().endswith("---") and i < n and lines[i].rstrip().endswith("---"):
            seg.marker.append(lines[i])  # the marker wrapped onto a second line
            i += 1
        if kind == "lotus" and not _FROM_HDR.match(line):
            seg.marker.append(lines[i])  # the date line under the author's name
            i += 1
        # header block: blank lines, then From/Sent/To/Cc/Subject lines and wrapped recipient lists
        j = i
        while j < n and not lines[j].strip() and j - i < 4:
            j += 1
        in_list = False
        header: list[str] = []
        while j < n:
            h = lines[j]
            if _HDR.match(h):
                header.append(h)
                in_list = bool(_LIST_HDR.match(h))
                j += 1
                continue
            if in_list and h.strip() and not _LOTUS_DATE.match(h) and not _starts_segment(lines, j):
                header.append(h)
                j += 1
                continue
            # Lotus puts blank and date lines between its header lines
            k = j
            while k < n and k - j < 6 and (not lines[k].strip() or _LOTUS_DATE.match(lines[k])):
                k += 1
            if k > j and k < n and _HDR.match(lines[k]):
                header.extend(x for x in lines[j:k] if x.strip())
                j = k
                continue
            break
        if header:
            seg.header = header
            i = j
        segs.append(seg)
    return [s for s in segs if s.kind != "own" or any(x.strip() for x in s.content) or s is segs[0]]


def join_segments(segs: list[Segment]) -> str:
    return "\n".join(s.text() for s in segs if s.marker or s.header or s.content)


# ------------------------------------------------------------------------ duplicate detection
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _shingles(words: list[str]) -> set:
    if len(words) < SHINGLE:
        return {tuple(words)} if words else set()
    return set(zip(words, words[1:], words[2:], words[3:], words[4:]))  # SHINGLE == 5, built in C


class _Pool:
    """Text already present in the thread, as word shingles (plus the raw word stream for short quotes)."""

    def __init__(self) -> None:
        self.shingles: set = set()
        self.stream: list[str] = []

    def add(self, words: list[str]) -> None:
        self.shingles |= _shingles(words)
        self.stream.append(" " + " ".join(words) + " ")

    def contains(self, words: list[str]) -> bool:
        if not words:
            return True
        if len(words) < SHINGLE:
            needle = " " + " ".join(words) + " "
            return any(needle in s for s in self.stream)
        sh = _shingles(words)
        return len(sh & self.shingles) >= DUPLICATE_SHARE * len(sh)


# --------------------------------------------------------------------------- header collapsing
def shorten_names(names: list[str], keep: int) -> list[str]:
    if len(names) <= keep:
        return list(names)
    return list(names[:keep]) + [f"(+{len(names) - keep} more)"]


def _collapse_header(seg: Segment, keep: int) -> list[str]:
    fields: dict[str, str] = {}
    key = None
    for h in seg.header:
        m = _HDR.match(h)
        if m:
            key = m.group(1).capitalize()
            fields[key] = h[m.end():].strip()
        elif key:
            fields[key] = (fields[key] + " " + h.strip()).strip()
    label = {"original": "Original message", "forward": "Forwarded message", "wrote": "Quoted",
             "lotus": "Earlier message", "quote": "Quoted"}.get(seg.kind, "Quoted")
    if seg.kind == "lotus" and not _FROM_HDR.match(seg.marker[0]):
        fields.setdefault("From", seg.marker[0].strip())
        if len(seg.marker) > 1:
            fields.setdefault("Sent", seg.marker[1].strip())
    if seg.kind == "forward":
        m = re.search(r"Forwarded by (.+?) on (.+?)\s*-*$", " ".join(x.strip() for x in seg.marker))
        if m:
            fields.setdefault("Forwarded by", f"{m.group(1)} ({m.group(2).strip()})")
    parts = []
    for k in ("Forwarded by", "From", "Sent", "Date", "To", "Cc", "Subject"):
        v = fields.get(k, "").strip()
        if not v:
            continue
        if k in ("To", "Cc"):
            v = "; ".join(shorten_names([x.strip() for x in re.split(r";|,(?=\s*\S+/)", v) if x.strip()], keep))
        parts.append(f"{k}: {v}")
    if seg.kind == "wrote":
        return [seg.marker[0].strip()]
    return [f"[{label}] " + " | ".join(parts)] if parts else [f"[{label}]"]


# --------------------------------------------------------------------------------- names
_ENRON_NAME = re.compile(r"^\s*([A-Za-z][A-Za-z'\-\. ]*?),\s+([A-Za-z][A-Za-z0-9'\-\. ]*?)\s*$")


def normalize_name(name: str) -> str:
    """'Theriot, Kim S. KTHERIO' / 'Murphy, Melissa Mmurphy' -> 'Kim S. Theriot' / 'Melissa Murphy'."""
    if "@" in name or "<" in name:
        return name
    m = _ENRON_NAME.match(name.strip().strip("'\""))
    if not m:
        return name
    last, given = m.group(1).strip(), m.group(2).split()
    if len(given) >= 2:
        uid = given[-1].lower().rstrip("0123456789")
        initials = {g[0].lower() for g in given[:-1]}
        surname = re.sub(r"[^a-z]", "", last.lower())
        if uid[:1] in initials and len(uid) > 2 and uid[1:4] == surname[:3]:
            given = given[:-1]  # drop the mail user id
    return " ".join(given + [last])


# ------------------------------------------------------------------------------ signatures
_MOBILE = re.compile(r"^\s*(Sent from my (BlackBerry|iPhone|iPad|Android|mobile|wireless)\b.*|"
                     r"Sent (via|using) (BlackBerry|the Samsung).*)$", re.I)
_DISCLAIMER_HITS = ("property of enron", "intended recipient", "confidential and privileged",
                    "strictly prohibited", "delete all copies", "privileged material", "may contain confidential",
                    "not intended to be an offer", "binding contract", "if you have received this",
                    "in error, please")


_DASH_LINE = re.compile(r"\s*-{5,}\s*")
_STARS_PARA = re.compile(r"\s*\*{10,}\s*")
_PARA_SPLIT_KEEP = re.compile(r"(\n\s*\n)")
_STARS_LINE = re.compile(r"\n\s*\*{10,}\s*(?=\n|$)")


def strip_signature(text: str) -> str:
    """Remove '-- ' signature blocks, mobile footers and legal disclaimer paragraphs."""
    if "Sent " in text or "\n--" in text:
        lines = text.split("\n")
        out: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("Sent") and _MOBILE.match(line):
                if out and _DASH_LINE.fullmatch(out[-1]):
                    out.pop()
                i += 1
                continue
            if line in ("-- ", "--"):
                # the block up to the next blank line, when it is signature-sized (<= 6 lines)
                k = i + 1
                while k < len(lines) and lines[k].strip() and k - i <= 7:
                    k += 1
                if k - i <= 7:
                    i = k
                    continue
            out.append(line)
            i += 1
        text = "\n".join(out)
    low = text.lower()
    if not any(h in low for h in _DISCLAIMER_HITS) and "*****" not in text:
        return text
    # legal disclaimers: whole paragraphs with at least two of the well-known phrases
    paras = _PARA_SPLIT_KEEP.split(text)
    kept = []
    for p in paras:
        low = p.lower()
        if sum(h in low for h in _DISCLAIMER_HITS) >= 2 or _STARS_PARA.fullmatch(p):
            continue
        kept.append(p)
    text = "".join(kept)
    return _STARS_LINE.sub("", text)


# ---------------------------------------------------------------------------------- stats
def new_stats() -> dict[str, Any]:
    return {"threads": 0, "emails_in": 0, "emails_out": 0, "duplicate_emails": 0, "dropped": [],
            "quoted_blocks": {"removed": 0, "kept_unique": 0},
            "steps": {s: {"chars_before": 0, "chars_after": 0, "words_before": 0, "words_after": 0,
                          "emails_changed": 0, "enabled": False} for s in STEPS}}


class _Meter:
    """Characters and whitespace words of the emails; memoized because most steps change few emails."""

    def __init__(self) -> None:
        self.memo: dict[str, tuple[int, int]] = {}

    def text(self, s: str) -> tuple[int, int]:
        got = self.memo.get(s)
        if got is None:
            got = self.memo[s] = (len(s), len(s.split()))
        return got

    def parts(self, body: str, sender: str, recipients: list[str]) -> tuple[int, int]:
        chars = words = 0
        for part in (body, sender, *recipients):
            c, w = self.text(part)
            chars += c
            words += w
        return chars, words

    def __call__(self, emails: list[Email]) -> tuple[int, int]:
        chars = words = 0
        for e in emails:
            c, w = self.parts(e.body, e.sender, e.recipients)
            chars += c
            words += w
        return chars, words


# --------------------------------------------------------------------------------- the steps
_PARA_SPLIT = re.compile(r"\n\s*\n")
_QUOTE_PREFIX = re.compile(r"(?m)^\s*>+")


def _quoted_pass(emails: list[Email], remove: bool, collapse: bool, keep: int, stats: dict
                 ) -> tuple[list[str], list[str]]:
    """Bodies after quote removal, and after quote removal + header collapsing (one segmentation)."""
    segmented = [segment_body(e.body) for e in emails]
    pool = _Pool()
    # Paragraphs already looked up: each is in the pool now (found there, or added), and the pool only
    # grows, so a repeat is a duplicate without another lookup. Nested replies quote the same
    # paragraphs over and over, so this skips most of the word splitting and shingling.
    known: set[str] = set()
    if remove:
        for segs in segmented:
            for s in segs:
                if not s.quoted:
                    pool.add(_words("\n".join(s.content)))
    removed, collapsed = [], []
    for e, segs in zip(emails, segmented):
        if not any(s.quoted for s in segs):
            removed.append(e.body)
            collapsed.append(e.body)
            continue
        kept: list[Segment] = []
        for s in segs:
            if s.quoted and remove:
                # paragraph by paragraph: a quote often mixes copies of thread emails with unique text
                paras = _PARA_SPLIT.split("\n".join(s.content))
                unique = []
                for para in paras:
                    if para in known:
                        continue
                    known.add(para)
                    words = _words(_QUOTE_PREFIX.sub(" ", para) if ">" in para else para)
                    if not pool.contains(words):
                        unique.append(para)
                        pool.add(words)
                if not unique:
                    stats["quoted_blocks"]["removed"] += 1
                    continue
                stats["quoted_blocks"]["kept_unique"] += 1
                if len(unique) < len(paras):
                    s = Segment(s.kind, s.marker, s.header, "\n\n".join(unique).split("\n"))
            kept.append(s)
        removed.append(join_segments(kept) if remove else e.body)
        if collapse:
            kept = [Segment(s.kind, marker=_collapse_header(s, keep), header=[], content=s.content)
                    if s.quoted and (s.header or s.kind in ("forward", "lotus", "original")) else s for s in kept]
        collapsed.append(join_segments(kept))
    return removed, collapsed


# The same results as sub(r"[ \t\f\v\r]+", " ") and sub(r" ?\n ?", "\n"), without matching (and
# rebuilding the string at) every single space and newline, which left alone are no-ops.
_WS_RUN = re.compile(r"[ \t\f\v\r]{2,}|[\t\f\v\r]")
_WS_NL = re.compile(r" \n ?|\n ")
_WS_BLANKS = re.compile(r"\n{3,}")


def _whitespace(body: str) -> str:
    # substring tests (memchr speed) skip the regex passes that would change nothing
    if "  " in body or "\t" in body or "\r" in body or "\f" in body or "\v" in body:
        body = _WS_RUN.sub(" ", body)
    if " \n" in body or "\n " in body:
        body = _WS_NL.sub("\n", body)
    if "\n\n\n" in body:
        body = _WS_BLANKS.sub("\n\n", body)
    return body.strip()


def clean_thread(thread: Thread, clean_cfg, stats: Optional[dict] = None) -> Thread:
    """A cleaned copy of ``thread`` (the input is not modified); ``stats`` accumulates per-step counts."""
    st = stats if stats is not None else new_stats()
    if not st:
        st.update(new_stats())
    c = clean_cfg
    emails = [copy.copy(e) for e in thread.emails]  # private copies: steps assign new field values
    st["threads"] += 1
    st["emails_in"] += len(emails)
    meter = _Meter()
    current = meter(emails)  # a step's "before" is the previous step's "after": measured once

    def run(step: str, enabled: bool, fn) -> None:
        nonlocal emails, current
        rec = st["steps"][step]
        rec["enabled"] = enabled
        rec["chars_before"] += current[0]
        rec["words_before"] += current[1]
        if enabled:
            old = [(e.body, e.sender, e.recipients) for e in emails]
            emails = fn(emails) or emails
            if len(old) == len(emails):
                chars, words = current
                for o, e in zip(old, emails):
                    new = (e.body, e.sender, e.recipients)
                    if o != new:  # only the changed emails are measured again
                        rec["emails_changed"] += 1
                        c0, w0 = meter.parts(*o)
                        c1, w1 = meter.parts(*new)
                        chars += c1 - c0
                        words += w1 - w0
                current = (chars, words)
            else:
                current = meter(emails)
        rec["chars_after"] += current[0]
        rec["words_after"] += current[1]

    def qp(es: list[Email]) -> None:
        for e in es:
            e.body = decode_qp_artifacts(e.body)

    run("decode_quoted_printable", c.decode_quoted_printable, qp)

    def dedupe(es: list[Email]) -> list[Email]:
        # the body's words (the costly part of the key) only matter for emails sharing sender and time
        heads = [(e.sender.strip().lower(), e.date) for e in es]
        shared = {h for h, n in Counter(heads).items() if n > 1}
        seen, out = set(), []
        for i, (e, head) in enumerate(zip(es, heads)):
            if head not in shared:
                out.append(e)
                continue
            key = (*head, " ".join(_words(e.body)))
            if key in seen:
                st["duplicate_emails"] += 1
                st["dropped"].append({"thread_id": thread.thread_id, "index": i,
                                      "date": e.date.isoformat(sep=" ") if e.date else None, "sender": e.sender})
                continue
            seen.add(key)
            out.append(e)
        return out

    run("drop_duplicate_emails", c.drop_duplicate_emails, dedupe)
    keep = c.max_recipients_shown
    collapsed: list[str] = []
    if c.remove_quoted_history or c.collapse_headers:
        removed, collapsed = _quoted_pass(emails, c.remove_quoted_history, c.collapse_headers, keep, st)
    else:
        removed = [e.body for e in emails]

    def set_bodies(bodies: list[str]):
        def fn(es: list[Email]) -> None:
            for e, b in zip(es, bodies):
                e.body = b
        return fn

    run("remove_quoted_history", c.remove_quoted_history, set_bodies(removed))

    def collapse(es: list[Email]) -> None:
        set_bodies(collapsed)(es)
        for e in es:
            e.recipients = shorten_names(e.recipients, keep)
            e.cc = shorten_names(e.cc, keep)

    run("collapse_headers", c.collapse_headers, collapse)

    def names(es: list[Email]) -> None:
        for e in es:
            e.sender = normalize_name(e.sender)
            e.recipients = [normalize_name(r) for r in e.recipients]
            e.cc = [normalize_name(r) for r in e.cc]

    run("normalize_names", c.normalize_names, names)

    def signatures(es: list[Email]) -> None:
        for e in es:
            e.body = strip_signature(e.body)

    run("strip_signatures", c.strip_signatures, signatures)

    def whitespace(es: list[Email]) -> None:
        for e in es:
            e.body = _whitespace(e.body)

    run("normalize_whitespace", c.normalize_whitespace, whitespace)
    st["emails_out"] += len(emails)
    return Thread(thread_id=thread.thread_id, subject=thread.subject, emails=emails, summary=thread.summary)


def clean_threads(threads: list[Thread], clean_cfg) -> tuple[list[Thread], dict[str, Any]]:
    stats = new_stats()
    return [clean_thread(t, clean_cfg, stats) for t in threads], stats


def merge_stats(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Add the counts of ``other`` to ``into`` (lists are appended, so merge in thread order)."""
    for key, value in other.items():
        if isinstance(value, bool):
            into[key] = into.get(key, False) or value
        elif isinstance(value, dict):
            merge_stats(into.setdefault(key, {}), value)
        elif isinstance(value, list):
            into.setdefault(key, []).extend(value)
        else:
            into[key] = into.get(key, 0) + value
    return into
