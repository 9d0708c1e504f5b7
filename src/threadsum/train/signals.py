"""SIGTERM/SIGINT during training: finish the current optimizer step, checkpoint, exit 75."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Optional

log = logging.getLogger("threadsum.train")


class StopSignal:
    """SIGTERM/SIGINT ask the loop to stop after the current optimizer step; a second SIGINT aborts
    at once (raises KeyboardInterrupt). ``signum`` is the signal received, or None."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """True once a stop was asked for."""
        return self.signum is not None

    def install(self) -> None:
        """Handle SIGTERM and SIGINT (main thread only: elsewhere Python cannot set handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: finishing the current optimizer step, then writing a checkpoint "
                    "(press Ctrl-C again to abort at once without one)", signal.Signals(signum).name)
