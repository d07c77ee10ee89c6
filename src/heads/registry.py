"""The head registry: ``@register_head("name")`` on a :class:`~heads.head.Head` subclass.

Heads are found the way open_clip finds its model configs: every package under ``heads.zoo`` is
imported once (its ``__init__`` registers the head), and so is every module named by a
``heads.zoo`` entry point of an installed distribution (third-party heads). Adding a head is
adding a folder; nothing else changes.

A head's recipes are the TOML files in ``<package>/recipes/``: ``default.toml`` holds every head
key with its default and the ``[train]`` keys that differ from the loop's defaults; another
recipe (``pretrain.toml``, ``finetune.toml``, ...) states only what differs from the default.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from . import config as config_mod
from .errors import ConfigError, HeadsError
from .head import Head

H = TypeVar("H", bound=type[Head])

_HEADS: dict[str, type[Head]] = {}
_COMMANDS: dict[tuple[str, str], Callable[..., Any]] = {}
_loaded = False


def register_head(name: str, description: str = "") -> Callable[[H], H]:
    """Class decorator: register a head under ``name`` (its recipes sit in ``recipes/`` beside
    the module that defines it, or beside the package's ``__init__``)."""

    def wrap(cls: H) -> H:
        if not (isinstance(cls, type) and issubclass(cls, Head)):
            raise TypeError(f"@register_head({name!r}) decorates a heads.Head subclass")
        if name in _HEADS and _HEADS[name] is not cls:
            raise ValueError(
                f"a head named {name!r} is already registered "
                f"({_HEADS[name].__module__}.{_HEADS[name].__qualname__})"
            )
        cls.name = name
        cls.description = description or (cls.__doc__ or "").strip().splitlines()[0]
        cls.recipes_dir = _recipes_dir(cls)
        _HEADS[name] = cls
        return cls

    return wrap


def _recipes_dir(cls: type) -> Path:
    here = Path(sys.modules[cls.__module__].__file__).parent
    for folder in (here / "recipes", here.parent / "recipes"):
        if folder.is_dir():
            return folder
    return here / "recipes"


def register_command(verb: str, head: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a head's own CLI command, ``heads VERB HEAD ...`` (``heads caption viecap RUN``):
    a typer-style function that parses its options, calls the head's library code and prints.
    Several heads may share a verb; each (verb, head) pair is registered once."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if _COMMANDS.get((verb, head), fn) is not fn:
            raise ValueError(f"`heads {verb} {head}` is already registered")
        _COMMANDS[(verb, head)] = fn
        return fn

    return wrap


def load_heads() -> None:
    """Import every built-in head package and every ``heads.zoo`` entry point (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import zoo

    for info in pkgutil.iter_modules(zoo.__path__, f"{zoo.__name__}."):
        importlib.import_module(info.name)
    for ep in entry_points(group="heads.zoo"):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not hide the others
            print(
                f"warning: head plug-in {ep.name!r} ({ep.value}) failed to load: {e}",
                file=sys.stderr,
            )


def get_head(name: str) -> type[Head]:
    load_heads()
    if name not in _HEADS:
        raise HeadsError(f"unknown head {name!r}. Known heads: {', '.join(sorted(_HEADS))}.")
    return _HEADS[name]


def list_heads() -> list[type[Head]]:
    load_heads()
    return [_HEADS[k] for k in sorted(_HEADS)]


def head_commands() -> dict[tuple[str, str], Callable[..., Any]]:
    load_heads()
    return dict(_COMMANDS)


def recipe_names(head: type[Head]) -> list[str]:
    """``default`` first, then the head's other recipes."""
    names = sorted(p.stem for p in head.recipes_dir.glob("*.toml"))
    return ["default", *[n for n in names if n != "default"]] if "default" in names else names


def recipe(head: type[Head], name: str = "default") -> dict[str, Any]:
    """A head's full default config: the loop's ``train`` defaults, the head's default recipe,
    then (for another recipe) what that recipe changes."""
    path = head.recipes_dir / "default.toml"
    if not path.is_file():
        raise HeadsError(f"head {head.name!r} has no default recipe ({path}).")
    cfg = config_mod.with_train_defaults(config_mod.load_toml(path))
    if name != "default":
        other = head.recipes_dir / f"{name}.toml"
        if not other.is_file():
            known = ", ".join(recipe_names(head))
            raise ConfigError(f"head {head.name!r} has no recipe {name!r} (recipes: {known}).")
        cfg = config_mod.merge(cfg, config_mod.load_toml(other))
    return cfg
