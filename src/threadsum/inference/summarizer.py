"""Summarizer: load a trained model once, turn threads into summaries.

The CLI (`threadsum summarize`), the HTTP service and evaluation all go through this class, and
it goes through the same ``clean_thread`` -> ``render_thread`` path that ``prepare`` used for
training, with the settings saved in the model folder's ``config.yaml``. A model fed text that
was cleaned or rendered differently from its training data silently loses quality, so there is
no second copy of that logic here.

Accepted inputs (``summarize`` / ``summarize_batch`` / ``prepare``):

- ``threadsum.data.types.Thread``
- ``str``: an RFC 822 message (``From:``/``Subject:`` headers, blank line, body) or plain text
  (one pasted thread, used as the body of a single email)
- ``email.message.Message`` (one parsed mail)
- ``dict`` in the JSONL thread form
  ``{thread_id, subject?, emails: [{from, to, cc?, date, subject?, body}], summary?}``
"""
from __future__ import annotations

import email.message
import email.policy
import hashlib
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Union

from threadsum.config import Config, ConfigError, load_config
from threadsum.data.types import Email, Thread
from threadsum.deps import require
from threadsum.errors import InputError  # noqa: F401 - re-exported

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from threadsum.inference.engine import Engine

ThreadLike = Union[Thread, str, email.message.Message, dict]


@dataclass
class PreparedInput:
    """One thread after cleaning and rendering: exactly what the model reads."""

    thread_id: str
    subject: str
    text: str
    n_emails: int
    truncated: bool
    kept_fraction: float


@dataclass
class Summary:
    thread_id: str
    subject: str
    summary: str
    n_emails: int
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "thread_id": self.thread_id,
            "subject": self.subject,
            "summary": self.summary,
            "n_emails": self.n_emails,
            "truncated": self.truncated,
        }


# ------------------------------------------------------------------------------ input coercion
_HEADER_LINE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*:[ \t]")
_MAIL_HEADERS = {"from", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references", "sender"}


def looks_like_rfc822(text: str) -> bool:
    """True when ``text`` starts with a block of mail headers (at least From or Subject)."""
    head = text.lstrip("\ufeff").split("\n\n", 1)[0].split("\r\n\r\n", 1)[0]
    lines = head.splitlines()
    if not lines or not (_HEADER_LINE.match(lines[0]) or lines[0].startswith("From ")):
        return False
    names = set()
    for line in lines:
        if line[:1] in (" ", "\t"):  # folded continuation of the previous header
            continue
        if line.startswith("From ") and not names:  # mbox separator line
            continue
        if not _HEADER_LINE.match(line) and not line.endswith(":"):
            return False
        names.add(line.split(":", 1)[0].strip().lower())
    return bool(names & {"from", "subject"}) and len(names & _MAIL_HEADERS) >= 2


def _stable_id(text: str) -> str:
    return "text-" + hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:12]


def _parse_date(value: Any, where: str) -> Optional[datetime]:
    """The readers' timestamp parsing (naive UTC), but a bad date is an error here, not a reject."""
    from threadsum.data.readers import parse_timestamp

    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    parsed = parse_timestamp(value) if isinstance(value, (str, int, float)) else None
    if parsed is None:
        raise InputError(
            f"{where}: date {str(value)[:60]!r} is not understood; use ISO 8601 ('2002-01-29 11:23:42'), "
            f"an RFC 2822 date or epoch seconds"
        )
    return parsed


def _names(value: Any, where: str) -> list[str]:
    """Recipients as the readers parse them (Kaggle list literals, Enron 'Last, First' pairs)."""
    from threadsum.data.readers import parse_recipients

    if value is None:
        return []
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return parse_recipients([v for v in value if v.strip()])[0]
    if isinstance(value, str):
        return parse_recipients(value)[0]
    raise InputError(f"{where} must be a string or a list of strings, got {type(value).__name__}")


