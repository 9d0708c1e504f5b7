"""`threadsum prepare`: read -> clean -> render -> split -> tokenizer -> tokenize (cached) -> report.

Writes ``data.prepared_dir`` exactly as ``threadsum.data.prepared`` describes. The folder is built
under a temporary name and renamed into place at the end, so an interrupted run never leaves a
folder that looks complete. The folder doubles as the cache: its ``prepare.json`` records a key
made of the input files' hashes, the cleaning/render/length/split settings and the tokenizer; a
second run with the same key reuses everything and says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from threadsum.config import Config
from threadsum.data.clean import W_UNIQUE_TEXT_REMOVED, audit_warnings, clean_threads, has_body_text, merge_stats, new_stats
from threadsum.data.ledger import Ledger
from threadsum.data.prepared import SPLITS, PreparedDataError, open_prepared
from threadsum.data.readers import ReadResult, download_kaggle, read_source
from threadsum.data.render import encode_ids, render_plain, render_threads
from threadsum.data.split import assign_split
from threadsum.errors import UserError
from threadsum.family import Family
from threadsum.hashing import file_sha256, folder_sha256
from threadsum.model import family_for

CLEAN_CHUNK = 200  # threads per task of the cleaning pool: ~0.3 s of work, small next to the pickling
CACHE_VERSION = 2  # bump when the prepared format or the meaning of a setting changes
RAW_TOKEN_SAMPLE = 300  # raw (uncleaned) renders tokenized for the report: a sample keeps this cheap
R_EMPTY_AFTER_CLEANING = "empty_after_cleaning"
R_DUPLICATE_EMAIL = "duplicate_email"
AUDIT_SHOWN = 20  # unique removals by cleaning shown in prepare.json, report.md and the console (all: warnings.jsonl)


class PrepareError(UserError):
    """prepare cannot produce a dataset; the message names the problem and the fix."""


class StrictModeError(PrepareError):
    """data.strict is on and some rows or threads were rejected."""


# ------------------------------------------------------------------------------------ helpers
def _cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished worker processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _input_files(source: Path) -> list[Path]:
    if source.is_file():
        files = [source]
        for sib in ("email_thread_details", "email_thread_summaries"):
            for ext in (".csv", ".json"):
                p = source.with_name(sib + ext)
                if p.exists() and p.suffix == source.suffix and p not in files:
                    files.append(p)
        return sorted(files)
    return sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))


def resolve_source(cfg: Config) -> Path:
    """The input path of ``prepare``: ``data.source``, or the Kaggle download when ``data.kaggle`` is set.

    Raises:
        PrepareError: neither ``data.source`` nor ``data.kaggle`` is set.
        DataError: the Kaggle download failed (from ``download_kaggle``).
    """
    d = cfg.data
    if d.source:
        return Path(d.source).expanduser()
    if d.kaggle:
        return download_kaggle(d.kaggle_dataset)
    raise PrepareError("data.source is not set. Point it at the Kaggle folder (email_thread_details.csv + "
                       "email_thread_summaries.csv), a .json copy, a folder of .eml, an .mbox or a .jsonl; or set "
                       "data.kaggle=true to download it; or make a synthetic corpus with `threadsum synth data/synth`.")


def cache_key(cfg: Config, files: list[Path], tokenizer_fp: str, budget: Optional[int] = None
              ) -> tuple[str, dict[str, Any]]:
    """The key of the prepared-data cache and the inputs it hashes.

    The key changes when any input file's bytes (sha256), the reader format, the clean/render
    settings, the token and length limits, the split fractions and seed, the tokenizer or
    ``CACHE_VERSION`` changes.

    Args:
        cfg: the run config (its ``data`` section is used).
        files: the input files.
        tokenizer_fp: a fingerprint of the tokenizer.
        budget: the source budget actually applied (tokens; :func:`source_budget`).

    Returns:
        The first 24 hex digits of the sha256 of the inputs (as sorted JSON), and those inputs.
    """
    d = cfg.data
    parts = {
        "version": CACHE_VERSION,
        "files": [{"name": p.name, "sha256": file_sha256(p)} for p in files],
        "format": d.format,
        "clean": d.clean.model_dump(mode="json"),
        "render": d.render.model_dump(mode="json"),
        "lengths": [d.max_source_tokens, d.max_target_tokens, d.max_body_chars],
        "split": [d.validation_fraction, d.test_fraction, d.split_seed],
        "tokenizer": tokenizer_fp,
        "family": family_for(cfg.model).name,
        "source_budget": budget,
        "prompt": d.prompt.model_dump(mode="json"),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
    return key, parts


def _write_jsonl(path: Path, records) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def _tmp_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    return tmp


def _swap_in(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _cached(out: Path, key: str) -> Optional[dict[str, Any]]:
    meta = out / "prepare.json"
    if not meta.exists():
        return None
    try:
        info = json.loads(meta.read_text())
        open_prepared(out)
    except (json.JSONDecodeError, OSError, PreparedDataError):
        return None
    return info if info.get("cache", {}).get("key") == key else None


def _problems(rejects: list[dict[str, Any]], limit: int = 10) -> str:
    lines = []
    for r in rejects[:limit]:
        where = f"{Path(r['source']).name if r.get('source') else ''}" + (f":{r['line']}" if r.get("line") else "")
        tid = f" thread {r['thread_id']}" if r.get("thread_id") else ""
        lines.append(f"  - [{r['level']}] {r['reason']}{tid} {where}: {r['detail']}")
    more = len(rejects) - limit
    return "\n".join(lines) + (f"\n  ... and {more} more" if more > 0 else "")


# ------------------------------------------------------------------------------------- prepare
class _Clock:
    """Wall and CPU seconds per stage. CPU seconds count all threads and finished workers: on a
    shared machine wall time mostly measures the load."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._t0 = self._t = time.perf_counter()
        self._c0 = self._c = _cpu_seconds()

    def lap(self, name: str) -> None:
        now, cpu_now = time.perf_counter(), _cpu_seconds()
        self.wall[name] = round(now - self._t, 3)
        self.cpu[name] = round(cpu_now - self._c, 3)
        self._t, self._c = now, cpu_now

    def finish(self) -> None:
        self.wall["total"] = round(time.perf_counter() - self._t0, 3)
        self.cpu["total"] = round(_cpu_seconds() - self._c0, 3)


