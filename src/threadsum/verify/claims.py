"""Claims of a summary and whether the thread supports each: ``check(thread, summary)``.

A claim is a span of the summary with a kind:

- person: a name (capitalised run that is a known given name or matches a participant);
  supported when someone in From/To/Cc, quoted headers, sign-offs, addresses or bodies can be
  that person (Enron "Theriot, Kim S.", first name only, nicknames, case and diacritics ignored);
- organisation: any other capitalised name; supported when its words occur in the thread
  (headers, bodies, e-mail domains), as written or with plurals, possessives, the abbreviations of
  ``names.ABBREVIATIONS`` and case evened out ("Watch Lists" = "Watch List", "Corp" =
  "Corporation"), and with or without a legal form ("Dynegy Inc." = "Dynegy");
- money, number, percent, date, time, weekday: normalised values ($45 = 45 dollars,
  1:30 p.m. = 13:30, May 5th = May 5); supported by the same value in an email's text, or
  (dates, times, weekdays) by an email's date unless the summary uses it as a deadline or a
  future or recurring time ("by Friday", "next Tuesday", "will be wired on Thursday");
- action: "X asks/says/forwards/confirms/agrees/... " (a verb that needs authorship) is
  supported only if X wrote an email or is the named author of quoted text (a quoted From:,
  a Lotus "Name / date" stamp, "On ..., X wrote:", a sign-off); "X forwards" needs an email of
  X's titled FW:/Fwd: or a "Forwarded by X" line; "a note from Z" needs Z as an author. When the
  rest of the sentence matches one sentence of the thread closely (``MATCH_SHARE`` of its content
  words), that sentence must be X's (a request for "asks", a yes for "agrees", a refusal for
  "declines"); "X asks Y" also needs Y in the thread and, when X's message opens with a
  greeting, Y as its addressee.

What this check cannot catch:

- paraphrase: a summary sentence that shares few words with the thread is checked for authorship
  only, so an action credited to another person who also wrote in the thread passes (on the real
  sample about half of such swaps go unflagged, bench/results_verify.md); a wrong verb, a negation,
  a wrong reason or decision in words of its own are not judged at all;
- claims made with pronouns ("He agrees", "They confirm") and passive voice ("Suzanne is asked");
- spelled-out counts ("four messages", "two names"), month names without a day, relative dates
  ("tomorrow", "next week"), parts of the day ("afternoon");
- a word that is both a company and an ordinary word counts as supported wherever the word occurs
  (case is ignored), and a name found in an e-mail address counts as support;
- an organisation name that differs from the thread's only by a plural or a legal form passes
  ("Dynegys", "Mirant LLC"); a one-word name read as a person takes no plural (surnames such as
  Edwards look like plurals), and a plural whose singular is a given name is not made singular;
- a capitalised word that starts a sentence and is neither a known given name nor followed by a
  verb of communication is not checked; whether an unknown capitalised name is a person or an
  organisation is a guess (the kind label may be wrong, the flag is not);
- anything the thread never states in words (tone, intent, attachments). English only; no model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import regex

from threadsum.data.types import Thread
from threadsum.verify.evidence import (
    ThreadIndex,
    Unit,
    content_words,
    index_thread,
    stem,
)
from threadsum.verify.names import (
    ABBREVIATIONS,
    LEGAL_FORMS,
    Name,
    fold,
    is_known_first_name,
    name_key,
    parse_name,
    same_person,
    word_key,
)
from threadsum.verify.values import MONTHS, WEEKDAYS, Value, find_values, supports

KINDS = ("person", "organisation", "money", "number", "percent", "date", "time", "weekday", "action")
"""Every claim kind, in report order."""


@dataclass
class Claim:
    """One checkable span of a summary. ``start``/``end`` are character offsets into the summary."""

    text: str
    kind: str
    supported: bool
    evidence: Optional[dict[str, Any]]
    """{"email": index into thread.emails (0-based), "line": the supporting line} or None."""
    start: int
    end: int
    reason: Optional[str] = None
    """Why the claim is not supported (None when it is)."""
    attribution: bool = False
    """True for an action claim whose person exists but did not write what the summary says."""

    def to_dict(self) -> dict[str, Any]:
        """{"text", "kind", "supported", "evidence", "start", "end", "reason"} (JSON-ready)."""
        return {"text": self.text, "kind": self.kind, "supported": self.supported, "evidence": self.evidence,
                "start": self.start, "end": self.end, "reason": self.reason}


# ------------------------------------------------------------------------------ verb classes
def _forms(*stems: str) -> set[str]:
    out = set()
    for s in stems:
        base, _, irregular = s.partition("|")
        out.add(base)
        out.update(irregular.split(",") if irregular else [])
        if base.endswith("y") and base[-2] not in "aeiou":
            out.update({base[:-1] + "ies", base[:-1] + "ied"})
        elif base.endswith("e"):
            out.update({base + "s", base + "d"})
        elif base.endswith(("s", "sh", "ch", "x")):
            out.update({base + "es", base + "ed"})
        else:
            out.update({base + "s", base + "ed"})
    return out


REQUEST_VERBS = _forms("ask", "request", "urge", "remind", "invite")
AGREE_VERBS = _forms("agree", "accept", "approve")
DECLINE_VERBS = _forms("decline", "refuse", "reject")
FORWARD_VERBS = _forms("forward")
AUTHOR_VERBS = REQUEST_VERBS | AGREE_VERBS | DECLINE_VERBS | FORWARD_VERBS | _forms(
    "say|says,said", "tell|tells,told", "confirm", "send|sends,sent", "reply", "respond", "write|writes,wrote", "inform", "suggest",
    "propose", "mention", "note", "explain", "apologize", "apologise", "thank", "announce", "clarify", "express",
    "list", "share", "provide", "update", "recommend", "warn", "notify", "email", "e-mail", "answer", "promise",
    "offer", "insist", "report", "question", "comment", "advise", "acknowledge", "complain", "indicate", "state",
    "reiterate", "emphasize", "stress", "point", "assure", "argue", "circulate", "attach", "object", "approve")
_ADVERBS = r"(?:also|then|later|quickly|again|initially|further|first|finally|subsequently|immediately|politely|" \
           r"jokingly|briefly|kindly|simply|promptly|eventually|still|now)"
_REQUEST_LIKE = re.compile(r"\?|\b(please|pls|could you|can you|would you|will you|need you|let me know|asap|"
                           r"can we|could we|would like|want you|i need|we need)\b", re.I)
_AFFIRMATIVE = re.compile(r"\b(sure|yes|yep|ok|okay|agree|agreed|will do|i will|i'll|we will|sounds good|fine|"
                          r"no problem|happy to|glad to|can do|of course|absolutely|confirmed|approved?)\b", re.I)
_NEGATIVE = re.compile(r"\b(not|can't|cannot|won't|unable|no|don't|decline|sorry|unfortunately)\b|n't\b", re.I)
_FUTURE = re.compile(r"\b(will|would|shall|going to|scheduled|set for|planned|plans?|postponed|moved|due|"
                     r"deadline|every|each|next|until|till|before|by|from|through|this coming|following)\b", re.I)
# Content attribution thresholds, set on the synthetic and real references (bench/bench_verify.py):
MATCH_SHARE = 0.5
"""A thread sentence 'says' an action clause when it holds this share of the clause's content words..."""
MATCH_WORDS = 2
"""... and at least this many of them."""
OWN_SHARE = 0.5
"""The claimed author passes when one of their sentences scores at least this share of the best one."""
_GREETING = re.compile(r"^\s*(?:hi|hello|dear|hey)?\s*([A-Z][\w'’-]+)\s*(?:[,:!-]|$)")

