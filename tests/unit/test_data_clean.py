"""Cleaning: quoted history goes, unique forwarded content stays, each step is switchable and counted."""
from datetime import datetime, timedelta

import pytest

from threadsum.config import CleanConfig
from threadsum.data.clean import (
    STEPS,
    clean_thread,
    decode_qp_artifacts,
    new_stats,
    normalize_name,
    segment_body,
    strip_signature,
)
from threadsum.data.readers import read_source
from threadsum.data.types import Email, Thread


def _thread():
    t0 = datetime(2001, 4, 27, 9, 0)
    first = "Could you please review the draft confirm by Friday?\n\nThanks,\nKay"
    reply = ("Sure, I will review it.\n\n -----Original Message-----\nFrom: \tMann, Kay \nSent:\tFriday, April 27, 2001 9:00 AM\n"
             "To:\tRorschach, Reagan; " + "; ".join(f"Person{i}, P." for i in range(40)) + "\nSubject:\tconfirm\n\n" + first)
    fwd = ("Reagan, FYI see be=\nlow.=20\n---------------------- Forwarded by Kay Mann/HOU/ECT on 04/27/2001 10:00 AM "
           "---------------------------\n\n\"Joe Smith\" <joe@dynegy.com>\n04/27/2001 08:00 AM\nTo: Kay Mann/HOU/ECT@ECT\n"
           "cc:\nSubject: confirm\n\nOn behalf of Dynegy we=01,d like to extend the payment terms to sixty days.\n")
    last = "Done.\n\n-- \nReagan Rorschach\nDirector\n713-555-1234\n\n" + " -----Original Message-----\nFrom: Mann, Kay\n" \
        "Sent: Friday\nSubject: FW: confirm\n\n" + fwd
    mails = [
        Email("Mann, Kay KMANN", ["Rorschach, Reagan Rrorsch"], first, t0, "confirm"),
        Email("Rorschach, Reagan RRORSCHA", ["Mann, Kay Kmann"], reply, t0 + timedelta(hours=1), "RE: confirm"),
        Email("Kay Mann", ["Reagan Rorschach"], fwd, t0 + timedelta(hours=2), "FW: confirm"),
        Email("Reagan Rorschach", ["Kay Mann"], last, t0 + timedelta(hours=3), "RE: FW: confirm"),
        Email("Reagan Rorschach", ["Kay Mann"], last, t0 + timedelta(hours=3), "RE: FW: confirm"),  # exact duplicate
    ]
    return Thread("1", "confirm", mails, "s")


def test_removes_duplicated_history_keeps_unique_forward():
    stats = new_stats()
    c = clean_thread(_thread(), CleanConfig(), stats)
    assert len(c.emails) == 4 and stats["duplicate_emails"] == 1 and stats["dropped"][0]["index"] == 4
    reply, fwd, last = c.emails[1].body, c.emails[2].body, c.emails[3].body
    assert "Original Message" not in reply and "review the draft confirm" not in reply
    # the forward's external note exists nowhere else: kept once, header collapsed to one line
    assert "extend the payment terms to sixty days" in fwd and fwd.startswith("Reagan, FYI see below.")
    # the collapsed Lotus header keeps author and date in its label
    assert '[Earlier message from "Joe Smith" <joe@dynegy.com>, 04/27/2001 08:00 AM] To: Kay Mann' in fwd
    assert "sixty days" not in last  # its second copy, quoted in the last email, is gone
    assert last == "Done."  # signature block stripped
    assert c.emails[0].sender == "Kay Mann" and c.emails[0].recipients == ["Reagan Rorschach"]
    joined = "\n".join(e.body for e in c.emails)
    assert joined.count("review the draft confirm") == 1
    st = stats["steps"]["remove_quoted_history"]
    assert st["chars_after"] < st["chars_before"] and st["words_after"] < st["words_before"]


def test_the_input_thread_is_not_modified():
    t = _thread()
    before = t.to_dict()
    clean_thread(t, CleanConfig())
    assert t.to_dict() == before


@pytest.mark.parametrize("step", [s for s in STEPS])
def test_each_step_switches_off(step):
    on = clean_thread(_thread(), CleanConfig())
    stats = new_stats()
    off = clean_thread(_thread(), CleanConfig(**{step: False}), stats)
    assert stats["steps"][step]["enabled"] is False
    rec = stats["steps"][step]
    assert rec["chars_before"] == rec["chars_after"]
    assert off.to_dict() != on.to_dict()