@dataclass
class _Inputs:
    """What prepare works from: the source, its files, the output folder, the model family, the
    tokenizer (None: one is trained on the training split) and the cache key."""
    source: Path
    files: list[Path]
    out: Path
    family: Family
    tokenizer: Any
    tokenizer_source: Optional[str]
    key: str
    key_parts: dict


@dataclass
class _Cleaned:
    """The threads that survived cleaning (input order), their uncleaned versions by id (for the
    report's raw token sample), the cleaning stats and the audit's unique removals."""
    threads: list
    raw_by_id: dict
    stats: dict
    lost: list[dict[str, Any]]


@dataclass
class _Rendered:
    """Per split: the thread records (threads/<split>.jsonl) and their source ids; plus the token
    accounting of truncation."""
    records: dict[str, list[dict]]
    source_ids: dict[str, list[list[int]]]
    final_tokens: list[int]
    kept_tokens: int = 0
    full_tokens: int = 0
    truncated: int = 0
    emails_dropped: int = 0


def prepare(cfg: Config, force: bool = False) -> dict[str, Any]:
    """Build (or reuse) the prepared dataset of ``cfg``; returns the counts written to prepare.json.

    Stages: inputs (hashes, tokenizer, cache key) -> read -> clean -> split -> tokenizer -> render ->
    tokenize -> report. Every reject and warning goes through one ``Ledger``, whose counts reconcile.

    Raises:
        PrepareError: the source is missing, nothing usable is left, or ``data.strict`` fails.
    """
    from threadsum.deps import require

    require("datasets", "train")
    clock = _Clock()
    inp = _inputs(cfg)
    clock.lap("hash_inputs")
    if not force:
        hit = _cached(inp.out, inp.key)
        if hit is not None:
            hit["cache"]["hit"] = True
            hit["cache"]["note"] = f"reused {inp.out} (same inputs, settings and tokenizer; use --force to rebuild)"
            return hit

    d = cfg.data
    rr: ReadResult = read_source(inp.source, d.format, max_body_chars=d.max_body_chars, require_summary=True)
    led = Ledger.merged([(rr.rejects, rr.warnings, rr.counts)])
    clock.lap("read")
    cl = _clean(rr.threads, d, led, inp.source)
    counts = led.reconciled(cl.threads)
    clock.lap("clean")
    _refuse_unusable(d, inp, led, counts, cl, clock)

    # split before the tokenizer: a trained tokenizer sees only the training split
    split_of = {c.thread_id: assign_split(c.thread_id, d.validation_fraction, d.test_fraction, d.split_seed)
                for c in cl.threads}
    clock.lap("split")
    tmp = _tmp_dir(inp.out)
    try:
        tokenizer = _tokenizer(cfg, inp, cl.threads, split_of, tmp / "tokenizer")
        clock.lap("tokenizer")
        source_tok = inp.family.source_tokenizer(tokenizer, d.prompt)
        budget = source_budget(cfg, inp.family)
        rendered = _render(cl.threads, split_of, d.render, source_tok, budget)
        clock.lap("render")
        # datasets (Arrow): the source ids come from render, the summaries are encoded here
        dsd, target_stats = _tokenize(rendered.records, rendered.source_ids, tokenizer, source_tok, inp.family,
                                      d, budget)
        dsd.save_to_disk(str(tmp / "tokenized"))
        clock.lap("tokenize")
        (tmp / "threads").mkdir()
        for s in SPLITS:
            _write_jsonl(tmp / "threads" / f"{s}.jsonl", rendered.records[s])
        _write_jsonl(tmp / "rejects.jsonl", led.rejects)
        _write_jsonl(tmp / "warnings.jsonl", led.warnings)
        cfg.save(tmp)
        raw_sample = _raw_token_sample(cl.raw_by_id, d.render, source_tok)
        info = _info(cfg, inp, counts, cl, rendered, target_stats, raw_sample, tokenizer, source_tok, budget, clock)
        from threadsum.data.report import write_report

        write_report(tmp, info, rendered.records, rendered.final_tokens, raw_sample, target_stats["lengths"],
                     led.rejects)
        clock.lap("report")
        clock.finish()
        # prepare.json last: its presence (with the key) marks the folder complete
        (tmp / "prepare.json").write_text(json.dumps(info, indent=2))
        _swap_in(tmp, inp.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _inputs(cfg: Config) -> _Inputs:
    """Resolve the source, hash its files, load the tokenizer and build the cache key."""
    from threadsum.model import load_tokenizer, tokenizer_source

    source = resolve_source(cfg)
    if not source.exists():
        raise PrepareError(f"data.source '{source}' does not exist; fix the path or run `threadsum synth {source}`")
    files = _input_files(source)
    family = family_for(cfg.model)  # offline without the model's config: the loader's actionable error
    tok_src = tokenizer_source(cfg.model)
    tokenizer = None
    if tok_src is not None:
        tokenizer = load_tokenizer(tok_src)
        import tempfile

        with tempfile.TemporaryDirectory() as td:
            tokenizer.save_pretrained(td)
            tok_fp = "files:" + folder_sha256(Path(td))
    else:
        tok_fp = f"trained-bpe:{cfg.model.tiny.vocab_size}:{cfg.model.tiny.architecture}"
    key, key_parts = cache_key(cfg, files, tok_fp, source_budget(cfg, family))
    return _Inputs(source, files, Path(cfg.data.prepared_dir), family, tokenizer, tok_src, key, key_parts)


def _clean(threads: list, d, led: Ledger, source: Path) -> _Cleaned:
    """Clean every thread; a thread left without text and each exact duplicate email are rejects,
    the audit's unique removals are warnings (all in ``led``)."""
    cleaned, raw_by_id = [], {}
    cleaned_all, stats = clean_all(threads, d.clean, d.num_proc)
    for th, c in zip(threads, cleaned_all):
        if not any(has_body_text(e.body) for e in c.emails):
            led.reject("thread", R_EMPTY_AFTER_CLEANING, "no text left after cleaning (every body was whitespace, "
                       "tags, quoted history or signature)", source, thread_id=th.thread_id, n_emails=len(c.emails))
            continue
        cleaned.append(c)
        raw_by_id[th.thread_id] = th
    for drop in stats.pop("dropped"):
        led.reject("email", R_DUPLICATE_EMAIL, f"exact duplicate of an earlier email (sender {drop['sender']!r}, "
                   f"{drop['date']})", source, thread_id=drop["thread_id"])
    # unique text a step removed outside any matched block: every one a warning, and a failure under strict
    lost = audit_warnings(stats, source)
    led.add_warnings(lost)
    return _Cleaned(cleaned, raw_by_id, stats, lost)


def _refuse_unusable(d, inp: _Inputs, led: Ledger, counts: dict, cl: _Cleaned, clock: _Clock) -> None:
    """Under ``data.strict`` any reject or unique removal fails; with no thread left prepare fails. A
    failed prepare still writes its account (``_write_failure``).

    Raises:
        StrictModeError, PrepareError: with the first problems and where all of them are.
    """
    out, source, rejects, lost = inp.out, inp.source, led.rejects, cl.lost
    if d.strict and (rejects or lost):
        _write_failure(inp, counts, cl.stats, led, clock.wall, "strict")
        problems = rejects + [dict(w, level="audit") for w in lost]
        raise StrictModeError(f"data.strict: {len(rejects)} rejected, {len(lost)} unique text removal(s) by cleaning "
                              f"in '{source}' (rejects in {out / 'rejects.jsonl'}, removals in "
                              f"{out / 'warnings.jsonl'}, counts in {out / 'prepare.json'}):\n" + _problems(problems))
    if not cl.threads:
        _write_failure(inp, counts, cl.stats, led, clock.wall, "no usable threads")
        raise PrepareError(f"no usable threads in '{source}' ({len(rejects)} rejected; all of them in "
                           f"{out / 'rejects.jsonl'}, counts in {out / 'prepare.json'}). First problems:\n"
                           + _problems(rejects))


def _tokenizer(cfg: Config, inp: _Inputs, threads: list, split_of: dict[str, str], tok_dir: Path):
    """The configured tokenizer saved into ``tok_dir``, or one trained there on the training split
    (plain renders and summaries; all threads when the split is empty)."""
    from threadsum.model import save_tokenizer, train_tokenizer_for

    if inp.tokenizer is not None:
        save_tokenizer(inp.tokenizer, tok_dir)
        return inp.tokenizer
    train = [c for c in threads if split_of[c.thread_id] == "train"] or threads
    texts = [render_plain(c, cfg.data.render) for c in train] + [c.summary or "" for c in train]
    return train_tokenizer_for(cfg.model, texts, tok_dir)


def _render(threads: list, split_of: dict[str, str], render_cfg, source_tok, budget: int) -> _Rendered:
    """Render every thread within ``budget`` tokens (batched: one tokenizer call for all full renders)."""
    out = _Rendered({s: [] for s in SPLITS}, {s: [] for s in SPLITS}, [])
    for c, res in zip(threads, render_threads(threads, render_cfg, source_tok, budget)):
        n_tok = res.n_tokens or 0
        out.final_tokens.append(n_tok)
        full = n_tok if not res.truncated else max(n_tok, round(n_tok / max(res.kept_fraction, 1e-9)))
        out.kept_tokens += n_tok
        out.full_tokens += full
        if res.truncated:
            out.truncated += 1
            out.emails_dropped += res.emails_dropped
        split = split_of[c.thread_id]
        out.records[split].append({
            "thread_id": c.thread_id, "subject": c.subject, "source": res.text, "summary": c.summary,
            "first_email": c.emails[0].body, "n_emails": len(c.emails), "source_tokens": n_tok,
            "truncated": res.truncated, "kept_fraction": round(res.kept_fraction, 4),
            "clean_tokens": full,
        })
        out.source_ids[split].append(res.input_ids)
    return out


def _file_list(inp: _Inputs) -> list[dict[str, Any]]:
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": f["sha256"]}
            for p, f in zip(inp.files, inp.key_parts["files"])]


