"""What a teacher is: a frozen model plus the preprocessing and outputs that define a cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class OutputSpec:
    """One output kind. ``shape`` is per item; a ragged output has shape ``(None, *frame)``."""

    shape: tuple[int | None, ...]
    description: str

    @property
    def ragged(self) -> bool:
        return len(self.shape) > 0 and self.shape[0] is None

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The stored row (fixed) or frame (ragged) shape."""
        return tuple(self.shape[1:] if self.ragged else self.shape)  # type: ignore[arg-type]

    def describe(self) -> str:
        return "[" + ",".join("T" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class TeacherSpec:
    """A registered teacher: a name, its family's builder and the data that configures it."""

    name: str
    family: str
    modality: str  # "image" or "text"
    description: str
    config: dict[str, Any] = field(default_factory=dict)


class Preprocessor:
    """Turns one source item into model input. Runs in DataLoader workers, so it is picklable
    and holds no model."""

    def __call__(self, item: Any) -> Any:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """Everything that changes the output; part of the cache key."""
        raise NotImplementedError


class Teacher:
    """A frozen model ready for extraction.

    Subclasses set ``spec``, ``outputs``, ``preprocessor`` and ``model`` and implement
    ``forward(batch, kinds)`` returning ``{kind: Tensor[B, ...]}`` (or a list of ``[T_i, ...]``
    tensors for ragged kinds).
    """

    spec: TeacherSpec
    outputs: dict[str, OutputSpec]
    preprocessor: Preprocessor
    model: torch.nn.Module
    weights: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def modality(self) -> str:
        return self.spec.modality

    @property
    def default_output(self) -> str:
        return next(iter(self.outputs))

    def identity(self) -> dict[str, Any]:
        """Cache-key inputs: architecture, weights identity and preprocessing."""
        return {
            "teacher": self.spec.name,
            "family": self.spec.family,
            "architecture": self.architecture(),
            "weights": self.weights,
            "preprocessing": self.preprocessor.identity(),
        }

    def architecture(self) -> dict[str, Any]:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        return torch.utils.data.default_collate(items)

    def to(self, device: torch.device) -> Teacher:
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, batch: Any, kinds: list[str]) -> dict[str, Any]:
        raise NotImplementedError
