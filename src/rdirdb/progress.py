"""A dependency-free progress bar with rate and ETA, for long operations."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress(total, "indexing") as bar: bar.update(n)``.

    Draws on a terminal only (``force=True`` draws anyway); redraws at most
    ten times a second, so it costs nothing in a hot loop. A bar that measures
    one thing (bytes read) can show the rate of another (records written):
    ``Progress(size, "importing", unit="bytes", also="records")`` and
    ``bar.count(n)``.
    """

    def __init__(
        self,
        total: int | None,
        label: str,
        *,
        unit: str = "records",
        stream: TextIO | None = None,
        force: bool = False,
        also: str | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.also = also
        self.counted = 0
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.done = 0
        self.start = time.monotonic()
        self._drawn = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def count(self, n: int) -> None:
        """Count ``n`` more of ``also`` (shown at the next redraw)."""
        self.counted += n

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def _draw(self, now: float) -> None:
        rate = self.rate
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            line = (
                f"\r{self.label:<12} [{bar:<30}] {frac:6.1%} {self.done:,}/{self.total:,} "
                f"{rate:,.0f} {self.unit}/s ETA {eta:4.0f}s"
            )
        else:
            line = f"\r{self.label:<12} {self.done:,} {self.unit} {rate:,.0f} {self.unit}/s"
        if self.also:
            line += f", {self.counted:,} {self.also} {self.counted / max(self.elapsed, 1e-9):,.0f} {self.also}/s"
        self.stream.write(line)
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
