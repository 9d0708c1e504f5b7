"""Find and normalise amounts, numbers, percentages, dates, times and weekdays in text.

The same finder runs on the summary (to make claims) and on every thread line (to find
evidence), so "$45" in a summary meets "45 dollars" in a thread as the same value
``("money", ("USD", 45.0))``. Dates are normalised with dateparser, spelled-out numbers with
text2num; the regular expressions here only find where such a span starts and ends.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_ABBR = {"mon": 0, "tue": 1, "tues": 1, "wed": 2, "thu": 3, "thur": 3, "thurs": 3, "fri": 4,
                 "sat": 5, "sun": 6}
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
          "october", "november", "december")
_MONTH_ABBR = {m[:3]: i + 1 for i, m in enumerate(MONTHS)} | {"sept": 9}

_NUM_WORDS = (
    "zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
    "sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|"
    "hundred|thousand|million|billion"
)
_WORDNUM = rf"(?:(?:{_NUM_WORDS})\b(?:[\s-]+(?:and[\s-]+)?(?:{_NUM_WORDS})\b)*)"
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_SCALE = r"(?:million|billion|thousand|bn|mm|mln|m|k)"
_SCALES = {"thousand": 1e3, "k": 1e3, "million": 1e6, "mm": 1e6, "mln": 1e6, "m": 1e6, "billion": 1e9, "bn": 1e9}
_CUR_SYMBOL = {"$": "USD", "us$": "USD", "usd": "USD", "€": "EUR", "eur": "EUR", "£": "GBP", "gbp": "GBP",
               "¥": "JPY", "jpy": "JPY"}
_CUR_WORD = {"dollar": "USD", "dollars": "USD", "bucks": "USD", "euro": "EUR", "euros": "EUR",
             "pound": "GBP", "pounds": "GBP", "yen": "JPY"}
# units that make a spelled-out number a claim ("sixty days"); bare counts ("four messages") are not checked;
# coverage also counts a number as a fact only with one of these after it
UNITS = r"(?:days?|weeks?|months?|years?|hours?|minutes?|percent|per\s+cent|%|mw|mwh|mmbtu|dth|barrels?|miles?|people|shares?)"

MONEY_RE = re.compile(
    rf"(?P<cur>US\$|\$|€|£|¥|\b(?:USD|EUR|GBP|JPY)\b)\s?(?P<num>{_DIGITS}|{_WORDNUM})(?:\s?(?P<scale>{_SCALE})\b)?"
    rf"|\b(?P<num2>{_DIGITS}|{_WORDNUM})(?:\s?(?P<scale2>{_SCALE}))?\s+(?P<curword>dollars?|bucks|euros?|pounds|yen)\b",
    re.IGNORECASE,
)
PERCENT_RE = re.compile(rf"\b(?P<num>{_DIGITS}|{_WORDNUM})\s?(?:%|percent\b|per\s+cent\b)", re.IGNORECASE)
_MERIDIEM = r"(?P<mer>a\.?\s?m\b\.?|p\.?\s?m\b\.?)"
TIME_RE = re.compile(
    rf"\b(?P<h>[01]?\d|2[0-3])(?::(?P<m>[0-5]\d))?\s?{_MERIDIEM}"
    r"|\b(?P<h2>[01]?\d|2[0-3]):(?P<m2>[0-5]\d)(?::[0-5]\d)?\b(?!\s?(?:a\.?\s?m|p\.?\s?m))"
    r"|\b(?P<word>noon|midday|midnight)\b",
    re.IGNORECASE,
)
_MONTH_NAME = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
DATE_RE = re.compile(
    rf"\b(?P<md>{_MONTH_NAME}\s+{_DAY})(?:,?\s+(?P<y1>(?:19|20)\d\d))?\b"
    rf"|\b(?P<dm>{_DAY}\s+(?:of\s+)?{_MONTH_NAME})(?:,?\s+(?P<y2>(?:19|20)\d\d))?\b"
    r"|\b(?P<num>(?:1[0-2]|0?[1-9])/(?:[12]\d|3[01]|0?[1-9])(?:/(?P<y3>(?:19|20)?\d\d))?)\b(?!/)"
    r"|\b(?P<iso>(?P<y4>(?:19|20)\d\d)-(?:1[0-2]|0[1-9])-(?:[12]\d|3[01]|0[1-9]))\b",
    re.IGNORECASE,
)
WEEKDAY_RE = re.compile(r"\b(?P<w>monday|tuesday|wednesday|thursday|friday|saturday|sunday)s?\b"
                        r"|\b(?P<a>mon|tues?|wed|thu(?:rs?)?|fri|sat|sun)\b\.?", re.IGNORECASE)
NUMBER_RE = re.compile(
    rf"(?<![\w./-])(?P<num>{_DIGITS})(?:\s?(?P<scale>million|billion|thousand|bn|mm)\b)?(?![\w/-])"
    rf"|\b(?P<words>{_WORDNUM})(?:\s+(?P<unit>{UNITS})\b)?",
    re.IGNORECASE,
)


_ANY_VALUE = re.compile(rf"\d|[$€£¥%]|\b(?:{_NUM_WORDS}|noon|midday|midnight|mon|tue|wed|thu|fri|sat|sun|usd|eur|gbp|jpy)",
                        re.IGNORECASE)


@dataclass(frozen=True)
class Value:
    """One normalised value found in text: ``kind``, ``key`` (comparable), character span."""

    kind: str
    key: Any
    start: int
    end: int
    text: str
    context: str = ""
    """The two words before the span, lower-cased (tells "by Friday" from "on Friday")."""


@lru_cache(maxsize=4096)
def words_to_number(text: str) -> Optional[float]:
    """'ten million' -> 1e7, 'sixty' -> 60 (English, via text2num); None when it is not a number."""
    from text_to_num import text2num

    cleaned = re.sub(r"[\s-]+", " ", text.lower()).strip()
    try:
        return float(text2num(cleaned, "en"))
    except ValueError:
        return None


def _number(num: str, scale: Optional[str]) -> Optional[float]:
    if num is None:
        return None
    num = num.strip()
    if num[:1].isdigit():
        value = float(num.replace(",", ""))
    else:
        value = words_to_number(num)
        if value is None:
            return None
    return value * _SCALES.get((scale or "").lower(), 1.0)


def _money(m: re.Match) -> Optional[tuple[str, float]]:
    if m.group("cur"):
        cur = _CUR_SYMBOL.get(m.group("cur").lower(), "USD")
        value = _number(m.group("num"), m.group("scale"))
    else:
        cur = _CUR_WORD[m.group("curword").lower()]
        value = _number(m.group("num2"), m.group("scale2"))
    return None if value is None else (cur, round(value, 2))


def _time(m: re.Match) -> Optional[tuple[Optional[int], int]]:
    """(hour 0-23 or None when a.m./p.m. is unknown and the hour is 1-12, minute)."""
    if m.group("word"):
        return (0, 0) if m.group("word").lower() == "midnight" else (12, 0)
    if m.group("h") is not None:
        h, minute = int(m.group("h")), int(m.group("m") or 0)
        pm = m.group("mer").lower().startswith("p")
        if h > 12 or h == 0:
            return (h % 24, minute)
        return ((h % 12) + (12 if pm else 0), minute)
    h, minute = int(m.group("h2")), int(m.group("m2"))
    return (None if 1 <= h <= 12 else h, minute)


def _ambiguous_match(a: tuple, b: tuple) -> bool:
    # a side without a.m./p.m. keeps its written hour in key[2]; compare hours modulo 12
    return (a[2] if a[0] is None else a[0]) % 12 == (b[2] if b[0] is None else b[0]) % 12


@lru_cache(maxsize=8192)
def _parse_date(text: str) -> Optional[tuple[int, int]]:
    """(month, day) of a date span, parsed by dateparser (handles 'May 5th', '5 May', '5/5/2000')."""
    import dateparser

    parsed = dateparser.parse(text, languages=["en"], settings={
        "REQUIRE_PARTS": ["day", "month"], "DATE_ORDER": "MDY", "PREFER_DATES_FROM": "current_period"})
    return None if parsed is None else (parsed.month, parsed.day)


def _date(m: re.Match) -> Optional[tuple[int, int, Optional[int]]]:
    span = m.group(0)
    if m.group("iso"):
        y, mo, d = (int(x) for x in m.group("iso").split("-"))
        return (mo, d, y)
    year_txt = m.group("y1") or m.group("y2") or m.group("y3")
    md = _parse_date(re.sub(r"\bof\b", "", span))
    if md is None:
        return None
    year = None
    if year_txt:
        year = int(year_txt)
        if year < 100:
            year += 1900 if year >= 50 else 2000
    return (md[0], md[1], year)


def _context(text: str, start: int) -> str:
    return " ".join(re.findall(r"[\w']+", text[max(0, start - 40):start].lower())[-2:])


def find_values(text: str) -> list[Value]:
    """Every money, percent, date, time, weekday and number span of ``text``, non-overlapping.

    Kinds and keys: money ("USD", 45.0); percent 12.5; date (month, day, year|None);
    time (hour|None, minute, written hour); weekday 0-6 (Monday = 0); number float.
    Earlier kinds win where spans overlap (money before number: "$66 million" is one money).
    """
    found: list[Value] = []
    if not _ANY_VALUE.search(text):
        return found  # most lines of mail hold no value: one scan instead of seven
    taken: list[tuple[int, int]] = []

    def free(s: int, e: int) -> bool:
        return all(e <= a or s >= b for a, b in taken)

    def add(kind: str, key: Any, m: re.Match) -> None:
        s, e = m.span()
        if key is None or not free(s, e):
            return
        taken.append((s, e))
        found.append(Value(kind, key, s, e, text[s:e], _context(text, s)))

    for m in MONEY_RE.finditer(text):
        add("money", _money(m), m)
    for m in PERCENT_RE.finditer(text):
        add("percent", _number(m.group("num"), None), m)
    for m in DATE_RE.finditer(text):
        if m.group("num") and not m.group("y3") and "/" in text[max(0, m.start() - 1):m.start()]:
            continue
        add("date", _date(m), m)
    for m in TIME_RE.finditer(text):
        t = _time(m)
        if t is not None:
            written = int(m.group("h") or m.group("h2") or 12) if not m.group("word") else t[0]
            add("time", (t[0], t[1], written), m)
    for m in WEEKDAY_RE.finditer(text):
        if m.group("w"):
            add("weekday", WEEKDAYS.index(m.group("w").lower()), m)
        elif text[m.start()].isupper():  # 'sat', 'sun', 'wed' in lower case are ordinary words
            add("weekday", _WEEKDAY_ABBR[m.group("a").lower()], m)
    for m in NUMBER_RE.finditer(text):
        if m.group("num"):
            add("number", _number(m.group("num"), m.group("scale")), m)
        elif m.group("unit") or re.search(r"hundred|thousand|million|billion", m.group("words"), re.I):
            add("number", words_to_number(m.group("words")), m)
    found.sort(key=lambda v: v.start)
    return found


def same_value(kind: str, a: Any, b: Any) -> bool:
    """Whether two normalised keys of ``kind`` denote the same value (dates: year only when both have one)."""
    if kind == "time":
        if a[1] != b[1]:
            return False
        if a[0] is not None and b[0] is not None:
            return a[0] == b[0]
        return _ambiguous_match(a, b)
    if kind == "date":
        return a[:2] == b[:2] and (a[2] is None or b[2] is None or a[2] == b[2])
    if kind in ("number", "percent"):
        return abs(float(a) - float(b)) < 1e-9
    return a == b


def supports(claim: Value, found: Value) -> bool:
    """Whether ``found`` (a value of the thread) states the value ``claim`` (of a summary) names: the same kind
    and key (``same_value``), or the same amount across money/number/percent where one side is a bare number
    ("$45" is supported by "45", "66 million" carries "$66 MM")."""
    if claim.kind == found.kind:
        return same_value(claim.kind, claim.key, found.key)
    amount = {"money": lambda v: v.key[1], "number": lambda v: v.key, "percent": lambda v: v.key}
    if claim.kind in amount and found.kind in amount and "number" in (claim.kind, found.kind):
        return same_value("number", amount[claim.kind](claim), amount[found.kind](found))
    return False
