"""Summarizer: load a trained model once, turn threads into summaries.

The CLI (`threadsum summarize`), the HTTP service and evaluation all go through this class, and
it goes through the same ``clean_thread`` -> ``render_thread`` path that ``prepare`` used for
training, with the settings saved in the model folder's ``config.yaml``. A model fed text that
was cleaned or rendered differently from its training data silently loses quality, so there is
no second copy of that logic here.

Accepted inputs (``summarize`` / ``summarize_batch`` / ``prepare``), read and checked by
``threadsum.inference.inputs`` (the same rules as the CLI and the service):

- ``threadsum.data.types.Thread``
- ``str``: an RFC 822 message (``From:``/``Subject:`` headers, blank line, body), several pasted
  emails each with its header block (one thread), or plain text (the body of a single email)
- ``email.message.Message`` (one parsed mail)
- ``dict`` in the JSONL thread form
  ``{thread_id, subject?, emails: [{from, to, cc?, date, subject?, body}], summary?}``

A thread with no body text after cleaning raises ``InputError``; a summary that comes out empty
raises ``EmptySummaryError`` (never returned as a result).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

from threadsum.config import Config, ConfigError, load_config
from threadsum.data.readers import DataError, read_source
from threadsum.data.types import Thread
from threadsum.deps import require
from threadsum.errors import ThreadsumError
from threadsum.inference.inputs import (  # noqa: F401 - re-exported: the input API of this module
    InputError,
    ThreadLike,
    check_has_body_text,
    looks_like_rfc822,
    read_threads,
    thread_from_dict,
    thread_from_text,
    threads_from_mail_bytes,
    to_thread,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from threadsum.inference.engine import Engine


class EmptySummaryError(ThreadsumError):
    """The model produced an empty summary (a broken model, e.g. non-finite weights, does this).

    ``thread_ids`` names the threads; ``results`` holds every thread's ``Summary`` (empty ones
    included) so a caller can keep the good ones. The CLI exits 1, the service answers 500.
    """

    def __init__(self, thread_ids: list[str], results: Optional[list["Summary"]] = None):
        shown = ", ".join(f"'{t}'" for t in thread_ids[:5]) + (" ..." if len(thread_ids) > 5 else "")
        super().__init__(f"the model produced an empty summary for {len(thread_ids)} thread"
                         f"{'s' if len(thread_ids) != 1 else ''} ({shown}); no summary is reported for "
                         f"{'them' if len(thread_ids) != 1 else 'it'}. Check the model folder (a model "
                         f"trained to non-finite weights produces nothing)")
        self.thread_ids = thread_ids
        self.results = results or []


@dataclass
class PreparedInput:
    """One thread after cleaning and rendering: exactly what the model reads."""

    thread_id: str
    subject: str
    text: str
    n_emails: int
    truncated: bool
    kept_fraction: float
    warnings: list[str] = field(default_factory=list)
    """Repairs made to the input (e.g. lone surrogates replaced by U+FFFD), one line each."""
    thread: Optional[Thread] = None
    """The thread as given (after repairs, before cleaning): the evidence summaries are checked against."""


@dataclass
class Summary:
    """One thread's summary with what a reader needs to trust it."""

    thread_id: str
    subject: str
    summary: str
    n_emails: int
    """Emails after cleaning (exact duplicates dropped)."""
    truncated: bool
    """The rendered thread was cut to fit the model's input window."""
    warnings: list[str] = field(default_factory=list)
    """Repairs made to the input, one line each."""
    claims: list[dict[str, Any]] = field(default_factory=list)
    """People, organisations, amounts, dates, times and actions of the summary, each checked against
    the thread (:func:`threadsum.verify.check`; ``Claim.to_dict()`` form)."""
    coverage: dict[str, Any] = field(default_factory=dict)
    """What the summary left out (:func:`grounding_of`): {"left_out": [Fact.to_dict()], "important": count,
    "carried_share": 0-1}; {} when not checked."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``summarize --json``): every field above."""
        return {
            "thread_id": self.thread_id,
            "subject": self.subject,
            "summary": self.summary,
            "n_emails": self.n_emails,
            "truncated": self.truncated,
            "warnings": list(self.warnings),
            "claims": list(self.claims),
            "coverage": dict(self.coverage),
        }


