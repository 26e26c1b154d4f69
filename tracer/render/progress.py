"""Progress on a terminal while captures are read: a line on stderr, redrawn in place."""

from __future__ import annotations

import threading
import time
from typing import TextIO


class ReadingProgress:
    """`reading captures: 42% (3 s)` on a terminal, from DELAY seconds on, updated in place;
    once everything is read (share 1), what comes next, its seconds ticking; wiped when the
    result is about to be shown (called with None). Nothing it writes can fail the analysis."""

    DELAY = 1.0
    TICK = 0.5  # seconds between redraws after reading, while nothing else calls

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.start = time.monotonic()
        self.shown = ""  # what the line says now
        self.lock = threading.Lock()
        self.ticker: threading.Thread | None = None
        self.stop = threading.Event()

    def __call__(self, share: float | None) -> None:
        if share is None:
            if self.ticker is not None:
                self.stop.set()
                self.ticker.join()
                self.ticker = None
            self._write("")
            return
        self._draw(share)
        if share >= 1.0 and self.ticker is None:
            self.ticker = threading.Thread(target=self._tick, name="tracer-progress", daemon=True)
            self.ticker.start()

    def _tick(self) -> None:
        while not self.stop.wait(self.TICK):
            self._draw(1.0)

    def _draw(self, share: float) -> None:
        elapsed = time.monotonic() - self.start
        if elapsed >= self.DELAY:
            what = f"reading captures: {int(share * 100):3d}%" if share < 1.0 else "captures read, working out the flows"
            self._write(f"{what} ({elapsed:.0f} s)")

    def _write(self, text: str) -> None:
        with self.lock:
            if text == self.shown:
                return
            try:
                self.stream.write("\r\x1b[K" + text)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # (a terminal gone: the analysis goes on)
            self.shown = text


class Spinner:
    """A spinner on `stream` while a run works, saying what it does (nothing when the stream is
    not a terminal). Used as `with Spinner(sys.stderr) as progress: progress("what")`."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.status = None

    def __enter__(self):
        self.status = None
        if not self.stream.isatty():  # (then not even rich's import, ~30 ms, before the run starts)
            return self.update
        from rich.console import Console

        self.console = Console(file=self.stream)
        self.status = self.console.status("") if self.console.is_terminal else None
        if self.status:
            self.status.start()
        return self.update

    def update(self, what: str | None) -> None:
        if self.status is None:
            return
        if what is None:
            self.status.stop()
        else:
            self.status.update(what)

    def __exit__(self, *exc):
        if self.status:
            self.status.stop()
