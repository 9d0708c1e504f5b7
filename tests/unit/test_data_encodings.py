"""Decoders that prove their input first (issue 26): quoted-printable only in bodies that are
quoted-printable, never into control characters or invented bytes; Enron's Lotus Notes punctuation
codes (``=01,`` and its family) as the characters they stand for."""
import re

import pytest

from threadsum.config import CleanConfig, Config
from threadsum.data.clean import (
    LOTUS_PUNCTUATION,
    clean_thread,
    decode_qp_artifacts,
    looks_quoted_printable,
    new_stats,
    repair_lotus_punctuation,
)
from threadsum.data.readers import read_source
from threadsum.data.render import render_plain
from threadsum.data.synth import write_kaggle_csv
from threadsum.data.types import Email, Thread

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")


# ------------------------------------------------------------------ text that only looks like QP
@pytest.mark.parametrize("text", [
    "Register at http://www.example.com/reg?partnerID=989&mailID=1882&x=1 today",
    "see www.energy-news.com/story.asp?id=2001&sid=98&pg=A3 for the story",
    "?partnerID=989&mailID=1882",  # a query string without its URL
    "rf=01,pf=01,sf=01,bad=0/0/0",  # key=value lists
    "settings: retries=20, timeout=09, level=3, code=E9",
    "solve x=20 and y=3 for the 2nd case",  # math
    "price=20 dollars, volume=1500 MW",
    "a = b and c == d; the ==== rule\n=====\nnext",
    "Caf=E9 tonight",  # one lone escape is no signature either
])
def test_text_that_is_not_quoted_printable_is_left_alone(text):
    assert not looks_quoted_printable(text)
    assert decode_qp_artifacts(text) == text


@pytest.mark.parametrize("raw,want", [
    # soft line breaks inside words and at spaces
    ("White, Stac=\ney W. and the A=\nccounting group", "White, Stacey W. and the Accounting group"),
    ("In 1993, =\nAgency Ruled Two of Firm=\n's Units", "In 1993, Agency Ruled Two of Firm's Units"),
    # =3D is an escaped '=' and proves QP on its own
    ("the formula is x=3Dy+1", "the formula is x=y+1"),
    # trailing space/tab escaped at a line end
    ("Firm ordered all data be kept=20\nHouston Chronicle", "Firm ordered all data be kept \nHouston Chronicle"),
    # Enron column layouts: tabs between names
    ("Premier=09=09ENA/EGL and County=09EPMI", "Premier\t\tENA/EGL and County\tEPMI"),
    # UTF-8 escapes: each sequence is one character
    ("Ren=C3=A9e and Andr=C3=A9 in M=C3=BCnchen", "Renée and André in München"),
    ("price =E2=82=AC10, the =E2=80=9Cdeal=E2=80=9D", "price €10, the “deal”"),
    # a cp1252 letter next to a proof of QP
    ("Caf=E9 tonight,=20\nthen home", "Café tonight, \nthen home"),
])
def test_quoted_printable_bodies_decode(raw, want):
    assert looks_quoted_printable(raw)
    assert decode_qp_artifacts(raw) == want


@pytest.mark.parametrize("raw,want", [
    # a real QP body that also holds a URL with '=digits': the URL keeps its own text, =3D decodes
    ("Read the sto=\nry at http://x.com/r?partnerID=989&mailID=1882 now",
     "Read the story at http://x.com/r?partnerID=989&mailID=1882 now"),
    ("Link: http://x.com/r?a=3D1&b=3D2=20\nbye", "Link: http://x.com/r?a=1&b=2 \nbye"),
    # escapes that would be control characters or stray signs are text
    ("soft=\nbreak, ?partnerID=989&mailID=1882", "softbreak, ?partnerID=989&mailID=1882"),
    ("soft=\nbreak, code =01 and =1F and =98", "softbreak, code =01 and =1F and =98"),
    # decimal escapes glued to numbers or closing key=value are that text
    ("soft=\nbreak, x=20 and id=0912", "softbreak, x=20 and id=0912"),
])
def test_quoted_printable_never_invents_bytes(raw, want):
    out = decode_qp_artifacts(raw)
    assert out == want
    assert not CONTROL.search(out)


