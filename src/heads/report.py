"""Evaluation reports shared by heads: ``{"subjects": {name: {metric: score}}}`` where a score
is ``{"mean", "ci95", "way", "chance"}`` (N-way top-1 accuracy over random draws)."""

from __future__ import annotations

from typing import Any


def format_report(report: dict[str, Any]) -> list[str]:
    """One line per subject and metric: mean ± 95% CI, N-way and chance."""
    return [
        f"{name} {metric}: {s['mean']:.1%} ± {s['ci95']:.1%} ({s['way']}-way; "
        f"chance {s['chance']:.1%})"
        for name, scores in report["subjects"].items()
        for metric, s in scores.items()
        if isinstance(s, dict)
    ]
