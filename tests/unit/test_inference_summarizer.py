"""Summarizer: input forms, the shared clean/render path, batching by length, the summarize CLI."""
from __future__ import annotations

import email
import email.policy
import io
import json
import os
import sys
from email.message import EmailMessage

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from threadsum.config import Config  # noqa: E402
from threadsum.data.types import Email, Thread  # noqa: E402
from threadsum.errors import ExitCode, ThreadsumError  # noqa: E402
from threadsum.inference.summarizer import (  # noqa: E402
    EmptySummaryError,
    InputError,
    Summarizer,
    looks_like_rfc822,
    read_threads,
    summarize_command,
    thread_from_dict,
    thread_from_text,
    to_thread,
)
from threadsum.inference.tiny import build_tiny_model_dir, sample_thread  # noqa: E402

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = ExitCode.OK, ExitCode.FAILURE, ExitCode.USAGE


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # a marker in the render template proves the saved config.yaml (not defaults) drives rendering
    return build_tiny_model_dir(
        tmp_path_factory.mktemp("tiny-model"),
        overrides={"data.render.template": "AUTHOR={sender}\nTo: {recipients}\nDate: {date}\n{body}"},
    )


@pytest.fixture(scope="module")
def summarizer(model_dir):
    torch.set_num_threads(1)  # the test machine is shared; one thread avoids oversubscription stalls
    return Summarizer.from_pretrained(str(model_dir), device="cpu")


def _eml(subject: str, body: str, sender="Alice <alice@example.com>", to="Bob <bob@example.com>", msg_id="<1@x>") -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = sender, to, subject, msg_id
    m["Date"] = "Tue, 29 Jan 2002 11:23:42 -0600"
    m.set_content(body)
    return m.as_bytes()


# ----------------------------------------------------------------------------- input coercion
def test_thread_from_dict_reads_the_jsonl_thread_form():
    t = thread_from_dict({
        "thread_id": 7, "subject": "Gas",
        "emails": [
            {"from": "Jones, Tana", "to": ["Mann, Kay"], "date": "2002-01-29 11:23:42", "body": "first"},
            {"from": "Mann, Kay", "to": "Jones, Tana, Taylor", "cc": None, "date": 1011000000, "body": "second"},
        ],
    })
    assert t.thread_id == "7" and t.subject == "Gas" and len(t.emails) == 2
    assert t.emails[0].date.year == 2002 and t.emails[0].recipients == ["Mann, Kay"]
    assert t.emails[1].date is not None and t.emails[1].recipients == ["Jones", "Tana", "Taylor"]


@pytest.mark.parametrize("bad, needle", [
    ({"emails": []}, "non-empty list"),
    ({"emails": [{"from": "a"}]}, "emails[0].body"),
    ({"emails": [{"body": "x", "date": ["2002-01-29"]}]}, "emails[0].date"),
    ({"emails": [{"body": "x", "to": 5}]}, "emails[0].to"),
    ("not a dict", "JSON object"),
])
def test_thread_from_dict_names_the_bad_field(bad, needle):
    with pytest.raises(InputError) as exc:
        thread_from_dict(bad)
    assert needle in str(exc.value)


def test_rfc822_detection():
    assert looks_like_rfc822(_eml("Hi", "body").decode())
    assert looks_like_rfc822("From: a@b.c\nSubject: x\n\nbody")
    assert not looks_like_rfc822("Hello Bob,\nplease send the contract.\nThanks")
    assert not looks_like_rfc822("Note: this is prose\nand more prose")
    assert not looks_like_rfc822("Subject: only one header\n\nbody")


def test_to_thread_accepts_every_documented_form():
    thread = Thread("t", "s", [Email(sender="a", body="b")])
    assert to_thread(thread) is thread
    plain = to_thread("Please send the revised draft by Friday.")
    assert len(plain.emails) == 1 and "revised draft" in plain.emails[0].body
    assert to_thread("same text").thread_id == to_thread("same text").thread_id  # stable ids
    msg = email.message_from_bytes(_eml("Contract", "Send it by Friday."), policy=email.policy.default)
    parsed = to_thread(msg)
    assert parsed.subject == "Contract" and "Friday" in parsed.emails[0].body
    assert to_thread(sample_thread(3)).thread_id == "t3"
    with pytest.raises(InputError, match="empty"):
        to_thread("   \n")
    with pytest.raises(InputError, match="cannot summarize a int"):
        to_thread(42)
    with pytest.raises(InputError, match="no emails"):
        to_thread(Thread("t"))