def thread_from_dict(data: dict, default_id: str = "thread") -> Thread:
    """A Thread from the JSONL thread form; raises InputError naming the bad field."""
    if not isinstance(data, dict):
        raise InputError(f"a thread must be a JSON object, got {type(data).__name__}")
    emails_in = data.get("emails")
    if not isinstance(emails_in, list) or not emails_in:
        raise InputError("thread needs 'emails': a non-empty list of {from, to, date, body} objects")
    emails: list[Email] = []
    for i, e in enumerate(emails_in):
        where = f"emails[{i}]"
        if not isinstance(e, dict):
            raise InputError(f"{where} must be an object with from, to, date, body")
        body = e.get("body")
        if not isinstance(body, str):
            raise InputError(f"{where}.body is required and must be a string")
        sender = e.get("from", e.get("sender", ""))
        if sender is None:
            sender = ""
        if not isinstance(sender, str):
            raise InputError(f"{where}.from must be a string")
        subject = e.get("subject") or ""
        if not isinstance(subject, str):
            raise InputError(f"{where}.subject must be a string")
        emails.append(
            Email(
                sender=sender,
                recipients=_names(e.get("to", e.get("recipients")), f"{where}.to"),
                cc=_names(e.get("cc"), f"{where}.cc"),
                body=body,
                date=_parse_date(e.get("date", e.get("timestamp")), where),
                subject=subject,
            )
        )
    subject = data.get("subject") or next((e.subject for e in emails if e.subject), "")
    if not isinstance(subject, str):
        raise InputError("thread 'subject' must be a string")
    thread_id = data.get("thread_id")
    thread_id = default_id if thread_id is None or thread_id == "" else str(thread_id)
    summary = data.get("summary")
    return Thread(thread_id=thread_id, subject=subject, emails=emails, summary=summary if isinstance(summary, str) else None)


def threads_from_mail_bytes(data: bytes) -> list[Thread]:
    """Threads of one .eml / .mbox payload, parsed by the same reader that prepare uses."""
    from threadsum.data.readers import parse_mail_bytes

    try:
        threads = parse_mail_bytes(data)
    except Exception as exc:  # noqa: BLE001 - the reader's own error types are its business
        raise InputError(f"could not parse the mail message: {exc}") from exc
    if not threads:
        raise InputError("the mail message holds no email (no headers or body found)")
    return threads


def thread_from_text(text: str) -> Thread:
    """Plain text becomes the body of one email; an RFC 822 message is parsed as mail."""
    if not isinstance(text, str):
        raise InputError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError("the text is empty; paste an email thread or an RFC 822 message")
    if looks_like_rfc822(text):
        threads = threads_from_mail_bytes(text.encode("utf-8"))
        if len(threads) > 1:
            raise InputError(f"the text holds {len(threads)} threads; summarize them one at a time (or use summarize_batch)")
        return threads[0]
    return Thread(thread_id=_stable_id(text), subject="", emails=[Email(sender="", body=text)])


def to_thread(item: ThreadLike, index: int = 0) -> Thread:
    """Coerce any accepted input to a Thread (raises InputError)."""
    if isinstance(item, Thread):
        if not item.emails:
            raise InputError(f"thread '{item.thread_id}' has no emails")
        return item
    if isinstance(item, str):
        return thread_from_text(item)
    if isinstance(item, email.message.Message):
        threads = threads_from_mail_bytes(item.as_bytes(policy=email.policy.compat32))
        return threads[0]
    if isinstance(item, dict):
        return thread_from_dict(item, default_id=f"thread-{index}")
    raise InputError(
        f"cannot summarize a {type(item).__name__}; pass a Thread, a str, an email.message.Message "
        f"or a dict {{thread_id, emails: [{{from, to, date, body}}]}}"
    )


