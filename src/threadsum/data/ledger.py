"""The one account of what prepare read, dropped and repaired.

Every reject (a file, a row, an email, a summary, a whole thread) and every warning (a repaired row, a
cut body, text the cleaning audit saw removed) goes through a ``Ledger``; the per-level counts are
derived from that one list, so they reconcile by construction: for emails and threads,
``input = kept + rejected``, and for summaries ``input = kept + rejected + unpaired``. Readers fill one
ledger per source; ``Ledger.merged`` joins several; prepare adds what cleaning drops to the same one.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Optional

# emails of a rejected thread count under this prefix + the thread's reason ('thread_rejected:<reason>')
R_THREAD_REJECTED = "thread_rejected"
LEVELS = ("email", "summary", "thread", "file")


class ReconcileError(AssertionError):
    """The counts of a ledger do not add up: a loss was not recorded (a bug, never bad input)."""


class Ledger:
    """Rejects and warnings, in the order they happened, and the input counts per level.

    Attributes:
        rejects: one dict per reject: {level (``LEVELS``), reason, detail, source, line, thread_id,
            and for a thread its ``n_emails``}.
        warnings: one dict per warning: {reason, detail, source, line, thread_id, ...}.
        inputs: items read per level (``email``, ``thread``, ``summary``).
    """

    def __init__(self) -> None:
        self.rejects: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []
        self.inputs: Counter = Counter()

    @classmethod
    def merged(cls, parts: Iterable[tuple[list, list, dict]]) -> "Ledger":
        """One ledger from several sources' (rejects, warnings, counts), in order."""
        led = cls()
        for rejects, warnings, counts in parts:
            led.rejects.extend(rejects)
            led.warnings.extend(warnings)
            for level, key in (("email", "emails"), ("thread", "threads"), ("summary", "summaries")):
                led.inputs[level] += counts.get(key, {}).get("input", 0)
        return led

    def reject(self, level: str, reason: str, detail: str, source: Any = None, line: Optional[int] = None,
               thread_id: Optional[str] = None, n_emails: int = 0) -> None:
        """Record one reject. A thread's ``n_emails`` are counted as rejected emails too."""
        rec = {"level": level, "reason": reason, "detail": detail, "source": str(source) if source else None,
               "line": line, "thread_id": thread_id}
        if n_emails:
            rec["n_emails"] = n_emails
        self.rejects.append(rec)

    def warn(self, reason: str, detail: str, source: Any = None, line: Optional[int] = None,
             thread_id: Optional[str] = None, **extra: Any) -> None:
        """Record one warning (the data was kept, repaired or cut); ``extra`` fields are kept as given."""
        self.warnings.append({"reason": reason, "detail": detail, "source": str(source) if source else None,
                              "line": line, "thread_id": thread_id, **extra})

    def add_warnings(self, records: Iterable[dict[str, Any]]) -> None:
        """Record warnings already built as dicts (each with a ``reason``)."""
        self.warnings.extend(records)

    def counts(self, kept_threads: list) -> dict[str, Any]:
        """Per-level counts: {emails, threads, summaries: {input, kept, rejected, by_reason}, summaries'
        ``unpaired`` (valid rows whose thread is missing or rejected), files: {rejected, by_reason},
        warnings: {reason: n}}. ``kept`` is measured on ``kept_threads`` (objects with ``emails`` and
        ``summary``), everything else comes from the records."""
        by = {lvl: Counter() for lvl in LEVELS}
        emails_rejected = 0
        for r in self.rejects:
            by[r["level"]][r["reason"]] += 1
            if r["level"] == "email":
                emails_rejected += 1
            elif r["level"] == "thread" and r.get("n_emails"):
                by["email"][f"{R_THREAD_REJECTED}:{r['reason']}"] += r["n_emails"]
                emails_rejected += r["n_emails"]
        kept_emails = sum(len(t.emails) for t in kept_threads)
        paired = sum(1 for t in kept_threads if t.summary)
        return {
            "emails": {"input": self.inputs["email"], "kept": kept_emails, "rejected": emails_rejected,
                       "by_reason": dict(by["email"])},
            "threads": {"input": self.inputs["thread"], "kept": len(kept_threads),
                        "rejected": sum(by["thread"].values()), "by_reason": dict(by["thread"])},
            "summaries": {"input": self.inputs["summary"], "kept": paired, "rejected": sum(by["summary"].values()),
                          "unpaired": self.inputs["summary"] - paired - sum(by["summary"].values()),
                          "by_reason": dict(by["summary"])},
            "files": {"rejected": sum(by["file"].values()), "by_reason": dict(by["file"])},
            "warnings": dict(Counter(w["reason"] for w in self.warnings)),
        }

    def reconciled(self, kept_threads: list) -> dict[str, Any]:
        """``counts`` after checking that input = kept + rejected for emails and threads and that no
        summary count is negative.

        Raises:
            ReconcileError: a loss was not recorded (a bug in the step that dropped it).
        """
        c = self.counts(kept_threads)
        for level in ("emails", "threads"):
            x = c[level]
            if x["input"] != x["kept"] + x["rejected"]:
                raise ReconcileError(f"{level}: input {x['input']} != kept {x['kept']} + rejected {x['rejected']}")
        if c["summaries"]["unpaired"] < 0:
            raise ReconcileError(f"summaries: {c['summaries']}")
        return c