def test_read_threads_sniffs_json_jsonl_mail_and_text():
    one = json.dumps(sample_thread(1)).encode()
    assert [t.thread_id for t in read_threads(one, "x.json")] == ["t1"]
    many = json.dumps([sample_thread(1), sample_thread(2)]).encode()
    assert len(read_threads(many)) == 2
    lines = (json.dumps(sample_thread(1)) + "\n" + json.dumps(sample_thread(2)) + "\n").encode()
    assert len(read_threads(lines, "x.jsonl")) == 2 and len(read_threads(lines)) == 2
    assert read_threads(_eml("Hello", "Body text"))[0].subject == "Hello"
    assert read_threads(b"just some words")[0].emails[0].body == "just some words"
    with pytest.raises(InputError, match="not valid JSON"):
        read_threads(b'{"emails": [', "bad.json")
    with pytest.raises(InputError, match="empty"):
        read_threads(b"  ")


# ------------------------------------------------------------------------------- summarizer
def test_loads_the_saved_config_and_renders_with_it(summarizer):
    assert summarizer.cfg.name == "tiny-serve"
    assert summarizer.max_source_tokens == 256
    p = summarizer.prepare(sample_thread(1))
    assert "AUTHOR=" in p.text and p.thread_id == "t1" and p.n_emails == 3


def test_prepare_is_the_training_clean_and_render_path(summarizer):
    from threadsum.data.clean import clean_thread
    from threadsum.data.render import render_thread

    cfg = summarizer.cfg
    thread = to_thread(sample_thread(5))
    expected = render_thread(clean_thread(thread, cfg.data.clean), cfg.data.render, summarizer.tokenizer,
                             cfg.data.max_source_tokens).text
    assert summarizer.prepare(sample_thread(5)).text == expected


def test_summarize_returns_text_for_each_input_form(summarizer):
    msg = email.message_from_bytes(_eml("Contract", "Send it by Friday."), policy=email.policy.default)
    for item in (sample_thread(1), "Please send the draft.", msg, to_thread(sample_thread(2))):
        out = summarizer.summarize(item)
        assert isinstance(out, str) and out.strip()
        assert "\ufffd" not in out


def test_batch_keeps_input_order_and_matches_one_at_a_time(summarizer):
    # threads of very different lengths: the batch is sorted by length internally
    items = [sample_thread(i, n_emails=1 + (i % 4), words=10 + 40 * (i % 3)) for i in range(6)]
    batched = summarizer.summarize_batch(items, batch_size=4)
    single = [summarizer.summarize(i) for i in items]
    assert batched == single
    detailed = summarizer.summarize_detailed(items)
    assert [d.thread_id for d in detailed] == [f"t{i}" for i in range(6)]
    assert [d.summary for d in detailed] == single


def test_generation_settings_come_from_the_saved_config(model_dir):
    cfg = Config.model_validate(Summarizer.from_pretrained(str(model_dir), device="cpu").cfg.to_dict())
    cfg.eval.generation.max_new_tokens = 3
    cfg.eval.generation.min_new_tokens = 3
    short = Summarizer.from_pretrained(str(model_dir), device="cpu", config=cfg)
    ids = short.tokenizer(short.summarize(sample_thread(1)), add_special_tokens=False)["input_ids"]
    assert 1 <= len(ids) <= 3


