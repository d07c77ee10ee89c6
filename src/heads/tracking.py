"""What a run records: ``metrics.jsonl`` (the source of truth), TensorBoard event files beside it,
and the terminal progress display.

metrics.jsonl holds three kinds of records, told apart by their keys: step records (``loss``),
evaluation records (``eval``: true) and epoch records (``train_loss``). On resume, records after
the checkpoint's step are dropped, so no step is ever logged twice.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep only records up to ``step`` (those of the checkpoint a run resumes from)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)


class MetricsLog:
    """Appends records to metrics.jsonl and mirrors numbers to TensorBoard (main rank only)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int = 0):
        self.enabled = enabled
        self._file: TextIO | None = None
        self._tb = None
        self.tensorboard_note = ""
        if not enabled:
            return
        self._file = open(Path(run_dir) / METRICS, "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.tensorboard_note = (
                    "TensorBoard logging is off: install it with pip install tensorboard "
                    "(or the project's [tensorboard] extra)."
                )
            else:  # purge_step drops events a resumed run will write again
                self._tb = SummaryWriter(
                    str(Path(run_dir) / TENSORBOARD), purge_step=resume_step or None
                )

    def write(self, record: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if key in ("step", "epoch", "eval") or isinstance(value, bool):
                    continue
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


class ProgressDisplay:
    """A tqdm bar on a terminal; periodic plain lines otherwise (CI logs, ``> file``, SLURM),
    where carriage-return redraws would pile up as garbage."""

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool,
        stream: TextIO | None = None,
        every_seconds: float = 30.0,
    ) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream or sys.stderr
        self.every = every_seconds
        self.n = 0
        self.postfix = ""
        self._bar = None
        self._started = self._last = time.monotonic()
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1, **postfix: str) -> None:
        if not self.enabled:
            return
        self.n += n
        if postfix:
            self.postfix = ", ".join(f"{k} {v}" for k, v in postfix.items())
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every or self.n == self.total:
            self._last = now
            rate = self.n / max(now - self._started, 1e-9)
            tail = f", {self.postfix}" if self.postfix else ""
            print(
                f"{self.desc}: {self.n}/{self.total} ({rate:.2f} it/s{tail})",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
