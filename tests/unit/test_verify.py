"""threadsum.verify: each claim kind supported and unsupported, authorship, evidence and offsets."""
from __future__ import annotations

from datetime import datetime

import pytest

from threadsum.data.types import Email, Thread
from threadsum.inference.summarizer import thread_from_text
from threadsum.verify import KINDS, check, grounding_stats

PASTED = """From: Ann Smith / To: Bob Jones / Subject: Q3 budget
Bob, can you send the revised Q3 budget by Friday?
From: Bob Jones / To: Ann Smith
Yes, I will send it Thursday after legal signs off.
"""


def _thread(*emails: Email, subject: str = "Q3 budget") -> Thread:
    return Thread("t1", subject, list(emails))


@pytest.fixture(scope="module")
def enron() -> Thread:
    """Enron-style headers, a quoted Outlook header, a Lotus forward with a sign-off, values in bodies."""
    return _thread(
        Email("Theriot, Kim S. KTHERIO", ["Gossett, Jeffrey C. Jgosset"],
              "Jeff,\n\nCould you please review the draft confirm for Hope Gas by Friday? The settlement offer is "
              "$66 MM and the payment terms are 60 days. Lunch is on May 5th from 12:00 p.m. to 1:30 p.m.; "
              "fees rose 12 percent. Reply to kay.mann@enron.com.\n\nThanks,\nKim",
              datetime(2002, 1, 29, 11, 23), "Master Termination Log"),
        Email("Gossett, Jeffrey C. JGOSSET", ["Theriot, Kim S. Ktherio"],
              "Kim,\n\nSure, I will review the draft confirm by Friday.\n\nJeff\n\n"
              " -----Original Message-----\nFrom: \tPanus, Stephanie \nSent:\tTuesday, January 29, 2002 11:39 AM\n"
              "To:\tTheriot, Kim S.\nSubject:\tMaster Termination Log\n\nAttached is the Daily List for January 25.\n",
              datetime(2002, 1, 29, 13, 5), "RE: Master Termination Log"),
        Email("Sara Shackleton", ["Susan Flynn"],
              "I think you ought to get the Canadian utilities out today!  Sara\n"
              "---------------------- Forwarded by Sara Shackleton/HOU/ECT on 07/27/99 08:32 AM "
              "---------------------------\nTo: Sara Shackleton/HOU/ECT@ECT\ncc:\nSubject: Re: Canadian utilities\n\n"
              "Sara:\nHave we sent these ISDA out yet?\nThanks\nJennifer\n",
              datetime(2002, 2, 1, 9, 0), "FW: Canadian utilities"),
        subject="Master Termination Log",
    )


def _one(claims, text, kind=None):
    found = [c for c in claims if c.text == text and (kind is None or c.kind == kind)]
    assert found, f"no claim {text!r} among {[(c.text, c.kind) for c in claims]}"
    return found[0]


def test_every_claim_is_a_span_with_a_known_kind(enron):
    summary = "Kim Theriot asks Jeff Gossett to review the draft confirm by Friday. Tracy Nemec of Duke Energy agrees."
    claims = check(enron, summary)
    for c in claims:
        assert c.kind in KINDS
        assert summary[c.start:c.end] == c.text
        d = c.to_dict()
        assert set(d) == {"text", "kind", "supported", "evidence", "start", "end", "reason"}
        assert (d["evidence"] is not None) == c.supported and (d["reason"] is None) == c.supported
        if c.supported:
            assert set(d["evidence"]) == {"email", "line"} and 0 <= d["evidence"]["email"] < 3


@pytest.mark.parametrize("mention", ["Kim Theriot", "Kim", "Jeffrey Gossett", "Jeff Gossett", "Stephanie Panus",
                                     "Kay Mann", "Jennifer", "KIM THERIOT"[0] + "im Theriot"])
def test_person_supported(enron, mention):
    c = _one(check(enron, f"The list went to {mention} yesterday."), mention)
    assert c.kind == "person" and c.supported, c.reason


def test_person_unsupported_names_the_closest_participant():
    t = _thread(Email("Gerald Nemec", ["Bruce Rudy"], "The furniture stays with me."))
    c = _one(check(t, "Tracy Nemec wants the furniture."), "Tracy Nemec")
    assert c.kind == "person" and not c.supported
    assert "Gerald Nemec" in c.reason


