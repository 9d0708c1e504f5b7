"""Cleaning: what the model sees of each email. Every step is switchable, its effect is counted and
what it removed is audited.

Steps, in order (each a key of ``CleanConfig``):

1. ``repair_lotus_punctuation`` Enron's Lotus Notes punctuation codes (``California=01,s`` ->
   ``California’s``; ``LOTUS_PUNCTUATION`` says where they come from).
2. ``decode_quoted_printable``  quoted-printable residue of the Enron export, only in bodies that are
   quoted-printable (``looks_quoted_printable``): soft line breaks ``=\\n`` (which split words:
   ``Stac=\\ney``) and ``=XX`` escapes, decoded as bytes (UTF-8, else cp1252), never into control
   characters or signs no text uses (``decode_qp_artifacts``).
3. ``drop_duplicate_emails``    exact duplicates (same sender, time and body) within a thread.
4. ``remove_quoted_history``    quoted blocks (``-----Original Message-----``, ``Forwarded by``,
   Lotus-Notes headers, ``On ... wrote:``, ``>`` lines), paragraph by paragraph: a paragraph goes only
   when every one of its words is covered by text that stays in the thread (another email's own text
   or an earlier kept quote). Quoted text found nowhere else, such as the note a forward carries, is
   kept: only its first copy survives. A paragraph of fewer than 5 words (a "Thanks", a greeting, a
   sign-off) is a duplicate only in its place, with the words of the paragraphs around it. Lines
   holding only ``>`` separate paragraphs, as blank lines do.
5. ``collapse_headers``         a kept quote's From/Sent/To/Cc/Subject block becomes one line (an
   earlier Lotus message reads ``[Earlier message from X, date]``), and recipient lists (headers and
   the email's own ``to``) show at most ``max_recipients_shown`` names.
6. ``normalize_names``          Enron names ``Theriot, Kim S. KTHERIO`` become ``Kim S. Theriot``.
7. ``strip_signatures``         whole blocks matched by a specific pattern: ``-- `` signature blocks,
   mobile footers, star rules and legal disclaimers (a paragraph that opens as one; see
   ``strip_signature_blocks``). Never text that merely sits in the same paragraph as such phrases.
8. ``normalize_whitespace``     trailing/indent spaces, runs of blank lines.

The audit (``new_audit``, ``audit_step``): every step's removals are found by diffing each email's
fields before and after it; removed words found nowhere else in the thread afterwards are "unique",
and each unique word must lie in a block the step matched as a whole by a specific pattern
(disclaimer, signature, quoted header, recipient list cut, ...). ``prepare`` writes the counts and
the first examples to prepare.json and report.md.

``clean_thread`` is the one code path for training data and for inference (the Summarizer calls it
with the config saved next to the model), so what the model saw in training is what it sees later.
"""
from __future__ import annotations

import copy
import html
import re
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any, Optional

from threadsum.data.charset import decode_bytes
from threadsum.data.types import Email, Thread

STEPS = ("repair_lotus_punctuation", "decode_quoted_printable", "drop_duplicate_emails", "remove_quoted_history",
         "collapse_headers", "normalize_names", "strip_signatures", "normalize_whitespace")
SHINGLE = 5  # words per shingle: long enough to be specific, short enough to survive re-wrapping
# A quoted paragraph is a duplicate when this share of its shingles exists elsewhere AND every one of
# its words lies in such a shingle (``_covered``): the share alone let up to a fifth of a paragraph
# that was found nowhere else go (issue 14).
DUPLICATE_SHARE = 0.8

# ------------------------------------------------------------------ nothing to summarize
_TAG = re.compile(r"<[^<>]*>")
_WORD = re.compile(r"\w")


def has_body_text(body: str) -> bool:
    """True when ``body`` holds a word character once HTML tags and entities are taken out: the one
    rule for "this email has something to summarize", used by prepare (``empty_after_cleaning``) and
    by the Summarizer, the CLI and the service (``inference.inputs.check_has_body_text``)."""
    if not _WORD.search(body):
        return False
    return bool(_WORD.search(html.unescape(_TAG.sub(" ", body)).replace("_", " ")))



# ----------------------------------------------------------------- 0. Lotus punctuation escapes
# Enron's Lotus Notes stored text in LMBCS (Lotus Multi-Byte Character Set), where punctuation that
# cp850 lacks is a two-byte code: the group byte 0x01, then a byte below 0x80 (LMBCS's "exceptions"
# of group 1). The export wrote the 0x01 as the quoted-printable escape '=01' and the second byte as
# itself, so U+2019 (LMBCS 01 2C) reads 'California=01,s'. This is a table, not arithmetic: the
# mapping below is the punctuation subset of LMBCS group 1 (the same bytes ICU's LMBCS-1 converter
# decodes: `printf '\x01,' | uconv -f LMBCS-1` prints U+2019). Its other codes (box drawing,
# ligatures, spacing accents) are not prose and stay as they are.
LOTUS_PUNCTUATION = {
    ",": "\u2019",  # ' right single quotation mark (apostrophe): California=01,s
    "+": "\u2018",  # ' left single quotation mark
    "&": "\u201c",  # " left double quotation mark: the =01&Repurchasers=018
    "8": "\u201d",  # " right double quotation mark
    "6": "\u201e",  # ,, double low-9 quotation mark
    "7": "\u201a",  # , single low-9 quotation mark
    "(": "\u2026",  # ... horizontal ellipsis
    ")": "\u2013",  # en dash
    "*": "\u2014",  # em dash
    ".": "\u2039",  # single left-pointing angle quotation mark
    "/": "\u203a",  # single right-pointing angle quotation mark
    ";": " ",       # no-break space, read as a space (as =A0 is)
    "'": "'",
    "p": "\u2020",  # dagger
    "q": "\u2021",  # double dagger
    "v": "\u2122",  # trade mark sign
}
_LOTUS = re.compile(r"(?<!=)=01([,+&867()*./;'pqv])")
# an '=' on the line that is no Lotus code and no QP mark (soft break, =20/=09 at line end, =3D, =09):
# the line is a 'key=value' list ('rf=01,pf=01', 'sub=01,ses=02'), where '=01,' is a value and a comma
_OTHER_EQ = re.compile(r"=(?!01[,+&867()*./;'pqv]|\r?$|(?:20|09)\r?$|3D|09)", re.M)


def repair_lotus_punctuation(text: str) -> str:
    """Replace Enron's Lotus Notes punctuation codes with the characters they stand for
    (``LOTUS_PUNCTUATION``: ``California=01,s`` -> ``California’s``, ``the =01&Repurchasers=018`` ->
    ``the “Repurchasers”``, ``=01)`` -> en dash, ``=01*`` -> em dash). A code is left as it is on a
    line that holds another ``=`` that is neither such a code nor a quoted-printable mark (a
    ``key=value`` list such as ``rf=01,pf=01``), and a digit code (``=016``/``7``/``8``) before another
    digit (``id=0180``). Never raises."""
    if "=01" not in text:
        return text
    out, last = [], 0
    for m in _LOTUS.finditer(text):
        code = m.group(1)
        if code.isdigit() and text[m.end():m.end() + 1].isdigit():
            continue
        ls = text.rfind("\n", 0, m.start()) + 1
        le = text.find("\n", m.end())
        if _OTHER_EQ.search(text[ls:len(text) if le < 0 else le]):
            continue
        out.append(text[last:m.start()])
        out.append(LOTUS_PUNCTUATION[code])
        last = m.end()
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


