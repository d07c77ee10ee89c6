"""Recipes: a head's default config as TOML, CLI overrides, and the resolved config of a run.

A config is a nested dict with sections (``data``, ``model``, ``train``, ``eval``). Overrides are
``section.key=value`` strings whose value is parsed as a TOML literal (``3e-4``, ``true``,
``[1, 2]``, ``"text"``; a bare word is taken as a string).
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

from .errors import HeadsError


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HeadsError(f"config file {path} does not exist.")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise HeadsError(f"cannot parse {path}: {e}") from None


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def merge(base: dict[str, Any], update: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``update`` over ``base``; unknown keys are errors so typos never pass silently."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{where}{key}"
        if key not in out:
            known = ", ".join(sorted(out)) or "none"
            raise HeadsError(f"unknown config key {name!r} (known here: {known})")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise HeadsError(f"config key {name!r} is a section, not a value")
            out[key] = merge(out[key], value, f"{name}.")
        else:
            out[key] = _checked(name, out[key], value)
    return out


def _checked(name: str, default: Any, value: Any) -> Any:
    """The new value, if it has the default's type (an int may stand for a float)."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) == isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        example = {list: '["a", "b"]', str: '"text"'}.get(type(default), repr(default))
        raise HeadsError(
            f"config key {name!r} expects a {type(default).__name__} (like {example}), got "
            f"{value!r}; quote strings inside lists: --set 'data.trials=[\"/path/a\"]'"
        )
    return value


def overrides_to_dict(overrides: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise HeadsError(f"override {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        node = out
        *parents, leaf = dotted.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = parse_value(value.strip())
    return out


def resolve(
    defaults: dict[str, Any], files: list[str | Path] = (), overrides: list[str] = ()
) -> dict[str, Any]:
    """defaults ← each config file ← ``--set`` overrides."""
    cfg = copy.deepcopy(defaults)
    for f in files:
        cfg = merge(cfg, load_toml(f))
    return merge(cfg, overrides_to_dict(list(overrides)))


def save(cfg: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def diff(a: dict[str, Any], b: dict[str, Any], where: str = "") -> list[str]:
    """Human-readable differences between two configs."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{where}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, f"{name}.")
        elif va != vb:
            out.append(f"{name}: {va!r} -> {vb!r}")
    return out
