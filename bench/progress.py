"""Progress of a benchmark on stderr: a bar redrawn in place on a terminal, one line per finished job otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts finished jobs out of `total`; `quiet` prints nothing (tests, library use)."""

    def __init__(self, total: int, stream: TextIO | None = None, quiet: bool = False, width: int = 24):
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.width = width
        self.finished = 0
        self.label = ""
        self.began = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def start(self, label: str) -> None:
        """A job starts: on a terminal, redraw the bar with its name."""
        self.label = label
        self.began = time.perf_counter()
        if self.tty and not self.quiet:
            self._bar()

    def done(self) -> None:
        """The current job finished."""
        self.finished += 1
        if self.quiet:
            return
        if self.tty:
            self._bar()
        else:
            seconds = time.perf_counter() - self.began
            print(f"[bench] {self.finished}/{self.total} {self.label} ({seconds:.1f} s)", file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar's line."""
        if self.tty and not self.quiet:
            print(file=self.stream, flush=True)

    def _bar(self) -> None:
        filled = int(self.width * self.finished / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        print(f"\r[{bar}] {self.finished}/{self.total} {self.label[:60]:<60}", end="", file=self.stream, flush=True)
