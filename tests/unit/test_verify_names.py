"""Names as people write them: plural, possessive, abbreviations and case match in both directions;
a changed name (one letter, or a different word) is still flagged, however it is inflected."""
from __future__ import annotations

import pytest

from threadsum.data.types import Email, Thread
from threadsum.verify import check
from threadsum.verify.names import ABBREVIATIONS, LEGAL_FORMS, name_key, name_words, parse_name, singular


def _thread(body: str, sender: str = "Ann Smith", to: tuple[str, ...] = ("Bob Jones",)) -> Thread:
    return Thread("t1", "Update", [Email(sender, list(to), body)])


def _claim(thread: Thread, name: str, before: str = "The thread mentions the ", after: str = " file today."):
    """The claim a summary makes of ``name`` (the only capitalised run after the opening words)."""
    summary = f"{before}{name}{after}"
    claims = [c for c in check(thread, summary) if c.start >= len(before) - 1 and c.kind in ("organisation", "person")]
    assert claims, f"no name claim in {summary!r}"
    return claims[0]


SAME = [  # (one way of writing a name, another way of writing the same name)
    ("EPMI Power Credit Watch List", "EPMI Power Credit Watch Lists"),  # plural -s
    ("Houston Branch", "Houston Branches"),                              # plural -es
    ("Tax Box", "Tax Boxes"),
    ("Western Utility", "Western Utilities"),                            # plural -ies
    ("Energy Company", "Energy Companies"),
    ("CNG LDC", "CNG LDCs"),                                             # acronym plural
    ("EPMI", "EPMI's"),                                                  # possessive 's
    ("Hope Gas", "Hope Gas's"),
    ("Energy Services", "Energy Services'"),                             # possessive s'
    ("Enron Corp", "Enron Corporation"),                                 # abbreviations
    ("Enron Corp.", "Enron Corporation"),
    ("Energy Svcs", "Energy Services"),
    ("Legal Dept", "Legal Department"),
    ("Hope Gas Co", "Hope Gas Company"),
    ("Enron Intl", "Enron International"),
    ("Enron Int'l", "Enron International"),
    ("Risk Mgmt", "Risk Management"),
    ("Dynegy Inc", "Dynegy Incorporated"),
    ("Enron Corps", "Enron Corporation"),                                # an abbreviation's plural
    ("Dynegy", "Dynegy Inc."),                                           # a legal form added or left out
    ("Mirant", "Mirant LLC"),
    ("Hope Gas", "HOPE GAS"),                                            # case
    ("EPMI", "Epmi"),
    ("Master Termination Log", "MASTER TERMINATION LOGS"),               # case and plural together
]


@pytest.mark.parametrize("thread_form,summary_form", SAME + [(b, a) for a, b in SAME])
def test_one_name_written_two_ways_is_supported_both_ways(thread_form, summary_form):
    t = _thread(f"Please see the {thread_form} file before noon.")
    c = _claim(t, summary_form)
    assert c.supported, (thread_form, summary_form, c.kind, c.reason)
    assert c.evidence["line"].startswith("Please see the")


CHANGED = [  # (the thread's name, an invented one in the summary)
    ("EPMI Power Credit Watch List", "EPMX Power Credit Watch List"),    # one letter, as in the thread
    ("EPMI Power Credit Watch List", "EPMX Power Credit Watch Lists"),   # one letter, plural
    ("EPMI", "EPMX's"),                                                  # one letter, possessive
    ("EPMI", "EPMXs"),
    ("EPMI", "EPMX Inc."),                                               # one letter, legal form
    ("Hope Gas Company", "Hope Gaz Company"),
    ("Hope Gas Company", "HOPE GAZ CO"),
    ("Enron Corp", "Enrin Corporation"),
    ("Enron Corp", "Enron Group"),                                       # another word is another company
    ("Energy Services", "Energy Servers"),
    ("CNG LDC", "CNG LDX"),
    ("Legal Department", "Legal Dept Two"),
    ("Dynegy", "Dynergy Inc."),
    ("Umbrella", "Umbrella Holdings Grp"),                               # a word the thread never has
]


@pytest.mark.parametrize("thread_form,summary_form", CHANGED)
def test_a_changed_name_is_flagged_however_it_is_inflected(thread_form, summary_form):
    t = _thread(f"Please see the {thread_form} file before noon.")
    c = _claim(t, summary_form)
    assert not c.supported, (thread_form, summary_form, c.evidence)
    assert "appears nowhere" in c.reason or "no one named" in c.reason


