"""The cleaning audit speaks up: unique text removed outside matched blocks becomes a
warning with its thread, step and words; short quoted paragraphs (Thanks, greetings, sign-offs, a
forward's 'fyi') are removed only where the same text stands in the same place elsewhere."""
from datetime import datetime

import pytest

from threadsum.config import CleanConfig
from threadsum.data.clean import (
    STEPS,
    W_UNIQUE_TEXT_REMOVED,
    audit_step,
    audit_warnings,
    clean_thread,
    clean_threads,
    new_stats,
)
from threadsum.data.readers import read_source
from threadsum.data.report import _audit_warning_lines
from threadsum.data.synth import write_kaggle_csv
from threadsum.data.types import Email, Thread

A = ("The pipeline capacity report for June is attached. We expect the Kern River expansion to add "
     "about 135,000 dekatherms per day once the compressor station is finished in the fall.")


def _d(h):
    return datetime(2001, 5, 30, h)


def _hdr(who, to, subject, h):
    return f"\n\n-----Original Message-----\nFrom: {who}\nSent: Wednesday, May 30, 2001 {h}:00 AM\nTo: {to}\nSubject: {subject}\n\n"


def _clean(emails):
    stats = new_stats()
    c = clean_thread(Thread("t", "Capacity", emails, "s"), CleanConfig(), stats)
    return c, {s: stats["steps"][s]["audit"]["unique_words_unmatched"] for s in STEPS}


def _bodies(c):
    return [e.body for e in c.emails]


@pytest.mark.parametrize("short", ["Thanks", "Thanks!", "fyi", "OK by me.", "No."])
def test_a_reply_known_only_from_quoted_history_is_kept(short):
    # the reply exists only as a quote; its words also occur elsewhere, but not in its place
    emails = [Email("Jeff Dasovich", body=A + "\n\n" + short, date=_d(9)),
              Email("Bob Stone", date=_d(11), body="Sounds good, send me the numbers." + _hdr("Mann, Kay", "Stone, Bob", "RE: Capacity", 10)
                    + short + _hdr("Dasovich, Jeff", "Mann, Kay", "Capacity", 9) + A)]
    c, lost = _clean(emails)
    assert lost == {s: 0 for s in STEPS}
    bob = c.emails[1].body
    assert "From: Mann, Kay" in bob and bob.rstrip().endswith(short)
    assert A not in bob  # the copy of Jeff's email still goes


def test_a_forward_note_known_only_from_quoted_history_is_kept():
    fwd = ("fyi\n\n---------------------- Forwarded by Kay Mann/HOU/ECT on 05/30/2001 10:00 AM ---------------------------\n\n\n"
           "Jeff Dasovich\n05/30/2001 09:00 AM\nTo: Kay Mann/HOU/ECT@ECT\ncc:\nSubject: Capacity\n\n" + A)
    emails = [Email("Jeff Dasovich", body=A + "\n\nfyi, more soon", date=_d(9)),
              Email("Bob Stone", date=_d(11), body="Got it." + _hdr("Mann, Kay", "Stone, Bob", "FW: Capacity", 10) + fwd)]
    c, lost = _clean(emails)
    assert lost == {s: 0 for s in STEPS}
    assert "Mann, Kay" in c.emails[1].body and "\nfyi" in c.emails[1].body


def test_greetings_and_sign_offs_stay_with_kept_quoted_text_and_go_with_copies():
    jeremy = "Dutch,\n\n" + A + "\n\nJeremy"
    emails = [Email("Jeremy Blachman", body=jeremy, date=_d(9)),
              Email("Dutch Quigley", date=_d(11), body="Jeremy,\n\nI agree.\n\nDutch" + _hdr("Quigley, Dutch", "Blachman, Jeremy", "RE: Capacity", 10)
                    + "Jeremy,\n\nThe compressor station in the fall is a risk we should price in now.\n\nDutch"
                    + _hdr("Blachman, Jeremy", "Quigley, Dutch", "Capacity", 9) + jeremy)]
    c, lost = _clean(emails)
    assert lost == {s: 0 for s in STEPS}
    dutch = c.emails[1].body
    kept = dutch[dutch.index("Quigley, Dutch"):]
    assert kept.split("\n\n")[1:] == ["Jeremy,", "The compressor station in the fall is a risk we should price in now.", "Dutch"]
    assert "Blachman, Jeremy | Sent" not in dutch and A not in dutch  # the copy of Jeremy's email goes whole


