"""ROUGE, sentence splitting, baselines and bootstrap intervals on fixed inputs with known values."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rouge_score")

from threadsum.evaluate import metrics as M  # noqa: E402


def test_rouge_known_values():
    s = M.rouge_scores(["the cat sat on the mat"], ["the cat sat on a mat"])
    # unigrams: 5 of 6 match; bigrams: 3 of 5 (the cat, cat sat, sat on); LCS: the cat sat on mat = 5
    assert s["rouge1"][0] == pytest.approx(5 / 6)
    assert s["rouge2"][0] == pytest.approx(3 / 5)
    assert s["rougeL"][0] == pytest.approx(5 / 6)
    assert s["rougeLsum"][0] == pytest.approx(5 / 6)


def test_rouge_lsum_uses_sentences_and_rouge_l_does_not():
    # swapped sentence order: the flat LCS keeps half, the summary-level LCS keeps everything
    s = M.rouge_scores(["Gas is late. Price is high."], ["Price is high. Gas is late."])
    assert s["rougeL"][0] == pytest.approx(0.5)
    assert s["rougeLsum"][0] == pytest.approx(1.0)
    assert s["rouge1"][0] == pytest.approx(1.0)


def test_rouge_stems_and_ignores_case():
    s = M.rouge_scores(["Contracts Signed"], ["the contract was signing"])
    # stems: contract sign | the contract wa sign -> 2 matches, P = 2/2, R = 2/4
    assert s["rouge1"][0] == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_rouge_empty_and_mismatched():
    s = M.rouge_scores(["", "x"], ["a reference", ""])
    assert s["rouge1"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        M.rouge_scores(["a", "b"], ["a"])


@pytest.mark.parametrize("text,expected", [
    ("First one. Second one! Third?", ["First one.", "Second one!", "Third?"]),
    ("Mr. Smith met Dr. Jones at 3 p.m. Today.", ["Mr. Smith met Dr. Jones at 3 p.m.", "Today."]),
    ("See e.g. the deal with J. Doe. Then stop.", ["See e.g. the deal with J. Doe.", "Then stop."]),
    ("Price went to 3.5 million. OK", ["Price went to 3.5 million.", "OK"]),
    ('He said "Done." Then left.', ['He said "Done."', "Then left."]),
    ("line one\n\nline two", ["line one", "line two"]),
    ("no end punctuation", ["no end punctuation"]),
    ("", []),
])
def test_split_sentences(text, expected):
    assert M.split_sentences(text) == expected


SOURCE = """Subject: Gas deal
From: Tana Jones
To: Sara Shackleton
Date: 2002-01-29 11:23:42
Please review the gas contract. It expires Friday. Call me.
---
From: Sara Shackleton
To: Tana Jones
Date: 2002-01-29 12:00:00
Reviewed. Looks fine."""


def test_baselines():
    assert M.lead_k(SOURCE, 3) == "Please review the gas contract.\nIt expires Friday.\nCall me."
    assert M.lead_k(SOURCE, 5).splitlines()[-2:] == ["Reviewed.", "Looks fine."]
    first = "From: Tana Jones\nTo: Sara\nPlease review the gas contract. It expires Friday."
    assert M.first_email_baseline(first) == "Please review the gas contract. It expires Friday."
    assert M.subject_baseline("RE: FW: Re: Gas deal") == "Gas deal"
    preds = M.baseline_predictions([{"source": SOURCE, "first_email": first, "subject": "RE: Gas deal"}], k=2)
    assert preds == {"lead2": ["Please review the gas contract.\nIt expires Friday."],
                     "first_email": ["Please review the gas contract. It expires Friday."],
                     "subject": ["Gas deal"]}


def test_baseline_scores_known_value():
    ref = "The thread discusses the gas contract review."
    lead = M.rouge_scores(M.baseline_predictions([{"source": SOURCE}], k=1)["lead1"], [ref])
    # lead-1 "Please review the gas contract." vs the reference: the, gas, contract, review match
    # (4 of 5 prediction tokens, 4 of 7 reference tokens)
    assert lead["rouge1"][0] == pytest.approx(2 * (4 / 5) * (4 / 7) / (4 / 5 + 4 / 7))


def test_bootstrap_ci():
    v = np.array([0.0, 1.0] * 50)
    lo, hi = M.bootstrap_ci(v, samples=2000, seed=0)
    assert lo < 0.5 < hi
    # the standard error of a mean of 100 coin flips is 0.05: the 95% interval is about +-0.1
    assert 0.15 < hi - lo < 0.25
    assert M.bootstrap_ci(v, samples=2000, seed=0) == (lo, hi)  # seeded: reproducible
    assert M.bootstrap_ci([0.3] * 10, samples=100) == pytest.approx((0.3, 0.3))
    assert M.bootstrap_ci([0.7], samples=100) == (0.7, 0.7)
    assert all(np.isnan(M.bootstrap_ci([], samples=10)))
    summary = M.summarize_scores({"rougeL": v}, samples=500)
    assert summary["rougeL"]["mean"] == pytest.approx(0.5)


def test_length_stats():
    s = M.length_stats([1, 2, 3, 4, 100])
    assert s["n"] == 5 and s["median"] == 3 and s["max"] == 100 and s["mean"] == pytest.approx(22)
    assert M.length_stats([]) == {"n": 0}


def test_paired_bootstrap_sign_interval_and_share():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.2, 0.4, size=50)
    b = a + rng.uniform(0.05, 0.15, size=50)  # better on every example
    d = M.paired_bootstrap(a, b, samples=1000, seed=0)
    assert d["diff"] == pytest.approx(float((b - a).mean()))
    assert 0 < d["ci95"][0] < d["diff"] < d["ci95"][1] and d["p"] == 0.0 and d["n"] == 50
    back = M.paired_bootstrap(b, a, samples=1000, seed=0)
    assert back["diff"] == pytest.approx(-d["diff"]) and back["ci95"][1] < 0 and back["p"] == 0.0
    # no difference on average: the interval covers 0 and the share is large
    noise = a + rng.normal(0, 0.05, size=50)
    noise += a.mean() - noise.mean()
    same = M.paired_bootstrap(a, noise, samples=1000, seed=0)
    assert same["ci95"][0] < 0 < same["ci95"][1] and same["p"] > 0.5
    assert M.paired_bootstrap(a, a, samples=100)["p"] == 1.0
    assert M.paired_bootstrap(a, b, samples=1000, seed=0) == d  # seeded: reproducible
    single = M.paired_bootstrap([0.1], [0.3], samples=100)
    assert single["ci95"] == [pytest.approx(0.2)] * 2 and np.isnan(single["p"])
    with pytest.raises(ValueError, match="same examples"):
        M.paired_bootstrap([0.1, 0.2], [0.3], samples=10)
