"""``metrics.jsonl`` of a run (one JSON record per log step, evaluation and event) and the window
of steps a log record averages over."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threadsum.train.checkpoint.state import Counters

METRICS_FILE = "metrics.jsonl"


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record as a line."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records the interrupted run wrote after its last checkpoint (they are redone)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


@dataclass
class Window:
    """Totals since the last log record: seconds, real and padded tokens, summed step losses, steps."""

    t: float = 0.0
    real: int = 0
    padded: int = 0
    loss: float = 0.0
    steps: int = 0

    def add(self, seconds: float, real: int, padded: int, loss: float) -> None:
        """Count one optimizer step (``loss``: its mean loss per label token)."""
        self.t += seconds
        self.real += real
        self.padded += padded
        self.loss += loss
        self.steps += 1

    def tokens_per_s(self) -> tuple[float, float]:
        """(real, padded) tokens per second over the window."""
        return self.real / max(self.t, 1e-9), self.padded / max(self.t, 1e-9)


def run_summary(counters: Counters, last_metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures a run reports (run record, model card, return value of ``train``)."""
    return {
        "final_loss": last_metrics.get("loss"),
        "real_tokens": counters.real_tokens,
        "real_tokens_per_s": counters.real_tokens / counters.train_seconds if counters.train_seconds else None,
        "padding_fraction": 1 - counters.real_tokens / counters.padded_tokens if counters.padded_tokens else None,
        "peak_mem_gb": last_metrics.get("peak_mem_gb"),
        "train_seconds": counters.train_seconds,
        "best_val_loss": counters.best_val_loss,
        "best_step": counters.best_step,
        "oom_events": counters.oom_events,
        "compute_max_tokens": counters.compute_max_tokens,
        "skipped_steps": counters.skipped_steps,
        "nonfinite_steps": counters.nonfinite_steps,
    }