def test_the_issue_example_and_a_name_wrapped_over_two_lines():
    t = _thread("Jeff,\nPlease add them to the EPMI Power Credit\nWatch List by Friday.\nAnn")
    c = _claim(t, "EPMI Power Credit Watch Lists", before="Ann adds them to the ", after=".")
    assert c.supported and c.evidence == {"email": 0, "line": "Please add them to the EPMI Power Credit"}


def test_organisation_words_make_a_sentence_subject_an_organisation():
    t = _thread("The Hope Gas Company legal department agreed. Enron Int'l Svcs. sent the schedules.")
    claims = check(t, "Hope Gas Co agrees. Enron International Services sent the schedules.")
    assert [(c.text, c.kind, c.supported) for c in claims] == [
        ("Hope Gas Co", "organisation", True), ("Enron International Services", "organisation", True)]


@pytest.mark.parametrize("mention", ["Kim Theriot's", "Kim Theriot", "KIM THERIOT", "Theriot's", "Chris Jones'",
                                     "Chris Jones's", "CHRIS JONES"])
def test_person_possessive_and_case(mention):
    t = _thread("Kim, the list is on your desk.\nChris Jones' copy is in the file.", sender="Theriot, Kim S. KTHERIO",
                to=("Jones, Chris",))
    c = _claim(t, mention, before="The list went to ", after=" desk yesterday.")
    assert c.supported, (mention, c.kind, c.reason)


@pytest.mark.parametrize("mention", ["Kim Therion's", "KIM THERION", "Chris Jonas'", "Kix Theriot"])
def test_changed_person_names_are_flagged_in_any_case_or_possessive(mention):
    t = _thread("Kim, the list is on your desk.", sender="Theriot, Kim S. KTHERIO", to=("Jones, Chris",))
    c = _claim(t, mention, before="The list went to ", after=" desk yesterday.")
    assert not c.supported, (mention, c.evidence)


def test_person_names_take_no_plural():
    # surnames that look like plurals: Edwards is not Edward, Banks is not a bank
    t = _thread("Edward, the bank called about the loan.", sender="Edward Smith", to=("Bob Jones",))
    claims = check(t, "Jim Edwards asks Bob about the loan. Banks asks Bob to call.")
    bad = {c.text for c in claims if not c.supported and c.kind != "action"}
    assert {"Jim Edwards", "Banks"} <= bad, [(c.text, c.kind, c.supported) for c in claims]


def test_a_possessive_opening_a_sentence_is_checked():
    t = _thread("Carol, the lunch is at noon.", sender="Ann Smith", to=("Carol Diaz",))
    claims = check(t, "Caroi's team asks for the lunch. Carol's team asks for the lunch.")
    by_text = {c.text: c.supported for c in claims if c.kind != "action"}
    assert by_text == {"Caroi": False, "Carol": True}


def test_thread_possessive_does_not_make_a_name_of_s():
    for text in ("Kim Theriot's", "Kim Theriot’s", "Theriot's, Kim"):
        assert parse_name(text).tokens == ("kim", "theriot"), text
    assert parse_name("Chris Jones's").tokens == parse_name("Chris Jones'").tokens == ("chris", "jones")


def test_name_keys():
    assert name_words("EPMI's Int'l Svcs'") == ["epmi", "intl", "svcs"]
    assert name_key("EPMI's Power Credit Watch Lists") == name_key("epmi power credit watch list")
    assert name_key("Enron Corp.") == name_key("ENRON CORPORATION") == ("enron", "corporation")
    assert name_key("LDCs") == name_key("LDC") and name_key("NYUs") == ("nyu",)
    for word in ("gas", "cms", "business", "status", "analysis", "q3s", "williams", "edwards"):
        assert singular(word) == word
    assert [singular(w) for w in ("lists", "utilities", "branches", "boxes", "services")] == [
        "list", "utility", "branch", "box", "service"]


def test_the_abbreviation_table_is_folded_and_unambiguous():
    for short, full in ABBREVIATIONS.items():
        assert short == short.lower() and short.isalpha() and full.isalpha() and short != full
        assert name_key(short) == name_key(full), short
    assert set(ABBREVIATIONS).isdisjoint(ABBREVIATIONS.values())
    assert {name_key(w)[0] for w in ("Inc", "Corp", "Co", "LLC", "Ltd")} <= LEGAL_FORMS