def test_qp_and_collapse_header_lists():
    assert decode_qp_artifacts("From: =09White, Stac=\ney W. =20\nx=3Dy") == "From: \tWhite, Stacey W.  \nx=y"
    assert decode_qp_artifacts("a = b, price=20 dollars") == "a = b, price=20 dollars"  # no QP hint: untouched
    c = clean_thread(_thread(), CleanConfig(remove_quoted_history=False, max_recipients_shown=3))
    reply = c.emails[1].body
    assert "(+38 more)" in reply and "Person10" not in reply


def test_names_and_signatures():
    assert normalize_name("Theriot, Kim S. KTHERIO") == "Kim S. Theriot"
    assert normalize_name("Murphy, Melissa Mmurphy") == "Melissa Murphy"
    assert normalize_name("Anderson, Diane Danders2") == "Diane Anderson"
    assert normalize_name("Hall, D. Todd Thall") == "D. Todd Hall"
    assert normalize_name("Tana Jones") == "Tana Jones"
    assert normalize_name('"Bass, Jason" <j@x.com>') == '"Bass, Jason" <j@x.com>'
    text = "Explain vs redo.\n--------------------------\nSent from my BlackBerry Wireless Handheld (www.BlackBerry.net)"
    assert strip_signature(text) == "Explain vs redo."
    disclaimer = ("ok\n\n*****\nThis e-mail is the property of Enron Corp. and may contain confidential and privileged "
                  "material for the sole use of the intended recipient. Any review is strictly prohibited.\n*****")
    assert strip_signature(disclaimer).strip() == "ok"
    # a '-- ' line followed by a long text is not a signature
    long = "a\n-- \n" + "\n".join(f"line {i}" for i in range(12))
    assert strip_signature(long) == long


def test_segments_of_lotus_and_gt_quotes():
    body = ("Mine.\n\n\tGerald Nemec@ECT\n\t10/13/2000 01:27 PM\n\t\t\n\t\t To: Bruce Rudy/NA/Enron@Enron\n"
            "\t\t cc: \n\t\t Subject: Re: New Address\n\nTheirs.\n\nOn Mon, Jan 1, 2001, Bob wrote:\n> quoted\n> more\n")
    kinds = [s.kind for s in segment_body(body)]
    assert kinds == ["own", "lotus", "wrote", "quote"]


# ------------------------------------------------------------------------------ real rows
def test_real_sample_quoted_history_shrinks_forward_kept(kaggle_sample):
    res = read_source(kaggle_sample)
    stats = new_stats()
    by = {t.thread_id: clean_thread(t, CleanConfig(), stats) for t in res.threads}
    raw = {t.thread_id: t for t in res.threads}
    st = stats["steps"]["remove_quoted_history"]
    assert st["chars_after"] < 0.8 * st["chars_before"]
    # thread 5: every reply re-quotes 'Starting point for exhibit 2'; one copy survives
    t5 = "\n".join(e.body for e in by["5"].emails)
    assert sum(e.body.count("Starting point for exhibit 2") for e in raw["5"].emails) >= 3
    assert t5.count("Starting point for exhibit 2") == 1
    # thread 2: Carol's forward carries John Suttle's note (three new members) found nowhere else
    t2 = "\n".join(e.body for e in by["2"].emails)
    assert "Three more have recently joined our group" in t2 and "Wendy LeBrocq" in t2
    # thread 10: 'Explain vs redo.' is an email of the thread and also quoted later: kept once
    t10 = "\n".join(e.body for e in by["10"].emails)
    assert t10.count("Explain vs redo.") == 1
    assert "BlackBerry" not in t10
    # thread 1: QP artifacts decoded and the 80-name distribution list collapsed
    t1 = "\n".join(e.body for e in by["1"].emails)
    assert "=09" not in t1 and "Stac=\ney" not in t1 and "more)" in t1
    assert "Please look into the CNG LDC (Hope Gas) termination" in t1  # Ed McMichael's quoted request, unique
    assert by["1"].emails[1].sender == "Kim S. Theriot"