def test_missing_model_dir_is_a_clear_error(tmp_path):
    from threadsum.model import ModelLoadError

    with pytest.raises(ModelLoadError, match="does not exist"):
        Summarizer.from_pretrained(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(ModelLoadError, match="offline"):
        Summarizer.from_pretrained("threadsum-test/no-such-model", device="cpu")


def test_dtype_and_device_are_validated(model_dir):
    with pytest.raises(ValueError, match="dtype"):
        Summarizer.from_pretrained(str(model_dir), device="cpu", dtype="int3")
    s = Summarizer.from_pretrained(str(model_dir), device="cpu", dtype="bf16")
    assert s.info()["dtype"] == "bfloat16" and s.summarize("hello there")


# ------------------------------------------------------------------------------------ the CLI
def _run_cli(model_dir, path, stdin: bytes | None = None, as_json=False, monkeypatch=None):
    out, err = io.StringIO(), io.StringIO()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    try:  # as threadsum.cli does: an error is one line on stderr and its exit code
        summarize_command(str(model_dir), str(path), as_json=as_json, device="cpu", out=out, err=err)
        code = ExitCode.OK
    except ThreadsumError as exc:
        print(f"error: {exc}", file=err)
        code = exc.exit_code
    return code, out.getvalue(), err.getvalue()


def test_cli_eml_mbox_json_and_stdin(model_dir, tmp_path, monkeypatch):
    eml = tmp_path / "one.eml"
    eml.write_bytes(_eml("Gas contract", "Can you send the revised draft by Friday?"))
    code, out, err = _run_cli(model_dir, eml)
    assert code == EXIT_OK and out.strip() and not err.strip()

    mbox = tmp_path / "two.mbox"
    parts = [_eml("Budget", "Numbers attached.", msg_id="<a@x>"), _eml("Holiday party", "Friday at six.", msg_id="<b@x>")]
    mbox.write_bytes(b"".join(b"From sender@example.com Tue Jan 29 11:23:42 2002\n" + p + b"\n" for p in parts))
    code, out, _ = _run_cli(model_dir, mbox, as_json=True)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == EXIT_OK and len(rows) == 2
    assert {r["subject"] for r in rows} == {"Budget", "Holiday party"} and all(r["summary"] for r in rows)
    for r in rows:  # every JSON line carries the summary's claims, spans into its summary
        assert isinstance(r["claims"], list)
        assert all(r["summary"][c["start"]:c["end"]] == c["text"] for c in r["claims"])
        cov = r["coverage"]  # and what it left out of its thread
        assert set(cov) == {"left_out", "important", "carried_share"} and 0 <= cov["carried_share"] <= 1
        assert len(cov["left_out"]) <= cov["important"]
        assert all(not f["carried"] and f["important"] for f in cov["left_out"])

    js = tmp_path / "thread.json"
    js.write_text(json.dumps(sample_thread(4)))
    code, out, _ = _run_cli(model_dir, js, as_json=True)
    assert code == EXIT_OK and json.loads(out)["thread_id"] == "t4"

    code, out, _ = _run_cli(model_dir, "-", stdin=b"Bob, the pipeline capacity report is late again.", monkeypatch=monkeypatch)
    assert code == EXIT_OK and out.strip()


def test_cli_exit_codes_for_bad_input(model_dir, tmp_path, monkeypatch):
    code, _, err = _run_cli(model_dir, tmp_path / "missing.eml")
    assert code == EXIT_BAD_INPUT and "does not exist" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"emails": [{"from": "a"}]}')
    code, _, err = _run_cli(model_dir, bad)
    assert code == EXIT_BAD_INPUT and "emails[0].body" in err
    code, _, err = _run_cli(model_dir, "-", stdin=b"", monkeypatch=monkeypatch)
    assert code == EXIT_BAD_INPUT and "empty" in err
    good = tmp_path / "ok.json"
    good.write_text(json.dumps(sample_thread(1)))
    code, _, err = _run_cli(tmp_path / "no-model", good)
    assert code == EXIT_BAD_INPUT and "does not exist" in err


# ------------------------------------------------------------- nothing to summarize (issue 13)
NOTHING = [
    {"emails": [{"from": "a@x.com", "body": "   "}]},
    {"emails": [{"from": "", "body": ""}]},
    {"emails": [{"from": "a@x.com", "body": "<p> <br/> </p>&nbsp;&amp;"}, {"from": "b@x.com", "body": "\n\t"}]},
    {"emails": [{"from": "a@x.com", "body": "&nbsp;&#160;&#x20;\r\n<div></div>"}], "subject": "Budget"},
]


