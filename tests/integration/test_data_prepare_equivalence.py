"""The batched prepare (render_threads, render's ids reused, cleaning pool) writes exactly what the
straightforward per-thread path gives: byte-identical threads/*.jsonl and the same token ids."""
import json

import pytest

from threadsum.config import RenderConfig, load_config
from threadsum.data import prepare as prep_mod
from threadsum.data.clean import clean_thread, new_stats
from threadsum.data.prepare import prepare
from threadsum.data.prepared import SPLITS, open_prepared
from threadsum.data.readers import read_source
from threadsum.data.render import render_thread, render_threads
from threadsum.data.split import assign_split
from threadsum.data.synth import write_kaggle_csv
from threadsum.model import load_tokenizer, train_tokenizer

# with this corpus and tokenizer threads have ~390-2,400 tokens and summaries ~100-190: about half of
# each goes through truncation
MAX_SOURCE, MAX_TARGET = 900, 128

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("equiv")
    write_kaggle_csv(root / "corpus", 40, seed=7)
    threads = read_source(root / "corpus").threads
    train_tokenizer([e.body for t in threads for e in t.emails] + [t.summary for t in threads], 700, root / "tok")
    return root


def _cfg(root, out, **extra):
    over = [f"data.source={root / 'corpus'}", f"data.prepared_dir={out}", f"data.max_source_tokens={MAX_SOURCE}",
            f"data.max_target_tokens={MAX_TARGET}", "model.init=pretrained", f"model.name_or_path={root / 'tok'}",
            f"model.tokenizer={root / 'tok'}"]
    return load_config(None, over + [f"{k}={v}" for k, v in extra.items()])


def _straightforward(cfg):
    """One thread at a time, every text tokenized on its own: what prepare's outputs must equal."""
    d = cfg.data
    tok = load_tokenizer(cfg.model.tokenizer)
    stats = new_stats()
    lines = {s: [] for s in SPLITS}
    ids = {s: [] for s in SPLITS}
    for th in read_source(d.source, d.format, max_body_chars=d.max_body_chars, require_summary=True).threads:
        c = clean_thread(th, d.clean, stats)
        assert any(e.body.strip() for e in c.emails)
        res = render_thread(c, d.render, tok, d.max_source_tokens)
        full = res.n_tokens if not res.truncated else max(res.n_tokens, round(res.n_tokens / max(res.kept_fraction,
                                                                                                   1e-9)))
        rec = {"thread_id": c.thread_id, "subject": c.subject, "source": res.text, "summary": c.summary,
               "first_email": c.emails[0].body, "n_emails": len(c.emails), "source_tokens": res.n_tokens,
               "truncated": res.truncated, "kept_fraction": round(res.kept_fraction, 4), "clean_tokens": full}
        s = assign_split(c.thread_id, d.validation_fraction, d.test_fraction, d.split_seed)
        lines[s].append(json.dumps(rec, ensure_ascii=False) + "\n")
        ids[s].append((tok(res.text, max_length=d.max_source_tokens, truncation=True)["input_ids"],
                       tok(text_target=c.summary, max_length=d.max_target_tokens, truncation=True)["input_ids"]))
    return {s: "".join(v).encode("utf-8") for s, v in lines.items()}, ids, stats


def test_batched_prepare_equals_per_thread_path(tmp_path, setup, monkeypatch):
    monkeypatch.setattr(prep_mod, "CLEAN_CHUNK", 6)  # 40 threads -> 7 tasks for the cleaning pool
    pooled = prepare(_cfg(setup, tmp_path / "pooled", **{"data.num_proc": 2}))
    single = prepare(_cfg(setup, tmp_path / "single"))
    # both branches of the label ids (fits / re-encoded with truncation) and of render are exercised
    assert 0 < pooled["truncation"]["threads_truncated"] < 40
    assert 0 < pooled["truncation"]["targets_truncated"] < 40

    expected_lines, expected_ids, stats = _straightforward(_cfg(setup, tmp_path / "unused"))
    for out in (tmp_path / "pooled", tmp_path / "single"):
        p = open_prepared(out)
        dsd = p.datasets()
        for s in SPLITS:
            assert (out / "threads" / f"{s}.jsonl").read_bytes() == expected_lines[s], (out.name, s)
            assert list(zip(dsd[s]["input_ids"], dsd[s]["labels"])) == expected_ids[s], (out.name, s)
    stats.pop("dropped")
    assert pooled["cleaning"] == single["cleaning"] == stats
    for key in ("emails", "threads", "splits", "truncation", "tokens"):
        assert pooled[key] == single[key], key


@pytest.mark.parametrize("policy,budget", [("smart", 900), ("smart", 150), ("head", 900)])
def test_render_threads_equals_render_thread(setup, policy, budget):
    from threadsum.config import CleanConfig

    tok = load_tokenizer(str(setup / "tok"))
    cfg = RenderConfig(truncation=policy)
    threads = [clean_thread(t, CleanConfig()) for t in read_source(setup / "corpus").threads]
    batched = render_threads(threads, cfg, tok, budget)
    assert any(r.truncated for r in batched) and (budget < 400 or not all(r.truncated for r in batched))
    if budget < 400 and policy == "smart":
        assert any(r.emails_dropped for r in batched)
    for t, b in zip(threads, batched):
        one = render_thread(t, cfg, tok, budget)
        assert (b.text, b.truncated, b.kept_fraction, b.n_tokens, b.emails_dropped, b.input_ids) == \
            (one.text, one.truncated, one.kept_fraction, one.n_tokens, one.emails_dropped, one.input_ids)
        assert b.input_ids == tok(b.text)["input_ids"] and len(b.input_ids) <= budget
