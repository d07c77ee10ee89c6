"""The teacher registry: ``create_teacher("bigG")`` builds a frozen model by name.

A *family* is one module of this package: a ``Teacher`` subclass decorated with
``@register_family(name, specs)``, where ``specs`` lists its named configurations. Every module
here is imported on first use, so adding a teacher is adding one file. Options (``--weights``,
``--preprocessing``, ``--teacher-option``) are checked against the family's constructor.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any

from .._compat import ensure_torchvision_importable
from ..errors import FeatstoreError, UnknownTeacherError
from .base import OutputSpec, Preprocessor, Teacher, TeacherSpec, Weights, resolve_weights

ensure_torchvision_importable()  # before any family module imports open_clip or transformers

_FAMILIES: dict[str, type[Teacher]] = {}
_SPECS: dict[str, TeacherSpec] = {}


def register_family(
    name: str, specs: Iterable[TeacherSpec] = ()
) -> Callable[[type[Teacher]], type[Teacher]]:
    """Class decorator: register a ``Teacher`` subclass as family ``name`` with its specs."""

    def add(cls: type[Teacher]) -> type[Teacher]:
        _FAMILIES[name] = cls
        cls.family = name
        for spec in specs:
            register_teacher(spec)
        return cls

    return add


def register_teacher(spec: TeacherSpec) -> None:
    """Add a spec (a named configuration) to a registered family."""
    if spec.family not in _FAMILIES:
        _load_families()
    if spec.family not in _FAMILIES:
        raise ValueError(f"unknown teacher family {spec.family!r}")
    _SPECS[spec.name] = spec


def _load_families() -> None:
    """Import every family module of this package once (each registers itself)."""
    if getattr(_load_families, "done", False):
        return
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    _load_families.done = True


def list_teachers() -> list[TeacherSpec]:
    _load_families()
    return list(_SPECS.values())


def get_spec(name: str) -> TeacherSpec:
    _load_families()
    if name not in _SPECS:
        known = ", ".join(sorted(_SPECS))
        raise UnknownTeacherError(f"unknown teacher {name!r}. Known teachers: {known}.")
    return _SPECS[name]


def teacher_outputs(name: str) -> dict[str, OutputSpec]:
    spec = get_spec(name)
    return _FAMILIES[spec.family].outputs_for(spec)


def teacher_options(name: str) -> dict[str, Any]:
    """The options a teacher takes (its constructor's keyword arguments) and their defaults."""
    cls = _FAMILIES[get_spec(name).family]
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, spec
    return {p.name: p.default for p in params if p.name not in ("weights", "seed")}


def create_teacher(name: str, weights: str | None = None, seed: int = 0, **options: Any) -> Teacher:
    """Build a registered teacher. ``weights``: "pretrained", "random", a local path (or, for
    transformers teachers, a hub repo id); None picks pretrained weights where the teacher has
    them and random ones otherwise (the ``*-tiny`` teachers)."""
    spec = get_spec(name)
    allowed = teacher_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        have = ", ".join(allowed) or "none"
        raise FeatstoreError(
            f"teacher {name} takes no option {unknown[0]!r}; its options are: {have} "
            f"(see docs/teachers.md)."
        )
    cls = _FAMILIES[spec.family]
    return cls(spec, weights=resolve_weights(spec, weights, seed, cls.hub_ids), **options)


__all__ = [
    "OutputSpec", "Preprocessor", "Teacher", "TeacherSpec", "Weights", "create_teacher",
    "get_spec", "list_teachers", "register_family", "register_teacher", "resolve_weights",
    "teacher_options", "teacher_outputs",
]  # fmt: skip