def _info(cfg: Config, inp: _Inputs, counts: dict, cl: _Cleaned, r: _Rendered, target_stats: dict,
          raw_sample: list[int], tokenizer, source_tok, budget: int, clock: _Clock) -> dict[str, Any]:
    """The content of prepare.json (``threadsum.data.prepared`` documents it)."""
    d, tiny = cfg.data, cfg.model.tiny
    sample_ids = set(_raw_ids(cl.raw_by_id))
    return {
        "status": "ok",
        "source": str(inp.source),
        "prepared_dir": str(inp.out),
        "files": _file_list(inp),
        "emails": counts["emails"],
        "threads": counts["threads"],
        "summaries": counts["summaries"],
        "files_rejected": counts["files"],
        "warnings": counts["warnings"],
        "audit_warnings": cl.lost[:AUDIT_SHOWN],
        "splits": {s: len(r.records[s]) for s in SPLITS},
        "family": inp.family.name,
        "prompt": source_tok.describe() if hasattr(source_tok, "describe") else None,
        "truncation": {
            "max_source_tokens": budget,
            "policy": d.render.truncation,
            "threads_truncated": r.truncated,
            "share_truncated": round(r.truncated / len(cl.threads), 4),
            "tokens_kept_share": round(r.kept_tokens / max(r.full_tokens, 1), 4),
            "emails_dropped": r.emails_dropped,
            "max_target_tokens": d.max_target_tokens,
            "targets_truncated": target_stats["truncated"],
        },
        "tokens": {"source_final_total": r.kept_tokens, "source_clean_total": r.full_tokens,
                   "target_total": target_stats["total"],
                   "source_raw_sample_threads": len(raw_sample),
                   "source_raw_sample_total": sum(raw_sample),
                   "source_clean_sample_total": sum(
                       x["clean_tokens"] for s in SPLITS for x in r.records[s] if x["thread_id"] in sample_ids)},
        "cleaning": cl.stats,
        "tokenizer": {"source": inp.tokenizer_source or f"trained byte-level BPE, vocab {tiny.vocab_size}"
                                + ("" if tiny.architecture == "bart" else f" with a chat template ({tiny.architecture})"),
                      "vocab_size": len(tokenizer)},
        "cache": {"key": inp.key, "hit": False},
        "timings_s": clock.wall,
        "timings_cpu_s": clock.cpu,
    }


