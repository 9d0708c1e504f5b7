"""ROUGE, baselines, length statistics, bootstrap intervals and the paired bootstrap: pure functions.

Scores are F1 in [0, 1] (reports show them x100). ROUGE-Lsum needs sentences on separate lines;
``split_sentences`` is a small regex splitter so scoring never needs an nltk download.

ROUGE counts words of every script: rouge-score's default tokenizer keeps only a-z and 0-9, so
two identical Chinese or Hindi summaries score 0 and accented letters vanish ("Jörg" -> "j rg").
``UnicodeTokenizer`` replaces it and gives exactly the default tokens on ASCII text.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np

from threadsum.deps import require

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A period after these words rarely ends a sentence in business mail (a.m./p.m. often do).
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "inc", "corp", "co", "ltd",
    "no", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    "e.g", "i.e", "approx", "dept", "est", "fig", "u.s",
}
# candidate boundary: end punctuation (optionally closing quote/bracket), whitespace, then a
# character that can start a sentence
_BOUNDARY = re.compile(r"(?<=[.!?])([\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")
_LAST_WORD = re.compile(r"([A-Za-z.]+)\.[\"')\]]*$")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences at line breaks and at ./!/? followed by a capital or digit.

    Known abbreviations (Mr., e.g., Inc.) and single initials ("J. Smith") do not end a sentence.
    """
    sentences: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        start = 0
        for m in _BOUNDARY.finditer(line):
            head = line[start:m.start()]
            w = _LAST_WORD.search(head)
            if w:
                word = w.group(1).lower().rstrip(".")
                if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                    continue
            end = m.end(1)
            piece = line[start:end].strip()
            if piece:
                sentences.append(piece)
            start = m.end()
        piece = line[start:].strip()
        if piece:
            sentences.append(piece)
    return sentences


def sentence_lines(text: str) -> str:
    """Text with one sentence per line, the form rouge-score's ROUGE-Lsum expects."""
    return "\n".join(split_sentences(text))


# A word is a run of letters, combining marks and digits of any script (marks matter: Devanagari
# vowel signs are category M, so a letters-only pattern would cut Hindi words apart). Han, kana
# and other scripts written without spaces between words are counted one character per token, the
# usual ROUGE practice for Chinese and Japanese.
_WORD = r"[\p{L}\p{M}\p{N}]+"
_PER_CHARACTER = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Bopomofo}]"
_ASCII_TOKEN = re.compile(r"^[a-z0-9]+$")


