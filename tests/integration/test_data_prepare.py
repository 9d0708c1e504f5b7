"""prepare end to end on a small synthetic corpus: the folder contract, counts, cache, atomicity, strict."""
import csv
import json
import random

import pytest

from threadsum.config import load_config
from threadsum.data import prepare as prep_mod
from threadsum.data.prepare import StrictModeError, prepare, prepare_command
from threadsum.data.prepared import SPLITS, open_prepared
from threadsum.data.synth import write_kaggle_csv

pytestmark = pytest.mark.slow


def _cfg(tmp_path, src, out="prepared", **extra):
    over = [f"data.source={src}", f"data.prepared_dir={tmp_path / out}", "data.max_source_tokens=256",
            "data.max_target_tokens=64", "model.init=random", "model.name_or_path=null", "model.tiny.vocab_size=800"]
    over += [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, over)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_kaggle_csv(root, 60, seed=4)
    return root


def test_prepare_writes_the_contract_and_reuses_cache(tmp_path, corpus):
    cfg = _cfg(tmp_path, corpus)
    info = prepare(cfg)
    out = tmp_path / "prepared"
    for name in ("tokenizer", "tokenized", "threads", "config.yaml", "prepare.json", "rejects.jsonl", "report.md",
                 "source_tokens.png", "emails_per_thread.png", "target_tokens.png"):
        assert (out / name).exists(), name
    for what in ("threads", "emails"):
        c = info[what]
        assert c["input"] == c["kept"] + c["rejected"]
    assert info["threads"] == {"input": 60, "kept": 60, "rejected": 0, "by_reason": {}}
    p = open_prepared(out)
    dsd = p.datasets()
    assert sum(len(dsd[s]) for s in SPLITS) == 60 == sum(info["splits"].values())
    ids = [set(dsd[s]["thread_id"]) for s in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for s in SPLITS:
        for row in dsd[s]:
            assert len(row["input_ids"]) <= 256 and 0 < len(row["labels"]) <= 64
        recs = list(p.threads(s))
        assert [r["thread_id"] for r in recs] == dsd[s]["thread_id"]
        for r in recs:
            assert set(r) >= {"thread_id", "subject", "source", "summary", "first_email", "n_emails", "source_tokens",
                              "truncated"}
            assert r["source_tokens"] <= 256
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(p.tokenizer_dir))
    row = dsd["train"][0]
    assert tok.decode(row["labels"], skip_special_tokens=True).startswith("The email thread discusses")
    assert info["truncation"]["threads_truncated"] > 0 and "Truncation" in (out / "report.md").read_text()

    again = prepare(cfg)
    assert again["cache"]["hit"] is True and again["cache"]["key"] == info["cache"]["key"]
    assert "reused" in again["cache"]["note"]
    forced = prepare(cfg, force=True)
    assert forced["cache"]["hit"] is False and forced["splits"] == info["splits"]
    # a changed cleaning setting is a different key
    other = prepare(_cfg(tmp_path, corpus, **{"data.clean.strip_signatures": "false"}))
    assert other["cache"]["hit"] is False and other["cache"]["key"] != info["cache"]["key"]


def test_split_independent_of_row_order(tmp_path, corpus):
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    rows = list(csv.reader((corpus / "email_thread_details.csv").open(newline="")))
    body = rows[1:]
    random.Random(1).shuffle(body)
    with (shuffled / "email_thread_details.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([rows[0]] + body)
    (shuffled / "email_thread_summaries.csv").write_bytes((corpus / "email_thread_summaries.csv").read_bytes())
    a = prepare(_cfg(tmp_path, corpus, out="a"))
    b = prepare(_cfg(tmp_path, shuffled, out="b"))
    assert a["cache"]["key"] != b["cache"]["key"]
    for s in SPLITS:
        ta = [r["thread_id"] for r in open_prepared(tmp_path / "a").threads(s)]
        tb = [r["thread_id"] for r in open_prepared(tmp_path / "b").threads(s)]
        assert ta == tb


def test_crash_leaves_no_half_folder(tmp_path, corpus, monkeypatch):
    cfg = _cfg(tmp_path, corpus)

    def boom(*a, **k):
        raise KeyboardInterrupt("simulated crash while tokenizing")

    monkeypatch.setattr(prep_mod, "_tokenize", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    assert not (tmp_path / "prepared").exists()
    assert not list(tmp_path.glob(".prepared.tmp-*"))
    monkeypatch.undo()
    first = prepare(cfg)
    monkeypatch.setattr(prep_mod, "_tokenize", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, force=True)
    # the previous complete folder is untouched
    assert json.loads((tmp_path / "prepared" / "prepare.json").read_text())["cache"]["key"] == first["cache"]["key"]
    open_prepared(tmp_path / "prepared").datasets()


def test_strict_lists_problems_and_exits_nonzero(tmp_path, corpus, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    text = (corpus / "email_thread_details.csv").read_text()
    (bad / "email_thread_details.csv").write_text(text + "61,S,not a date,A,['B'],hello\n")
    (bad / "email_thread_summaries.csv").write_text((corpus / "email_thread_summaries.csv").read_text())
    cfg = _cfg(tmp_path, bad)
    with pytest.raises(StrictModeError, match="bad_timestamp"):
        prepare(_cfg(tmp_path, bad, **{"data.strict": "true"}))
    with pytest.raises(StrictModeError, match="bad_timestamp") as exc:
        prepare_command(cfg, strict=True)
    assert exc.value.exit_code == 2
    info = prepare_command(cfg)  # not strict: the row is rejected, the rest is prepared
    assert info["emails"]["by_reason"] == {"bad_timestamp": 1}
    assert info["threads"]["by_reason"] == {"thread_without_valid_emails": 1}
    rej = [json.loads(x) for x in (tmp_path / "prepared" / "rejects.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rej} == {"bad_timestamp", "thread_without_valid_emails"}


@pytest.mark.parametrize("body", ["— — ...", "&nbsp; &amp; <br>", "<p> </p> ***"])
def test_a_thread_with_nothing_to_summarize_is_rejected_by_the_summarizers_rule(tmp_path, corpus, body):
    """prepare and the Summarizer/CLI/service share one rule (data.clean.has_body_text): punctuation,
    entities or tags alone are nothing to summarize, here as at inference time."""
    from threadsum.data.clean import has_body_text

    assert not has_body_text(body)
    src = tmp_path / "src"
    src.mkdir()
    details = (corpus / "email_thread_details.csv").read_text()
    (src / "email_thread_details.csv").write_text(details + f'999,Empty,2001-01-01 10:00:00,A,"[\'B\']","{body}"\n')
    (src / "email_thread_summaries.csv").write_text((corpus / "email_thread_summaries.csv").read_text()
                                                     + "999,The thread discusses nothing.\n")
    info = prepare(_cfg(tmp_path, src))
    rejects = [json.loads(x) for x in (tmp_path / "prepared" / "rejects.jsonl").read_text().splitlines()]
    assert any(r["thread_id"] == "999" and r["reason"] in ("empty_after_cleaning", "empty_body") for r in rejects)
    assert info["threads"]["input"] == info["threads"]["kept"] + info["threads"]["rejected"]