def grounding_of(prepared: PreparedInput, summary: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The summary checked against the thread it summarizes, both ways, over one index of the thread
    (:func:`threadsum.verify.index_thread`, the costly half: about 7 ms of a 1-5 email thread's 14):

    - claims: its people, organisations, amounts, dates, times and actions, each supported or not
      (:func:`threadsum.verify.check_indexed`, ``Claim.to_dict()`` each; none for an empty summary);
    - coverage: what it left out (:func:`threadsum.verify.coverage_report` without the full fact list):
      {"left_out", "important", "carried_share"}.

    Both empty for an input without its thread.
    """
    from threadsum.verify import check_indexed, coverage_indexed, coverage_report, index_thread

    if prepared.thread is None:
        return [], {}
    idx = index_thread(prepared.thread)
    claims = [c.to_dict() for c in check_indexed(idx, summary)] if summary.strip() else []
    report = coverage_report(coverage_indexed(idx, summary or ""))
    return claims, {k: report[k] for k in ("left_out", "important", "carried_share")}


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
        self.family = self.engine.family
        # how sources are tokenized for this model: BART's <s> .. </s>, or a causal model's prompt
        self.source_tokenizer = self.family.source_tokenizer(tokenizer, cfg.data.prompt)
        # the budget prepare used for the training data (family.source_budget), so prompts match
        self.max_source_tokens = self.family.source_budget(self.engine.source_limit, cfg.data.max_source_tokens,
                                                           cfg.data.max_target_tokens,
                                                           cfg.eval.generation.max_new_tokens)

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
        """Clean and render one input exactly as ``prepare`` did for training.

        Raises InputError for unreadable input and for a thread with no body text after cleaning
        (``threadsum.inference.inputs.check_has_body_text``).
        """
        from threadsum.data.clean import clean_thread
        from threadsum.data.render import render_thread

        warnings: list[str] = []
        thread = to_thread(item, index, warnings)
        limit = self.cfg.data.max_body_chars
        if any(len(e.body) > limit for e in thread.emails):
            # the readers cut bodies at data.max_body_chars before cleaning; do the same here
            thread = replace(thread, emails=[replace(e, body=e.body[:limit]) if len(e.body) > limit else e
                                             for e in thread.emails])
        cleaned = clean_thread(thread, self.cfg.data.clean)
        check_has_body_text(cleaned)
        rendered = render_thread(cleaned, self.cfg.data.render, self.source_tokenizer, self.max_source_tokens)
        return PreparedInput(
            thread_id=thread.thread_id,
            subject=thread.subject,
            text=rendered.text,
            n_emails=len(cleaned.emails),
            truncated=bool(rendered.truncated),
            kept_fraction=float(rendered.kept_fraction),
            warnings=warnings,
            thread=thread,
        )

    # ---- generation
    def generate(self, texts: Sequence[str], batch_size: Optional[int] = None) -> list[str]:
        """Summaries of already rendered texts, in input order.

        Each text is tokenized by the family's source tokenizer (a causal model's prompt around it),
        cut at ``data.max_source_tokens``, and decoded by the engine
        (:mod:`threadsum.inference.engine`): the same length-sorted batches (``batch_size``, default
        ``eval.generation.batch_size``) and decoding settings as ``threadsum evaluate``. With
        ``eval.generation.rerank: grounding`` each text's candidates are reranked against that text (what
        the model read, as ``evaluate`` checks) by :func:`threadsum.verify.rerank.grounded_chooser`, so
        summarize, the service and its batch endpoint rerank alike.
        """
        if not texts:
            return []
        from threadsum.verify.rerank import grounded_chooser, rendered_thread

        gen = self.cfg.eval.generation
        choose = grounded_chooser([rendered_thread(t) for t in texts]) if gen.rerank == "grounding" else None
        ids = self.source_tokenizer(list(texts), truncation=True, max_length=self.max_source_tokens)["input_ids"]
        return self.engine.generate_texts(ids, gen, batch_size, choose)

    def summarize_batch(self, items: Iterable[ThreadLike], batch_size: Optional[int] = None) -> list[str]:
        """Summaries of many threads, in input order (batched by length).

        Raises InputError (bad input, nothing to summarize) or EmptySummaryError.
        """
        return [r.summary for r in self.summarize_detailed(items, batch_size, check_claims=False)]

    def summarize(self, item: ThreadLike) -> str:
        """Summary of one thread (raises InputError or EmptySummaryError)."""
        return self.summarize_batch([item])[0]

    def summarize_detailed(self, items: Iterable[ThreadLike], batch_size: Optional[int] = None,
                           check_claims: bool = True) -> list[Summary]:
        """Like summarize_batch, with thread id, subject, email count, truncation, input warnings and
        (``check_claims``, a few ms per summary) the summary's claims checked against its thread and
        what it left out (:func:`grounding_of`)."""
        prepared = [self.prepare(item, i) for i, item in enumerate(items)]
        texts = self.generate([p.text for p in prepared], batch_size)
        results = [Summary(p.thread_id, p.subject, t, p.n_emails, p.truncated, p.warnings,
                           *(grounding_of(p, t) if check_claims else ([], {})))
                   for p, t in zip(prepared, texts)]
        empty = [r.thread_id for r in results if not r.summary.strip()]
        if empty:
            raise EmptySummaryError(empty, results)
        return results

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


def saved_config_with(dir_or_hub_id: str, overrides: Sequence[str]) -> Config:
    """The model's saved config (:func:`load_saved_config`) with ``key=value`` overrides applied and
    validated: what ``serve`` and the archive job decode with. Raises ConfigError naming the key."""
    from threadsum.config import apply_overrides, config_from_dict

    data = load_saved_config(dir_or_hub_id).to_dict()
    return config_from_dict(apply_overrides(data, list(overrides)), origin="the model's config.yaml and the overrides")


# ---------------------------------------------------------------------------------------- CLI
def _read_input(path_or_dash: str, warnings: list[str]) -> list:
    """Threads of the file or stdin named on the command line (raises InputError / OSError)."""
    import sys

    if path_or_dash == "-":
        return read_threads(sys.stdin.buffer.read(), "<stdin>", warnings)
    p = Path(path_or_dash)
    if p.is_dir():
        return _read_folder(p, warnings)
    if not p.is_file():
        raise InputError(f"input file '{p}' does not exist; pass an .eml, .mbox, .json file, a mail folder "
                         f"(a Maildir) or '-' for stdin")
    return read_threads(p.read_bytes(), str(p), warnings)


def _read_folder(folder: Path, warnings: list[str]) -> list:
    """Threads of a mail folder (a Maildir, a folder of .eml / .mbox / Gmail or Graph JSON), read by the
    readers as prepare reads them; what they refused becomes warnings (raises InputError when no
    thread is left)."""
    try:
        result = read_source(folder, "auto", require_summary=False)
    except DataError as exc:
        raise InputError(str(exc)) from None
    for r in result.rejects:
        warnings.append(f"{r.get('source') or folder}: {r['reason']}: {r['detail']}")
    if not result.threads:
        raise InputError(f"'{folder}' holds no thread with a body to summarize ({len(result.rejects)} file(s) or "
                         f"message(s) refused)")
    return result.threads


def _print_results(results: list[Summary], as_json: bool, out) -> None:
    import json

    for r in results:
        if as_json:
            print(json.dumps(r.to_dict(), ensure_ascii=False), file=out)
        elif len(results) == 1:
            print(r.summary, file=out)
        else:
            print(f"# {r.thread_id}" + (f": {r.subject}" if r.subject else ""), file=out)
            print(r.summary + "\n", file=out)
    out.flush()


def summarize_command(model_dir: str, path_or_dash: str, as_json: bool = False, device: str = "auto",
                      dtype: Optional[str] = None, out=None, err=None) -> None:
    """`threadsum summarize`: print one summary per thread of a file or stdin ('-').

    Input repairs are warnings on stderr. With ``as_json`` each thread is one JSON line: thread_id,
    subject, summary, n_emails, truncated, warnings, claims, coverage (``Summary.to_dict``).

    Raises (the CLI turns each into one line and its exit code, see threadsum.errors):
        InputError: missing, unreadable, binary or unparseable file or stdin; a thread with nothing to
            summarize (exit 2).
        ModelLoadError, ConfigError, DeviceError, MissingExtraError: the model folder, its saved
            config, the device or an extra (exit 2).
        EmptySummaryError: the model produced an empty summary; the non-empty summaries are printed
            first (exit 1).
    """
    import sys

    out = out or sys.stdout
    err = err or sys.stderr
    warnings: list[str] = []
    try:
        threads = _read_input(path_or_dash, warnings)
    except OSError as exc:
        raise InputError(f"cannot read input '{path_or_dash}': {exc.strerror or exc}") from None
    quiet_loading()
    summarizer = Summarizer.from_pretrained(model_dir, device=device, dtype=dtype)
    try:
        results = summarizer.summarize_detailed(threads)
    except EmptySummaryError as exc:
        _print_warnings(warnings + [w for r in exc.results for w in r.warnings], err)
        _print_results([r for r in exc.results if r.summary.strip()], as_json, out)
        raise
    _print_warnings(warnings + [w for r in results for w in r.warnings], err)
    _print_results(results, as_json, out)


def _print_warnings(warnings: list[str], err) -> None:
    for w in warnings:
        print(f"warning: {w}", file=err)
