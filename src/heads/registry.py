"""The head registry: ``get_head("mindeye")`` gives the head's builder and default recipe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import load_toml
from .errors import HeadsError


@dataclass(frozen=True)
class HeadSpec:
    """A registered head: ``build(cfg)`` returns a ``Head`` (see ``heads.train``)."""

    name: str
    description: str
    recipe: Path  # default config, TOML
    build: Callable[..., Any]
    evaluate: Callable[..., Any]  # (head, run_dir) -> report; writes eval.json and figures

    def defaults(self) -> dict[str, Any]:
        return load_toml(self.recipe)


_HEADS: dict[str, HeadSpec] = {}


def build_head(spec: HeadSpec, cfg: dict[str, Any]) -> Any:
    """Seed (``train.seed``), then build: the initial weights are part of a run's config."""
    from .train import seed_everything

    seed_everything(cfg["train"]["seed"])
    return spec.build(cfg)


def register_head(spec: HeadSpec) -> None:
    _HEADS[spec.name] = spec


def get_head(name: str) -> HeadSpec:
    _load_builtin()
    if name not in _HEADS:
        raise HeadsError(f"unknown head {name!r}. Known heads: {', '.join(sorted(_HEADS))}.")
    return _HEADS[name]


def list_heads() -> list[HeadSpec]:
    _load_builtin()
    return [_HEADS[k] for k in sorted(_HEADS)]


def _load_builtin() -> None:
    from .recipes import mindeye  # noqa: F401  (registers itself)
