"""Person names: parse the forms mail uses and decide whether two mentions can be one person.

Forms handled: "Kim Theriot", Enron's "Theriot, Kim S. KTHERIO" (user id dropped), Outlook's
"Theriot, Kim S.", Lotus "Kim Theriot/HOU/ECT@ECT", "'Kim Theriot' <kim.theriot@x.com>",
"Kim Theriot [mailto:...]", bare addresses ("kim.theriot@enron.com" -> Kim Theriot), and a first
name alone. Comparison ignores case and diacritics; first names also match their nicknames
(the ``nicknames`` data set: Ben = Benjamin, Ed = Edward) and initials ("J. Smith").
Name parsing is nameparser's.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

_POSSESSIVE = re.compile(r"['’]s?$")


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