def _write_failure(inp: _Inputs, counts: dict, stats: dict, led: Ledger, timings: dict, why: str) -> None:
    """A failed prepare still explains itself: the output folder is replaced by one holding only
    rejects.jsonl, warnings.jsonl and prepare.json (``"status": "failed"``, the counts and the cleaning
    audit). It has no dataset, so ``open_prepared`` and the cache refuse it and nothing trains on a
    stale dataset."""
    out = inp.out
    tmp = _tmp_dir(out)
    try:
        _write_jsonl(tmp / "rejects.jsonl", led.rejects)
        _write_jsonl(tmp / "warnings.jsonl", led.warnings)
        info = {"status": "failed", "reason": why, "source": str(inp.source), "prepared_dir": str(out),
                "files": _file_list(inp),
                "emails": counts["emails"], "threads": counts["threads"], "summaries": counts["summaries"],
                "files_rejected": counts["files"], "warnings": counts["warnings"], "cleaning": stats,
                "timings_s": timings}
        (tmp / "prepare.json").write_text(json.dumps(info, indent=2))
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_all(threads: list, clean_cfg, num_proc: int = 1) -> tuple[list, dict[str, Any]]:
    """``clean_thread`` over ``threads`` (results and stats in input order), in ``num_proc`` processes.

    Cleaning is pure Python, so a second core helps only through processes; they cost pickling
    the threads both ways (~5% of the cleaning work), so small corpora stay in this process.
    """
    if num_proc <= 1 or len(threads) < 2 * CLEAN_CHUNK:
        return clean_threads(threads, clean_cfg)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from itertools import repeat

    chunks = [threads[i:i + CLEAN_CHUNK] for i in range(0, len(threads), CLEAN_CHUNK)]
    cleaned: list = []
    stats = new_stats()
    # fork where there is one: spawn would re-import the caller's main module in each worker (a
    # script without a __main__ guard would run again). The workers only run clean_thread: no
    # tokenizer or torch threads are used in them.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(min(num_proc, len(chunks)), mp_context=multiprocessing.get_context(method)) as ex:
        for part, part_stats in ex.map(clean_threads, chunks, repeat(clean_cfg)):
            cleaned.extend(part)
            merge_stats(stats, part_stats)
    return cleaned, stats