class UnicodeTokenizer:
    """rouge-score tokenizer for any script: ``tokenize(text) -> list[str]`` (lower-cased tokens).

    Text is NFKC-normalised and lower-cased; tokens are runs of letters, marks and digits of every
    script; each Han / Hiragana / Katakana / Bopomofo character is its own token. ASCII tokens
    longer than 3 characters get Porter stemming exactly as rouge-score's default tokenizer does
    (``use_stemmer=True``), so on ASCII text the tokens, and hence the scores, are unchanged.
    Other tokens are not stemmed: Porter rules are English-only. Scripts other than CJK that are
    written without spaces (Thai, Lao, Khmer, Myanmar) stay one token per space-delimited run.
    """

    def __init__(self) -> None:
        import regex
        from nltk.stem import porter  # rouge-score's own dependency and stemmer

        self._stemmer = porter.PorterStemmer()
        self._token = regex.compile(f"{_PER_CHARACTER}|{_WORD}")
        self._split = regex.compile(f"(?={_PER_CHARACTER})|(?<={_PER_CHARACTER})")

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` by the rules in the class docstring (None or empty text: no tokens)."""
        text = unicodedata.normalize("NFKC", text or "").lower()
        tokens: list[str] = []
        for run in self._token.findall(text):
            tokens.extend(t for t in self._split.split(run) if t)
        return [self._stemmer.stem(t) if len(t) > 3 and _ASCII_TOKEN.match(t) else t for t in tokens]


@lru_cache(maxsize=1)
def _scorer():
    require("rouge_score", "train")
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True, tokenizer=UnicodeTokenizer())


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-example ROUGE F1 for each key: {'rouge1': array(n), ...}.

    Both sides are re-lined by ``split_sentences`` (the tokenizer ignores newlines, so only
    ROUGE-Lsum sees the sentence boundaries).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; they must pair up")
    scorer = _scorer()
    out = {k: np.zeros(len(predictions), dtype=np.float64) for k in ROUGE_KEYS}
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        scores = scorer.score(sentence_lines(ref), sentence_lines(pred))
        for k in ROUGE_KEYS:
            out[k][i] = scores[k].fmeasure
    return out


def _bootstrap_means(v: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Means of ``samples`` resamples (with replacement) of the 1-D array ``v``: shape (samples,)."""
    rng = np.random.default_rng(seed)
    means = np.empty(samples, dtype=np.float64)
    # chunked so 10k resamples of 10k examples never hold a 100M-element index matrix
    chunk = max(1, 2_000_000 // v.size)
    for lo in range(0, samples, chunk):
        hi = min(samples, lo + chunk)
        idx = rng.integers(0, v.size, size=(hi - lo, v.size))
        means[lo:hi] = v[idx].mean(axis=1)
    return means


def bootstrap_ci(values: Sequence[float] | np.ndarray, samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling examples with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"), float("nan"))
    if samples <= 0 or v.size == 1:
        m = float(v.mean())
        return (m, m)
    means = _bootstrap_means(v, samples, seed)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def paired_bootstrap(baseline: Sequence[float] | np.ndarray, other: Sequence[float] | np.ndarray,
                     samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Paired bootstrap of ``other - baseline`` over the same examples (resample examples, mean difference).

    Args:
        baseline: per-example scores of the reference system, shape (n,).
        other: per-example scores of the compared system on the same n examples, in the same order.
        samples: resamples; 0 gives the point estimate only.
        seed: seed of the resampling (the same seed and n resample the same examples, so the
            differences of several metrics are computed on the same resamples).
        level: coverage of the interval.

    Returns:
        ``{"diff": mean difference, "ci95": [lo, hi] (percentile interval of the resampled mean
        differences), "p": two-sided share (twice the share of resampled differences on the other
        side of 0 from the observed one, at most 1; 1.0 when the observed difference is 0; nan
        without resampling), "n": examples, "samples": resamples}``. Positive ``diff``: ``other``
        scores higher.

    Raises:
        ValueError: the two arrays differ in length.
    """
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} baseline scores but {b.size} other scores; a paired bootstrap needs the same examples")
    d = b - a
    if d.size == 0:
        return {"diff": float("nan"), "ci95": [float("nan"), float("nan")], "p": float("nan"), "n": 0, "samples": samples}
    observed = float(d.mean())
    if samples <= 0 or d.size == 1:
        return {"diff": observed, "ci95": [observed, observed], "p": float("nan"), "n": int(d.size), "samples": 0}
    means = _bootstrap_means(d, samples, seed)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    if observed > 0:
        p = min(1.0, 2.0 * float(np.mean(means <= 0)))
    elif observed < 0:
        p = min(1.0, 2.0 * float(np.mean(means >= 0)))
    else:
        p = 1.0
    return {"diff": observed, "ci95": [float(low), float(high)], "p": p, "n": int(d.size), "samples": samples}


def summarize_scores(per_example: dict[str, np.ndarray], samples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """{'rouge1': {'mean': mean F1, 'ci95': [lo, hi]}, ...} from per-example scores."""
    out = {}
    for k, v in per_example.items():
        v = np.asarray(v, dtype=np.float64)
        out[k] = {"mean": float(v.mean()) if v.size else float("nan"), "ci95": list(bootstrap_ci(v, samples, seed))}
    return out


def length_stats(values: Iterable[float]) -> dict[str, float]:
    """mean / median / p10 / p90 / min / max of a list of lengths."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p10": float(np.quantile(v, 0.1)),
        "p90": float(np.quantile(v, 0.9)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def word_count(text: str) -> int:
    """Number of whitespace-separated words in ``text``."""
    return len(text.split())


# ------------------------------------------------------------------------------------ baselines
# header lines that a render template puts before each email body: not content, so a lead
# baseline that copied them would be scored on boilerplate
_HEADER_LINE = re.compile(r"^\s*(from|to|cc|bcc|date|sent|subject)\s*:", re.IGNORECASE)
_RULE_LINE = re.compile(r"^\s*[-=_*~#]{3,}\s*$")


def body_text(source: str) -> str:
    """The rendered thread without header lines (From:/To:/Date:/Subject:...) and separator rules."""
    kept = [ln for ln in source.splitlines() if not _HEADER_LINE.match(ln) and not _RULE_LINE.match(ln)]
    return "\n".join(kept)


def lead_k(source: str, k: int = 3) -> str:
    """The first k sentences of the thread's text (headers and separators skipped)."""
    return "\n".join(split_sentences(body_text(source))[:k])


def first_email_baseline(first_email: str) -> str:
    """The whole first email (headers skipped) as the summary."""
    return body_text(first_email or "").strip()


def subject_baseline(subject: str) -> str:
    """The subject line without reply/forward prefixes."""
    return re.sub(r"^\s*((re|fw|fwd)\s*:\s*)+", "", subject or "", flags=re.IGNORECASE).strip()


def baseline_predictions(records: Sequence[dict], k: int = 3) -> dict[str, list[str]]:
    """Baseline summaries for thread records (prepared threads jsonl rows): lead-k, first email, subject."""
    return {
        f"lead{k}": [lead_k(r.get("source") or "", k) for r in records],
        "first_email": [first_email_baseline(r.get("first_email") or "") for r in records],
        "subject": [subject_baseline(r.get("subject") or "") for r in records],
    }
