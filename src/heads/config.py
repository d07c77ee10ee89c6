"""Configs: a head's recipe (TOML), config files and ``--set`` overrides, and the loop's typed
``[train]`` section.

A config is a nested dict with sections. The ``train`` section belongs to the loop: its keys and
defaults are :class:`TrainConfig`'s fields, so a recipe states only what differs. Every other
section (``data``, ``model``, ``loss``, ``eval``, ...) belongs to the head, whose default recipe
declares every key with its default value. Overrides are ``section.key=value`` strings whose value
is parsed as a TOML literal (``3e-4``, ``true``, ``[1, 2]``, ``"text"``; a bare word is a
string). Unknown keys and wrong types are one clear error that names the closest valid key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

SCHEDULERS = ("constant", "cosine", "linear", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Every key of the ``[train]`` section, with the loop's defaults (docs/heads/training.md)."""

    # length: epochs, or optimizer steps when steps > 0
    epochs: int = 1
    steps: int = 0
    # batches: the global batch of one optimizer step, over all ranks and accumulation steps
    batch_size: int = 32
    grad_accum: int = 1
    samples_per_epoch: int = 0  # > 0: an epoch draws this many samples (reshuffled, wrapped)
    # AdamW (per-group multipliers come from the head's param groups)
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 0.0
    # LR schedule, stepped after every optimizer step
    scheduler: str = "constant"
    warmup_steps: int = 0  # cosine / linear: linear warmup from 0
    min_lr: float = 0.0  # cosine / linear: the floor
    warmup_epochs: float = 0.0  # onecycle: pct_start = warmup_epochs / epochs
    final_div_factor: float = 1e4  # onecycle
    cycle_momentum: bool = True  # onecycle: cycle beta1 0.95 -> 0.85 (overrides betas[0])
    # hardware
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    ddp_one_rank: bool = False  # under torchrun with one rank, wrap in DDP anyway (a path check)
    seed: int = 0
    # data loading (the loop builds the DataLoader)
    num_workers: int = 0
    prefetch_factor: int = 2
    pin_memory: bool = True  # only on CUDA
    persistent_workers: bool = True
    # logging, evaluation, checkpoints
    log_every: int = 10
    eval_every: int = 1  # evaluate every N epochs; 0 = only at the end
    eval_every_steps: int = 0  # > 0: every N optimizer steps instead
    checkpoint_every_steps: int = 0  # > 0: also every N steps (always at epoch ends)
    keep_epoch_weights: bool = False  # also keep each epoch's weights: weights/epoch-NNN
    best_metric: str = ""  # a validation metric: keep best.safetensors
    best_mode: str = "max"  # max or min
    patience: int = 0  # stop after N evaluations without improvement; 0 = never
    tensorboard: bool = True  # event files beside metrics.jsonl, when tensorboard is installed
    # start from another run's weights (fresh runs only)
    init_from: str = ""
    init_skip: list[str] = field(default_factory=list)
    ddp_find_unused_parameters: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A validated config from a resolved ``train`` section."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(_unknown_key_message(f"train.{unknown[0]}", unknown[0], names))
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"train.{message}")

        need(
            self.epochs >= 1 or self.steps >= 1,
            f"epochs={self.epochs} and train.steps={self.steps}: set train.epochs >= 1 "
            f"(or train.steps >= 1 to count optimizer steps instead).",
        )
        need(self.epochs >= 0 and self.steps >= 0, "epochs and train.steps cannot be negative.")
        need(self.batch_size >= 1, f"batch_size={self.batch_size}: use 1 or more.")
        need(
            self.samples_per_epoch >= 0,
            f"samples_per_epoch={self.samples_per_epoch}: 0 means the head's default.",
        )
        need(self.grad_accum >= 1, f"grad_accum={self.grad_accum}: use 1 or more.")
        need(
            self.batch_size % self.grad_accum == 0,
            f"batch_size={self.batch_size} is not divisible by train.grad_accum="
            f"{self.grad_accum}; the global batch is split into equal micro-batches.",
        )
        need(self.lr > 0, f"lr={self.lr}: the learning rate must be positive.")
        need(self.weight_decay >= 0, f"weight_decay={self.weight_decay} is negative.")
        need(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas={self.betas}: give two numbers in [0, 1), like [0.9, 0.999].",
        )
        need(self.eps > 0, f"eps={self.eps} must be positive.")
        need(self.grad_clip >= 0, f"grad_clip={self.grad_clip}: 0 turns clipping off.")
        need(
            self.scheduler in SCHEDULERS,
            f"scheduler={self.scheduler!r} is unknown; use {', '.join(SCHEDULERS)}.",
        )
        need(self.warmup_steps >= 0 and self.warmup_epochs >= 0, "warmup cannot be negative.")
        need(0 <= self.min_lr <= self.lr, f"min_lr={self.min_lr} must lie in [0, train.lr].")
        need(self.final_div_factor > 0, "final_div_factor must be positive.")
        need(
            self.precision in PRECISIONS,
            f"precision={self.precision!r} is unknown; use {', '.join(PRECISIONS)}.",
        )
        need(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device) is not None,
            f"device={self.device!r}: use auto, cpu, cuda or cuda:N.",
        )
        need(self.num_workers >= 0, f"num_workers={self.num_workers}: use 0 or more.")
        need(self.prefetch_factor >= 1, f"prefetch_factor={self.prefetch_factor}: use 1 or more.")
        need(self.log_every >= 1, f"log_every={self.log_every}: use 1 or more.")
        need(self.eval_every >= 0 and self.eval_every_steps >= 0, "eval_every cannot be negative.")
        need(self.checkpoint_every_steps >= 0, "checkpoint_every_steps cannot be negative.")
        need(self.best_mode in ("max", "min"), f"best_mode={self.best_mode!r}: use max or min.")
        need(self.patience >= 0, f"patience={self.patience}: 0 turns early stopping off.")
        need(
            self.patience == 0 or self.best_metric != "",
            "patience needs train.best_metric: the validation metric to watch.",
        )