def _raw_ids(raw_by_id: dict) -> list[str]:
    return sorted(raw_by_id, key=lambda t: hashlib.sha1(t.encode()).hexdigest())[:RAW_TOKEN_SAMPLE]


def _raw_token_sample(raw_by_id: dict, render_cfg, tokenizer) -> list[int]:
    """Token lengths of the uncleaned renders of a deterministic sample of threads."""
    ids = _raw_ids(raw_by_id)
    texts = [render_plain(raw_by_id[t], render_cfg) for t in ids]
    if not texts:
        return []
    return [len(x) for x in encode_ids(tokenizer, texts)]


def source_budget(cfg: Config, family: Family) -> int:
    """Source tokens of a prepared example (:meth:`Family.source_budget`): ``data.max_source_tokens``,
    and for a causal model at most its context minus the longer of ``data.max_target_tokens`` and
    ``eval.generation.max_new_tokens`` (prompt and summary share the window; the Summarizer applies
    the same rule, so generation sees the prompts training saw).

    The context is ``model.tiny.max_position_embeddings`` for a random init, else the model config's
    (read without weights, causal models only: a seq2seq encoder's window is checked when training starts).
    """
    d = cfg.data
    if cfg.model.init == "random":
        positions = cfg.model.tiny.max_position_embeddings
    elif family.prompt_in_output:
        from threadsum.model import load_model_config, model_positions

        positions = model_positions(load_model_config(cfg.model.name_or_path))
    else:
        return d.max_source_tokens
    return family.source_budget(positions, d.max_source_tokens, d.max_target_tokens,
                                cfg.eval.generation.max_new_tokens)