# ------------------------------------------------------------------------------ 1. QP artifacts
_QP_SOFT = re.compile(r"(?<!=)=\r?\n")  # '==\n' is a rule of '=' signs, not a soft break
_QP_RUN = re.compile(r"(?:=[0-9A-F]{2})+")
_QP_TOKEN = re.compile(r"[^\W_]*(?:=(?:[0-9A-F]{2}|\r?\n)[^\W_]*)+")  # a word holding escapes (for the audit)
# What proves a body is quoted-printable when no header says so: a soft line break, an escaped '='
# (=3D), an escaped space or tab closing a line, an escaped tab before a word or another escape
# (Enron's column layouts: 'County=09EPMI', 'L.P.=09=09'), or escapes that together form a UTF-8
# multi-byte character (=C3=A9). A lone '=98' or '=1882' (a URL's '?partnerID=989&mailID=1882', a
# 'key=value' list, 'x=20') proves nothing and stays text.
_QP_SIGNATURE = re.compile(r"(?<!=)=\r?\n|=3D|=(?:20|09)\r?$|=09(?=[^\W\d_]|=[0-9A-F]{2})|"
                           r"=[CD][0-9A-F]=[89AB][0-9A-F]|=E[0-9A-F](?:=[89AB][0-9A-F]){2}|"
                           r"=F[0-4](?:=[89AB][0-9A-F]){3}", re.M)
_URL = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)[^\s<>\"']+", re.I)
# cp1252 punctuation and signs that a single escaped 8-bit byte may stand for (letters always may)
_QP_SIGNS = set("\u2018\u2019\u201a\u201c\u201d\u201e\u2013\u2014\u2026\u2022\u20ac\u2122\u00a3\u00a9\u00ae"
                "\u00b0\u00b1\u00b2\u00b3\u00b5\u00b7\u00bc\u00bd\u00be\u00a7\u00a2\u00a5\u00ab\u00bb\u00a1\u00bf"
                "\u00d7\u00f7\u00a0")


def _utf8_len(b: int) -> int:
    return 2 if 0xC2 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF4 else 0


def _qp_pieces(data: bytes) -> list[tuple[bytes, Optional[str]]]:
    """The bytes of one run of escapes as pieces: (bytes, text), text None where decoding would
    produce a control character or a sign no text uses (the escape is then left as it was)."""
    out: list[tuple[bytes, Optional[str]]] = []
    i = 0
    while i < len(data):
        b = data[i]
        n = _utf8_len(b)
        if n and i + n <= len(data):
            try:
                out.append((data[i:i + n], data[i:i + n].decode("utf-8")))
                i += n
                continue
            except UnicodeDecodeError:
                pass
        one = data[i:i + 1]
        if b == 0x0D and data[i + 1:i + 2] == b"\n":
            out.append((data[i:i + 2], "\n"))
            i += 2
            continue
        if b < 0x80:
            out.append((one, chr(b) if b in (0x09, 0x0A) or b >= 0x20 else None))
        else:
            ch, _ = decode_bytes(one, None, detect=False)  # cp1252, Latin-1 for its five holes
            out.append((one, ch if ch.isalpha() or ch in _QP_SIGNS else None))
        i += 1
    return out


def _qp_run_text(text: str, m: re.Match, urls: list[tuple[int, int]]) -> str:
    run = m.group(0)
    start, end = m.span()
    nxt = text[end:end + 1]
    prev = text[start - 1:start]
    line_end = nxt in ("\n", "\r")
    if any(a <= start < b for a, b in urls):  # in a URL only '=3D' and a space closing the line are QP:
        tail = " " if line_end and run.endswith("=20") else ""  # '?id=989' is the URL's own text
        return (run[:-3] if tail else run).replace("=3D", "=") + tail
    # a run of decimal escapes glued to a number or closing a 'key=value' is that number ('x=20', 'id=0912')
    decimal = run.replace("=", "").isdigit()
    if decimal and not line_end and (nxt.isdigit() or (len(run) == 3 and prev.isalnum()
                                                      and not (nxt.isalpha() or nxt == "="))):
        return run
    parts = []
    for raw, ch in _qp_pieces(bytes.fromhex(run.replace("=", ""))):
        parts.append("".join(f"={x:02X}" for x in raw) if ch is None else ch)
    return "".join(parts).replace("\xa0", " ")  # =A0 (no-break space) reads as a space, as it always did here


def looks_quoted_printable(text: str) -> bool:
    """True when ``text`` shows quoted-printable's signature (``_QP_SIGNATURE``): a soft line break,
    ``=3D``, ``=20``/``=09`` closing a line, ``=09`` before a word, or escapes forming a UTF-8
    multi-byte character. Lone escapes such as ``partnerID=989`` or ``x=20`` are not a signature."""
    return "=" in text and bool(_QP_SIGNATURE.search(text))


def decode_qp_artifacts(text: str, declared: bool = False) -> str:
    """Decode the quoted-printable residue of a body that is quoted-printable.

    A body is decoded when ``declared`` (its part says ``Content-Transfer-Encoding:
    quoted-printable``) or when it shows QP's signature (``looks_quoted_printable``); any other body
    is returned unchanged. Then soft line breaks go (``Stac=\\ney`` -> ``Stacey``) and each run of
    escapes is decoded as bytes (a UTF-8 sequence as one character, else cp1252: ``Gr=C3=BC=C3=9Fe``
    -> ``Grüße``, ``Caf=E9`` -> ``Café``), except what would invent text: an escape whose byte is a
    control character other than tab and newline (``=01``, ``=18``) or a sign no prose uses
    (``=98`` -> ``˜``), a decimal escape glued to a number or closing a ``key=value`` (``x=20``,
    ``mailID=1882``), and any escape but ``=3D`` inside a URL. Those stay as they were. Never raises.
    """
    if not (declared or looks_quoted_printable(text)):
        return text
    text = _QP_SOFT.sub("", text)
    if "=" not in text:
        return text
    urls = [m.span() for m in _URL.finditer(text)] if "://" in text or "www." in text else []
    return _QP_RUN.sub(lambda m: _qp_run_text(text, m, urls), text)


# ------------------------------------------------------------------------ body segmentation
_ORIG = re.compile(r"^\s*-{2,}\s*Original Message\s*-{2,}\s*$", re.I)
_FWD = re.compile(r"^\s*-{2,}.*\bForwarded by\b", re.I)
_WROTE = re.compile(r"^\s*On\b.{0,200}\bwrote:\s*$", re.I)
_HDR = re.compile(r"^\s*(From|Sent|To|Cc|Bcc|Subject|Date)\s*:", re.I)
_FROM_HDR = re.compile(r"^\s*From:\s*\S", re.I)
_LOTUS_DATE = re.compile(r"^\s*\d{1,2}/\d{1,2}/\d{2,4}\s+\d{1,2}:\d{2}(:\d{2})?\s*[AP]M\b", re.I)
_TO_LINE = re.compile(r"^\s*To:", re.I)
_AMPM_LINE = re.compile(r"^\s*[AP]M\s*$")
_SENT_BY = re.compile(r"^\s*Sent by:\s*(.*?)\s*$", re.I)  # Lotus: the delegate who sent for the author
_SENT_BY_LINE = re.compile(r"(?mi)^\s*Sent by:")


