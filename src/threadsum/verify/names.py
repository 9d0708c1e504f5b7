"""Person names: parse the forms mail uses and decide whether two mentions can be one person.

Forms handled: "Kim Theriot", Enron's "Theriot, Kim S. KTHERIO" (user id dropped), Outlook's
"Theriot, Kim S.", Lotus "Kim Theriot/HOU/ECT@ECT", "'Kim Theriot' <kim.theriot@x.com>",
"Kim Theriot [mailto:...]", bare addresses ("kim.theriot@enron.com" -> Kim Theriot), and a first
name alone. Comparison ignores case and diacritics; first names also match their nicknames
(the ``nicknames`` data set: Ben = Benjamin, Ed = Edward) and initials ("J. Smith").
Name parsing is nameparser's.

Organisation names are compared word by word through :func:`name_key`: case and diacritics
folded, possessives dropped ("EPMI's", "Services'"), abbreviations expanded from
``ABBREVIATIONS`` (Corp = Corporation, Svcs = Services, Dept = Department) and plurals made
singular ("Watch Lists" = "Watch List", "Utilities" = "Utility"). The singular rule is written
by hand: no maintained library inflects proper names (inflect and lemmatisers treat "Williams"
as a plural of "William"), so a plural whose singular is a given name is left alone.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

_POSSESSIVE = re.compile(r"['’]s?$")
_WORD_POSSESSIVE = re.compile(r"(?<=[^\W_])['’]s\b|(?<=[sS])['’](?![^\W_])")


def fold(text: str) -> str:
    """Lower case without diacritics or possessive 's: 'Jörg's' -> 'jorg'."""
    if text.isascii():
        text = text.lower()
    else:
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return _POSSESSIVE.sub("", text.strip())


@dataclass(frozen=True)
class Name:
    """One parsed person mention; ``first``/``last`` folded, either may be empty."""

    first: str
    last: str
    raw: str

    @property
    def tokens(self) -> tuple[str, ...]:
        """The non-empty parts among (first, last), in that order."""
        return tuple(t for t in (self.first, self.last) if t)


@lru_cache(maxsize=1)
def _nicknamer():
    from nicknames import NickNamer

    return NickNamer()


@lru_cache(maxsize=8192)
def first_name_forms(first: str) -> frozenset[str]:
    """A folded first name with its nicknames and the names it is a nickname of."""
    first = fold(first)
    if not first:
        return frozenset()
    nn = _nicknamer()
    return frozenset({first} | {fold(n) for n in nn.nicknames_of(first)} | {fold(n) for n in nn.canonicals_of(first)})


@lru_cache(maxsize=8192)
def is_known_first_name(word: str) -> bool:
    """True when the nicknames data set knows ``word`` as a given name or a nickname."""
    w = fold(word)
    nn = _nicknamer()
    return bool(nn.nicknames_of(w) or nn.canonicals_of(w))


_ADDRESS = re.compile(r"([\w.+'-]+)@([\w-]+\.[\w.-]+)")
_USERID = re.compile(r"^[A-Z][A-Za-z]*\d*$")


def _strip_decorations(text: str) -> str:
    text = re.sub(r"\[mailto:[^\]]*\]|<[^>]*>?|\((?:e-?mail[^)]*|legal|[^)]*mktg[^)]*)\)", " ", text, flags=re.I)
    text = re.sub(r"/[A-Za-z]+(?:/[A-Za-z]+)*(?:@[\w.]+)?", " ", text)  # Lotus Notes org path
    text = re.sub(r"@\s*ENRON\b.*|\s+on\s+\d.*$|\s+\d{1,2}/\d{1,2}/\d{2,4}.*$", " ", text, flags=re.I)
    return re.sub(r"[\"'()]", " ", text).strip(" ,;:\t")


@lru_cache(maxsize=16384)
def parse_name(text: str) -> Optional[Name]:
    """A Name from one header or body mention, or None when it holds no name.

    Examples: 'Theriot, Kim S. KTHERIO' -> kim theriot; 'kay.mann@enron.com' -> kay mann;
    '"Cody Downard" <CDownard@vailresorts.com' -> cody downard; 'Kay' -> first kay.
    """
    from nameparser import HumanName

    raw = text
    text = _WORD_POSSESSIVE.sub("", text)  # "Kim Theriot's desk": the quote strip below would leave a name 's'
    addr = _ADDRESS.search(text)
    cleaned = _strip_decorations(_ADDRESS.sub(" ", text))
    cleaned = re.sub(r"\b(?:Jr|Sr|II|III|IV)\b\.?", " ", cleaned).strip(" ,")
    if not re.search(r"[^\W\d_]", cleaned):
        if not addr:
            return None
        local = re.sub(r"\d+", "", addr.group(1))
        parts = [p for p in re.split(r"[._-]+", local) if len(p) > 1]
        if len(parts) >= 2:
            return Name(fold(parts[0]), fold(parts[-1]), raw)
        return Name(fold(parts[0]), "", raw) if parts else None
    if "," in cleaned:
        last, _, rest = cleaned.partition(",")
        words = rest.split()
        if len(words) >= 2 and _USERID.match(words[-1]) and words[-1].lower().startswith(words[0][:1].lower()):
            words = words[:-1]  # Enron user id: 'Kim S. KTHERIO', 'Darron C. Dgiron'
        cleaned = f"{last.strip()}, {' '.join(words)}"
    h = HumanName(cleaned)
    first, last = h.first, h.last
    if len(first.rstrip(".")) == 1 and h.middle:  # 'D. Todd Hall' goes by Todd
        first = h.middle.split()[0]
    first, last = fold(first.rstrip(".")), fold(last)
    if not first and not last:
        return None
    return Name(first, last, raw)


def first_compatible(a: str, b: str) -> bool:
    """First names a and b (folded) may name one person: equal, nickname, or an initial."""
    if not a or not b:
        return True
    if a == b or (len(a) == 1 and b.startswith(a)) or (len(b) == 1 and a.startswith(b)):
        return True
    return b in first_name_forms(a) or a in first_name_forms(b)


def same_person(mention: Name, known: Name) -> bool:
    """Whether a summary's ``mention`` can be the thread's ``known`` person.

    Two-part mentions need the same last name and compatible first names; a one-word mention
    ("Kim", "Theriot") matches a known first name (or nickname) or last name.
    """
    if mention.first and mention.last:
        if known.last:
            return mention.last == known.last and first_compatible(mention.first, known.first)
        return False
    word = mention.first or mention.last
    return word == known.last or (bool(known.first) and first_compatible(word, known.first) and len(word) > 1
                                   and len(known.first) > 1)


# ------------------------------------------------------------------------ organisation names
ABBREVIATIONS: dict[str, str] = {
    "acct": "account", "assn": "association", "bros": "brothers", "co": "company", "cos": "companies",
    "corp": "corporation", "ctr": "center", "dept": "department", "depts": "departments", "govt": "government",
    "grp": "group", "hldgs": "holdings", "inc": "incorporated", "intl": "international", "ltd": "limited",
    "mfg": "manufacturing", "mgmt": "management", "mktg": "marketing", "natl": "national", "svc": "service",
    "svcs": "services", "univ": "university",
}
"""Abbreviation -> word, for words of organisation names (folded; "Int'l" and "Gov't" lose their
apostrophe first). The one table of them: claims' sentence splitting reads it too. Ambiguous
ones are left out ("Assoc" is association or associates, "Dist" district or distribution)."""

LEGAL_FORMS = frozenset({"company", "corporation", "incorporated", "limited", "llc", "llp", "lp", "plc", "gmbh"})
"""Keys (see :func:`name_key`) of legal forms a name may carry or leave out: "Dynegy Inc." is the
thread's "Dynegy"."""

