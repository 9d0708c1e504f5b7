"""Grounded reranking: of a thread's candidate summaries, keep the one the thread supports best.

The rule (one place; evaluate, summarize, serve and the batch job all reach it through
:func:`grounded_chooser`, passed to the engine as ``choose``): fewest unsupported claims
(:func:`threadsum.verify.check`), then most important facts carried
(:func:`threadsum.verify.coverage`), then the model's order (its score, or the beam rank where the
engine gives no score). Pure: no model, deterministic. It can only prefer among what the beams
hold; what claims and coverage cannot see (their module docstrings) it cannot prefer either.
"""
from __future__ import annotations

from typing import Optional, Sequence

from threadsum.data.types import Email, Thread
from threadsum.verify.claims import check_indexed
from threadsum.verify.coverage import Fact, carried, thread_facts
from threadsum.verify.evidence import ThreadIndex, content_words, index_thread
from threadsum.verify.names import fold
from threadsum.verify.values import find_values


def rerank_key(idx: ThreadIndex, text: str, rank: int, score: Optional[float],
               important: Optional[Sequence[Fact]] = None) -> tuple:
    """Sort key of one candidate (smaller is better): (unsupported claims, -important facts carried,
    -score (0 when unknown), beam rank). ``important``: the thread's important facts
    (:func:`important_facts`), found once per thread and shared by its candidates; None finds them."""
    unsupported = sum(not c.supported for c in check_indexed(idx, text))
    facts = important_facts(idx) if important is None else important
    values, words, folded = find_values(text), content_words(text), fold(text)
    n_carried = sum(carried(f, values, words, folded) for f in facts)
    return unsupported, -n_carried, -(score if score is not None else 0.0), rank


def important_facts(idx: ThreadIndex) -> list[Fact]:
    """The thread's important facts (``Fact.important``): the thread's side of the rule, the same for every candidate."""
    return [f for f in thread_facts(idx) if f.important]


def choose_grounded(idx: ThreadIndex, candidates: Sequence[str], scores: Sequence[Optional[float]] = ()) -> int:
    """Index of the candidate to keep (rule in the module docstring); 0 for one or none. Empty
    candidates are never kept while a non-empty one exists."""
    if len(candidates) <= 1:
        return 0
    scores = list(scores) or [None] * len(candidates)
    important = important_facts(idx)
    keys = [((not t.strip()),) + rerank_key(idx, t, r, s, important)
            for r, (t, s) in enumerate(zip(candidates, scores))]
    return min(range(len(candidates)), key=keys.__getitem__)


def rendered_thread(text: str, thread_id: str = "", subject: str = "") -> Thread:
    """The thread as the model read it (its cleaned, rendered source: From:/To:/Date: lines in one
    body, where the thread index finds each author again); facts cut by truncation count as
    unsupported, as the model never saw them."""
    return Thread(str(thread_id), subject, [Email(sender="", body=text or "")])


def grounded_chooser(threads: Sequence[Optional[Thread]]):
    """A ``choose(position, candidates, scores) -> index`` for :mod:`threadsum.generation` over the
    threads the sequences came from (position = index into ``threads``; None keeps the top beam)."""

    def choose(i: int, candidates: list[str], scores: list[Optional[float]]) -> int:
        thread = threads[i] if i < len(threads) else None
        return 0 if thread is None else choose_grounded(index_thread(thread), candidates, scores)

    return choose