@pytest.mark.parametrize("thread", NOTHING)
def test_a_thread_with_no_body_text_is_refused_by_the_api_and_the_cli(summarizer, model_dir, tmp_path, thread):
    with pytest.raises(InputError, match="no body text|holds no text"):
        summarizer.summarize(thread)
    f = tmp_path / "nothing.json"
    f.write_text(json.dumps(thread))
    code, out, err = _run_cli(model_dir, f)
    assert code == EXIT_BAD_INPUT and ("no body text" in err or "holds no text" in err) and not out


def test_random_bytes_are_refused_naming_what_was_expected(model_dir, tmp_path):
    import random

    f = tmp_path / "noise.bin"
    f.write_bytes(random.Random(0).randbytes(20_000))
    code, out, err = _run_cli(model_dir, f)
    assert code == EXIT_BAD_INPUT and not out
    assert "not text or mail" in err and ".eml" in err and "Traceback" not in err
    with pytest.raises(InputError, match="not text or mail"):
        read_threads(b"%PDF-1.4\n\x00\x01\x02 binary", "x.pdf")


def test_lone_surrogates_are_repaired_and_counted(summarizer, model_dir, tmp_path):
    thread = {"thread_id": "s\ud800", "emails": [{"from": "Ann \udc00", "body": "hello \ud800 world please send \udfff"}]}
    detailed = summarizer.summarize_detailed([thread])[0]
    assert detailed.thread_id == "s\ufffd" and detailed.summary.strip()
    assert any("emails[0].body: 2 lone surrogate" in w for w in detailed.warnings)
    assert any("emails[0].from: 1" in w for w in detailed.warnings)
    text = summarizer.summarize_detailed(["hello \ud800 world please send"])[0]
    assert text.warnings == ["text: 1 lone surrogate code point (not valid Unicode) replaced by U+FFFD"]
    f = tmp_path / "surrogate.json"  # JSON escapes: the file itself is plain ASCII
    f.write_text('{"emails": [{"from": "a", "body": "hello \\ud800 world please send"}]}')
    code, out, err = _run_cli(model_dir, f)
    assert code == EXIT_OK and out.strip() and "warning: emails[0].body: 1 lone surrogate" in err
    assert "Traceback" not in err


def test_empty_summaries_are_never_reported_as_success(summarizer, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Summarizer, "generate", lambda self, texts, batch_size=None: ["" if "EMPTY" in t else "ok"
                                                                                      for t in texts])
    with pytest.raises(EmptySummaryError, match="empty summary") as exc:
        summarizer.summarize_batch([sample_thread(1), {"thread_id": "e", "emails": [{"body": "EMPTY here"}]}])
    assert exc.value.thread_ids == ["e"] and [r.summary for r in exc.value.results] == ["ok", ""]
    f = tmp_path / "two.json"
    f.write_text(json.dumps([sample_thread(1), {"thread_id": "e", "emails": [{"body": "EMPTY here"}]}]))
    code, out, err = _run_cli(model_dir, f, as_json=True)
    assert code == EXIT_FAILURE and "'e'" in err and "empty summary" in err
    assert [json.loads(line)["thread_id"] for line in out.splitlines()] == ["t1"]


# ------------------------------------------------------------------- ids and pasted threads
def test_ids_derive_from_the_whole_content_and_given_fields_are_kept():
    a = thread_from_text("same body\n\nsigned A")
    b = thread_from_text("same body\n\nsigned B")
    assert a.thread_id != b.thread_id and a.thread_id == thread_from_text("same body\n\nsigned A").thread_id
    e1 = _eml("Q3 budget", "x" * 300 + " one").decode()
    e2 = _eml("Q3 budget", "x" * 300 + " two").decode()
    assert thread_from_text(e1).thread_id != thread_from_text(e2).thread_id
    kept = thread_from_text("Please send it.", thread_id="abc-123", subject="Q3 budget")
    assert (kept.thread_id, kept.subject) == ("abc-123", "Q3 budget")
    d1 = thread_from_dict({"emails": [{"from": "a", "body": "x"}]})
    d2 = thread_from_dict({"emails": [{"from": "b", "body": "x"}]})
    assert d1.thread_id != d2.thread_id


PASTED = """From: Ann Lee <ann@example.com>
To: Bob Stone <bob@example.com>
Subject: Q3 budget
Date: Mon, 14 May 2001 09:12:00 -0000

Can you send the revised Q3 budget by Friday?

From: Bob Stone <bob@example.com>
To: Ann Lee <ann@example.com>
Subject: Re: Q3 budget
Date: Mon, 14 May 2001 11:40:00 -0000

Yes, I will send it Thursday after legal signs off.
"""


