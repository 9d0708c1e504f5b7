"""One shard of an archive through the Summarizer: results and rejects, the same in every runner.

Local mode and each Ray actor call :func:`load_summarizer` once and :func:`summarize_shard` per
shard, so a thread gets the same summary however the job runs. A shard is handed to
:meth:`Summarizer.summarize_detailed` whole (its length-sorted batches of
``eval.generation.batch_size``, its decoding and claim checks), so what that method learns the
archive does too. Threads it cannot summarize become rejects instead of failing the shard:

- ``nothing_to_summarize``: no body text after the training cleaning path
  (:class:`~threadsum.inference.inputs.InputError`); the shard's other threads are summarized together;
- ``empty_summary``: the model produced nothing (:class:`~threadsum.inference.summarizer.EmptySummaryError`);
- ``engine_error``: generation raised; the shard's threads are retried one at a time and those that
  still fail are rejected with the error.

There is no "too long" reject: rendering always fits a thread into the model's window (bodies cut,
middle emails dropped, see :mod:`threadsum.data.render`), and a result says so in ``truncated``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional

from threadsum.config import Config, config_from_dict
from threadsum.data.types import Thread
from threadsum.inference.summarizer import EmptySummaryError, InputError, Summarizer, Summary, quiet_loading

log = logging.getLogger("threadsum.archive")

R_NOTHING_TO_SUMMARIZE = "nothing_to_summarize"
R_EMPTY_SUMMARY = "empty_summary"
R_ENGINE_ERROR = "engine_error"
SUMMARIZE_REASONS = (R_NOTHING_TO_SUMMARIZE, R_EMPTY_SUMMARY, R_ENGINE_ERROR)
"""Reasons a thread that was read gets no summary (the ``reason`` of its reject)."""


@dataclass
class Shard:
    """A bounded group of threads from one read unit: the unit of work, of writing and of resuming."""

    shard_id: str
    source: str
    """The read unit's absolute path (``source`` of every row)."""
    threads: list[Thread]


def load_summarizer(model: str, config: dict[str, Any], device: str = "auto", cores: int = 0) -> Summarizer:
    """The Summarizer of an archive job, with the job's resolved config (``Config.to_dict()`` form).

    ``cores`` > 0 caps the engine's CPU threads (torch's intra-op threads, or the ctranslate2
    engine's ``inference.threads``); 0 leaves every usable core to it.
    Raises what :meth:`Summarizer.from_pretrained` raises (ModelLoadError, DeviceError, ...).
    """
    cfg: Config = config_from_dict(config, origin="archive manifest")
    if cores:
        import torch

        torch.set_num_threads(cores)  # process-wide; an archive worker runs one engine
        cfg = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"threads": cores})})
    quiet_loading()
    return Summarizer.from_pretrained(model, device=device, config=cfg)


def _reject(shard: Shard, thread: Thread, reason: str, detail: str) -> dict[str, Any]:
    return {"level": "thread", "stage": "summarize", "reason": reason, "detail": detail, "source": shard.source,
            "line": None, "thread_id": thread.thread_id, "shard": shard.shard_id}


def _summarize(summarizer: Summarizer, shard: Shard, threads: list[Thread],
               rejects: list[dict[str, Any]]) -> list[tuple[Thread, Summary]]:
    """(thread, summary) for each thread that gets one, in order; the others are added to ``rejects``."""
    if not threads:
        return []
    try:
        return list(zip(threads, summarizer.summarize_detailed(threads)))
    except InputError as exc:
        if len(threads) == 1:
            rejects.append(_reject(shard, threads[0], R_NOTHING_TO_SUMMARIZE, str(exc)))
            return []
        keep = []
        for t in threads:  # find the unreadable ones (cleaning only), then summarize the rest together
            try:
                summarizer.prepare(t)
                keep.append(t)
            except InputError as one:
                rejects.append(_reject(shard, t, R_NOTHING_TO_SUMMARIZE, str(one)))
        if len(keep) == len(threads):  # prepare passed alone: take them one at a time
            return [pair for t in threads for pair in _summarize(summarizer, shard, [t], rejects)]
        return _summarize(summarizer, shard, keep, rejects)
    except EmptySummaryError as exc:
        pairs = []
        for t, r in zip(threads, exc.results):
            if r.summary.strip():
                pairs.append((t, r))
            else:
                rejects.append(_reject(shard, t, R_EMPTY_SUMMARY, "the model produced an empty summary"))
        return pairs
    except Exception as exc:  # noqa: BLE001 - any engine failure costs the failing threads, not the job
        if len(threads) == 1:
            log.warning("engine error on thread %s of %s: %s: %s", threads[0].thread_id, shard.source,
                        type(exc).__name__, exc)
            rejects.append(_reject(shard, threads[0], R_ENGINE_ERROR, f"{type(exc).__name__}: {exc}"[:2000]))
            return []
        return [pair for t in threads for pair in _summarize(summarizer, shard, [t], rejects)]


def summarize_shard(summarizer: Summarizer, shard: Shard) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """Summarize one shard.

    Returns:
        ``(results, rejects, seconds)``: one result row per summarized thread, in the shard's order
        (``source``, ``shard``, the fields of :meth:`Summary.to_dict` with the reader's ``thread_id``,
        and ``seconds``: the shard's wall time divided by its threads), one reject row per other thread
        (see the module docstring), and the shard's wall time in seconds.
    """
    t0 = time.perf_counter()
    rejects: list[dict[str, Any]] = []
    pairs = _summarize(summarizer, shard, shard.threads, rejects)
    seconds = time.perf_counter() - t0
    per_thread = seconds / max(1, len(shard.threads))
    results = [{"source": shard.source, "shard": shard.shard_id, **r.to_dict(), "thread_id": t.thread_id,
                "seconds": round(per_thread, 6)} for t, r in pairs]
    return results, rejects, seconds


def describe_engine(summarizer: Optional[Summarizer]) -> dict[str, Any]:
    """The engine's own description (engine, device, dtype, versions) for the run log."""
    return summarizer.engine.describe() if summarizer is not None else {}