# --------------------------------------------------------------------------------- summarizer
class Summarizer:
    """A loaded model + tokenizer + the threadsum config it was trained with."""

    def __init__(self, model: Optional["PreTrainedModel"], tokenizer: "PreTrainedTokenizerBase", cfg: Config,
                 device: Any, name: str = "model", engine: Optional["Engine"] = None):
        """``engine`` generates the summaries; None wraps ``model`` in a :class:`TorchEngine` on ``device``."""
        from threadsum.inference.engine import TorchEngine

        self.engine = engine if engine is not None else TorchEngine(model, tokenizer, device)
        self.model = self.engine.model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.device = device
        self.name = name
        max_pos = self.engine.source_limit or cfg.data.max_source_tokens
        self.max_source_tokens = min(cfg.data.max_source_tokens, int(max_pos))

    # ---- loading
    @classmethod
    def from_pretrained(cls, dir_or_hub_id: str, device: str = "auto", dtype: Any = None,
                        config: Optional[Config] = None) -> "Summarizer":
        """Load model and tokenizer once; read ``config.yaml`` in the folder (defaults when absent).

        ``config`` replaces the saved config (e.g. to change generation settings); a hub id has no
        saved config, so the defaults (BART's window, 4 beams, 128 new tokens) apply. The engine is
        ``inference.engine`` of that config (auto: ctranslate2 for a ``threadsum export`` folder).
        """
        require("torch", "serve")
        require("transformers", "serve")
        from threadsum.inference.engine import load_engine

        name = str(dir_or_hub_id)
        if config is None:
            config = load_saved_config(name)
        engine = load_engine(name, config.inference.engine, device, dtype,
                             attn_implementation=config.model.attn_implementation, threads=config.inference.threads)
        return cls(engine.model, engine.tokenizer, config, engine.device, name=name, engine=engine)

    # ---- the shared clean/render path
    def prepare(self, item: ThreadLike, index: int = 0) -> PreparedInput:
        """Clean and render one input exactly as ``prepare`` did for training."""
        from threadsum.data.clean import clean_thread
        from threadsum.data.render import render_thread

        thread = to_thread(item, index)
        limit = self.cfg.data.max_body_chars
        if any(len(e.body) > limit for e in thread.emails):
            # the readers cut bodies at data.max_body_chars before cleaning; do the same here
            thread = replace(thread, emails=[replace(e, body=e.body[:limit]) if len(e.body) > limit else e
                                             for e in thread.emails])
        cleaned = clean_thread(thread, self.cfg.data.clean)
        rendered = render_thread(cleaned, self.cfg.data.render, self.tokenizer, self.max_source_tokens)
        if not rendered.text.strip():
            raise InputError(f"thread '{thread.thread_id}' is empty after cleaning (no body text left)")
        return PreparedInput(
            thread_id=thread.thread_id,
            subject=thread.subject,
            text=rendered.text,
            n_emails=len(cleaned.emails),
            truncated=bool(rendered.truncated),
            kept_fraction=float(rendered.kept_fraction),
        )

    # ---- generation
    def generate(self, texts: Sequence[str], batch_size: Optional[int] = None) -> list[str]:
        """Summaries of already rendered texts, in input order.

        Each text is tokenized (cut at ``data.max_source_tokens``) and decoded by the engine
        (:mod:`threadsum.inference.engine`): the same length-sorted batches (``batch_size``, default
        ``eval.generation.batch_size``) and decoding settings as ``threadsum evaluate``.
        """
        if not texts:
            return []
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_source_tokens)["input_ids"]
        return self.engine.generate_texts(ids, self.cfg.eval.generation, batch_size)

    def summarize_batch(self, items: Iterable[ThreadLike], batch_size: Optional[int] = None) -> list[str]:
        """Summaries of many threads, in input order (batched by length)."""
        prepared = [self.prepare(item, i) for i, item in enumerate(items)]
        return self.generate([p.text for p in prepared], batch_size)

    def summarize(self, item: ThreadLike) -> str:
        """Summary of one thread."""
        return self.summarize_batch([item])[0]

    def summarize_detailed(self, items: Iterable[ThreadLike], batch_size: Optional[int] = None) -> list[Summary]:
        """Like summarize_batch, with thread id, subject, email count and truncation per thread."""
        prepared = [self.prepare(item, i) for i, item in enumerate(items)]
        texts = self.generate([p.text for p in prepared], batch_size)
        return [Summary(p.thread_id, p.subject, t, p.n_emails, p.truncated) for p, t in zip(prepared, texts)]

    def warmup(self) -> float:
        """One short generation so the first real request does not pay for lazy initialisation."""
        t0 = time.perf_counter()
        self.generate(["Subject: warm-up\nFrom: a\nTo: b\nDate: \nwarm-up"], batch_size=1)
        return time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        """Model, engine, device, dtype (compute type), parameters and decoding limits."""
        g = self.cfg.eval.generation
        return {
            "model": self.name,
            **self.engine.describe(),
            "max_source_tokens": self.max_source_tokens,
            "num_beams": g.num_beams,
            "max_new_tokens": g.max_new_tokens,
        }


