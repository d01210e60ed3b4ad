"""SIGTERM/SIGINT as a polite request: the loop finishes its step, checkpoints and exits."""
from __future__ import annotations

import signal
import threading


class StopSignals:
    """Context manager that turns SIGTERM and the first SIGINT into ``self.requested``.

    A second SIGINT (Ctrl-C twice) raises ``KeyboardInterrupt`` at once, for when the user really
    means it. Handlers are only installed from the main thread; the previous ones are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
