"""The archive job: read, plan shards, check the manifest, run the shards, reconcile, report.

:func:`run_archive` is ``threadsum summarize INPUT... -m MODEL --out DIR``. A first run writes the
manifest (input files with their sha256, S3 objects with their ETag, the model's fingerprint, the
settings that decide a summary, the shard plan); a later run of the same command compares all four
and goes on with the shards not yet finished, or refuses with the differences unless ``restart`` is
set. At the end the counts are
taken from the files on disk and must reconcile: threads input = summarized + rejected (by the
readers or at summarizing), and every planned shard holds exactly its threads.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from threadsum.archive.layout import (
    FORMAT_VERSION,
    REJECTS,
    RUNS,
    SUMMARY,
    WARNINGS,
    JobFolder,
    append_jsonl,
    has_parquet,
    read_jsonl,
    shard_counts,
    write_json_atomic,
    write_jsonl_atomic,
)
from threadsum.archive.sources import (
    ArchiveError,
    Input,
    ReadArchive,
    check_inputs,
    file_sha256,
    input_hashes,
    input_name,
    is_s3,
    make_s3_client,
    read_archive,
)
from threadsum.archive.work import Shard, load_summarizer, summarize_shard
from threadsum.config import differing_settings
from threadsum.errors import ThreadsumError
from threadsum.inference.summarizer import saved_config_with

log = logging.getLogger("threadsum.archive")

DEFAULT_SHARD_SIZE = 100
"""Threads per shard: what a kill can cost (one shard per engine), and the unit written atomically."""
PROGRESS_LOG_SECONDS = 10.0
"""Seconds between progress lines when stderr is not a terminal."""
# settings compared on resume that do not change a summary
_NOT_DECIDING = ("generation.batch_size",)


@dataclass
class ArchiveOptions:
    """What ``threadsum summarize ... --out DIR`` was asked to do."""

    inputs: list[str]
    """Files and folders to read (every format the readers take)."""
    model: str
    """Model folder (or hub id)."""
    out: Path
    """The job folder."""
    device: str = "auto"
    """Device of each engine (auto: a GPU when there is one)."""
    overrides: list[str] = field(default_factory=list)
    """``section.key=value`` over the model's saved config (decoding, cleaning, rendering)."""
    shard_size: Optional[int] = None
    """Threads per shard; None: the manifest's on resume, else :data:`DEFAULT_SHARD_SIZE`."""
    cores: int = 0
    """CPU threads per engine (local: the one engine; Ray: each actor); 0: every usable core locally,
    :data:`threadsum.archive.ray_runner.DEFAULT_CPUS_PER_ACTOR` per CPU actor."""
    ray: Optional[str] = None
    """None: this process; ``local``, ``auto`` or a cluster address: Ray Data."""
    actors: int = 0
    """Ray actor pool size (0: as many as the cluster's CPUs or GPUs allow)."""
    gpus_per_actor: float = 0.0
    """GPUs per Ray actor (0: 1 when the cluster has GPUs, else none)."""
    restart: bool = False
    """Discard the job folder's results and start over (needed after inputs, model or settings changed)."""
    progress: Optional[bool] = None
    """Show a progress bar (None: when stderr is a terminal; plain log lines otherwise)."""


# ----------------------------------------------------------------------------------- the manifest
def model_fingerprint(model: str) -> dict[str, Any]:
    """``{"path", "sha256"}``: sha256 over every file of a model folder (relative path, size and bytes);
    a hub id (no folder) is fingerprinted by its name only."""
    p = Path(model)
    if not p.is_dir():
        return {"path": model, "sha256": hashlib.sha256(f"hub:{model}".encode()).hexdigest()}
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{f.stat().st_size}\0{file_sha256(f)}\n".encode())
    return {"path": str(p.resolve()), "sha256": h.hexdigest()}