def test_pasted_header_blocks_are_emails(model_dir, monkeypatch):
    t = to_thread(PASTED)
    assert len(t.emails) == 2 and t.subject == "Q3 budget"
    assert [e.sender for e in t.emails] == ["Ann Lee <ann@example.com>", "Bob Stone <bob@example.com>"] or \
        [e.sender.split()[0] for e in t.emails] == ["Ann", "Bob"]
    assert "Thursday" in t.emails[1].body and "From:" not in t.emails[0].body
    assert len(read_threads(PASTED.encode(), "<stdin>")[0].emails) == 2  # the CLI's stdin path
    code, out, _ = _run_cli(model_dir, "-", stdin=PASTED.encode(), as_json=True, monkeypatch=monkeypatch)
    assert code == EXIT_OK and json.loads(out)["n_emails"] == 2
    # prose with a colon-line is not a header block
    assert len(to_thread("Note: call Bob\n\nFrom: the desk of Ann\nthanks").emails) == 1


def test_an_unreadable_date_is_a_warning_not_a_refusal():
    warnings = []
    t = thread_from_dict({"emails": [{"body": "x", "date": "next tuesday"}]}, warnings=warnings)
    assert t.emails[0].date is None and len(warnings) == 1 and "emails[0].date 'next tuesday'" in warnings[0]


def test_invalid_json_names_the_character_position():
    with pytest.raises(InputError, match="character position 12"):
        read_threads(b'{"emails": [', "bad.json")


def test_pasted_header_blocks_are_emails_of_one_thread():
    """CLI stdin, the page and {"text": ...} share the readers' pasted-thread parser."""
    from threadsum.inference.inputs import threads_from_text

    pasted = ("From: Ann Smith\nTo: Bob Jones\nSubject: Q3 budget\nBob, can you send the revised Q3 budget by Friday?\n"
              "From: Bob Jones\nTo: Ann Smith\nYes, I will send it Thursday after legal signs off.\n")
    (thread,) = threads_from_text(pasted)
    assert [e.sender for e in thread.emails] == ["Ann Smith", "Bob Jones"]
    assert thread.subject == "Q3 budget" and thread.emails[1].body.startswith("Yes, I will send it Thursday")


@pytest.mark.parametrize("beams", [1, 3])
def test_engine_returns_n_candidates_and_rerank_keeps_the_chosen_one(summarizer, beams):
    from threadsum.verify.rerank import choose_grounded, rendered_thread
    from threadsum.verify import index_thread

    gen = summarizer.cfg.eval.generation.model_copy(update={"rerank": "grounding", "rerank_candidates": 3,
                                                            "num_beams": beams, "max_new_tokens": 12})
    text = summarizer.prepare(sample_thread(2)).text
    ids = summarizer.source_tokenizer([text, text[:200]], truncation=True,
                                      max_length=summarizer.max_source_tokens)["input_ids"]
    seen = []

    def choose(i, candidates, scores):
        seen.append((i, list(candidates)))
        return len(candidates) - 1  # the last: proves the engine keeps what the chooser picks

    batches = list(summarizer.engine.generate_batches(ids, gen, choose=choose))
    assert sorted(i for i, _ in seen) == [0, 1] and all(len(c) == 3 for _, c in seen)
    for b in batches:
        assert all(len(c) == 3 for c in b.candidates) and all(len(s) == 3 for s in b.scores)
        assert b.texts == [c[-1] for c in b.candidates]
    top = list(summarizer.engine.generate_batches(ids, gen))  # no chooser: the top beam
    assert all(b.texts == [c[0] for c in b.candidates] for b in top)
    # the Summarizer reranks through the same rule
    summarizer.cfg.eval.generation = gen
    try:
        out = summarizer.generate([text])[0]
    finally:
        summarizer.cfg.eval.generation = summarizer.cfg.eval.generation.model_copy(update={"rerank": "none"})
    cands = next(b for b in top if 0 in b.indices).candidates[0] if beams else None
    assert out == cands[choose_grounded(index_thread(rendered_thread(text)), cands)]
