"""The head protocol: what a head gives the training loop.

A head is data + model + loss + evaluation for one system (MindEye2, brain-to-text, ...). The
loop owns everything else: it builds the model through the head, wraps it (DDP, torch.compile),
builds the DataLoader from the head's dataset, collate and batch plan, and hands the (possibly
wrapped) module back to :meth:`Head.loss`, as nanoGPT's loop hands ``model`` to its loss while
saving ``raw_model``. A head never keeps the training module.

Subclass :class:`Head`, decorate it with :func:`heads.register_head`, and put it with its default
recipe (``recipes/default.toml``) in one package under ``heads/zoo/`` (or any package that is
registered through the ``heads.zoo`` entry point group). docs/architecture.md has a worked
example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from .report import Report


@dataclass(frozen=True)
class Progress:
    """Where training is, for losses with schedules (e.g. MindEye's MixCo → SoftCLIP switch)."""

    epoch: int  # 0-based epoch of the current step
    step: int  # optimizer steps completed before this one
    epochs: int  # epochs in the run (ceil(steps / steps_per_epoch) for step-based runs)
    steps_per_epoch: int
    total_steps: int

    @property
    def fraction(self) -> float:
        """Share of training done, in [0, 1)."""
        return self.step / max(1, self.total_steps)


class Head:
    """Base class of every head. Override what your head needs; the rest has defaults.

    ``cfg`` is the resolved config of the run (all sections; ``cfg["train"]`` is the loop's).
    ``__init__`` should open and check the data, so that bad input fails before a run directory
    is created; it should not build the model (the loop seeds first, then calls
    :meth:`build_model`).
    """

    name: ClassVar[str] = ""  # set by @register_head
    description: ClassVar[str] = ""
    recipes_dir: ClassVar[Path]  # set by @register_head: <package>/recipes

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The module to train; parts with ``requires_grad=False`` stay frozen and are not saved
        (they must come back from the config: pretrained weights or the seeded init)."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer groups: ``{"name", "params", "lr_scale"=1, "weight_decay"=train's,
        "frozen"=False, "frozen_epochs"=0}``. Frozen groups never train; ``frozen_epochs`` holds a
        group still for the first N epochs. Default: decay on matrices, none on 1-d params."""
        return decay_groups(model)

    # -- data -------------------------------------------------------------------------------------
    def train_dataset(self) -> torch.utils.data.Dataset:
        """Map-style dataset of training samples (``__getitems__`` fetches a batch at once)."""
        raise NotImplementedError

    def collate(self, items: Any) -> Any:
        """Items from the dataset → one batch of tensors (default: torch's default_collate)."""
        return torch.utils.data.default_collate(items)

    def batch_plan(
        self, epoch: int, rng: np.random.Generator, batch_size: int, n_samples: int
    ) -> list[list[int]]:
        """The epoch's global batches as indices into the ``n_samples`` of the dataset; a pure
        function of ``rng`` (seeded from (seed, epoch)), with the same number of batches every
        epoch. Default: a random permutation cut into full batches (the last partial one
        dropped); with ``train.samples_per_epoch`` that many samples, reshuffled and wrapped."""
        wanted = self.cfg["train"].get("samples_per_epoch", 0) or n_samples
        order = shuffled_stream(rng, n_samples, wanted)
        steps = wanted // batch_size
        return [order[i * batch_size : (i + 1) * batch_size].tolist() for i in range(steps)]

    def split_batch(self, batch: list[int], parts: int) -> list[list[int]]:
        """A global batch → ``parts`` equal micro-batches (ranks × accumulation steps)."""
        size = len(batch) // parts
        return [batch[i * size : (i + 1) * size] for i in range(parts)]

    # -- loss -------------------------------------------------------------------------------------
    def loss(
        self, model: nn.Module, batch: Any, progress: Progress
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(loss, parts)`` for one micro-batch (already on the device). ``model`` is the module
        the loop built, maybe DDP-wrapped: call it, never reach into ``model.module``. ``parts``
        (tensors or floats) are averaged over each logging window and logged."""
        raise NotImplementedError

    # -- evaluation -------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> dict[str, float]:
        """A quick evaluation during training (eval mode, no grad, main rank, unwrapped model);
        its metrics go to metrics.jsonl and may pick the best checkpoint."""
        return {}

    def evaluate(self, model: nn.Module, run_dir: Path) -> Report:
        """The final evaluation of ``heads eval``: writes its files into ``run_dir``."""
        from .report import Report

        metrics = self.validate(model)
        return Report(self.name, metrics, [f"{k}: {v:.4g}" for k, v in metrics.items()])

    # -- demo -------------------------------------------------------------------------------------
    @classmethod
    def demo(cls, workdir: Path, progress: bool = True, log: Any = print) -> Report:
        """``heads demo NAME``: both stages on labelled-synthetic data in the original layouts."""
        raise NotImplementedError(f"head {cls.name!r} has no demo")


def shuffled_stream(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """``length`` indices of ``range(n)``: fresh permutations, one after another, cut to length
    (a resampled stream, as webdataset's ``resampled=True`` gives, within one epoch)."""
    perms = [rng.permutation(n) for _ in range(-(-length // n))] if n else []
    return np.concatenate(perms)[:length] if perms else np.zeros(0, dtype=np.int64)


def decay_groups(
    model: nn.Module, params: Sequence[tuple[str, nn.Parameter]] | None = None, prefix: str = ""
) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on every parameter with 2+ dims, none on biases and norms."""
    named = list(model.named_parameters()) if params is None else list(params)
    decay = [p for _, p in named if p.requires_grad and p.ndim >= 2]
    no_decay = [p for _, p in named if p.requires_grad and p.ndim < 2]
    groups = [
        {"name": f"{prefix}decay", "params": decay},
        {"name": f"{prefix}no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