def _tokenize(records: dict[str, list[dict]], source_ids: dict[str, list[list[int]]], tokenizer, source_tok,
              family: Family, d, budget: int) -> tuple[Any, dict[str, Any]]:
    """The Arrow datasets: render's source ids (already within ``budget``) and the summaries' labels.

    Sources: the ids of ``source_tok`` (the family's source tokenizer: BART's ``<s> .. </s>``, or a
    causal model's prompt around the thread). Labels: :meth:`Family.target_ids` (seq2seq: the same ids
    as ``tokenizer(text_target=summary, max_length=..., truncation=True)``; causal: summary + end token).
    """
    from datasets import Dataset, DatasetDict, Features, Sequence, Value

    features = Features({"thread_id": Value("string"), "input_ids": Sequence(Value("int32")),
                         "labels": Sequence(Value("int32"))})
    summaries = [r["summary"] for s in SPLITS for r in records[s]]
    labels = family.target_ids(tokenizer, d.prompt, summaries, d.max_target_tokens)
    uncut = family.target_ids(tokenizer, d.prompt, summaries, 1 << 30)
    out = {}
    pos = 0
    for s in SPLITS:
        n = len(records[s])
        src = source_ids[s]
        for k, ids in enumerate(src):
            if ids is None or len(ids) > budget:  # not produced by a budgeted render
                src[k] = source_tok(records[s][k]["source"], max_length=budget, truncation=True)["input_ids"]
        out[s] = Dataset.from_dict({"thread_id": [r["thread_id"] for r in records[s]], "input_ids": src,
                                    "labels": labels[pos:pos + n]}, features=features)
        pos += n
    lengths = [len(ids) for ids in uncut]
    return DatasetDict(out), {"truncated": sum(1 for n in lengths if n > d.max_target_tokens),
                              "total": sum(min(n, d.max_target_tokens) for n in lengths), "lengths": lengths}