def test_declared_quoted_printable_decodes_without_a_signature():
    assert decode_qp_artifacts("Caf=E9 tonight", declared=True) == "Café tonight"
    assert decode_qp_artifacts("mail=01x", declared=True) == "mail=01x"  # still no control characters


# ------------------------------------------------------------------ Lotus punctuation codes
@pytest.mark.parametrize("raw,want", [
    ("California=01,s power crisis", "California\u2019s power crisis"),
    ("the =01&Repurchasers=018 shall", "the \u201cRepurchasers\u201d shall"),
    ("we don=01,t know; it=01,s the players=01, call", "we don\u2019t know; it\u2019s the players\u2019 call"),
    ("prices =01) not costs =01* rose", "prices \u2013 not costs \u2014 rose"),
    ("=01+maybe=01, and wait=01(", "\u2018maybe\u2019 and wait\u2026"),
    ("Enron=01v Online", "Enron\u2122 Online"),
    # a QP mark on the same line does not stop the repair
    ("California=01,s crisis=20", "California\u2019s crisis=20"),
])
def test_lotus_codes_become_their_characters(raw, want):
    assert repair_lotus_punctuation(raw) == want


@pytest.mark.parametrize("text", [
    "rf=01,pf=01,sf=01,bad=0/0/0",  # a key=value list: '=01,' is a value and a comma
    "sub=01,ses=02",
    "x=01, y=02",
    "id=0180 and id=0170",  # a digit code glued to more digits
    "a==01,b",
])
def test_lotus_lookalikes_are_left_alone(text):
    assert repair_lotus_punctuation(text) == text


def test_lotus_table_is_punctuation():
    assert all(not c.isalnum() for c in LOTUS_PUNCTUATION.values())
    assert LOTUS_PUNCTUATION[","] == "\u2019" and LOTUS_PUNCTUATION["&"] == "\u201c" and LOTUS_PUNCTUATION["8"] == "\u201d"


def test_lotus_repair_is_a_counted_step_and_reaches_the_model_without_control_characters():
    t = Thread("1", "S", [Email("A", body="California=01,s power crisis and the =01&Repurchasers=018.\n\n"
                                          "More at http://x.com/?partnerID=989&mailID=1882 and a soft=\nbreak.")], "s")
    stats = new_stats()
    c = clean_thread(t, CleanConfig(), stats)
    body = c.emails[0].body
    assert body.startswith("California\u2019s power crisis and the \u201cRepurchasers\u201d.")
    assert "partnerID=989&mailID=1882" in body and "softbreak" in body
    assert not CONTROL.search(body)
    rec = stats["steps"]["repair_lotus_punctuation"]
    assert rec["enabled"] and rec["emails_changed"] == 1
    assert rec["audit"]["unique_words_unmatched"] == 0 and rec["audit"]["blocks"]["Lotus punctuation code"] == 3
    off = clean_thread(t, CleanConfig(repair_lotus_punctuation=False))
    assert "=01," in off.emails[0].body


def _rendered(threads):
    rc = Config().data.render
    return {t.thread_id: render_plain(clean_thread(t, CleanConfig()), rc) for t in threads}


def test_no_control_characters_in_rendered_synthetic_sources(tmp_path):
    write_kaggle_csv(tmp_path, 300, seed=0)
    bad = {tid: CONTROL.findall(s) for tid, s in _rendered(read_source(tmp_path).threads).items() if CONTROL.search(s)}
    assert bad == {}


def test_no_control_characters_in_rendered_public_sample(kaggle_sample):
    bad = {tid: CONTROL.findall(s) for tid, s in _rendered(read_source(kaggle_sample).threads).items()
           if CONTROL.search(s)}
    assert bad == {}