@dataclass
class Segment:
    """One part of an email body: the sender's own text or a quoted/forwarded block.

    ``kind`` is own, original, forward, wrote, lotus or quote (">" lines); ``marker`` holds the lines
    that introduced the block, ``header`` its From/Sent/To lines, ``content`` the rest.
    """
    kind: str  # own | original | forward | wrote | lotus | quote (">" lines)
    marker: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)

    @property
    def quoted(self) -> bool:
        """True for every kind but ``own`` (text the sender quoted or forwarded)."""
        return self.kind != "own"

    def text(self) -> str:
        """The segment's lines (marker, header, content) joined with newlines."""
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
    if not _CANDIDATE.search(line) and "/" not in nxt[:12] and "sent by:" not in nxt[:12].lower():
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
    if (line.strip() and not _HDR.match(line) and not _SENT_BY.match(line) and _SENT_BY.match(nxt)
            and i + 2 < len(lines) and _LOTUS_DATE.match(lines[i + 2])):
        if any(_TO_LINE.match(w) for w in lines[i + 3:i + 9]):
            return "lotus"  # author, 'Sent by: delegate', date
    if _SENT_BY.match(line) and i + 1 < len(lines) and _LOTUS_DATE.match(lines[i + 1]):
        if any(_TO_LINE.match(w) for w in lines[i + 2:i + 8]):
            return "lotus"  # 'Sent by: X' over the date, without the author's line
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
    if "Sent by:" in body or "sent by:" in body.lower():
        hits |= {k - 1 for k in _hit_lines(body, _SENT_BY_LINE) if k > 0}
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
            if not _SENT_BY.match(line) and _SENT_BY.match(lines[i]):
                seg.marker.append(lines[i])  # 'Sent by: delegate' under the author's name
                i += 1
            seg.marker.append(lines[i])  # the date line under the author's name
            i += 1
        elif kind == "lotus" and i < n and _AMPM_LINE.match(lines[i]):
            seg.marker.append(lines[i])  # 'From: X on 04/27/2001 04:04' wrapped before its 'PM'
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
    """The text of the segments that have any lines, joined with newlines."""
    return "\n".join(s.text() for s in segs if s.marker or s.header or s.content)


