"""Progress reports: a tqdm bar on a terminal, periodic plain lines everywhere else.

A carriage-return bar written to a CI log, a file or a SLURM output becomes one enormous line;
there we print a complete line every ``interval`` seconds (and one at the end) instead.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

INTERVAL_ENV = "FEATSTORE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0  # seconds between plain lines


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def on_terminal(stream: TextIO | None = None) -> bool:
    """True when both stdout and the progress stream are interactive terminals."""
    stream = stream or sys.stderr
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, stream))


class Progress:
    """``update(n)`` as work is done, ``close()`` at the end; silent when ``enabled`` is False.

    ``bar=None`` chooses: a tqdm bar on a terminal, plain lines otherwise (and always under
    torchrun with several ranks, whose bars would overwrite each other).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "item",
        enabled: bool = True,
        bar: bool | None = None,
        stream: TextIO | None = None,
        interval: float | None = None,
    ):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream or sys.stderr
        self.interval = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)) if (
            interval is None) else interval  # fmt: skip
        self.done = 0
        self._start = self._last = time.monotonic()
        self._tqdm = None
        if enabled and (on_terminal(self.stream) if bar is None else bar):
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True,
                              smoothing=0.1, file=self.stream)  # fmt: skip

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        left = f", about {_clock((self.total - self.done) / rate)} left" if (
            rate > 0 and self.done < self.total) else ""  # fmt: skip
        return (f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}s{pct}, "
                f"{rate:.1f} {self.unit}s/s, elapsed {_clock(elapsed)}{left}")  # fmt: skip

    def _print(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.update(n)
        elif time.monotonic() - self._last >= self.interval:
            self._print()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self.enabled:
            self._print()
        self.enabled = False