def quiet_loading() -> None:
    """No per-shard progress bars on stderr: they clutter CLI output and service logs."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - reported by from_pretrained's require()
        pass


def load_saved_config(dir_or_hub_id: str) -> Config:
    """The threadsum config saved beside a model (training settings), or defaults."""
    path = Path(dir_or_hub_id) / "config.yaml"
    if not path.is_file():
        return Config()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise ConfigError(f"{exc}\n(the file {path} was saved with the model; fix or delete it to use defaults)") from None


# ---------------------------------------------------------------------------------------- CLI
EXIT_OK = 0
EXIT_FAILURE = 1
"""Generation or loading failed for a reason that is not the input's fault."""
EXIT_BAD_INPUT = 2
"""The input (file, stdin, model folder or config) is missing or cannot be read."""


def read_threads(data: bytes, name: str = "<stdin>") -> list[Thread]:
    """Threads of an .eml / .mbox / JSON / JSONL payload or plain text (sniffed by content and name)."""
    import json

    suffix = Path(name).suffix.lower()
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    stripped = text.strip()
    if not stripped:
        raise InputError(f"{name} is empty; give an .eml, an .mbox, a JSON thread or plain text")
    if suffix in {".json", ".jsonl"} or stripped[:1] in "{[":
        try:
            records = _load_json_or_lines(stripped, lines=suffix == ".jsonl")
        except json.JSONDecodeError as exc:
            raise InputError(f"{name} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                             f"expected {{thread_id, emails: [{{from, to, date, body}}]}}, a list of those, or JSON lines") from None
        if isinstance(records, dict) and isinstance(records.get("threads"), list):
            records = records["threads"]
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list) or not records:
            raise InputError(f"{name} holds no thread; expected a thread object or a list of them")
        return [thread_from_dict(r, default_id=f"thread-{i}") for i, r in enumerate(records)]
    if suffix in {".eml", ".mbox"} or stripped.startswith("From ") or looks_like_rfc822(text):
        return threads_from_mail_bytes(data)
    return [thread_from_text(text)]


def _load_json_or_lines(text: str, lines: bool) -> Any:
    """One JSON document, or JSON lines (one thread per line)."""
    import json

    if not lines:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            if "\n" not in text:
                raise
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summarize_command(model_dir: str, path_or_dash: str, as_json: bool = False, device: str = "auto",
                      dtype: Optional[str] = None, out=None, err=None) -> int:
    """`threadsum summarize`: print one summary per thread of a file or stdin ('-').

    Returns the exit code: 0 ok, 2 bad input (missing/unreadable/unparseable file or stdin, missing
    model folder, invalid saved config, missing extra), 1 failure (loading or generation broke).
    With ``as_json`` each thread is one JSON line: thread_id, subject, summary, n_emails, truncated.
    """
    import json
    import sys
    import traceback

    from threadsum.deps import MissingExtraError
    from threadsum.model import ModelLoadError

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if path_or_dash == "-":
            data, name = sys.stdin.buffer.read(), "<stdin>"
        else:
            p = Path(path_or_dash)
            if not p.is_file():
                print(f"error: input file '{p}' does not exist; pass an .eml, .mbox, .json file or '-' for stdin", file=err)
                return EXIT_BAD_INPUT
            data, name = p.read_bytes(), str(p)
        threads = read_threads(data, name)
    except InputError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"error: cannot read input: {exc}", file=err)
        return EXIT_BAD_INPUT
    quiet_loading()
    try:
        summarizer = Summarizer.from_pretrained(model_dir, device=device, dtype=dtype)
    except (ModelLoadError, ConfigError, MissingExtraError, ValueError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - reported with the traceback, exit 1
        traceback.print_exc(file=err)
        print(f"error: loading the model from '{model_dir}' failed: {type(exc).__name__}: {exc}", file=err)
        return EXIT_FAILURE
    try:
        results = summarizer.summarize_detailed(threads)
    except InputError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc(file=err)
        print(f"error: summarization failed: {type(exc).__name__}: {exc}", file=err)
        return EXIT_FAILURE
    for r in results:
        if as_json:
            print(json.dumps(r.to_dict(), ensure_ascii=False), file=out)
        elif len(results) == 1:
            print(r.summary, file=out)
        else:
            print(f"# {r.thread_id}" + (f": {r.subject}" if r.subject else ""), file=out)
            print(r.summary + "\n", file=out)
    out.flush()
    return EXIT_OK