def deciding_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a resolved config (``Config.to_dict()`` form) that decide a thread's summary:
    decoding (``eval.generation``), cleaning, rendering, the prompt, the length limits and the engine."""
    d = config["data"]
    return {"generation": config["eval"]["generation"], "clean": d["clean"], "render": d["render"],
            "prompt": d["prompt"], "max_source_tokens": d["max_source_tokens"],
            "max_target_tokens": d["max_target_tokens"], "max_body_chars": d["max_body_chars"],
            "engine": config["inference"]["engine"]}


def plan_shards(read: ReadArchive, shard_size: int) -> list[Shard]:
    """The read threads in shards of at most ``shard_size``, unit by unit in reading order; shard ids
    are ``<unit>-<chunk>`` (5 and 6 digits), so the same inputs give the same plan."""
    shards = []
    for u, (unit, result) in enumerate(read.units):
        for c in range(0, len(result.threads), shard_size):
            shards.append(Shard(f"{u:05d}-{c // shard_size:06d}", unit.source, result.threads[c:c + shard_size]))
    return shards


def _plan_record(shards: list[Shard]) -> list[dict[str, Any]]:
    out = []
    for s in shards:
        ids = hashlib.sha256("\n".join(t.thread_id for t in s.threads).encode("utf-8", "surrogatepass"))
        out.append({"id": s.shard_id, "source": s.source, "threads": len(s.threads), "ids_sha256": ids.hexdigest()})
    return out


def build_manifest(known: dict[str, Any], config: dict[str, Any], read: ReadArchive, shards: list[Shard]
                   ) -> dict[str, Any]:
    """The manifest of this job (see the module docstring): ``known`` (inputs, model, settings, shard size:
    :func:`_known_before_reading`) and the input files' hashes, the config and the shard plan;
    ``created`` is not compared on resume."""
    return {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **known,
        "files": input_hashes(read.files, read.objects),
        "config": config,
        "shards": _plan_record(shards),
    }


def setting_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed in the inputs named, the model and the settings (known before reading), one line each."""
    diffs = []
    if old.get("inputs") != new["inputs"]:
        diffs.append(f"inputs: {old.get('inputs')} -> {new['inputs']}")
    if old.get("model", {}).get("sha256") != new["model"]["sha256"]:
        diffs.append(f"model: {old.get('model', {}).get('path')} (fingerprint {str(old.get('model', {}).get('sha256'))[:12]}) "
                     f"-> {new['model']['path']} ({new['model']['sha256'][:12]})")
    for key, a, b in differing_settings(old.get("settings", {}), new["settings"], ignore=_NOT_DECIDING):
        diffs.append(f"setting {key}: {a!r} -> {b!r}")
    if old.get("shard_size") != new["shard_size"]:
        diffs.append(f"shard size: {old.get('shard_size')} -> {new['shard_size']}")
    return diffs


def manifest_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between the saved manifest and this run's, one line each ([] when it may resume)."""
    diffs = setting_differences(old, new)
    before = {f["path"]: f for f in old.get("files", [])}  # a row holds sha256 (a file) or etag (S3)
    now = {f["path"]: f for f in new["files"]}
    changed = sorted(p for p in before.keys() & now.keys() if before[p] != now[p])
    for what, paths in (("changed", changed), ("new", sorted(now.keys() - before.keys())),
                        ("gone", sorted(before.keys() - now.keys()))):
        if paths:
            diffs.append(f"{len(paths)} input file(s) {what}: " + ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else ""))
    if not diffs and old.get("shards") != new["shards"]:
        diffs.append("the readers now group the same files into other threads (a newer threadsum?)")
    return diffs