# ------------------------------------------------------------------------ capitalised names
_ORG_ABBREV = "|".join(sorted((a.title() for a in ABBREVIATIONS), key=len, reverse=True))  # 'Dept.', 'Intl.'
_ORG_WORDS = LEGAL_FORMS | {word_key(w) for w in ABBREVIATIONS.values()}
"""Keys that mark a name as an organisation's ('company', 'department', 'service')."""
_CAP = (rf"(?:\p{{Lu}}\.|(?:St|Mr|Mrs|Ms|Dr|Jr|Sr|{_ORG_ABBREV})\.|"
        r"\p{Lu}[\p{L}\p{M}\p{N}'’&-]*)")
_RUN = regex.compile(rf"(?<![\p{{L}}\p{{N}}@.])({_CAP}(?:[ \t]+{_CAP})*)")
_SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+[\"')\]]*|$)")
_ABBREV_END = re.compile(rf"\b(?:St|Mr|Mrs|Ms|Dr|Jr|Sr|{_ORG_ABBREV}|vs|etc|p\.m|a\.m|[A-Z])\.$")
_TITLES = {"mr", "mrs", "ms", "dr", "prof", "sir"}
_START_WORDS = set("""
the a an this that these those he she they it we i you his her their its our my your in on at for after before
also however then finally both all some each everyone there here when while if as but and so meanwhile
additionally overall later first second third lastly next no yes please thanks thank although since because
another other one two three four five several many most none nobody someone anyone what who which how why
during despite according given once until unless upon with without by from of to into over under about
subject re fw fwd attached dear hi hello regarding today tomorrow yesterday tonight everybody
""".split())
GENERIC_ACRONYMS = {
    "AM", "PM", "FYI", "ASAP", "RSVP", "OK", "TBD", "EOD", "ETA", "FAQ", "CEO", "CFO", "COO", "CTO", "VP", "HR",
    "IT", "PS", "CC", "BCC", "FW", "FWD", "RE", "ID", "PDF", "URL", "USA", "US", "UK", "EU", "TV", "Q1", "Q2",
    "Q3", "Q4", "I", "A", "AND", "THE", "NB", "LOL", "OOO", "TBA", "N/A", "AKA", "ET", "CT", "PT", "EST", "CST",
    "PST", "GMT", "UTC",
}
_MONTH_OR_DAY = set(MONTHS) | set(WEEKDAYS) | {m[:3] for m in MONTHS} | {w + "s" for w in WEEKDAYS} | {"sept"}