def test_person_diacritics_case_and_nicknames():
    t = _thread(Email("Jörg Müller", ["Benjamin Rogers"], "Ben, the deal is done."), subject="Deal")
    claims = check(t, "Jorg Muller tells Ben the deal is done. Ed Rogers was there.")
    assert _one(claims, "Jorg Muller").supported
    assert _one(claims, "Ben").supported
    assert not _one(claims, "Ed Rogers").supported  # Ed is not a form of Benjamin


def test_organisation_supported_by_body_and_domain_and_unsupported(enron):
    t = _thread(Email("'Tracy Nemec' <tracy.nemec@dynegy.com>", ["Kay Mann"], "About the Hope Gas offer."))
    claims = check(t, "The thread covers the Hope Gas offer from Dynegy and a note from Duke Energy.")
    assert _one(claims, "Hope Gas", "organisation").supported
    assert _one(claims, "Dynegy", "organisation").supported
    duke = _one(claims, "Duke Energy", "organisation")
    assert not duke.supported and "appears nowhere" in duke.reason


@pytest.mark.parametrize("kind,good,bad", [
    ("money", "$66 million", "$76 million"),
    ("number", "sixty days", "ninety days"),
    ("percent", "12%", "15%"),
    ("date", "May 5", "May 12"),
    ("time", "1:30 p.m.", "3 p.m."),
    ("time", "noon", "4:15 pm"),
    ("weekday", "Friday", "Wednesday"),
])
def test_values_supported_after_normalisation_and_changed_values_flagged(enron, kind, good, bad):
    for text, ok in ((good, True), (bad, False)):
        c = _one(check(enron, f"The review mentions {text} as agreed."), text, kind)
        assert c.supported is ok, (text, c.reason)
        if not ok:
            assert c.reason and c.evidence is None


def test_money_matches_dollars_written_out():
    t = _thread(Email("Erik Wollam", ["Joe Parks"], "its going to cost 45 dollars to rent one from aztec"))
    assert _one(check(t, "Erik says it costs $45 from Aztec."), "$45").supported
    assert not _one(check(t, "Erik says it costs $55 from Aztec."), "$55").supported


def test_weekday_and_date_supported_by_an_email_date_but_not_as_a_deadline():
    t = _thread(Email("Ann Smith", ["Bob Jones"], "Here is the budget.", datetime(2002, 1, 29, 11, 0)))  # a Tuesday
    assert _one(check(t, "On Tuesday Ann sent the budget."), "Tuesday").supported
    assert _one(check(t, "Ann sent the budget on January 29."), "January 29").supported
    deadline = _one(check(t, "Ann will send the budget by Tuesday."), "Tuesday")
    assert not deadline.supported and "text" in deadline.reason


def test_action_needs_the_person_to_have_written():
    t = thread_from_text(PASTED)
    claims = check(t, "Ann asks Bob to send the revised Q3 budget by Friday. Bob agrees to send it Thursday.")
    asks = _one(claims, "Ann asks Bob to send the revised Q3 budget by Friday", "action")
    assert asks.supported and asks.evidence["line"].startswith("Bob, can you send")
    assert _one(claims, "Bob agrees to send it Thursday", "action").supported


def test_swapped_asker_is_an_attribution_error():
    t = thread_from_text(PASTED)
    claims = check(t, "Bob asks Ann to send the revised Q3 budget by Friday.")
    c = _one(claims, "Bob asks Ann to send the revised Q3 budget by Friday", "action")
    assert not c.supported and c.attribution
    assert grounding_stats([claims])["attribution_errors"] == 1


def test_action_by_someone_who_wrote_nothing_and_an_absent_addressee():
    t = _thread(Email("Ann Smith", ["Bob Jones", "Carl Diaz"], "Bob, can you send the budget by Friday?"))
    carl = _one(check(t, "Carl Diaz asks Bob to send the budget."), "Carl Diaz asks Bob to send the budget", "action")
    assert not carl.supported and "wrote none of the emails" in carl.reason and carl.attribution
    greg = _one(check(t, "Ann Smith asks Greg Brackett to send the budget."),
                "Ann Smith asks Greg Brackett to send the budget", "action")
    assert not greg.supported and "Greg Brackett never appears" in greg.reason


def test_action_by_quoted_author_and_sign_off(enron):
    claims = check(enron, "Stephanie Panus sends the Daily List. Jennifer asks Sara to send the ISDA out.")
    assert _one(claims, "Stephanie Panus sends the Daily List", "action").supported
    assert _one(claims, "Jennifer asks Sara to send the ISDA out", "action").supported