# ------------------------------------------------------------------------------------- progress
class ArchiveProgress:
    """Threads done of the total, threads/s of this run and the ETA: a rich bar on a terminal, a log line
    every :data:`PROGRESS_LOG_SECONDS` otherwise."""

    def __init__(self, total: int, done_before: int, enabled: Optional[bool] = None):
        self.total, self.done = total, done_before
        self.done_before = done_before
        self.t0 = time.perf_counter()
        self._last_log = self.t0
        self._bar = None
        if enabled if enabled is not None else sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("summarizing"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("threads  {task.fields[rate]}  ETA {task.fields[eta]}"), transient=False)
            self._task = self._bar.add_task("archive", total=total, completed=done_before, rate="-", eta="-")
            self._bar.start()

    def rate(self) -> float:
        """Threads per second of this run so far."""
        return (self.done - self.done_before) / max(1e-9, time.perf_counter() - self.t0)

    def _eta(self) -> str:
        r = self.rate()
        if r <= 0:
            return "-"
        s = int((self.total - self.done) / r)
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

    def advance(self, n: int) -> None:
        """``n`` more threads finished (summarized or rejected)."""
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{self.rate():.2f}/s", eta=self._eta())
        elif time.perf_counter() - self._last_log >= PROGRESS_LOG_SECONDS or self.done == self.total:
            self._last_log = time.perf_counter()
            log.info("%d/%d threads, %.2f threads/s, ETA %s", self.done, self.total, self.rate(), self._eta())

    def close(self) -> None:
        """Stop the bar."""
        if self._bar is not None:
            self._bar.stop()


# ------------------------------------------------------------------------------------------ run
def resolve_config(model: str, overrides: list[str]) -> dict[str, Any]:
    """The model's saved config with ``overrides`` applied, validated (raises ConfigError naming the key)."""
    return saved_config_with(model, overrides).to_dict()


def _check_out(out: Path, inputs: list[Input]) -> None:
    r = out.resolve()
    for p in inputs:
        if isinstance(p, Path) and p.is_dir() and (r == p.resolve() or p.resolve() in r.parents):
            raise ArchiveError(f"--out {out} lies inside the input folder {p}: its results would be read as input "
                               f"on the next run; choose a folder outside it")


def _local(opts: ArchiveOptions, config: dict[str, Any], shards: list[Shard], on_shard) -> dict[str, Any]:
    summarizer = load_summarizer(opts.model, config, opts.device, opts.cores)
    engine = summarizer.engine.describe()
    for shard in shards:
        results, rejects, seconds = summarize_shard(summarizer, shard)
        on_shard(shard.shard_id, results, rejects, seconds, engine)
    return {"cores": opts.cores or "all"}


def _known_before_reading(opts: ArchiveOptions, config: dict[str, Any], shard_size: int) -> dict[str, Any]:
    return {"inputs": [input_name(i) for i in opts.inputs], "model": model_fingerprint(opts.model),
            "settings": deciding_settings(config), "shard_size": shard_size}


def _refuse(opts: ArchiveOptions, folder: JobFolder, diffs: list[str]) -> None:
    if diffs:
        raise ArchiveError(f"{opts.out} holds a job that differs from this command: " + "; ".join(diffs)
                           + f". Run with --restart to discard its {len(folder.finished())} finished "
                           f"shard(s) and start over, or choose another --out")


def run_archive(opts: ArchiveOptions) -> dict[str, Any]:
    """Run (or resume) an archive job; returns the reconciled summary also written to ``summary.json``.

    Raises:
        ArchiveError: a missing input, an S3 prefix that cannot be listed or read or holds nothing,
            ``--out`` inside an input folder or not a job folder, another job holding the folder, or a
            resume whose inputs, model or settings changed (exit 2).
        LaunchValidationError: an ``s3://`` input that is not a valid S3 URI (exit 2).
        ConfigError, ModelLoadError, DeviceError, MissingExtraError: the model, its config, an
            override, the device or an extra (exit 2).
        ThreadsumError: the counts on disk do not reconcile (exit 1; a bug, never expected).
    """
    s3 = make_s3_client() if any(is_s3(i) for i in opts.inputs) else None
    inputs = check_inputs(opts.inputs, s3)
    _check_out(opts.out, inputs)
    folder = JobFolder(opts.out)
    if not folder.is_job() and not folder.is_empty():
        raise ArchiveError(f"--out {opts.out} exists and is not an archive job folder (no manifest.json); "
                           f"choose a new or empty folder")
    with folder.locked():
        config = resolve_config(opts.model, opts.overrides)
        saved = folder.read_manifest() if folder.is_job() and not opts.restart else None
        shard_size = opts.shard_size or (saved or {}).get("shard_size") or DEFAULT_SHARD_SIZE
        if shard_size < 1:
            raise ArchiveError(f"--shard-size must be >= 1, got {shard_size}")
        known = _known_before_reading(opts, config, shard_size)
        if saved is not None:  # refuse before the (long) reading when what is known already differs
            _refuse(opts, folder, setting_differences(saved, known))
        t_read = time.perf_counter()
        read = read_archive(inputs, config["data"]["max_body_chars"], s3)
        shards = plan_shards(read, shard_size)
        manifest = build_manifest(known, config, read, shards)
        read_seconds = time.perf_counter() - t_read
        if saved is not None:
            _refuse(opts, folder, manifest_differences(saved, manifest))
            config = saved["config"]  # equal in every deciding setting; the saved one is the job's
        else:
            folder.start(manifest)
        finished = folder.finished() & {s.shard_id for s in shards}
        pending = [s for s in shards if s.shard_id not in finished]
        folder.remove_partial(s.shard_id for s in pending)
        total = sum(len(s.threads) for s in shards)
        log.info("%d thread(s) in %d shard(s); %d shard(s) finished before, %d to run (read in %.1f s)",
                 total, len(shards), len(finished), len(pending), read_seconds)
        run = _run_shards(opts, config, folder, shards, pending, total)
        return _finish(opts, folder, read, shards, run, read_seconds)