_ACRONYM_PLURAL = re.compile(r"\b([A-Z][A-Z\d&]+)['’]?s\b")
"""'LDCs', 'NYUs', "ISDA's": an acronym with a lower-case plural or possessive tail."""
_NAME_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*['’]?")


def name_words(text: str) -> list[str]:
    """Folded words of a name, possessives and inner apostrophes removed.

    Example: "EPMI's Int'l Svcs'" -> ['epmi', 'intl', 'svcs'].
    """
    out = []
    for m in _NAME_WORD.finditer(fold(_ACRONYM_PLURAL.sub(r"\1", text))):
        w = m.group(0)
        if w[-2:] in ("'s", "’s"):
            w = w[:-2]
        w = w.replace("'", "").replace("’", "")
        if w:
            out.append(w)
    return out


@lru_cache(maxsize=32768)
def singular(word: str) -> str:
    """The singular of a folded word: lists -> list, utilities -> utility, branches -> branch.

    Unchanged: words under 4 letters or with digits ('gas', 'cms', 'q3s'), words ending in
    -ss/-us/-is ('business', 'status', 'analysis'), and plurals whose singular is a given name
    ('williams', 'edwards': surnames, not plurals).
    """
    if len(word) < 4 or not word.isalpha() or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        base = word[:-3] + "y"
    elif word.endswith(("ches", "shes", "sses", "xes", "zes")):
        base = word[:-2]
    elif word.endswith("s"):
        base = word[:-1]
    else:
        return word
    return word if is_known_first_name(base) else base


@lru_cache(maxsize=32768)
def word_key(word: str) -> str:
    """The comparison key of one folded word of a name: abbreviation expanded (of the word or of its
    singular), then singular."""
    return singular(ABBREVIATIONS.get(word) or ABBREVIATIONS.get(singular(word)) or word)  # 'Corps', 'Svcs'



def name_key(text: str) -> tuple[str, ...]:
    """Keys of a name's words; two spellings of one organisation have equal keys.

    Example: "EPMI's Power Credit Watch Lists" and "EPMI Power Credit Watch List" ->
    ('epmi', 'power', 'credit', 'watch', 'list'); "Enron Corp." -> ('enron', 'corporation').
    """
    return tuple(word_key(w) for w in name_words(text))
