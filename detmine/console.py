"""What the person watching a run sees: lines above any progress bar, and progress that is a
tqdm bar on a terminal but a plain line every so often when the output goes to a file (a log
of redraws is unreadable), as detectron2's and torchvision's loggers do."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


#: Lines starting with these are diagnostics: they go to stderr, like errors and Python warnings.
DIAGNOSTIC_PREFIXES = ("warning:", "note:")


def log(message: str, *, error: bool = False) -> None:
    """Print one line without breaking a tqdm bar: progress and results to stdout; errors
    (``error``) and diagnostics (lines starting with ``warning:`` / ``note:``) to stderr."""
    to_stderr = error or message.lstrip().startswith(DIAGNOSTIC_PREFIXES)
    tqdm.write(message, file=sys.stderr if to_stderr else sys.stdout)


def warn(message: str) -> None:
    """``warning: <message>`` on stderr (above any progress bar)."""
    log(f"warning: {message}")


def interactive() -> bool:
    """True when progress goes to a terminal (tqdm draws on stderr)."""
    return sys.stderr.isatty()


def format_duration(seconds: float) -> str:
    """``"1h02m"``, ``"5m12s"`` or ``"42s"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """A tqdm bar on a terminal; otherwise one line ``desc: n/total unit (rate, ETA)`` every
    ``every`` updates (default: every tenth of ``total``) and at the end, or none when
    ``every`` is 0 (the caller logs its own lines, like the training logger).

    Args:
        total: the number of updates expected.
        desc: what is progressing.
        unit: the unit of one update.
        enabled: False shows nothing at all (other processes than the main one).
        initial: updates already done (a resumed run).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "it",
        enabled: bool = True,
        initial: int = 0,
        every: int | None = None,
    ) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.count = self.start = int(initial)
        if every is None:  # a tenth of the total; every 50 when the total is unknown (0)
            every = -(-self.total // 10) if self.total > 0 else 50
        self.every = every
        self._t0 = time.perf_counter()
        self.bar: tqdm | None = None
        self.plain = False
        if enabled and interactive():
            self.bar = tqdm(total=total or None, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
        elif enabled:
            self.plain = self.every > 0

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.plain and (self.count % self.every < n or self.count == self.total):
            elapsed = time.perf_counter() - self._t0
            rate = (self.count - self.start) / elapsed if elapsed > 0 else 0.0
            if self.total <= 0:
                log(f"{self.desc}: {self.count} {self.unit} ({rate:.1f} {self.unit}/s)")
                return
            eta = (self.total - self.count) / rate if rate > 0 else 0.0
            log(
                f"{self.desc}: {self.count}/{self.total} {self.unit} "
                f"({rate:.1f} {self.unit}/s, ETA {format_duration(eta)})"
            )

    def set_postfix(self, **values: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress(iterable: Iterable[T], desc: str, *, total: int | None = None, **options: Any) -> Iterator[T]:
    """Iterate ``iterable`` showing :class:`Progress` (``total`` defaults to its length)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:  # a generator: count without a total
            total = 0
    bar = Progress(total, desc, **options)
    try:
        for item in iterable:
            yield item
            bar.update()
    finally:
        bar.close()