def _run_shards(opts: ArchiveOptions, config: dict[str, Any], folder: JobFolder, shards: list[Shard],
                pending: list[Shard], total: int) -> dict[str, Any]:
    parquet = has_parquet()
    done_before = total - sum(len(s.threads) for s in pending)
    progress = ArchiveProgress(total, done_before, opts.progress)
    engine: dict[str, Any] = {}
    t0 = time.perf_counter()
    busy = [0.0]

    first: list[float] = []  # (seconds to the first finished shard, its threads): start-up cost

    def on_shard(shard_id, results, rejects, seconds, eng):
        folder.write_shard(shard_id, results, rejects, parquet)
        engine.update(eng)
        busy[0] += seconds
        if not first:
            first.extend([time.perf_counter() - t0, len(results) + len(rejects)])
        progress.advance(len(results) + len(rejects))

    try:
        if opts.ray:
            from threadsum.archive.ray_runner import run_on_ray

            info = run_on_ray(opts.ray, pending, opts.model, config, opts.device, opts.cores, opts.actors,
                              opts.gpus_per_actor, on_shard)
        else:
            info = _local(opts, config, pending, on_shard) if pending else {}
    finally:
        progress.close()
    wall = time.perf_counter() - t0
    threads = sum(len(s.threads) for s in pending)
    # after the first shard: the rate once the engines are loaded (and Ray started), what a long job sees
    after_first = (threads - first[1]) / (wall - first[0]) if first and threads > first[1] and wall > first[0] else None
    return {"mode": f"ray:{opts.ray}" if opts.ray else "local", **info, "engine": engine,
            "shards_run": len(pending), "threads_run": threads, "seconds": round(wall, 3),
            "threads_per_second": round(threads / wall, 3) if wall > 0 and threads else None,
            "first_shard_seconds": round(first[0], 3) if first else None,
            "threads_per_second_after_first_shard": round(after_first, 3) if after_first else None,
            "engine_seconds": round(busy[0], 3), "load_average": list(os.getloadavg())}


