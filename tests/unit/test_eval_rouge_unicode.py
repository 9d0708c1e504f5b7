"""ROUGE on any script: the Unicode tokenizer keeps ASCII scores identical and counts other scripts."""
from __future__ import annotations

import random
import string

import pytest

pytest.importorskip("rouge_score")

from rouge_score import rouge_scorer, tokenizers  # noqa: E402

from threadsum.data.synth import generate  # noqa: E402
from threadsum.evaluate import metrics as M  # noqa: E402


def _ascii_pairs(n: int = 300) -> list[tuple[str, str]]:
    """Varied ASCII pairs: synthetic summaries and thread text, mutated, plus random printable noise."""
    rng = random.Random(7)
    threads = generate(60, seed=3)
    texts = [t.summary for t in threads] + [m.body[:400] for t in threads for m in t.mails[:2]]
    pairs = []
    for _ in range(n):
        a = rng.choice(texts)
        kind = rng.random()
        if kind < 0.3:
            b = rng.choice(texts)
        elif kind < 0.6:
            words = a.split()
            rng.shuffle(words)
            b = " ".join(words[: max(1, len(words) - rng.randint(0, 5))])
        elif kind < 0.8:
            b = a.upper().replace(" ", rng.choice([" ", "_", "-", "\t", "\n", "...", "/"]))
        else:
            b = "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 200)))
        pairs.append((a, b))
    pairs += [("", ""), ("x", ""), ("3.5 million $45 at 1:30 p.m.", "45 dollars, 13:30"), ("a_b c-d", "a b c d")]
    return pairs


def test_ascii_tokens_equal_rouge_score_default():
    default = tokenizers.DefaultTokenizer(use_stemmer=True)
    ours = M.UnicodeTokenizer()
    for a, b in _ascii_pairs():
        for text in (a, b):
            assert ours.tokenize(text) == default.tokenize(text), text


def test_ascii_scores_equal_rouge_score_default():
    default = rouge_scorer.RougeScorer(list(M.ROUGE_KEYS), use_stemmer=True)
    pairs = _ascii_pairs()
    got = M.rouge_scores([b for _, b in pairs], [a for a, _ in pairs])
    for i, (a, b) in enumerate(pairs):
        want = default.score(M.sentence_lines(a), M.sentence_lines(b))
        for k in M.ROUGE_KEYS:
            assert got[k][i] == want[k].fmeasure, (k, a, b)


def test_accented_names_are_different_words():
    s = M.rouge_scores(["Jürgen approved the deal."], ["Jörg approved the deal."])
    # jürgen != jörg: 3 of 4 unigrams match (the default tokenizer drops the umlauts and says 0.80)
    assert s["rouge1"][0] == pytest.approx(0.75)
    same = M.rouge_scores(["Jörg approved the deal."], ["Jörg approved the deal."])
    assert same["rouge1"][0] == pytest.approx(1.0)


def test_composed_and_decomposed_accents_match():
    composed, decomposed = "Jörg signed", "Jo\u0308rg signed"
    assert M.rouge_scores([composed], [decomposed])["rouge1"][0] == pytest.approx(1.0)


@pytest.mark.parametrize("pred,ref,rouge1", [
    ("我们明天开会", "我们明天开会", 1.0),
    ("我们明天开会", "我们今天开会", 5 / 6),  # one character of six differs
    ("会議は金曜日です", "会議は金曜日です", 1.0),
    ("हिन्दी भाषा सुंदर है", "हिन्दी भाषा सुंदर है", 1.0),
    ("हिन्दी भाषा सुंदर है", "हिन्दी भाषा कठिन है", 0.75),  # combining vowel signs stay inside words
    ("Привет мир", "Привет мир", 1.0),
])
def test_other_scripts_score(pred, ref, rouge1):
    s = M.rouge_scores([pred], [ref])
    assert s["rouge1"][0] == pytest.approx(rouge1)
    if rouge1 == 1.0:
        assert all(s[k][0] == pytest.approx(1.0) for k in M.ROUGE_KEYS)


def test_cjk_is_split_per_character_and_ascii_still_stemmed():
    tok = M.UnicodeTokenizer().tokenize("开会 running Meetings 2024")
    assert tok == ["开", "会", "run", "meet", "2024"]
