"""One progress style for every step that takes more than a few seconds (decoding images, source passes,
the soft-label cache, probe features, cluster features):

    sskt: decoding images: 12,000/49,000 (24%), about 3 min left

Nothing is printed for a step that ends within ``quiet_s`` seconds. On a terminal the line is rewritten in
place; in a log file (a batch job, CI) one line is added every ``log_every_s`` seconds, so logs stay readable.
``SSKT_PROGRESS=0`` turns every progress line off. A utility: imports nothing else of sskt.

Example:
    >>> with Progress(3, "counting", enabled=False) as bar:
    ...     for _ in range(3):
    ...         bar.update()
    >>> bar.done
    3
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """Counts work done out of ``total`` and shows it, with the time left, in sskt's one style."""

    def __init__(self, total: int, what: str, unit: str = "", enabled: bool = True, quiet_s: float = 3.0,
                 log_every_s: float = 30.0, stream: TextIO | None = None) -> None:
        self.total, self.what, self.unit = max(int(total), 0), what, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and os.environ.get("SSKT_PROGRESS", "1") != "0"
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.quiet_s, self.every_s = quiet_s, (0.5 if self.tty else log_every_s)
        self.done = 0
        self._start = time.perf_counter()
        self._shown = 0.0  # when the last line was shown (0: never)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self._start >= self.quiet_s and now - self._shown >= self.every_s:
            self._show(now)

    def _line(self, now: float) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if not self.total:
            return f"sskt: {self.what}: {self.done:,}{unit}"
        share = self.done / self.total
        left = (now - self._start) * (1 - share) / share if share > 0 else float("inf")
        eta = "" if left == float("inf") else (f", about {left / 60:.0f} min left" if left >= 90 else
                                               f", about {left:.0f} s left")
        return f"sskt: {self.what}: {self.done:,}/{self.total:,}{unit} ({share:.0%}){eta}"

    def _show(self, now: float) -> None:
        self._shown = now
        line = self._line(now)
        self.stream.write(f"\r{line}\033[K" if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Finish the line of a step that showed one (with its time); a quiet step stays quiet."""
        if self.enabled and self._shown:
            took = time.perf_counter() - self._start
            line = f"sskt: {self.what}: {self.done:,} done in {took / 60:.1f} min" if took >= 90 else \
                f"sskt: {self.what}: {self.done:,} done in {took:.0f} s"
            self.stream.write(f"\r{line}\033[K\n" if self.tty else line + "\n")
            self.stream.flush()
        self._shown = 0.0


def progress(items: Iterable[T], total: int, what: str, unit: str = "", enabled: bool = True) -> Iterator[T]:
    """``items``, counted one by one in sskt's progress style (see :class:`Progress`)."""
    with Progress(total, what, unit, enabled) as bar:
        for item in items:
            yield item
            bar.update()
