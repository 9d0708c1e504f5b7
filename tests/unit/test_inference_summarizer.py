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
from threadsum.inference.summarizer import (  # noqa: E402
    EXIT_BAD_INPUT,
    EXIT_OK,
    InputError,
    Summarizer,
    looks_like_rfc822,
    read_threads,
    summarize_command,
    thread_from_dict,
    to_thread,
)
from threadsum.inference.tiny import build_tiny_model_dir, sample_thread  # noqa: E402


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
    ({"emails": [{"body": "x", "date": "next tuesday"}]}, "emails[0]: date"),
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
    code = summarize_command(str(model_dir), str(path), as_json=as_json, device="cpu", out=out, err=err)
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