def train_defaults() -> dict[str, Any]:
    return dataclasses.asdict(TrainConfig())


# -- recipes and overrides -------------------------------------------------------------------------
def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot parse {path}: {e}") from None


def with_train_defaults(recipe: dict[str, Any], where: str = "recipe") -> dict[str, Any]:
    """A head's recipe with the loop's ``train`` defaults beneath its ``[train]`` overrides."""
    out = copy.deepcopy(recipe)
    out["train"] = merge(train_defaults(), recipe.get("train", {}), "train.")
    return out


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def merge(base: dict[str, Any], update: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``update`` over ``base``; unknown keys and wrong types are errors, so typos never pass."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{where}{key}"
        if key not in out:
            raise ConfigError(_unknown_key_message(name, key, out))
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} is a section, not a value")
            out[key] = merge(out[key], value, f"{name}.")
        else:
            out[key] = _checked(name, out[key], value)
    return out


def _unknown_key_message(name: str, key: str, known: Any) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown config key {name!r}; {hint}(known here: {', '.join(known) or 'none'})"


def _checked(name: str, default: Any, value: Any) -> Any:
    """The new value, if it has the default's type (an int may stand for a float)."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) == isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float)
        value = float(value) if ok else value
    elif isinstance(default, list) and isinstance(value, list) and default and value:
        ok = all(isinstance(v, type(default[0])) or _num(default[0], v) for v in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        example = {list: '["a", "b"]', str: '"text"'}.get(type(default), repr(default))
        raise ConfigError(
            f"config key {name!r} expects a {type(default).__name__} (like {example}), got "
            f"{value!r}; quote strings inside lists: --set 'data.trials=[\"/path/a\"]'"
        )
    return value


def _num(default: Any, value: Any) -> bool:
    return isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)


def overrides_to_dict(overrides: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        node = out
        *parents, leaf = dotted.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override {item!r}: {p!r} is given both as a value and a section"
                )
        node[leaf] = parse_value(value.strip())
    return out


def resolve(
    defaults: dict[str, Any], files: list[str | Path] = (), overrides: list[str] = ()
) -> dict[str, Any]:
    """defaults ← each config file ← ``--set`` overrides; the ``train`` section is validated."""
    cfg = copy.deepcopy(defaults)
    for f in files:
        cfg = merge(cfg, load_toml(f))
    cfg = merge(cfg, overrides_to_dict(list(overrides)))
    if "train" in cfg:
        TrainConfig.from_dict(cfg["train"])
    return cfg


def save(cfg: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


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