def test_a_later_copy_of_a_kept_quote_goes_whole_when_a_paragraph_before_its_sign_off_was_a_duplicate():
    """The sign-off's place is the quote as written: in the first copy it follows a paragraph found
    elsewhere (removed there), so judging it by the kept text alone would keep every later copy's
    header and sign-off."""
    busy = "The group has a lot on its plate this week and the desk is short of people."
    note = ("Diane,\n\n" + A + "\n\n" + busy + "\n\nJulie Anderson\nDuke Energy")
    lotus = ('\n\n---------------------- Forwarded by Diane Diamond/HOU/ECT on 05/17/2001 11:24 PM '
             '---------------------------\n\n\n"Julie Anderson" <julie.anderson@duke-energy.com>\n'
             "05/17/2001 09:24 PM\nTo: Diane Diamond/HOU/ECT@ECT\ncc:\nSubject: Capacity\n\n" + note)
    fwd = "James, FYI see the note below from Julie Anderson of Duke Energy.\n\nDiane" + lotus
    emails = [Email("Tracy Rorschach", body="Diane,\n\n" + busy + "\n\nTracy", date=_d(8)),
              Email("Diane Diamond", body=fwd, date=_d(9)),
              Email("Chris Lavorato", date=_d(11), body="Good catch, thanks.\n\nChris"
                    + _hdr("Diamond, Diane", "Taylor, James", "FW: Capacity", 9) + fwd)]
    c, lost = _clean(emails)
    assert lost == {s: 0 for s in STEPS}
    first, later = c.emails[1].body, c.emails[2].body
    assert "Julie Anderson\nDuke Energy" in first and A in first and busy not in first
    assert later == "Good catch, thanks.\n\nChris"


def test_unique_removals_become_warnings_and_the_report_names_them():
    before = [Email("A", body="We agreed the rent is 45 dollars per day.\n\nThanks a lot for the help today."),
              Email("B", body="Thanks a lot for the help today.")]
    after = [Email("A", body="Thanks a lot for the help today."), before[1]]
    stats = new_stats()
    audit_step(stats["steps"]["remove_quoted_history"]["audit"], "t7", [(e.sender, "", "", e.body) for e in before],
               after, [0, 1], [])
    warnings = audit_warnings(stats, "data/x.csv")
    assert len(warnings) == 1
    w = warnings[0]
    assert (w["reason"], w["thread_id"], w["step"], w["email"], w["field"]) == (
        W_UNIQUE_TEXT_REMOVED, "t7", "remove_quoted_history", 0, "body")
    assert w["words"] == "We agreed the rent is 45 dollars per day." and "remove_quoted_history=false" in w["detail"]
    assert audit_warnings(stats) == []  # taken out of the stats once
    lines = "\n".join(_audit_warning_lines({"warnings": {W_UNIQUE_TEXT_REMOVED: 1}, "audit_warnings": warnings}))
    assert "Warning" in lines and "thread t7, `remove_quoted_history`, email 0, body" in lines and "45 dollars" in lines
    assert _audit_warning_lines({"warnings": {}}) == []


def test_every_step_reports_zero_on_the_synthetic_corpus(tmp_path):
    write_kaggle_csv(tmp_path, 300, seed=0)
    _, stats = clean_threads(read_source(tmp_path).threads, CleanConfig())
    assert {s: stats["steps"][s]["audit"]["unique_words_unmatched"] for s in STEPS} == {s: 0 for s in STEPS}
    assert audit_warnings(stats) == []


def test_every_step_reports_zero_on_the_public_sample(kaggle_sample):
    _, stats = clean_threads(read_source(kaggle_sample).threads, CleanConfig())
    assert {s: stats["steps"][s]["audit"]["unique_words_unmatched"] for s in STEPS} == {s: 0 for s in STEPS}


@pytest.mark.parametrize("block,label", [
    ("Jeff Dasovich\nSent by: Jeff Dasovich\n05/30/2001 01:39 PM\n",
     "[Earlier message from Jeff Dasovich, 05/30/2001 01:39 PM] To: Susan J Mara/NA/Enron@ENRON"),
    ("Jeff Dasovich\nSent by: Joseph Alamo\n05/30/2001 01:39 PM\n",
     "[Earlier message from Jeff Dasovich, 05/30/2001 01:39 PM] Sent by: Joseph Alamo | To: Susan J Mara/NA/Enron@ENRON"),
    ("Sent by: Jeff Dasovich\n05/30/2001 01:39 PM\n",
     "[Earlier message from Jeff Dasovich, 05/30/2001 01:39 PM] To: Susan J Mara/NA/Enron@ENRON"),
])
def test_lotus_sent_by_is_a_header_not_part_of_a_name(block, label):
    note = "Susan, the tariff filing is due on Friday and I have not seen the draft yet."
    body = ("Agreed, I will call him.\n\n\n\n\n" + block + "To: Susan J Mara/NA/Enron@ENRON\ncc: \nSubject: Capacity\n\n" + note)
    c, lost = _clean([Email("Jeff Dasovich", body=A, date=_d(9)), Email("Susan Mara", date=_d(11), body=body)])
    assert lost == {s: 0 for s in STEPS}
    out = c.emails[1].body
    assert label in out and note in out and "from Sent by" not in out
    assert out.split("\n")[0] == "Agreed, I will call him." and "Jeff Dasovich\n[" not in out
