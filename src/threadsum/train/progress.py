"""Progress display: a rich bar on a terminal, plain periodic log lines otherwise (logs, jobs)."""
from __future__ import annotations

import logging
import os
import resource
import sys
import time
from typing import Any, Optional

log = logging.getLogger("threadsum.train")


def peak_memory_gb(device_type: str) -> float:
    """Peak CUDA memory allocated, or the process's peak RSS on CPU."""
    if device_type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_gb() -> float:
    """Resident memory of this process now, in GiB (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except OSError:
        return peak_memory_gb("cpu")


def format_eta(seconds: float) -> str:
    """'M:SS' or 'H:MM:SS' for a duration in seconds."""
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """``update(step, metrics)`` after each optimizer step; ``message(text)`` for events."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True, interactive: Optional[bool] = None):
        self.total = total_steps
        self.start_step = start_step
        self.enabled = enabled
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._t0 = time.perf_counter()
        self._bar: Any = None
        self._task = None
        if self.enabled and self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, info="")

    def eta(self, step: int) -> float:
        """Seconds left at ``step``, from the mean step time of this process (NaN before the first step)."""
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self._t0) / done * (self.total - step)

    def update(self, step: int, metrics: dict[str, float], log_line: bool) -> None:
        """Show ``step`` with its loss, lr, tokens/s and peak memory (a log line when ``log_line``
        and no terminal bar)."""
        if not self.enabled:
            return
        info = (f"loss {metrics.get('loss', float('nan')):.4f}  lr {metrics.get('lr', 0):.2e}  "
                f"{metrics.get('tokens_per_s', 0):,.0f} tok/s  peak {metrics.get('peak_mem_gb', 0):.2f} GB")
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif log_line:
            log.info("step %d/%d  %s  eta %s", step, self.total, info, format_eta(self.eta(step)))

    def message(self, text: str) -> None:
        """Print an event line above the bar (or log it)."""
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            log.info(text)

    def close(self) -> None:
        """Stop the bar (idempotent)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
