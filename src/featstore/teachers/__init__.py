"""The teacher registry: ``create_teacher("bigG")`` builds a frozen model by name.

Each family (one module) exposes ``SPECS`` (configs as data), ``outputs_for(spec)`` (shapes
known without building the model) and ``build(spec, **options)``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..errors import FeatstoreError, UnknownTeacherError
from . import clip_text, clip_vision_hf, openclip_text, openclip_vision, qwen_audio
from .base import OutputSpec, Preprocessor, Teacher, TeacherSpec

_FAMILIES: dict[str, ModuleType] = {
    "openclip-vision": openclip_vision,
    "clip-text": clip_text,
    "openclip-text": openclip_text,
    "clip-vision-hf": clip_vision_hf,
    "qwen-audio": qwen_audio,
}
_SPECS: dict[str, TeacherSpec] = {}


def register_teacher(spec: TeacherSpec) -> None:
    if spec.family not in _FAMILIES:
        raise ValueError(f"unknown teacher family {spec.family!r}")
    _SPECS[spec.name] = spec


def register_family(name: str, module: ModuleType) -> None:
    """Add a family module (``outputs_for``, ``build``, optional ``SPECS``)."""
    _FAMILIES[name] = module
    for spec in getattr(module, "SPECS", []):
        register_teacher(spec)


for _module in (openclip_vision, clip_text, openclip_text, clip_vision_hf, qwen_audio):
    for _spec in _module.SPECS:
        register_teacher(_spec)


def list_teachers() -> list[TeacherSpec]:
    return list(_SPECS.values())


def get_spec(name: str) -> TeacherSpec:
    if name not in _SPECS:
        known = ", ".join(sorted(_SPECS))
        raise UnknownTeacherError(f"unknown teacher {name!r}. Known teachers: {known}.")
    return _SPECS[name]


def teacher_outputs(name: str) -> dict[str, OutputSpec]:
    spec = get_spec(name)
    return _FAMILIES[spec.family].outputs_for(spec)


def create_teacher(name: str, weights: str = "pretrained", **options: Any) -> Teacher:
    """Build a registered teacher. ``weights``: "pretrained" (default), "random", or a path."""
    spec = get_spec(name)
    family = _FAMILIES[spec.family]
    try:
        return family.build(spec, weights=weights, **options)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise FeatstoreError(f"teacher {name} does not take that option ({e}).") from None


__all__ = [
    "OutputSpec",
    "Preprocessor",
    "Teacher",
    "TeacherSpec",
    "create_teacher",
    "get_spec",
    "list_teachers",
    "register_family",
    "register_teacher",
    "teacher_outputs",
]