@dataclass
class _Span:
    start: int
    end: int
    text: str
    sentence: tuple[int, int]


def _sentences(summary: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence; abbreviations (St., p.m., initials) do not end one."""
    spans: list[tuple[int, int]] = []
    start = None
    for m in _SENTENCE.finditer(summary):
        if not m.group(0).strip():
            continue
        if start is None:
            start = m.start()
        piece = summary[start:m.end()].rstrip()
        nxt = summary[m.end():].lstrip()[:1]
        if _ABBREV_END.search(piece) and nxt and not nxt.isupper():
            continue
        if _ABBREV_END.search(piece) and re.search(r"\b(?:St|Mr|Mrs|Ms|Dr|[A-Z])\.$", piece) and nxt.isupper():
            continue  # 'St. Barts', 'Kim S. Theriot'
        spans.append((start, m.end()))
        start = None
    if start is not None:
        spans.append((start, len(summary)))
    return spans


def _name_runs(summary: str, sentence: tuple[int, int], idx: ThreadIndex) -> list[_Span]:
    """Capitalised runs of one sentence that may be names, months/weekdays/acronyms/start words removed."""
    s0, s1 = sentence
    text = summary[s0:s1]
    lead = len(text) - len(text.lstrip(" \t\n\"'(["))
    out = []
    for m in _RUN.finditer(text):
        words = [(w.start(), w.group(0)) for w in regex.finditer(r"\S+", m.group(1))]
        words = [(p, w) for p, w in words if fold(w.rstrip(".")) not in _TITLES]
        # split the run at months, weekdays and generic acronyms
        groups: list[list[tuple[int, str]]] = [[]]
        for p, w in words:
            bare = re.sub(r"['’]s?$", "", w.rstrip("."))
            if fold(bare) in _MONTH_OR_DAY or bare.upper() in GENERIC_ACRONYMS and bare.isupper():
                groups.append([])
            else:
                groups[-1].append((p, w))
        for g in groups:
            if not g:
                continue
            at_start = m.start() + g[0][0] == lead
            if at_start and fold(g[0][1]) in _START_WORDS:
                g = g[1:]
                at_start = False
                if not g:
                    continue
            first_pos, last = g[0][0], g[-1]
            start = s0 + m.start() + first_pos
            end = s0 + m.start() + last[0] + len(re.sub(r"['’]s?$", "", last[1]).rstrip(".") if len(last[1]) > 2
                                                  else last[1])
            span = _Span(start, end, summary[start:end], sentence)
            if at_start and len(g) == 1 and not (is_known_first_name(g[0][1]) or _verb_after(summary, end) or (
                    (_subject_like(summary, end) or _POSSESSIVE_TAIL.search(g[0][1]))
                    and fold(g[0][1]) not in idx.lower_words)):
                continue  # 'Attendees are asked': an ordinary word that starts the sentence ('Xu's team' is a name)
            out.append(span)
    return out


_POSSESSIVE_TAIL = re.compile(r"\w['’]s?$")
_SUBJECT_VERBS = {"is", "was", "has", "had", "will", "would", "can", "could", "also", "then", "and"}


def _subject_like(summary: str, end: int) -> bool:
    """The next word reads like the verb of a person subject ('Bruce joins', 'Tana is')."""
    m = re.match(r"\s+([a-z]+)\b", summary[end:])
    if not m:
        return False
    w = m.group(1)
    return w in _SUBJECT_VERBS or w in AUTHOR_VERBS or (len(w) > 3 and w.endswith("s") and not w.endswith("ss"))


def _verb_after(summary: str, end: int) -> Optional[re.Match]:
    m = re.match(rf"\s+(?:{_ADVERBS}\s+)?([a-z-]+)\b", summary[end:])
    return m if m and m.group(1) in AUTHOR_VERBS else None


# ------------------------------------------------------------------------------- evidence
def _ev(email: int, line: str) -> dict[str, Any]:
    return {"email": email, "line": " ".join(line.split())[:300]}


def _find_line(idx: ThreadIndex, pattern: re.Pattern) -> Optional[dict[str, Any]]:
    for email, line, _ in idx.lines:
        if pattern.search(fold(line)):
            return _ev(email, line)
    return None


def _phrase_in_thread(idx: ThreadIndex, words: list[str]) -> Optional[dict[str, Any]]:
    """Evidence for a folded word sequence (last word may carry a plural/possessive tail), or joined."""
    if not words:
        return None
    seq = r"\W+".join(re.escape(w) for w in words)
    pat = re.compile(rf"(?<![^\W_]){seq}[^\W\d_]{{0,2}}(?![^\W_])")
    if pat.search(idx.folded_text):
        return _find_line(idx, pat)
    if len(words) > 1:  # 'Robert Mondavi' in RobertMondavi.com
        joined = re.compile(rf"(?<![^\W_]){''.join(map(re.escape, words))}(?![^\W_])")
        if joined.search(idx.folded_text):
            return _find_line(idx, joined)
    return None


def _person_evidence(idx: ThreadIndex, name: Name, pool: list) -> Optional[dict[str, Any]]:
    for known, email, line in pool:
        if same_person(name, known):
            return _ev(email, line)
    return None


def _is_person(idx: ThreadIndex, span: _Span, summary: str) -> bool:
    words = [w.rstrip(".") for w in span.text.split()]
    if any(w.isupper() and len(w) > 1 for w in words) or len(words) > 4:
        return False
    if any(k in _ORG_WORDS for k in name_key(span.text)):
        return False  # 'Hope Gas Company agrees', 'Enron Intl Svcs sent': a legal form or an organisation word
    if re.search(r"\b(?:(?:of|at)\s+(?:the\s+)?|the\s+|an?\s+)$", summary[span.sentence[0]:span.start], re.I):
        return False  # 'Tracy Nemec of Duke Energy', 'a trader at Reliant', 'the Hope Gas offer' 
    if is_known_first_name(words[0]):
        return True
    name = parse_name(span.text)
    if name is not None and any(same_person(name, n) for n, _, _ in idx.names):
        return True
    # an unknown capitalised word before 'asks'/'reports' is a name unless the thread uses it as a word
    return bool(_verb_after(summary, span.end)) and (len(words) > 1 or _phrase_in_thread(idx, [fold(words[0])]) is None)


def _check_person(idx: ThreadIndex, span: _Span) -> Claim:
    name = parse_name(span.text) or Name(fold(span.text), "", span.text)
    ev = _person_evidence(idx, name, idx.authors) or _person_evidence(idx, name, idx.names)
    if ev is None:
        ev = _phrase_in_thread(idx, [w for w in re.findall(r"[^\W_]+", fold(span.text)) if len(w) > 1])
    if ev is None and len(span.text.split()) > 1:
        # a name read as a person may be a company's or a document's ('Master Termination Logs agree');
        # one word is not: 'Banks' would take the thread's 'bank'
        ev = _organisation_in_thread(idx, span.text)
    if ev is not None:
        return Claim(span.text, "person", True, ev, span.start, span.end)
    similar = sorted({f"{n.first} {n.last}".strip().title() for n, _, _ in idx.names if name.last and n.last == name.last})
    hint = f"; the thread has {', '.join(similar[:3])}" if similar else ""
    return Claim(span.text, "person", False, None, span.start, span.end,
                 f"no one named {span.text} is in the thread (senders, recipients, quoted headers, sign-offs, bodies){hint}")


def _organisation_in_thread(idx: ThreadIndex, text: str) -> Optional[dict[str, Any]]:
    """Evidence for an organisation name: as written, else by ``name_key`` (plurals, possessives,
    abbreviations evened out), else without its trailing legal forms ('Dynegy Inc.' -> 'Dynegy')."""
    ev = _phrase_in_thread(idx, re.findall(r"[^\W_]+", fold(text)))
    if ev is not None:
        return ev
    keys = name_key(text)
    while keys:
        found = idx.line_of_name(keys)
        if found is not None:
            return _ev(*found)
        if len(keys) < 2 or keys[-1] not in LEGAL_FORMS:
            return None
        keys = keys[:-1]
    return None


def _check_organisation(idx: ThreadIndex, span: _Span) -> Claim:
    ev = _organisation_in_thread(idx, span.text)
    name = parse_name(span.text) if ev is None and span.text.isupper() else None
    if name is not None and name.first and name.last:  # 'LAURA KAMINSKI' is the thread's 'Kaminski, Laura'
        ev = _person_evidence(idx, name, idx.authors) or _person_evidence(idx, name, idx.names)
    if ev is not None:
        return Claim(span.text, "organisation", True, ev, span.start, span.end)
    return Claim(span.text, "organisation", False, None, span.start, span.end,
                 f"'{span.text}' appears nowhere in the thread (headers, bodies, e-mail domains)")


# ---------------------------------------------------------------------------------- values
_KIND_WORDS = {"money": "amount", "number": "number", "percent": "percentage", "date": "date", "time": "time",
               "weekday": "weekday"}


def _email_date_allowed(summary: str, value: Value, sentence: tuple[int, int]) -> bool:
    """An email's date supports a weekday/date/time only where the summary tells when something was sent."""
    before = summary[sentence[0]:value.start]
    if _FUTURE.search(value.context) or re.search(r"\b(will|would|shall|going to|scheduled|set for|plans?)\b",
                                                   summary[sentence[0]:sentence[1]], re.I):
        return False
    # 'on Tuesday', 'at 11:23', 'on Tuesday, January 29', or the sentence's opening words
    return bool(re.search(r"\b(on|at)\s*$|\bon\s+\w+day,?\s*$", before, re.I)) or not before.strip()


def _check_value(idx: ThreadIndex, summary: str, value: Value, sentence: tuple[int, int]) -> Claim:
    for v, email, line in idx.content_values:
        if supports(value, v):
            return Claim(value.text, value.kind, True, _ev(email, line), value.start, value.end)
    by_date = value.kind == "number" or (value.kind in ("date", "time", "weekday")
                                         and _email_date_allowed(summary, value, sentence))
    if by_date:
        for v, email, line in idx.date_values:
            if supports(value, v):
                return Claim(value.text, value.kind, True, _ev(email, line), value.start, value.end)
    seen = sorted({" ".join(v.text.split()) for v, _, _ in idx.content_values if v.kind == value.kind})[:5]
    hint = f"; the thread mentions {', '.join(seen)}" if seen else ""
    where = "any email's text or date" if by_date and value.kind != "number" else "any email's text"
    return Claim(value.text, value.kind, False, None, value.start, value.end,
                 f"this {_KIND_WORDS[value.kind]} is not in {where}{hint}")


# --------------------------------------------------------------------------------- actions
@dataclass
class _Action:
    subjects: list[_Span]
    verb: str
    obj: Optional[_Span]
    start: int
    end: int
    clause: str
    """The words after the verb up to the end of the sentence: what X is said to have said or done."""


def _actions(summary: str, runs: list[_Span], persons: set[int]) -> list[_Action]:
    """'X verb ...', 'X and Y verb ...' and '... note from X ...' patterns over person runs."""
    out = []
    by_start = {r.start: r for r in runs}
    second: set[int] = set()  # 'Sara' in 'Carol and Sara express': already part of Carol's claim
    for r in runs:
        if r.start not in persons or r.start in second:
            continue
        subjects, end = [r], r.end
        m_and = re.match(r"(?:['’]s)?\s+and\s+", summary[end:])
        if m_and and (end + m_and.end()) in by_start and (end + m_and.end()) in persons:
            other = by_start[end + m_and.end()]
            subjects, end = [r, other], other.end
            second.add(other.start)
        m = _verb_after(summary, end)
        if not m:
            m_from = re.search(r"\b(?:note|email|e-mail|message|letter|memo|reply|response|request)\s+from\s+$",
                               summary[r.sentence[0]:r.start])
            if m_from:
                out.append(_Action([r], "from", None, r.start, r.sentence[1], summary[r.end:r.sentence[1]]))
            continue
        verb_end = end + m.end()
        obj = None
        m_obj = re.match(r"\s+", summary[verb_end:])
        if m_obj and (verb_end + m_obj.end()) in by_start and (verb_end + m_obj.end()) in persons:
            obj = by_start[verb_end + m_obj.end()]
        rest_from = obj.end if obj else verb_end
        out.append(_Action(subjects, m.group(1), obj, r.start, r.sentence[1],
                           summary[rest_from:r.sentence[1]]))
    for a in out:  # end the claim's span at the sentence's last word, not its period
        while a.end > a.start and summary[a.end - 1] in " .!?\n\"')":
            a.end -= 1
    return out


def _forward_by(idx: ThreadIndex, name: Name) -> Optional[dict[str, Any]]:
    """Evidence that ``name`` forwarded something: an email of theirs titled FW:/Fwd:, or a
    'Forwarded by <name>' marker."""
    for email, line, is_header in idx.lines:
        low = fold(line)
        if is_header and re.match(r"\s*from:", low):
            continue
        m = re.search(r"forwarded by\s+(.+?)(?:/|\s+on\s+\d|\s*-{3,}|$)", low)
        if m and (n := parse_name(m.group(1))) is not None and same_person(name, n):
            return _ev(email, line)
    for email, (sender, subject) in enumerate(zip(idx.senders, idx.subjects)):
        # the email's own subject: a quoted 'Subject: FW: ...' inside a reply is someone else's forward
        if sender is not None and re.match(r"\s*(fw|fwd)\s*:", subject, re.I) and same_person(name, sender):
            return _ev(email, f"Subject: {subject}")
    return None


def _unit_class_ok(unit: Unit, verb: str) -> bool:
    if verb in REQUEST_VERBS:
        return bool(_REQUEST_LIKE.search(unit.text))
    if verb in AGREE_VERBS:  # a yes, not the question it answers ('Could you approve ...?')
        return bool(_AFFIRMATIVE.search(unit.text)) and not _REQUEST_LIKE.search(unit.text)
    if verb in DECLINE_VERBS:
        return bool(_NEGATIVE.search(unit.text))
    return True


def _by(unit: Unit, name: Name) -> Optional[bool]:
    """True/False when the unit's author is/is not ``name``; None when its author is unknown."""
    if not unit.segment.authors:
        return None
    return any(same_person(name, a) for a in unit.segment.authors)


def _addressee_ok(unit: Unit, obj: Name) -> bool:
    """The greeting of X's message names Y, or (no greeting) Y is among its recipients or named in it."""
    first = next((ln for ln in unit.segment.lines if ln.strip()), "")
    g = _GREETING.match(first)
    if g and is_known_first_name(g.group(1)):
        return same_person(obj, Name(fold(g.group(1)), "", g.group(1))) or same_person(Name(obj.first, "", ""),
                                                                                      Name(fold(g.group(1)), "", ""))
    if not unit.segment.recipients:
        return True
    return any(same_person(obj, r) for r in unit.segment.recipients) or fold(obj.first) in fold(" ".join(unit.segment.lines))


def _check_action(idx: ThreadIndex, summary: str, act: _Action, previous: str) -> Claim:
    text = summary[act.start:act.end]

    def claim(ok: bool, ev=None, reason=None, attribution=False) -> Claim:
        return Claim(text, "action", ok, ev, act.start, act.end, reason, attribution and not ok)

    evidence = None
    for subj in act.subjects:
        name = parse_name(subj.text)
        if name is None:
            continue
        ev = _person_evidence(idx, name, idx.authors)
        if ev is None:
            known = _person_evidence(idx, name, idx.names) is not None
            why = (f"{subj.text} wrote none of the emails and is not named as the author of quoted text" if known
                   else f"{subj.text} does not appear in the thread")
            return claim(False, reason=why, attribution=known)
        evidence = evidence or ev
        if act.obj is not None:
            obj = parse_name(act.obj.text)
            if obj is not None and _person_evidence(idx, obj, idx.names) is None and \
                    _phrase_in_thread(idx, re.findall(r"[^\W_]+", fold(act.obj.text))) is None:
                return claim(False, reason=f"{act.obj.text} never appears in the thread")
        if act.verb in FORWARD_VERBS:
            fwd = _forward_by(idx, name)
            if fwd is None:
                return claim(False, reason=f"no email in the thread was forwarded by {subj.text}", attribution=True)
            evidence = fwd
            continue
        if len(act.subjects) > 1:
            continue  # 'Ann and Bob agree': a joint action; each must have written, whose words is moot
        verdict = _attribute(idx, act, name, previous)
        if verdict is not None:
            ok, ev2, why = verdict
            if not ok:
                return claim(False, reason=why, attribution=True)
            evidence = ev2
    return claim(True, evidence)


def _attribute(idx: ThreadIndex, act: _Action, name: Name, previous: str
               ) -> Optional[tuple[bool, Optional[dict], Optional[str]]]:
    """Whose sentence does the claim's clause match? None when no sentence matches closely enough."""
    drop = {stem(w) for s in act.subjects + ([act.obj] if act.obj else []) for w in re.findall(r"[^\W_]+", fold(s.text))}
    words = content_words(act.clause) - drop
    if len(words) < 2 and re.search(r"\b(it|this|that|so|them)\b", act.clause, re.I):
        # 'agrees to do it': the previous sentence says what 'it' is (its names left out)
        names = {stem(fold(w)) for w in re.findall(r"\b[A-Z][\w'’-]+", previous)}
        words = content_words(previous) - drop - names
    units = [u for u in idx.units if _unit_class_ok(u, act.verb)]
    if act.verb in REQUEST_VERBS | AGREE_VERBS | DECLINE_VERBS and not any(_by(u, name) for u in units):
        kind = "asks for" if act.verb in REQUEST_VERBS else "agrees to" if act.verb in AGREE_VERBS else "declines"
        return False, None, f"nothing {name.first.title() or name.last.title()} wrote {kind} anything"
    if len(words) < 2:
        return None
    scored = [(len(words & u.words) / len(words), u) for u in units]
    best = max((s for s, _ in scored), default=0.0)
    if best < MATCH_SHARE or len(words & max(scored, key=lambda x: x[0])[1].words) < MATCH_WORDS:
        return None
    mine = [(s, u) for s, u in scored if _by(u, name) is True]
    own_best = max(mine, key=lambda x: x[0]) if mine else (0.0, None)
    if own_best[1] is not None and own_best[0] >= OWN_SHARE * best:
        if act.obj is not None:
            obj = parse_name(act.obj.text)
            if obj is not None and not _addressee_ok(own_best[1], obj):
                return False, None, f"{act.subjects[0].text}'s message is not addressed to {act.obj.text}"
        return True, _ev(own_best[1].email, own_best[1].text), None
    top = [u for s, u in scored if s >= best - 1e-9]
    if any(_by(u, name) is None for u in top):
        return None
    other = top[0].segment.authors[0]
    who = f"{other.first} {other.last}".strip().title()
    return False, _ev(top[0].email, top[0].text), f"the thread's closest sentence was written by {who}, not {act.subjects[0].text}"


# ------------------------------------------------------------------------------------ main
def check(thread: Thread, summary: str) -> list[Claim]:
    """Claims of ``summary`` checked against ``thread``: list[Claim] ordered by start offset.

    Deterministic, no model; a summary of N characters over a thread of M characters costs
    O(N + M) plus dateparser/nameparser calls (cached). Raises nothing for odd text: claims it
    cannot read are simply not made. See the module docstring for what it cannot catch.
    """
    idx = index_thread(thread)
    return check_indexed(idx, summary)


def check_indexed(idx: ThreadIndex, summary: str) -> list[Claim]:
    """``check`` with a thread index built once (``index_thread``), for many summaries of one thread."""
    claims: list[Claim] = []
    summary = summary or ""
    values = find_values(summary)
    sentences = _sentences(summary)
    previous = ""
    for sent in sentences:
        for v in values:
            if sent[0] <= v.start < sent[1]:
                claims.append(_check_value(idx, summary, v, sent))
        runs = [r for r in _name_runs(summary, sent, idx)
                if not any(v.start <= r.start < v.end for v in values)]
        persons = set()
        for r in runs:
            if _is_person(idx, r, summary):
                persons.add(r.start)
                claims.append(_check_person(idx, r))
            else:
                claims.append(_check_organisation(idx, r))
        for act in _actions(summary, runs, persons):
            claims.append(_check_action(idx, summary, act, previous))
        previous = summary[sent[0]:sent[1]]
    claims.sort(key=lambda c: (c.start, c.end))
    return claims
