"""What a summary left out: the facts of a thread worth carrying, ranked, and whether the summary carries each.

``coverage(thread, summary)`` is the mirror of :func:`threadsum.verify.check`: claims ask "does the
thread support what the summary says?", facts ask "does the summary say what the thread's readers
act on?". Facts come from the thread index verify already builds (:func:`index_thread`), so the
values are the same ones claims are checked against:

- money, percent, date, time, weekday, number: :func:`threadsum.verify.values.find_values` over the
  thread's sentences (:func:`_value_facts`): a number only with a unit or scale after it ("30 days",
  "2 million"; not an exhibit, item or street number); a weekday beside its date ("Friday, May 5th")
  is one fact; one value written two ways ("May 5th", "May 5, 2000") is one fact; a value after
  "by", "before", "until" or "due" is a ``deadline``, except the end of a range ("from 12:00 until
  1:30 p.m.");
- request: a sentence that asks ("please", "could you", "can you", a question; not a courtesy formula
  such as "please note", "let me know if", "if you have any questions"), with its owner (the
  sentence's author) and addressee (the greeting's name, else the first recipient);
- decision: a sentence that settles something ("we agreed", "decided", "to close the loop",
  "approved", "final"); reason: a refusal with its cause, whose words are those of the
  "because ..." clause (the refused task is the request's fact, not this one);
- attachment: a file name ("Q3_budget.xls", or the whole name of a Lotus Notes line
  "<< File: long form template.doc >>") or an "attached is/are ..." sentence.

A sentence fact restated with few words changed (``SAME_SHARE``: a daily list re-sent with a new
date, a request asked again) is one fact, repeated; a value that only appears in such restatements
is a slot of that fact (the list's date), not a fact of its own.

Each fact gets a salience score (``SALIENCE``: points by kind, in the latest email, in the first
lines of an email, repeated, on the thread's subject, asking someone to act) with the reasons.
Lines that carry nothing to summarize are skipped: phone, fax and account numbers, disclaimers,
"sent from my ...", header lines the index did not take for headers (Lotus Notes "Name@ENRON
To: ... cc: ... Sent by:", "... wrote:", any line with an e-mail address: the dates there are of
sending) and postal addresses. A fact is ``important`` at ``IMPORTANT`` points or more;
``left_out`` lists the important facts the summary does not carry.

Carried means: a value in the summary that states the same value (``values.supports``, the rule
claims are checked by: same kind and normalised key, or the same amount across money and a bare
number, "66 million" for "$66 MM"); a merged date is carried by its weekday and a dated value
with a year by the weekday it fell on ("Friday" for "May 5, 2000"); for sentence facts (request,
decision, reason, attachment sentence), ``CARRY_SHARE`` of their content words
(``evidence.content_words``) and at least ``claims.MATCH_WORDS`` of them in the summary (the
claims' rule for a thread sentence saying a summary clause); a file by its name, its stem, or
that share of its name's words.

What this cannot catch (bench/bench_coverage.py measures the result on the public sample):

- paraphrase: a request or decision retold in other words ("Carol requests confirmation of
  attendees" for "could you take a look at this list and let me know of any additions") counts as
  left out; a summary that copies half the words but changes the meaning counts as carried (the
  shared-word rule cannot tell "Kim sends a budget" from "Kim asks Jeff to send the budget");
- facts stated without a trigger word: an instruction with no "please"/question form, a decision
  without "agreed/decided/close the loop", a deadline written as "end of day" or "tomorrow"
  (relative dates are not values, see ``verify.claims``); counts without a unit word ("1,200
  contracts");
- importance beyond the cues above: a reader's goal, who is senior, what was resolved later;
  small talk that asks a question ("Do you have your new address yet?") still ranks as a request;
  what real references mostly carry (topics, who did what, names of places and deals) is not a
  fact kind here;
- attachments that are only mentioned ("see the file") without a name or "attached"; outside a
  Lotus Notes file line, a file name with spaces keeps only its last word ("budget.xls" of "Q3
  budget.xls"); a body line holding an e-mail address is skipped whole;
- the owner is the sentence's author as the thread index reads it (From:, quoted headers,
  sign-offs); an unsigned quoted note has none. English only; no model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, Optional, Union

from threadsum.data.types import Thread
from threadsum.verify.evidence import ThreadIndex, Unit, content_words, index_thread
from threadsum.verify.names import Name, fold
from threadsum.verify.claims import MATCH_SHARE, MATCH_WORDS
from threadsum.verify.values import UNITS, WEEKDAYS, Value, find_values, same_value, supports

FACT_KINDS = ("request", "deadline", "decision", "reason", "attachment", "money", "percent", "date", "time", "weekday",
              "number")
"""Every fact kind, in report order."""

SALIENCE = {"request": 1.5, "deadline": 3.0, "decision": 3.0, "reason": 3.0, "attachment": 3.0, "money": 3.0, "percent": 2.0,
            "date": 2.0, "time": 1.5, "weekday": 1.5, "number": 1.0,
            "latest": 1.5, "first_lines": 1.0, "repeated": 1.0, "addressed": 1.5, "subject": 1.0}
"""Points by kind, then per cue: in the latest email, in an email's first two sentences, each
repetition (at most two counted), asking someone to act ("please", "could you"; a bare "you" in a
question is not), sharing a content word with the thread's subject. Set by hand on the synthetic
corpus and the first five threads of the public sample; the other five are held out
(bench/bench_coverage.py measures both)."""

IMPORTANT = 3.0
"""Score from which a fact is important: left out when the summary does not carry it."""

CARRY_SHARE = MATCH_SHARE
"""Share of a sentence fact's content words the summary must hold for the fact to be carried: the claims'
``MATCH_SHARE`` (a thread sentence says a summary clause at the same share), one rule both ways."""

SAME_SHARE = 0.7
"""Share of the smaller word set two sentence facts of one kind must share to be one fact restated."""

_VALUE_KINDS = frozenset({"deadline", "money", "percent", "date", "time", "weekday", "number"})
_DEADLINE_CONTEXT = re.compile(r"\b(by|before|until|till|due|no later than|deadline)$")
_DECISION = re.compile(r"\b(we|i|they|all|everyone)\s+(have\s+)?(agreed|decided)\b|\bdecision\b|close the loop|"
                       r"\b(approved|finali[sz]ed|settled on|going forward|we will go with)\b", re.I)
# claims' request cue less "we need"/"can we" (a team's own to-do, not a request of someone)
_ASK = re.compile(r"\?|\b(please|pls|could you|can you|would you|will you|need you|let me know|asap|would like|"
                  r"want you)\b", re.I)
_REASON = re.compile(r"\b(can ?not|can't|cannot|unable|won't|will not|declined?)\b.*\bbecause\b(?P<why>.*)", re.I)
# asked to act (not merely "you" in a question: "do you know who ... is?" asks nothing of its reader)
_ADDRESSED = re.compile(r"\b(please|pls|could you|can you|would you|will you|need you|let me know|want you|would like)\b",
                        re.I)
# courtesy formulas ask nothing: 'please note', 'let me know if ...', 'if you have any questions, please ask/call'
_NOT_REQUEST = re.compile(r"\bplease\s+(note|find|see|be advised)\b|\blet me know if\b|"
                          r"\bif you have any (?:questions|comments|problems)\b|\bfeel free\b|\bdo not hesitate\b", re.I)
_EXT = r"\.(?:xlsx?|xlsm|docx?|pdf|pptx?|csv|txt|zip|msg|rtf)\b"
# a Lotus Notes attachment line '<< File: long form template.doc >>' names the whole file, spaces included
_FILE = re.compile(rf"<<\s*File:\s*(?P<name>[^<>\n]{{1,80}}?{_EXT})\s*>>|\b[\w][\w.()&-]{{0,40}}?{_EXT}", re.I)
_ATTACHED = re.compile(r"\battached\s+(?:is|are|please find|you will find|find|the)\b|\bi(?:'ve| have)? attached\b",
                       re.I)
_BOILERPLATE = re.compile(
    r"\(?\b\d{3}\)?[-. ]\d{3}[-. ]\d{4}\b|\b(phone|tel|fax|cell|mobile|pager|ext|account|acct|a/c|routing|swift|iban|"
    r"ssn|zip)\b\.?\s*[:#]?|#\s*\d|confidential|intended (only )?for|intended recipient|privileged|disclaimer|unsubscribe|virus|"
    r"sent from my|do not reply|do not forward|all rights reserved|e-?mail is|this message"
    # header lines that the index did not take for headers (Lotus Notes 'Name@ENRON To: ... cc: ... Sent by:',
    # '... wrote:'): their dates and times are when mail was sent, not facts to carry
    r"|\b(?:to|cc|bcc|from|sent|sent by|subject|date)\s*:|\S@\S|\bwrote:|"
    # postal addresses: 'address is: 958 W. Cuyler', 'Apt 1S', 'Chicago, IL 60613'
    r"\baddress(?:\s+is)?\s*:|\b(?:apt|suite|ste|p\.?\s?o\.?\s?box)\b\.?\s*#?\s*\w*\d|(?-i:\b[A-Z]{2}\s+\d{5}(?:-\d{4})?\b)",
    re.I)
_UNIT_AFTER = re.compile(rf"\s?{UNITS}\b", re.I)
_WITH_DATE = re.compile(r"^[\s,]*(?:the\s+)?$|^\s*\($")
_RANGE = re.compile(r"^\s*(?:-|–|to|until|till|through|thru)\s*$", re.I)
_MARKER_WORDS = frozenset({"please", "pls", "could", "would", "will", "know", "let", "need", "want", "like", "asap",
                           "attach", "attached", "agre", "agreed", "decid", "decided", "close", "loop", "just",
                           "soon", "possible"})  # 'as soon as possible' is the 'asap' cue spelled out
_GREETING = re.compile(r"^\s*(?:hi|hello|dear|hey)?\s*([A-Z][\w'’-]+)\s*(?:[,:!-]|$)")


@dataclass
class Fact:
    """One fact of a thread worth carrying into a summary."""

    kind: str
    text: str
    """The value as written, or the sentence (requests, decisions, attachments)."""
    email: int
    """Index into thread.emails of its first mention (0-based)."""
    line: str
    """The sentence that states it."""
    score: float = 0.0
    """Salience points (``SALIENCE``)."""
    reasons: list[str] = field(default_factory=list)
    """Why it scored: 'money', 'latest email', 'repeated 2x', 'addressed to Kim', 'boilerplate'."""
    carried: bool = False
    owner: Optional[str] = None
    """Who asked or decided (the sentence's author), when known."""
    addressee: Optional[str] = None
    """Who must act (requests), when known."""
    key: Any = None
    words: frozenset = frozenset()
    alts: tuple = ()
    """Other values that name the same fact (the weekday of a date), each carrying it."""

    @property
    def important(self) -> bool:
        """Score at or above ``IMPORTANT``."""
        return self.score >= IMPORTANT

    def to_dict(self) -> dict[str, Any]:
        """{"kind", "text", "email", "line", "score", "reasons", "carried", "important", "owner", "addressee"}."""
        return {"kind": self.kind, "text": self.text, "email": self.email, "line": " ".join(self.line.split())[:300],
                "score": round(self.score, 2), "reasons": list(self.reasons), "carried": self.carried,
                "important": self.important, "owner": self.owner, "addressee": self.addressee}


def _who(name: Optional[Name]) -> Optional[str]:
    return f"{name.first} {name.last}".strip().title() or None if name is not None else None


def _addressee(unit: Unit) -> Optional[str]:
    first = next((ln for ln in unit.segment.lines if ln.strip()), "")
    m = _GREETING.match(first)
    if m and len(first.strip()) <= 40:
        return m.group(1).title()
    return _who(unit.segment.recipients[0]) if unit.segment.recipients else None


def thread_facts(idx: ThreadIndex) -> list[Fact]:
    """Every fact of an indexed thread with its salience, carried=False; ranked, highest score first."""
    latest = max((u.email for u in idx.units), default=0)
    own = {}  # each email's own text is its first segment; later ones are quoted or forwarded copies
    for seg in idx.segments:
        own.setdefault(seg.email, id(seg))
    first_units: set[int] = set()
    seen_seg: dict[int, int] = {}
    for i, u in enumerate(idx.units):
        n = seen_seg.get(id(u.segment), 0)
        if n < 2:
            first_units.add(i)
        seen_seg[id(u.segment)] = n + 1
    topic = frozenset().union(*(content_words(t) for t in idx.subjects)) - {"fwd"}
    facts: dict[tuple, Fact] = {}
    by_value_kind: dict[str, list[tuple]] = {}  # value facts by value kind, for one value written two ways
    counts: dict[tuple, set[int]] = {}

    def add(kind: str, key: Any, text: str, i: int, u: Unit, **extra: Any) -> None:
        k = (kind, key)
        if isinstance(key, frozenset) and k not in facts:
            # a sentence fact restated with a few words changed (a daily template, a re-sent request)
            # is the same fact: the first one whose words it mostly shares
            k = next((o for o in facts if o[0] == kind and isinstance(o[1], frozenset)
                      and len(o[1] & key) >= SAME_SHARE * min(len(o[1]), len(key))), k)
        elif isinstance(key, tuple) and k not in facts and kind in _VALUE_KINDS:
            # one value written two ways ('May 5th', 'May 5, 2000'; 'by Friday', 'on Friday') is one fact,
            # a deadline where any mention is one
            k = next((o for o in by_value_kind.get(key[0], ()) if same_value(key[0], o[1][1], key[1])), k)
            if k in facts and kind == "deadline":
                facts[k].kind = "deadline"
        counts.setdefault(k, set()).add(i)
        f = facts.get(k)
        if f is None:
            f = facts[k] = Fact(kind, text, u.email, u.text, key=key, **extra)
            if kind in _VALUE_KINDS:
                by_value_kind.setdefault(key[0], []).append(k)
            f._where = set()  # type: ignore[attr-defined]
        f._where.add((i, u.email, own.get(u.email) == id(u.segment), u.text))  # type: ignore[attr-defined]

    for i, u in enumerate(idx.units):
        if _BOILERPLATE.search(u.text):
            continue  # phone/fax/account numbers, disclaimers, signatures: nothing to carry
        for v, alts, deadline in _value_facts(u.text):
            add("deadline" if deadline else v.kind, (v.kind, _hashable(v.key)), v.text, i, u,
                words=frozenset({v.kind}), alts=alts)
        words = content_words(u.text) - _MARKER_WORDS
        author = _who(u.segment.authors[0]) if u.segment.authors else None
        if _ASK.search(u.text) and not _NOT_REQUEST.search(u.text) and len(words) >= 2:
            add("request", words, u.text, i, u, owner=author, addressee=_addressee(u), words=words)
        reason = _REASON.search(u.text)
        if reason and len(content_words(reason.group("why"))) >= 2:
            # the fact is the reason given ('... because the deal is still being negotiated'), not the
            # refused task it restates; a refusal that names 'approved' is a reason, not a decision
            why = content_words(reason.group("why")) - _MARKER_WORDS
            add("reason", why, u.text, i, u, owner=author, words=why)
        elif _DECISION.search(u.text) and len(words) >= 2:
            add("decision", words, u.text, i, u, owner=author, words=words)
        for m in _FILE.finditer(u.text):
            name = (m.group("name") or m.group(0)).strip()
            add("attachment", fold(name), name, i, u, owner=author, words=content_words(name.rsplit(".", 1)[0]))
        if _ATTACHED.search(u.text) and not _FILE.search(u.text) and len(words) >= 2:
            add("attachment", words, u.text, i, u, owner=author, words=words)
    # a value that changes between restatements of one sentence (the date of a daily list re-sent each
    # day) is a slot of that sentence fact, not a fact of its own
    templates = [{" ".join(t.split()) for _, _, _, t in f._where} for f in facts.values()  # type: ignore[attr-defined]
                 if isinstance(f.key, frozenset)]
    templates = [t for t in templates if len(t) > 1]
    out = []
    for f in facts.values():
        where = f._where  # type: ignore[attr-defined]
        if not isinstance(f.key, frozenset) and any({" ".join(t.split()) for _, _, _, t in where} <= tpl
                                                     for tpl in templates):
            continue
        f.score = SALIENCE[f.kind]
        f.reasons = [f.kind]
        if any(e == latest and mine for _, e, mine, _ in where):
            f.score += SALIENCE["latest"]
            f.reasons.append("latest email")
        if any(i in first_units for i, _, _, _ in where):
            f.score += SALIENCE["first_lines"]
            f.reasons.append("first lines")
        sentences = {" ".join(t.split()) for _, _, _, t in where}  # quoted copies repeat nothing
        if len(sentences) > 1:
            f.score += SALIENCE["repeated"] * min(2, len(sentences) - 1)
            f.reasons.append(f"repeated in {len(sentences)} sentences")
        if content_words(f.line) & topic:
            f.score += SALIENCE["subject"]
            f.reasons.append("on the subject")
        if f.kind == "request" and _ADDRESSED.search(f.line):
            f.score += SALIENCE["addressed"]
            f.reasons.append(f"addressed to {f.addressee}" if f.addressee else "addressed")
        del f._where  # type: ignore[attr-defined]
        out.append(f)
    out.sort(key=lambda f: (-f.score, f.email, f.line))
    return out


def _value_facts(text: str) -> list[tuple[Value, tuple[Value, ...], bool]]:
    """The value facts of one sentence: (value, other values that name the same fact, is a deadline).

    - a bare number is a fact only with a unit after it ("30 days", "500 MW"; ``values.UNITS``) or a
      scale ("2 million"): exhibit, item and street numbers are not;
    - a weekday next to a date ("Friday, May 5th", "May 5 (Friday)") is one fact, carried by either;
      a dated value with a year is carried by its weekday too ("May 5, 2000" by "Friday");
    - a value after "by", "before", "until", "due" is a deadline, except the end of a range
      ("from 12:00 until 1:30 p.m.").
    """
    values = find_values(text)
    out: list[tuple[Value, tuple[Value, ...], bool]] = []
    skip: set[int] = set()
    for j, v in enumerate(values):
        if j in skip:
            continue
        if v.kind == "number" and v.text[:1].isdigit() and not re.search(r"[a-z]\s*$", v.text, re.I):
            unit = _UNIT_AFTER.match(text, v.end)
            if not unit:
                continue
            v = replace(v, text=text[v.start:unit.end()])  # the fact as a reader needs it: '30 days'
        alts: list[Value] = []
        nxt = values[j + 1] if j + 1 < len(values) else None
        if nxt is not None and {v.kind, nxt.kind} == {"weekday", "date"} and _WITH_DATE.match(text[v.end:nxt.start]):
            skip.add(j + 1)
            date_v, day_v = (v, nxt) if v.kind == "date" else (nxt, v)
            v, alts = date_v, [day_v]
        if v.kind == "date" and v.key[2] is not None and not alts:
            try:
                alts.append(Value("weekday", date(v.key[2], v.key[0], v.key[1]).weekday(), v.start, v.end,
                                  WEEKDAYS[date(v.key[2], v.key[0], v.key[1]).weekday()]))
            except ValueError:
                pass
        prev = values[j - 1] if j > 0 else None
        ranged = prev is not None and prev.kind == v.kind and bool(_RANGE.match(text[prev.end:v.start]))
        deadline = v.kind in ("date", "weekday", "time") and bool(_DEADLINE_CONTEXT.search(v.context)) and not ranged
        out.append((v, tuple(alts), deadline))
    return out


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _holds(words: frozenset, summary_words: frozenset) -> bool:
    """``CARRY_SHARE`` of ``words`` and at least ``MATCH_WORDS`` of them (all of a shorter set): the claims' rule."""
    shared = len(words & summary_words)
    return bool(words) and shared >= CARRY_SHARE * len(words) and shared >= min(MATCH_WORDS, len(words))


def carried(fact: Fact, summary_values: list[Value], summary_words: frozenset, summary_folded: str) -> bool:
    """Whether a summary (its values, ``content_words`` and folded text) carries ``fact`` (rules in the module docstring)."""
    if fact.kind in ("request", "decision", "reason") or (fact.kind == "attachment" and isinstance(fact.key, frozenset)):
        return _holds(fact.words, summary_words)
    if fact.kind == "attachment":
        stem = fact.key.rsplit(".", 1)[0].strip()
        named = len(fact.words) > 1 and _holds(fact.words, summary_words)
        return fact.key in summary_folded or (len(stem) > 2 and stem in summary_folded) or named
    vkind, key = fact.key
    named = (Value(vkind, key, 0, 0, fact.text),) + fact.alts
    return any(supports(v, n) for v in summary_values for n in named)


def coverage_indexed(idx: ThreadIndex, summary: str) -> list[Fact]:
    """``coverage`` with a thread index built once, for many summaries (candidates) of one thread."""
    summary = summary or ""
    values, words, folded = find_values(summary), content_words(summary), fold(summary)
    facts = thread_facts(idx)
    for f in facts:
        f.carried = carried(f, values, words, folded)
    return facts


def coverage(thread: Union[Thread, str], summary: str) -> list[Fact]:
    """The facts of ``thread`` (a Thread, or mail text as ``threadsum summarize`` reads it), ranked by
    salience, each marked carried or not by ``summary``: list[Fact], highest score first.

    Deterministic, no model; linear in the thread's length, and quadratic in its number of distinct
    sentence facts and of values of one kind (restatements are found by comparing them pairwise). Raises InputError only for text that is
    not a thread. See the module docstring for what it cannot catch.
    """
    if isinstance(thread, str):
        from threadsum.inference.inputs import thread_from_text

        thread = thread_from_text(thread)
    return coverage_indexed(index_thread(thread), summary)


def coverage_report(facts: list[Fact]) -> dict[str, Any]:
    """The JSON form beside the claims: {"facts": [Fact.to_dict()], "left_out": [important facts not
    carried], "important": count, "carried_share": share of important facts carried (0-1; 1.0 with none)}."""
    important = [f for f in facts if f.important]
    return {"facts": [f.to_dict() for f in facts],
            "left_out": [f.to_dict() for f in important if not f.carried],
            "important": len(important),
            "carried_share": (sum(f.carried for f in important) / len(important)) if important else 1.0}