def test_action_attributed_to_the_wrong_participant(enron):
    # Kim asked for the review and Jeff agreed; 'Kim agrees' takes Jeff's yes for Kim's
    claims = check(enron, "Kim asks Jeff to review the draft confirm by Friday. Kim agrees to do it.")
    c = _one(claims, "Kim agrees to do it", "action")
    assert not c.supported and c.attribution
    assert _one(claims, "Kim asks Jeff to review the draft confirm by Friday", "action").supported


def test_forward_needs_a_forward_by_that_person(enron):
    claims = check(enron, "Sara Shackleton forwards the note. Kim Theriot forwards the note.")
    assert _one(claims, "Sara Shackleton forwards the note", "action").supported
    assert not _one(claims, "Kim Theriot forwards the note", "action").supported


def test_the_issue_example_flags_every_invented_name():
    t = thread_from_text(PASTED)
    summary = ("The email thread discusses the ISDA master agreement with Dynegy. Reagan Nemec asks Greg Brackett "
               "to review the draft confirm by next week. Tracy Nemec of Duke Energy confirms it.")
    bad = {c.text for c in check(t, summary) if not c.supported}
    assert {"ISDA", "Dynegy", "Reagan Nemec", "Greg Brackett", "Tracy Nemec", "Duke Energy"} <= bad
    good = check(t, "Ann Smith asks Bob Jones to send the revised Q3 budget by Friday. Bob agrees.")
    assert all(c.supported for c in good), [(c.text, c.reason) for c in good if not c.supported]


def test_grounding_stats_counts_per_summary():
    t = thread_from_text(PASTED)
    per = [check(t, "Ann asks Bob to send the budget."), check(t, "Carl Diaz met Dana Ortiz at Globex on Monday.")]
    g = grounding_stats(per)
    assert g["n"] == 2 and g["flagged_share"] == 0.5
    # Carl Diaz (a known given name: person), Dana Ortiz and Globex (kind by a guess) over two summaries
    assert g["unsupported_per_summary"]["person"] >= 0.5
    assert g["unsupported_per_summary"]["person"] + g["unsupported_per_summary"]["organisation"] == 1.5
    assert g["unsupported_per_summary"]["weekday"] == 0.5
    assert grounding_stats([])["n"] == 0


def test_empty_summary_and_text_without_facts():
    t = thread_from_text(PASTED)
    assert check(t, "") == []
    assert check(t, "the budget is discussed.") == []


def test_real_references_raise_no_alarm_and_changed_facts_are_flagged(kaggle_sample):
    from threadsum.data.readers import read_kaggle

    threads = read_kaggle(kaggle_sample / "email_thread_details.csv", kaggle_sample / "email_thread_summaries.csv").threads
    for t in threads:
        bad = [(c.text, c.reason) for c in check(t, t.summary) if not c.supported]
        assert not bad, (t.thread_id, bad)
    first = next(t for t in threads if "$66 million" in t.summary)
    changed = first.summary.replace("$66 million", "$76 million").replace("Kim Theriot requests", "Tracy Nemec requests")
    bad = {c.text for c in check(first, changed) if not c.supported}
    assert {"$76 million", "Tracy Nemec"} <= bad


def test_sentence_opening_names_are_checked_and_ordinary_words_are_not():
    t = _thread(Email("Ann Smith", ["Bob Jones"], "The deal report is late. Bob, can you send it?"))
    claims = check(t, "Zebulon joins the thread. Deal reports are late. Bob is asked to send it.")
    assert not _one(claims, "Zebulon").supported  # unknown given name opening a sentence, before a verb
    assert _one(claims, "Bob").supported
    assert all(c.supported for c in claims if c.text == "Deal")  # the thread writes 'deal' as a word


def test_compound_subject_needs_both_writers_and_is_one_claim():
    t = thread_from_text(PASTED)
    claims = check(t, "Ann and Bob write about the revised Q3 budget. Ann and Carl Diaz write about it.")
    actions = [c for c in claims if c.kind == "action"]
    assert [c.text for c in actions] == ["Ann and Bob write about the revised Q3 budget",
                                         "Ann and Carl Diaz write about it"]
    assert actions[0].supported
    assert not actions[1].supported and "Carl Diaz" in actions[1].reason