# ------------------------------------------------------------------------ duplicate detection
# Words: runs of letters and digits in any script, lower-cased ('Grüße' is one word, not 'gr' + 'e');
# on ASCII text the same as [a-z0-9]+. Quote removal and the cleaning audit use this one definition.
_WORD = re.compile(r"[^\W_]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _shingles(words: list[str]) -> set:
    if len(words) < SHINGLE:
        return {tuple(words)} if words else set()
    return set(zip(words, words[1:], words[2:], words[3:], words[4:]))  # SHINGLE == 5, built in C


def _covered(words: list[str], shingles: set) -> bool:
    """Whether every word of ``words`` (>= SHINGLE of them) lies in some window found in ``shingles``,
    and at least DUPLICATE_SHARE of the windows are found."""
    windows = list(zip(words, words[1:], words[2:], words[3:], words[4:]))
    if shingles.issuperset(windows):
        return True  # the common case, a verbatim copy: one C-level test
    if len(shingles.intersection(windows)) < DUPLICATE_SHARE * len(set(windows)):
        return False
    prev = -SHINGLE  # the last window found; positions < prev + SHINGLE are covered
    for i, w in enumerate(windows):
        if w in shingles:
            if i - prev > SHINGLE:
                return False  # positions prev+SHINGLE .. i-1 lie in no window found
            prev = i
        elif i - prev >= SHINGLE:
            return False
    return prev >= len(windows) - 1


class _Pool:
    """Text already present in the thread, as word shingles (plus the raw word stream for short quotes)."""

    def __init__(self) -> None:
        self.shingles: set = set()
        self.stream: list[str] = []
        self.whole: set[str] = set()  # texts of fewer than SHINGLE words, whole

    def add(self, words: list[str]) -> None:
        self.shingles |= _shingles(words)
        self.stream.append(" " + " ".join(words) + " ")
        if len(words) < SHINGLE:
            self.whole.add(" " + " ".join(words) + " ")

    def contains(self, words: list[str]) -> bool:
        """True when every word of ``words`` is covered by text in the pool (a 5-word window of the
        pool, or for fewer than 5 words the same words in a row; see ``_covered``): removing them
        loses nothing."""
        if not words:
            return True
        if len(words) < SHINGLE:
            needle = " " + " ".join(words) + " "
            return any(needle in s for s in self.stream)
        return _covered(words, self.shingles)

    def contains_in_place(self, left: list[str], words: list[str], right: list[str]) -> bool:
        """True when every word of the short text ``words`` lies in a window of SHINGLE words of
        ``left + words + right`` that is in the pool; with no words around it, when the same words
        form a whole text already added (an identical short message)."""
        if not words:
            return True
        ctx = [*left, *words, *right]
        if len(ctx) < SHINGLE or not (left or right):
            return " " + " ".join(words) + " " in self.whole
        lo, hi = len(left), len(left) + len(words)
        found = [tuple(ctx[i:i + SHINGLE]) in self.shingles for i in range(len(ctx) - SHINGLE + 1)]
        return all(any(found[max(0, k - SHINGLE + 1):k + 1]) for k in range(lo, hi))


# --------------------------------------------------------------------------- header collapsing
def shorten_names(names: list[str], keep: int) -> list[str]:
    """The first ``keep`` names plus ``'(+N more)'`` when there are more than ``keep``; a new list."""
    if len(names) <= keep:
        return list(names)
    return list(names[:keep]) + [f"(+{len(names) - keep} more)"]


_LOTUS_FROM_ON = re.compile(r"^\s*From:\s*(?P<who>.+?)\s+on\s+(?P<when>\d{1,2}/\d{1,2}/\d{2,4}\s+\d{1,2}:\d{2}"
                            r"(?::\d{2})?\s*[AP]M)\s*$", re.I)
_FROM_VALUE = re.compile(r"^\s*From:\s*(.+?)\s*$", re.I)


def _collapse_header(seg: Segment, keep: int, cut: Optional[list[tuple[str, str]]] = None) -> list[str]:
    """A quoted block's marker and header lines as one line.

    An earlier message (Lotus Notes layout) reads ``[Earlier message from X, date] To: ... | Subject: ...``
    when author and date are known (``From: X on 04/27/2001 04:04 PM``, or a name line over a date line).
    Recipient lists keep ``keep`` names; the names left out, and the labels of empty header fields
    (``cc:``), are appended to ``cut`` as (kind, text) for the audit.
    """
    fields: dict[str, str] = {}
    key = None
    if cut is not None:  # the marker lines are rewritten ('Forwarded by X on D' -> 'Forwarded by: X (D)')
        cut.extend(("quoted header", line) for line in seg.marker)
        if len(seg.marker) > 1:  # and as a whole: a run of removed words may span its lines
            cut.append(("quoted header", "\n".join(seg.marker)))
    for h in seg.header:
        m = _HDR.match(h)
        if m:
            key = m.group(1).capitalize()
            fields[key] = h[m.end():].strip()
        elif key:
            fields[key] = (fields[key] + " " + h.strip()).strip()
    label = {"original": "Original message", "forward": "Forwarded message", "wrote": "Quoted",
             "lotus": "Earlier message", "quote": "Quoted"}.get(seg.kind, "Quoted")
    if seg.kind == "lotus":
        delegate = [m.group(1) for m in map(_SENT_BY.match, seg.marker) if m]
        lines = [x for x in seg.marker if not _SENT_BY.match(x)]
        if delegate and len(lines) == 1:  # 'Sent by: X' over the date: X is the author
            lines = [delegate[0]] + lines
        if delegate and delegate[0].strip() and delegate[0].strip() != lines[0].strip():
            fields["Sent by"] = delegate[0].strip()
        seg = Segment(seg.kind, lines, seg.header, seg.content)
        marker = " ".join(x.strip() for x in seg.marker)
        m = _LOTUS_FROM_ON.match(marker) or _FROM_VALUE.match(marker)
        if m and m.re is _LOTUS_FROM_ON:
            fields.setdefault("From", m.group("who"))
            fields.setdefault("Sent", m.group("when"))
        elif m:
            fields.setdefault("From", m.group(1))
        else:
            fields.setdefault("From", seg.marker[0].strip())
            if len(seg.marker) > 1:
                fields.setdefault("Sent", seg.marker[1].strip())
    if seg.kind == "forward":
        m = re.search(r"Forwarded by (.+?) on (.+?)\s*-*$", " ".join(x.strip() for x in seg.marker))
        if m:
            fields.setdefault("Forwarded by", f"{m.group(1)} ({m.group(2).strip()})")
    if seg.kind == "lotus" and fields.get("From", "").strip():
        when = (fields.pop("Sent", "") or fields.pop("Date", "")).strip()
        label += f" from {fields.pop('From').strip()}" + (f", {when}" if when else "")
    parts = []
    for k in ("Forwarded by", "From", "Sent by", "Sent", "Date", "To", "Cc", "Bcc", "Subject"):
        if k not in fields:
            continue
        v = fields[k].strip()
        if not v:
            if cut is not None:
                cut.append(("empty header field", k))
            continue
        if k in ("To", "Cc", "Bcc"):
            names = [x.strip() for x in re.split(r";|,(?=\s*\S+/)", v) if x.strip()]
            if cut is not None:
                if len(names) > keep:
                    cut.append(("recipient list cut", "; ".join(names[keep:])))
            v = "; ".join(shorten_names(names, keep))
        parts.append(f"{k}: {v}")
    if seg.kind == "wrote":  # 'On ... wrote:' already names author and date
        return [seg.marker[0].strip()] + ([" | ".join(parts)] if parts else [])
    return [f"[{label}] " + " | ".join(parts)] if parts else [f"[{label}]"]


# --------------------------------------------------------------------------------- names
_ENRON_NAME = re.compile(r"^\s*([A-Za-z][A-Za-z'\-\. ]*?),\s+([A-Za-z][A-Za-z0-9'\-\. ]*?)\s*$")


def normalize_name(name: str, cut: Optional[list[str]] = None) -> str:
    """'Theriot, Kim S. KTHERIO' / 'Murphy, Melissa Mmurphy' -> 'Kim S. Theriot' / 'Melissa Murphy'.

    The name in Enron form, and a dropped mail user id (``KTHERIO``), are appended to ``cut`` when given
    (for the audit)."""
    if "@" in name or "<" in name:
        return name
    m = _ENRON_NAME.match(name.strip().strip("'\""))
    if not m:
        return name
    last, given = m.group(1).strip(), m.group(2).split()
    if cut is not None:  # reordered as a whole: 'Last, Given' -> 'Given Last'
        cut.append(name)
    if len(given) >= 2:
        uid = given[-1].lower().rstrip("0123456789")
        initials = {g[0].lower() for g in given[:-1]}
        surname = re.sub(r"[^a-z]", "", last.lower())
        if uid[:1] in initials and len(uid) > 2 and uid[1:4] == surname[:3]:
            if cut is not None:
                cut.append(given[-1])
            given = given[:-1]  # drop the mail user id
    return " ".join(given + [last])


# ------------------------------------------------------------------------------ signatures
_MOBILE = re.compile(r"^\s*(Sent from my (BlackBerry|iPhone|iPad|Android|mobile|wireless)\b.*|"
                     r"Sent (via|using) (BlackBerry|the Samsung).*)$", re.I)
_DISCLAIMER_HITS = ("property of enron", "intended recipient", "confidential and privileged",
                    "strictly prohibited", "delete all copies", "privileged material", "may contain confidential",
                    "not intended to be an offer", "binding contract", "if you have received this",
                    "in error, please")


# A legal disclaimer is a whole paragraph that OPENS as one (this pattern, after quote marks, stars and
# rules) and holds at least two of the well-known phrases: text that merely mentions them, or a paragraph
# that runs on from the author's words into a disclaimer, is never removed for it.
_DISCLAIMER_OPEN = re.compile(
    r"[\s*>_=~#-]*(?:(?:notice|disclaimer|confidentiality(?: notice)?|important|legal notice)\s*[:.\-]\s*)?"
    r"(?:this (?:e-?mail|message|communication|transmission|electronic (?:mail|message))\b"
    r"|the (?:information|contents?|material)\b.{0,40}\b(?:in|of) this (?:e-?mail|message|communication|transmission)"
    r"|if you (?:are not|have received)\b|(?:privileged|confidential)\b)", re.I | re.S)
DISCLAIMER_MAX_CHARS = 2500  # the longest real disclaimers are ~1,500 characters
_DASH_LINE = re.compile(r"\s*-{5,}\s*")
_STARS_PARA = re.compile(r"[\s>]*\*{10,}[\s>*]*")
# paragraphs end at blank lines, and in a '>' quote at lines holding only '>' marks
_PARA_SPLIT_KEEP = re.compile(r"(\n(?:(?:[^\S\n]|>)*\n)+)")
_STARS_LINE = re.compile(r"\n[^\S\n]*(?:>[^\S\n]*)*\*{10,}[^\S\n]*(?=\n|$)")
_UNQUOTE = re.compile(r"(?m)^[^\S\n]*(?:>[^\S\n]?)+")


def _is_disclaimer(para: str) -> bool:
    if len(para) > DISCLAIMER_MAX_CHARS:
        return False
    text = _UNQUOTE.sub("", para) if ">" in para else para
    if not _DISCLAIMER_OPEN.match(text):
        return False
    low = " ".join(text.lower().split())  # phrases wrap across lines
    return sum(h in low for h in _DISCLAIMER_HITS) >= 2


def strip_signature_blocks(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Remove whole boilerplate blocks; returns (text, [(kind, removed block), ...]).

    Blocks, each matched as a whole by its own pattern: ``signature`` (a ``-- `` line and the lines
    under it up to a blank line, at most 6), ``mobile footer`` (a ``Sent from my BlackBerry`` line and
    the dashed rule above it), ``disclaimer`` (see ``_DISCLAIMER_OPEN``) and ``rule`` (lines of 10 or
    more stars). Nothing else is touched.
    """
    removed: list[tuple[str, str]] = []
    if "Sent " in text or "\n--" in text or text.startswith("--"):
        lines = text.split("\n")
        out: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("Sent") and _MOBILE.match(line):
                if out and _DASH_LINE.fullmatch(out[-1]):
                    out.pop()
                removed.append(("mobile footer", line))
                i += 1
                continue
            if line in ("-- ", "--"):
                # the block up to the next blank line, when it is signature-sized (<= 6 lines)
                k = i + 1
                while k < len(lines) and lines[k].strip() and k - i <= 7:
                    k += 1
                if k - i <= 7:
                    removed.append(("signature", "\n".join(lines[i:k])))
                    i = k
                    continue
            out.append(line)
            i += 1
        text = "\n".join(out)
    low = text.lower()
    if not any(h in low for h in _DISCLAIMER_HITS) and "*****" not in text:
        return text, removed
    paras = _PARA_SPLIT_KEEP.split(text)
    kept = []
    for k, p in enumerate(paras):
        if k % 2 == 0 and p:  # odd items are the separators the split kept
            if _STARS_PARA.fullmatch(p):
                removed.append(("rule", p))
                continue
            if _is_disclaimer(p):
                removed.append(("disclaimer", p))
                continue
        kept.append(p)
    text = "".join(kept)
    for m in _STARS_LINE.finditer(text):
        removed.append(("rule", m.group(0)))
    return _STARS_LINE.sub("", text), removed


def strip_signature(text: str) -> str:
    """``strip_signature_blocks`` without the list of what was removed."""
    return strip_signature_blocks(text)[0]


# ---------------------------------------------------------------------------------- stats
AUDIT_EXAMPLES = 5  # unique removals kept as examples per step (prepare.json, report.md)
AUDIT_EXAMPLE_CHARS = 300
AUDIT_WARNINGS_MAX = 1000  # unique removals outside matched blocks listed per step (each one a warning)


def new_stats() -> dict[str, Any]:
    """Empty cleaning counts. Per step: characters and words before/after, emails changed, and the
    audit (``new_audit``) of what the step removed."""
    return {"threads": 0, "emails_in": 0, "emails_out": 0, "duplicate_emails": 0, "dropped": [],
            "quoted_blocks": {"removed": 0, "kept_unique": 0},
            "steps": {s: {"chars_before": 0, "chars_after": 0, "words_before": 0, "words_after": 0,
                          "emails_changed": 0, "enabled": False, "audit": new_audit()} for s in STEPS}}


def new_audit() -> dict[str, Any]:
    """What one step removed, over all threads.

    ``removed_words``/``removed_chars``: words (``_WORD``) the step took out of an email's sender,
    recipients or body, and the characters of the text spans they came from. ``unique_*``: the part of
    that found nowhere in the thread after the step (no 5-word window of it, or for texts under 5 words
    no identical run of words, is left anywhere in the thread). ``unique_words_matched``: unique words
    inside blocks the step matched as a whole by a specific pattern (``blocks`` counts those by kind:
    disclaimer, signature, mobile footer, recipient list cut, ...); ``unique_words_unmatched`` is the
    rest, which must stay 0. ``examples``: the first unique removals, each with its thread, email
    index, field, text and the block kind that matched it (None when no pattern did);
    ``unmatched_examples``: the first of those no pattern matched; ``unmatched_removals``: every one of
    them (up to ``AUDIT_WARNINGS_MAX`` per step) as {thread_id, email, field, text}, which ``prepare``
    turns into warnings (``unique_text_removed``) and ``data.strict`` into a failure.
    """
    return {"removed_words": 0, "removed_chars": 0, "unique_words": 0, "unique_chars": 0,
            "unique_words_matched": 0, "unique_words_unmatched": 0, "blocks": {}, "examples": [],
            "unmatched_examples": [], "unmatched_removals": []}


_FIELDS = ("sender", "recipients", "cc", "body")


def _fields(e: Email) -> tuple[str, str, str, str]:
    return e.sender, "; ".join(e.recipients), "; ".join(e.cc), e.body


_PARA_GAP = re.compile(r"\n(?:(?:[^\S\n]|>)*\n)+")  # what separates paragraphs, '>'-only lines included
_BLANKISH = re.compile(r"(?:[^\S\n]|>)*")  # a line that is blank or holds only '>' marks


class _Words:
    """``_words`` memoized per text: most fields are the same string objects from one step to the next."""

    def __init__(self) -> None:
        self.memo: dict[str, list[str]] = {}

    def __call__(self, text: str) -> list[str]:
        got = self.memo.get(text)
        if got is None:
            got = self.memo[text] = _words(text)
        return got


class _After:
    """The text of a thread after a step, for the uniqueness test (built on first use)."""

    def __init__(self, emails: list[Email], words: _Words) -> None:
        self.emails = emails
        self.words = words
        self._shingles: Optional[set] = None
        self._vocab: set = set()
        self._paragraphs: Optional[set] = None

    def _build(self) -> None:
        self._shingles = set()
        for e in self.emails:
            for f in _fields(e):
                w = self.words(f)
                self._shingles.update(zip(w, w[1:], w[2:], w[3:], w[4:]))
                self._vocab.update(w)

    def has_paragraph(self, words: list[str]) -> bool:
        """True when a paragraph (or a whole field) of the thread after the step has exactly these words."""
        if self._paragraphs is None:
            self._paragraphs = set()
            for e in self.emails:
                for f in _fields(e):
                    self._paragraphs.add(tuple(self.words(f)))
                    if "\n" in f:
                        self._paragraphs.update(tuple(_words(p)) for p in _PARA_GAP.split(f))
        return tuple(words) in self._paragraphs

    def unique_mask(self, words: list[str], k1: int = 0, k2: Optional[int] = None) -> list[bool]:
        """For the removed words words[k1:k2] of a paragraph ``words``: True where a word is unique.

        A paragraph of SHINGLE or more words: a word is unique when no window of SHINGLE words of the
        paragraph holding it is left in the thread. A shorter one: a word is unique when the word is
        left nowhere in the thread. (Quote removal tests a paragraph the same way, or more strictly.)
        """
        if self._shingles is None:
            self._build()
        n = len(words)
        k2 = n if k2 is None else k2
        if n < SHINGLE:
            return [w not in self._vocab for w in words[k1:k2]]
        lo, hi = max(0, k1 - SHINGLE + 1), min(k2, n - SHINGLE + 1)  # the windows that hold a removed word
        if self._shingles.issuperset(zip(words[lo:], words[lo + 1:], words[lo + 2:], words[lo + 3:],
                                         words[lo + 4:hi + 4])):
            return [False] * (k2 - k1)  # the common case, a copy of text still in the thread: one C-level test
        hits = [tuple(words[i:i + SHINGLE]) in self._shingles for i in range(lo, hi)]
        return [not any(hits[max(lo, k - SHINGLE + 1) - lo:min(k, n - SHINGLE) + 1 - lo]) for k in range(k1, k2)]


def _word_span(text: str, k1: int, k2: int, n: int) -> tuple[int, int]:
    """Character span from the start of word k1 to the end of word k2 - 1 of ``text`` (n words); for
    all n words, the whole paragraph less its surrounding whitespace."""
    if k1 == 0 and k2 == n:  # no match object per word
        return len(text) - len(text.lstrip()), len(text.rstrip())
    start = end = 0
    for k, m in enumerate(_WORD.finditer(text)):
        if k == k1:
            start = m.start()
        if k == k2 - 1:
            end = m.end()
            break
    return start, end


def _matched_positions(words: list[str], blocks: list[list[str]]) -> set[int]:
    """Indices of ``words`` lying inside an occurrence of one of the matched blocks' word sequences."""
    joined = " " + " ".join(words) + " "
    starts = []  # character offset of each word in ``joined``
    pos = 1
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    out: set[int] = set()
    for wb in blocks:
        if not wb:
            continue
        needle = " " + " ".join(wb) + " "
        at = joined.find(needle)
        while at >= 0:
            i = bisect_left(starts, at + 1)
            out.update(range(i, i + len(wb)))
            at = joined.find(needle, at + 1)
    return out


class _FieldAudit:
    """Audit of one field of one email: line-level diff first, word-level diff inside changed lines."""

    def __init__(self, rec: dict, after: _After, blocks: list[list[str]], where: dict) -> None:
        self.rec, self.after, self.blocks, self.where = rec, after, blocks, where
        self.block_text = " | " + " | ".join(" ".join(b) for b in blocks) + " | "

    def run(self, before: str, now: str) -> None:
        b_lines, a_lines = before.split("\n"), now.split("\n")
        for tag, i1, i2, j1, j2 in SequenceMatcher(None, b_lines, a_lines, autojunk=False).get_opcodes():
            if tag in ("delete", "replace"):
                # the unchanged rest of the paragraphs at both ends comes along as context
                c1, c2 = i1, i2
                while c1 > 0 and not _BLANKISH.fullmatch(b_lines[c1 - 1]):
                    c1 -= 1
                while c2 < len(b_lines) and not _BLANKISH.fullmatch(b_lines[c2]):
                    c2 += 1
                self._chunk(b_lines, c1, i1, i2, c2, a_lines[j1:j2])

    def _chunk(self, lines: list[str], c1: int, i1: int, i2: int, c2: int, now: list[str]) -> None:
        """Removed words of the changed lines i1:i2 (lines c1:c2 with their paragraphs' context), judged
        paragraph by paragraph. Words come per line from the memo: lines repeat from step to step."""
        words_of = self.after.words
        paras: list[tuple[str, list[str]]] = []
        cur: list[str] = []
        cur_words: list[str] = []
        pos, w1, w2 = 0, 0, None
        for li in range(c1, c2):
            if li == i1:
                w1 = pos
            if li == i2:
                w2 = pos
            line = lines[li]
            if _BLANKISH.fullmatch(line):
                if cur:
                    paras.append(("\n".join(cur), cur_words))
                cur, cur_words = [], []
                continue
            lw = words_of(line)
            cur.append(line)
            cur_words.extend(lw)  # a fresh list per paragraph: the memo's lists are never changed
            pos += len(lw)
        if cur:
            paras.append(("\n".join(cur), cur_words))
        w2 = pos if w2 is None else w2
        words = [w for _, pw in paras for w in pw]
        new = [w for line in now for w in words_of(line)]
        if words[w1:w2] == new:
            return
        if new:
            ops = [(w1 + a, w1 + b) for tag, a, b, _, _ in
                   SequenceMatcher(None, words[w1:w2], new, autojunk=False).get_opcodes() if tag in ("delete", "replace")]
        else:
            ops = [(w1, w2)] if w2 > w1 else []
        first = 0
        for n, (p, pw) in enumerate(paras):
            last = first + len(pw)
            for o1, o2 in ops:  # the removed words of this paragraph
                k1, k2 = max(o1, first), min(o2, last)
                if k1 < k2:
                    ctx = self._context(lines, c1, c2, paras, n) if len(pw) < SHINGLE else ((), ())
                    self._piece(p, pw, k1 - first, k2 - first, ctx)
            first = last

    def _context(self, lines: list[str], c1: int, c2: int, paras: list, n: int) -> tuple[tuple, tuple]:
        """The last SHINGLE-1 words of the paragraph before paragraph ``n`` and the first of the one
        after it (lines outside c1:c2 are read as needed): a short paragraph ('Thanks', 'Jeremy,',
        'fyi') is judged in its place, not by whether its words occur anywhere in the thread."""
        words_of = self.after.words
        need = SHINGLE - 1
        left: list[str] = list(paras[n - 1][1][-need:]) if n > 0 else []
        if n == 0:
            i = c1 - 1
            while i >= 0 and _BLANKISH.fullmatch(lines[i]):
                i -= 1
            while i >= 0 and len(left) < need and not _BLANKISH.fullmatch(lines[i]):
                left = list(words_of(lines[i])) + left
                i -= 1
        right: list[str] = list(paras[n + 1][1][:need]) if n + 1 < len(paras) else []
        if n + 1 == len(paras):
            i = c2
            while i < len(lines) and _BLANKISH.fullmatch(lines[i]):
                i += 1
            while i < len(lines) and len(right) < need and not _BLANKISH.fullmatch(lines[i]):
                right += words_of(lines[i])
                i += 1
        return tuple(left[-need:]), tuple(right[:need])

    def _piece(self, para: str, pw: list[str], k1: int, k2: int, ctx: tuple[tuple, tuple] = ((), ())) -> None:
        rec = self.rec
        rec["removed_words"] += k2 - k1
        a, b = _word_span(para, k1, k2, len(pw))
        rec["removed_chars"] += b - a
        left, right = ctx
        if (left or right) and self.after.has_paragraph(pw):
            mask = [False] * (k2 - k1)  # the same short paragraph stands whole elsewhere in the thread
        elif left or right:  # a short paragraph with its neighbours' words around it
            mask = self.after.unique_mask([*left, *pw, *right], len(left) + k1, len(left) + k2)
        else:
            mask = self.after.unique_mask(pw, k1, k2)
        k = k1
        while k < k2:  # runs of unique words
            if not mask[k - k1]:
                k += 1
                continue
            j = k
            while j < k2 and mask[j - k1]:
                j += 1
            self._run(para, pw, k, j)
            k = j

    def _run(self, para: str, pw: list[str], k1: int, k2: int) -> None:
        """A run of unique removed words: inside a matched block, or judged apart from the blocks in it."""
        run = pw[k1:k2]
        if self.blocks and " " + " ".join(run) + " " not in self.block_text:
            inside = _matched_positions(run, self.blocks)
            if inside:  # a block is judged whole, the text next to it on its own
                k = 0
                while k < len(run):
                    j = k
                    while j < len(run) and (j in inside) == (k in inside):
                        j += 1
                    if k in inside:
                        self._count(para, pw, k1 + k, k1 + j, True)
                    else:
                        mask = self.after.unique_mask(run[k:j])
                        for x in range(k, j):  # each unique word on its own (a rare path)
                            if mask[x - k]:
                                self._count(para, pw, k1 + x, k1 + x + 1, False)
                    k = j
                return
            self._count(para, pw, k1, k2, False)
            return
        self._count(para, pw, k1, k2, bool(self.blocks))

    def _count(self, para: str, pw: list[str], k1: int, k2: int, matched: bool) -> None:
        rec = self.rec
        a, b = _word_span(para, k1, k2, len(pw))
        rec["unique_words"] += k2 - k1
        rec["unique_chars"] += b - a
        rec["unique_words_matched" if matched else "unique_words_unmatched"] += k2 - k1
        example = dict(self.where, text=para[a:b][:AUDIT_EXAMPLE_CHARS], block=self.where["block"] if matched else None)
        if len(rec["examples"]) < AUDIT_EXAMPLES:
            rec["examples"].append(example)
        if not matched and len(rec["unmatched_examples"]) < AUDIT_EXAMPLES:
            rec["unmatched_examples"].append(example)
        if not matched and len(rec["unmatched_removals"]) < AUDIT_WARNINGS_MAX:
            rec["unmatched_removals"].append({k: example[k] for k in ("thread_id", "email", "field", "text")})


def audit_step(rec: dict, thread_id: str, old: list[tuple[str, ...]], emails: list[Email],
               kept: list[int], matched: list[tuple[str, str]], words: Optional[_Words] = None) -> None:
    """Audit one step on one thread (see ``new_audit``).

    Args:
        rec: the step's audit counts (``new_audit``), updated in place.
        old: each email's fields (``_fields``) before the step, in the order before it.
        emails: the emails after the step.
        kept: for each email after the step, its index in ``old`` (dropped emails lost all their text).
        matched: (kind, text) of every block the step removed as matched boilerplate.
        words: a ``_Words`` memo shared across the steps of the thread.
    """
    words = words or _Words()
    changed = []
    now = {i: _fields(e) for i, e in zip(kept, emails)}
    for i, fields in enumerate(old):
        cur = now.get(i, ("",) * len(_FIELDS))
        changed += [(i, name, b, a) for name, b, a in zip(_FIELDS, fields, cur) if b != a]
    for kind, _ in matched:
        rec["blocks"][kind] = rec["blocks"].get(kind, 0) + 1
    if not changed:
        return
    after = _After(emails, words)
    blocks = [_words(text) for _, text in matched]
    kinds = sorted({k for k, _ in matched})
    block = "/".join(kinds) or None
    for i, name, b, a in changed:
        _FieldAudit(rec, after, blocks, {"thread_id": thread_id, "email": i, "field": name, "block": block}).run(b, a)


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
_PARA_SPLIT = re.compile(r"\n(?:(?:[^\S\n]|>)*\n)+")  # blank lines, and lines of only '>' marks in a quote
_QUOTE_PREFIX = re.compile(r"(?m)^\s*>+")


def _quoted_pass(emails: list[Email], remove: bool, collapse: bool, keep: int, stats: dict,
                 cut: Optional[list[tuple[str, str]]] = None, dropped: Optional[list[str]] = None
                 ) -> tuple[list[str], list[str]]:
    """Bodies after quote removal, and after quote removal + header collapsing (one segmentation).

    A quoted paragraph is removed only when every one of its words is covered by text that stays in
    the thread (``_Pool.contains``); recipient names cut from collapsed headers go to ``cut``, and the
    marker and header lines of quoted blocks removed whole (every paragraph a duplicate) to ``dropped``.
    """
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
                paras = [p for p in _PARA_SPLIT.split("\n".join(s.content)) if p.strip(" \t\r\f\v>")]
                unique = []
                pws = [_words(_QUOTE_PREFIX.sub(" ", p) if ">" in p else p) for p in paras]
                head = _words("\n".join(s.marker + s.header))
                for n, (para, words) in enumerate(zip(paras, pws)):
                    if len(words) < SHINGLE:
                        # a short paragraph ('Thanks', 'Jeremy,', 'fyi') is a duplicate only in its place:
                        # with the words of the paragraphs around it (the header's for the first)
                        left = (pws[n - 1] if n else head)[-(SHINGLE - 1):]
                        right = pws[n + 1][:SHINGLE - 1] if n + 1 < len(pws) else []
                        key = (tuple(left), para, tuple(right))
                        if key in known:  # found in the pool before; the pool only grows
                            continue
                        if pool.contains_in_place(left, words, right) or (
                                n == 0 and pool.contains_in_place([], words, right)):
                            known.add(key)
                        else:  # kept; a later copy is kept too unless its place is found by then
                            unique.append(para)
                        continue
                    if para in known:
                        continue
                    known.add(para)
                    if not pool.contains(words):
                        unique.append(para)
                        pool.add(words)
                if unique:  # the block as written: its short paragraphs' places, for later copies of it
                    pool.add(head + [w for ws in pws for w in ws])
                if not unique:
                    stats["quoted_blocks"]["removed"] += 1
                    if dropped is not None and (s.marker or s.header):
                        dropped.append("\n".join(s.marker + s.header))
                    continue
                stats["quoted_blocks"]["kept_unique"] += 1
                if len(unique) < len(paras):  # a blank line after it keeps it apart from the next block
                    s = Segment(s.kind, s.marker, s.header, ("\n\n".join(unique) + "\n").split("\n"))
            kept.append(s)
        removed.append(join_segments(kept) if remove else e.body)
        if collapse:
            kept = [Segment(s.kind, marker=_collapse_header(s, keep, cut), header=[], content=s.content)
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


class _Steps:
    """Runs the steps of one thread: counts each step's effect and audits what it removed."""

    def __init__(self, thread: Thread, st: dict) -> None:
        self.thread, self.st = thread, st
        self.emails = [copy.copy(e) for e in thread.emails]  # private copies: steps assign new field values
        self.meter = _Meter()
        self.current = self.meter(self.emails)  # a step's "before" is the previous step's "after": measured once
        self.matched: list[tuple[str, str]] = []  # blocks the running step removed as matched boilerplate
        self.words = _Words()

    def run(self, step: str, enabled: bool, fn) -> None:
        """Apply ``fn(emails, matched)`` (it edits the emails in place or returns a new list)."""
        rec = self.st["steps"][step]
        rec["enabled"] = enabled
        rec["chars_before"] += self.current[0]
        rec["words_before"] += self.current[1]
        if enabled:
            before = list(self.emails)
            old = [(e.body, e.sender, e.recipients) for e in before]
            old_fields = [_fields(e) for e in before]
            self.matched.clear()
            self.emails = fn(self.emails, self.matched) or self.emails
            if len(old) == len(self.emails):
                chars, words = self.current
                for o, e in zip(old, self.emails):
                    new = (e.body, e.sender, e.recipients)
                    if o != new:  # only the changed emails are measured again
                        rec["emails_changed"] += 1
                        c0, w0 = self.meter.parts(*o)
                        c1, w1 = self.meter.parts(*new)
                        chars += c1 - c0
                        words += w1 - w0
                self.current = (chars, words)
            else:
                self.current = self.meter(self.emails)
            index = {id(e): i for i, e in enumerate(before)}
            if step != "normalize_whitespace":  # it changes only whitespace: no word can go
                audit_step(rec["audit"], self.thread.thread_id, old_fields, self.emails,
                           [index[id(e)] for e in self.emails], self.matched, self.words)
        rec["chars_after"] += self.current[0]
        rec["words_after"] += self.current[1]


_LOTUS_TOKEN = re.compile(r"[^\W_]*=01[,+&867()*./;'pqv][^\W_]*")  # a word holding a Lotus code (for the audit)


def _lotus_step(es: list[Email], matched: list) -> None:
    for e in es:
        new = repair_lotus_punctuation(e.body)
        if new != e.body:  # every change is a code replaced: the words holding one are matched
            matched.extend(("Lotus punctuation code", m.group(0)) for m in _LOTUS_TOKEN.finditer(e.body))
        e.body = new


def _qp_step(es: list[Email], matched: list) -> None:
    for e in es:
        new = decode_qp_artifacts(e.body)
        if new != e.body:  # every change is an escape decoded: the words holding one are matched
            matched.extend(("quoted-printable escape", m.group(0)) for m in _QP_TOKEN.finditer(e.body))
        e.body = new


def _drop_duplicates(es: list[Email], thread_id: str, st: dict) -> list[Email]:
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
            st["dropped"].append({"thread_id": thread_id, "index": i,
                                  "date": e.date.isoformat(sep=" ") if e.date else None, "sender": e.sender})
            continue
        seen.add(key)
        out.append(e)
    return out


def _names_step(es: list[Email], matched: list) -> None:
    names: list[str] = []
    for e in es:
        e.sender = normalize_name(e.sender, names)
        e.recipients = [normalize_name(r, names) for r in e.recipients]
        e.cc = [normalize_name(r, names) for r in e.cc]
    matched.extend(("Enron name form", x) for x in names)


def _signatures_step(es: list[Email], matched: list) -> None:
    for e in es:
        e.body, blocks = strip_signature_blocks(e.body)
        matched.extend(blocks)


def _whitespace_step(es: list[Email], matched: list) -> None:
    for e in es:
        e.body = _whitespace(e.body)


def clean_thread(thread: Thread, clean_cfg, stats: Optional[dict] = None) -> Thread:
    """A cleaned copy of ``thread`` (the input is not modified); ``stats`` accumulates per-step counts
    and the audit of what each step removed (``new_audit``)."""
    st = stats if stats is not None else new_stats()
    if not st:
        st.update(new_stats())
    c = clean_cfg
    steps = _Steps(thread, st)
    st["threads"] += 1
    st["emails_in"] += len(steps.emails)
    steps.run("repair_lotus_punctuation", c.repair_lotus_punctuation, _lotus_step)
    steps.run("decode_quoted_printable", c.decode_quoted_printable, _qp_step)
    steps.run("drop_duplicate_emails", c.drop_duplicate_emails,
              lambda es, _: _drop_duplicates(es, thread.thread_id, st))
    keep = c.max_recipients_shown
    collapsed: list[str] = []
    cut: list[tuple[str, str]] = []
    dropped: list[str] = []
    if c.remove_quoted_history or c.collapse_headers:
        removed, collapsed = _quoted_pass(steps.emails, c.remove_quoted_history, c.collapse_headers, keep, st,
                                          cut, dropped)
    else:
        removed = [e.body for e in steps.emails]

    def remove_quoted(es: list[Email], matched: list) -> None:
        for e, b in zip(es, removed):
            e.body = b
        matched.extend(("quoted header", h) for h in dropped)

    steps.run("remove_quoted_history", c.remove_quoted_history, remove_quoted)

    def collapse(es: list[Email], matched: list) -> None:
        matched.extend(cut)
        for e, b in zip(es, collapsed):
            e.body = b
            matched.extend(("recipient list cut", "; ".join(x[keep:])) for x in (e.recipients, e.cc) if len(x) > keep)
            e.recipients = shorten_names(e.recipients, keep)
            e.cc = shorten_names(e.cc, keep)

    steps.run("collapse_headers", c.collapse_headers, collapse)
    steps.run("normalize_names", c.normalize_names, _names_step)
    steps.run("strip_signatures", c.strip_signatures, _signatures_step)
    steps.run("normalize_whitespace", c.normalize_whitespace, _whitespace_step)
    st["emails_out"] += len(steps.emails)
    return Thread(thread_id=thread.thread_id, subject=thread.subject, emails=steps.emails, summary=thread.summary)


W_UNIQUE_TEXT_REMOVED = "unique_text_removed"


def audit_warnings(stats: dict[str, Any], source: Any = None) -> list[dict[str, Any]]:
    """Take the unique removals outside matched blocks out of ``stats`` (``new_stats`` layout; each
    step's ``audit.unmatched_removals`` is emptied) and return them as warning records for
    warnings.jsonl: {reason ``unique_text_removed``, detail, source, line None, thread_id, step,
    email (index in the thread), field, words (the removed text)}. Never raises."""
    out = []
    for step, rec in stats.get("steps", {}).items():
        audit = rec.get("audit") or {}
        for r in audit.get("unmatched_removals", []):
            words = " ".join(r["text"].split())
            out.append({"reason": W_UNIQUE_TEXT_REMOVED, "source": str(source) if source else None, "line": None,
                        "thread_id": r["thread_id"], "step": step, "email": r["email"], "field": r["field"],
                        "words": words,
                        "detail": f"step {step} removed text found nowhere else in the thread and in no matched "
                                  f"block (email {r['email']}, {r['field']}): {words[:200]!r}; turn the step off "
                                  f"(data.clean.{step}=false) to keep it"})
        if audit.get("unmatched_removals"):
            audit["unmatched_removals"] = []
    return out


def clean_threads(threads: list[Thread], clean_cfg) -> tuple[list[Thread], dict[str, Any]]:
    """Clean every thread (see ``clean_thread``) with fresh counts.

    Args:
        threads: the parsed threads; they are not modified.
        clean_cfg: the ``data.clean`` section (``CleanConfig``).

    Returns:
        The cleaned threads, in input order, and the cleaning counts (``new_stats`` layout).
    """
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
            if key in ("examples", "unmatched_examples"):  # the audit keeps the first few
                del into[key][AUDIT_EXAMPLES:]
            elif key == "unmatched_removals":
                del into[key][AUDIT_WARNINGS_MAX:]
        else:
            into[key] = into.get(key, 0) + value
    return into