def _finish(opts: ArchiveOptions, folder: JobFolder, read: ReadArchive, shards: list[Shard],
            run: dict[str, Any], read_seconds: float) -> dict[str, Any]:
    """Reconcile the counts from the files on disk, write rejects/warnings/summary, log the run."""
    read_rejects = [dict(r, stage="read") for r in read.rejects]
    warnings = []
    threads_in = emails_in = emails_rejected = files_rejected = 0
    for _, result in read.units:
        read_rejects += [dict(r, stage="read") for r in result.rejects]
        warnings += result.warnings
        threads_in += result.counts["threads"]["input"]
        emails_in += result.counts["emails"]["input"]
        emails_rejected += result.counts["emails"]["rejected"]
        files_rejected += result.counts["files"]["rejected"]
    files_rejected += len(read.rejects)
    read_thread_rejects = sum(result.counts["threads"]["rejected"] for _, result in read.units)
    done = rejected = 0
    shard_rejects: list[dict[str, Any]] = []
    for s in shards:
        n_ok, n_bad = shard_counts(folder, s.shard_id)
        if n_ok + n_bad != len(s.threads):
            raise ThreadsumError(f"shard {s.shard_id} of {opts.out} holds {n_ok} results and {n_bad} rejects for "
                                 f"{len(s.threads)} threads; rerun with --restart (and report this bug)")
        done, rejected = done + n_ok, rejected + n_bad
        if n_bad:
            shard_rejects += read_jsonl(folder.shard_rejects(s.shard_id))
    if threads_in != done + rejected + read_thread_rejects:
        raise ThreadsumError(f"counts do not reconcile: {threads_in} threads read, {done} summarized, "
                             f"{rejected + read_thread_rejects} rejected; rerun with --restart (and report this bug)")
    by_reason = Counter(r["reason"] for r in read_rejects if r["level"] == "thread")
    by_reason.update(r["reason"] for r in shard_rejects)
    summary = {
        "threads": {"input": threads_in, "summarized": done, "rejected": rejected + read_thread_rejects,
                    "rejected_reading": read_thread_rejects, "rejected_summarizing": rejected,
                    "by_reason": dict(by_reason)},
        "emails": {"input": emails_in, "rejected": emails_rejected},
        "files": {"input": read.n_inputs, "rejected": files_rejected,
                  "by_reason": dict(Counter(r["reason"] for r in read_rejects if r["level"] == "file"))},
        "shards": {"total": len(shards), "run": run["shards_run"]},
        "warnings": dict(Counter(w["reason"] for w in warnings)),
        "run": {**run, "read_seconds": round(read_seconds, 3)},
    }
    write_jsonl_atomic(folder.root / REJECTS, read_rejects + shard_rejects)
    write_jsonl_atomic(folder.root / WARNINGS, warnings)
    write_json_atomic(folder.root / SUMMARY, summary)
    append_jsonl(folder.root / RUNS, {"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                      **summary["run"]})
    return summary


def report_lines(summary: dict[str, Any], out: Path) -> list[str]:
    """The end-of-job account printed by the CLI: the reconciled counts and where everything is."""
    t, f, run = summary["threads"], summary["files"], summary["run"]
    reasons = ", ".join(f"{k} x{v}" for k, v in sorted(t["by_reason"].items(), key=lambda kv: -kv[1]))
    lines = [f"threads: {t['input']} input = {t['summarized']} summarized + {t['rejected']} rejected "
             f"({t['rejected_reading']} when reading, {t['rejected_summarizing']} when summarizing"
             + (f": {reasons}" if reasons else "") + ")"]
    if f["rejected"] or summary["emails"]["rejected"]:
        lines.append(f"not read: {f['rejected']} file(s), {summary['emails']['rejected']} email(s)"
                     + (f" ({', '.join(f'{k} x{v}' for k, v in f['by_reason'].items())})" if f["by_reason"] else ""))
    rate = f", {run['threads_per_second']:.2f} threads/s" if run.get("threads_per_second") else ""
    lines.append(f"this run: {run['threads_run']} thread(s) in {run['shards_run']} shard(s), {run['seconds']:.1f} s"
                 f"{rate} ({run['mode']}); {summary['shards']['total'] - summary['shards']['run']} shard(s) were "
                 f"already done")
    lines.append(f"results: {out / 'shards'}/*.jsonl" + (" and *.parquet" if has_parquet() else "")
                 + f"; rejects: {out / REJECTS}; counts: {out / SUMMARY}")
    return lines


def archive_command(opts: ArchiveOptions, out=None) -> dict[str, Any]:
    """`threadsum summarize INPUT... -m MODEL --out DIR`: run the job, print its account (exit 0 when it
    finished, whatever was rejected). Raises what :func:`run_archive` raises."""
    summary = run_archive(opts)
    out = out or sys.stdout
    for line in report_lines(summary, opts.out):
        print(line, file=out)
    out.flush()
    return summary