# ------------------------------------------------------------------------------------ command
def prepare_command(cfg: Config, force: bool = False, strict: bool = False) -> dict[str, Any]:
    """`threadsum prepare`: run prepare and print a summary table.

    Raises:
        PrepareError, DataError: the input cannot make a dataset (the CLI prints the message, exit 2).
    """
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if strict and not cfg.data.strict:
        cfg = cfg.model_copy(deep=True)
        cfg.data.strict = True
    info = prepare(cfg, force=force)  # PrepareError / DataError reach the CLI, which exits 2 with the message
    table = Table(title=f"prepared {info['prepared_dir']}" + ("  (cache hit)" if info["cache"].get("hit") else ""))
    for col in ("", "input", "kept", "rejected"):
        table.add_column(col, justify="right" if col else "left")
    for what in ("threads", "emails"):
        c = info[what]
        table.add_row(what, str(c["input"]), str(c["kept"]), str(c["rejected"]))
    console.print(table)
    sp = info["splits"]
    tr = info["truncation"]
    console.print(f"splits: train {sp['train']}, validation {sp['validation']}, test {sp['test']}")
    console.print(f"truncated to {tr['max_source_tokens']} tokens: {tr['threads_truncated']} threads "
                  f"({tr['share_truncated']:.0%}), {tr['tokens_kept_share']:.0%} of cleaned tokens kept")
    reasons = Counter()
    for lvl in ("threads", "emails"):
        reasons.update({f"{lvl}: {k}": v for k, v in info[lvl]["by_reason"].items()})
    if reasons:
        console.print("rejected: " + ", ".join(f"{k} x{v}" for k, v in reasons.most_common(8)))
    repaired = {k: v for k, v in (info.get("warnings") or {}).items() if k != W_UNIQUE_TEXT_REMOVED}
    if repaired:
        console.print("repaired: " + ", ".join(f"{k} x{v}" for k, v in repaired.items()))
    lost = (info.get("warnings") or {}).get(W_UNIQUE_TEXT_REMOVED, 0)
    if lost:
        console.print(f"[bold yellow]warning[/]: cleaning removed unique text outside matched blocks {lost} time(s) "
                      f"(all in {Path(info['prepared_dir']) / 'warnings.jsonl'}; data.strict fails on it):",
                      highlight=False)
        for w in info.get("audit_warnings", [])[:5]:
            console.print(f"  - thread {w['thread_id']}, {w['step']}, email {w['email']} {w['field']}: "
                          f"{w['words'][:120]!r}", markup=False, highlight=False)
    out = Path(info["prepared_dir"])
    console.print(f"report: {out / 'report.md'}  rejects: {out / 'rejects.jsonl'}")
    if info["cache"].get("hit"):
        console.print(info["cache"]["note"])
    else:
        console.print(f"took {info['timings_s'].get('total', 0):.1f}s")
    return info
