"""Rendering under a token budget, and the hash split."""
import random

import pytest

from threadsum.config import CleanConfig, RenderConfig
from threadsum.data.clean import clean_thread
from threadsum.data.readers import read_source
from threadsum.data.render import render_plain, render_thread
from threadsum.data.split import assign_split, split_ids
from threadsum.data.synth import write_kaggle_csv
from threadsum.model import train_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    write_kaggle_csv(root / "data", 25, seed=11)
    threads = [clean_thread(t, CleanConfig()) for t in read_source(root / "data").threads]
    tok = train_tokenizer([render_plain(t, RenderConfig()) for t in threads], 1000, root / "tok")
    return threads, tok


def test_no_budget_renders_everything(corpus):
    threads, _ = corpus
    t = threads[0]
    r = render_thread(t, RenderConfig())
    assert not r.truncated and r.kept_fraction == 1.0
    assert r.text.startswith(f"Subject: {t.subject}\n") and r.text.count("\n---\n") == len(t.emails) - 1
    for e in t.emails:
        assert e.body in r.text and f"From: {e.sender}" in r.text


@pytest.mark.parametrize("budget", [64, 300, 512])
def test_smart_fits_and_keeps_first_and_latest(corpus, budget):
    threads, tok = corpus
    for t in threads:
        r = render_thread(t, RenderConfig(), tok, budget)
        n = len(tok(r.text)["input_ids"])
        assert n <= budget and r.n_tokens == n
        full = len(tok(render_plain(t, RenderConfig()))["input_ids"])
        assert r.truncated == (full > budget)
        if r.truncated:
            assert 0 < r.kept_fraction < 1
            if budget >= 300:  # first and latest email headers survive
                assert f"From: {t.emails[0].sender}" in r.text
                assert f"Date: {t.emails[-1].date:%Y-%m-%d %H:%M}" in r.text
                assert r.text.index(t.emails[0].body[:8]) < len(r.text) // 2


def test_smart_shortens_long_bodies_not_short_ones(corpus):
    from datetime import datetime

    from threadsum.data.types import Email, Thread

    _, tok = corpus
    long_body = " ".join(f"The desk reviewed item {i} of the storage report." for i in range(200))
    emails = [Email("Kay Mann", ["Sara"], "Could you please send the curves?", datetime(2001, 1, 1)),
              Email("Sara", ["Kay Mann"], long_body, datetime(2001, 1, 2)),
              Email("Kay Mann", ["Sara"], "Thanks, that settles it.", datetime(2001, 1, 3))]
    t = Thread("x", "Curves", emails)
    r = render_thread(t, RenderConfig(), tok, 200)
    assert r.truncated and r.emails_dropped == 0 and len(tok(r.text)["input_ids"]) <= 200
    assert "Could you please send the curves?" in r.text and "Thanks, that settles it." in r.text
    assert "item 0 of" in r.text and "item 199" not in r.text and "[...]" in r.text


def test_head_policy_cuts_the_end(corpus):
    threads, tok = corpus
    t = threads[0]
    r = render_thread(t, RenderConfig(truncation="head"), tok, 48)
    assert len(tok(r.text)["input_ids"]) <= 48
    assert render_plain(t, RenderConfig()).startswith(r.text)


def test_split_deterministic_order_independent_and_fractional():
    ids = [str(i) for i in range(1, 5001)]
    a = split_ids(ids, 0.1, 0.1, "s")
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    b = split_ids(shuffled[:3000], 0.1, 0.1, "s")  # fewer threads, other order: same assignment
    assert all(a[k] == v for k, v in b.items())
    counts = {s: list(a.values()).count(s) for s in ("train", "validation", "test")}
    assert 400 < counts["validation"] < 600 and 400 < counts["test"] < 600
    assert split_ids(ids, 0.1, 0.1, "other") != a
    assert assign_split("7", 0.0, 0.0, "s") == "train"
