"""What a teacher is: a frozen model plus the preprocessing and outputs that define a cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import FeatstoreError


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


@dataclass(frozen=True)
class Weights:
    """Where a teacher's weights come from, resolved from ``--weights`` once for every family.

    ``kind``: "pretrained" (the spec's own: an open_clip tag or a hub repo), "random" (seeded),
    "path" (a local checkpoint file or directory) or "hub" (another hub repo id).
    """

    kind: str
    location: str | None = None  # the path or hub repo id ("path", "hub")
    seed: int = 0


def resolve_weights(
    spec: TeacherSpec, weights: str | None, seed: int = 0, hub_ids: bool = False
) -> Weights:
    """``--weights`` for a teacher: None means pretrained where the teacher has pretrained
    weights and random otherwise (the ``*-tiny`` teachers, built for tests and demos)."""
    has_pretrained = bool(spec.config.get("pretrained") or spec.config.get("repo"))
    if weights is None:
        weights = "pretrained" if has_pretrained else "random"
    if weights == "pretrained":
        if not has_pretrained:
            raise FeatstoreError(
                f"teacher {spec.name} has no pretrained weights; use --weights random or "
                f"--weights PATH/TO/checkpoint."
            )
        return Weights("pretrained", seed=seed)
    if weights == "random":
        return Weights("random", seed=seed)
    if Path(weights).expanduser().exists():
        return Weights("path", str(Path(weights).expanduser()), seed)
    if hub_ids and "/" in weights and not weights.startswith((".", "/", "~")):
        return Weights("hub", weights, seed)
    raise FeatstoreError(
        f"--weights {weights!r} is neither 'pretrained', 'random' nor a checkpoint file"
        f"{' or hub repo id' if hub_ids else ''}."
    )


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

    family: ClassVar[str] = ""  # set by @register_family
    hub_ids: ClassVar[bool] = False  # True: --weights may name another hub repo
    spec: TeacherSpec
    outputs: dict[str, OutputSpec]
    preprocessor: Preprocessor
    model: torch.nn.Module
    weights: dict[str, Any]

    @classmethod
    def outputs_for(cls, spec: TeacherSpec) -> dict[str, OutputSpec]:
        """The outputs of a spec, known without building the model."""
        raise NotImplementedError

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
