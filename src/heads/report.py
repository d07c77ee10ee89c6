"""Evaluation reports: what ``heads eval`` prints and which files it wrote.

Every head's :meth:`~heads.head.Head.evaluate` returns a :class:`Report`: its metrics (a JSON
object, saved as ``eval.json``), its terminal lines, and the files it wrote. The CLI only prints
``report.format()``, so a head with WER or BLEU formats itself like one with retrieval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Report:
    head: str
    metrics: dict[str, Any]
    lines: list[str]
    files: list[Path] = field(default_factory=list)

    def save(self, path: Path) -> Path:
        """Write the metrics as JSON (``eval.json``) and list the file among those written."""
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.metrics, indent=2) + "\n")
        tmp.replace(path)
        if path not in self.files:
            self.files.insert(0, path)
        return path

    def format(self) -> list[str]:
        out = list(self.lines)
        if self.files:
            out.append("wrote " + ", ".join(str(f) for f in self.files))
        return out


def percent_line(name: str, score: dict[str, float]) -> str:
    """``name: 70.0% ± 1.2% (300-way; chance 0.3%)`` for an N-way accuracy over draws, or
    ``name: 70.0% (40-way: all test items, one draw; chance 2.5%)`` when every draw would be the
    whole test set (a CI of 0 would claim an exactness the one draw does not have)."""
    if score.get("whole_set"):
        return (
            f"{name}: {score['mean']:.1%} ({score['way']}-way: all test items, one draw; "
            f"chance {score['chance']:.1%})"
        )
    return (
        f"{name}: {score['mean']:.1%} ± {score['ci95']:.1%} ({score['way']}-way; "
        f"chance {score['chance']:.1%})"
    )
