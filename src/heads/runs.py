"""Run directories: naming, starting, resuming and evaluating runs (the rules behind the CLI).

Everything a command needs is checked here before a file is written: the config (recipe ←
files ← overrides, typed and validated), the run directory, and ``--init-from``. The CLI only
parses its arguments, calls these functions and prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt_mod
from . import config as config_mod
from . import distributed
from .errors import ConfigError, RunDirError
from .head import Head
from .registry import get_head, recipe
from .report import Report
from .train import (
    autocast,
    build_model,
    optimizer_groups,
    resolve_device,
    resolve_precision,
    train,
)

RUN_INFO = "run.json"
CONFIG = "config.json"
# What may differ when a run is resumed: how it runs, never what it computes.
RESUMABLE_KEYS = {
    "train.device",
    "train.num_workers",
    "train.prefetch_factor",
    "train.pin_memory",
    "train.persistent_workers",
    "train.log_every",
    "train.tensorboard",
    "train.compile",
    "train.checkpoint_every_steps",
    "train.keep_epoch_weights",
}


@dataclass
class TrainPlan:
    """A checked request to train: the head, its resolved config and where the run goes."""

    head: type[Head]
    cfg: dict[str, Any]
    run_dir: Path
    resume: bool
    recipe: str = "default"

    def info(self) -> dict[str, Any]:
        return {"head": self.head.name, "recipe": self.recipe}


def new_run_dir(name: str, root: Path = Path("runs")) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS`` (with ``-2``, ``-3``... if that exists)."""
    base = root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def is_run(run_dir: Path) -> bool:
    return (Path(run_dir) / CONFIG).is_file()


def plan_training(
    head_name: str,
    recipe_name: str = "default",
    config_files: list[Path] = (),
    overrides: list[str] = (),
    run_dir: Path | None = None,
    init_from: str | None = None,
    init_skip: list[str] = (),
) -> TrainPlan:
    """Resolve and check a new run; creates nothing."""
    head = get_head(head_name)
    extra = [*overrides]
    if init_from:
        extra.append(f"train.init_from={json.dumps(str(init_from))}")
    if init_skip:
        extra.append(f"train.init_skip={json.dumps(list(init_skip))}")
    cfg = config_mod.resolve(recipe(head, recipe_name), list(config_files), extra)
    source = cfg["train"]["init_from"]
    if source:
        source = Path(source)
        if not source.exists():
            raise ConfigError(f"--init-from {source}: no such run or weights file.")
        if source.is_dir():
            ckpt_mod.weights_file(source)  # a run that has weights
    if cfg["train"]["init_skip"] and not source:
        where = (
            "--init-skip" if init_skip else f"train.init_skip (recipe {recipe_name!r}, -c, --set)"
        )
        raise ConfigError(
            f"{where} names tensors to skip when starting from another run, but no run was "
            f"given: pass --init-from RUN."
        )
    _join(cfg)
    name = head.name if recipe_name == "default" else f"{head.name}-{recipe_name}"
    out = Path(run_dir) if run_dir else distributed.broadcast(new_run_dir(name))
    if is_run(out):
        raise RunDirError(
            f"{out} already holds a run; continue it with `heads train "
            f"{head.name} --resume {out}` or choose another --run-dir."
        )
    distributed.barrier()  # every rank checked before rank 0 writes
    return TrainPlan(head, cfg, out, resume=False, recipe=recipe_name)


def plan_resume(
    head_name: str, run_dir: Path, config_files: list[Path] = (), overrides: list[str] = ()
) -> TrainPlan:
    """Continue ``run_dir``: its saved config, with only run-time keys allowed to change."""
    head = get_head(head_name)
    run_dir = Path(run_dir)
    saved, info = read_run(run_dir)
    if info.get("head", head.name) != head.name:
        raise RunDirError(
            f"{run_dir} is a {info['head']!r} run, not {head.name!r}: "
            f"`heads train {info['head']} --resume {run_dir}`."
        )
    cfg = config_mod.resolve(saved, list(config_files), list(overrides))
    changes = config_mod.diff(saved, cfg)
    refused = [c for c in changes if c.split(":")[0] not in RESUMABLE_KEYS]
    if refused:
        raise ConfigError(
            f"--resume with a different config ({'; '.join(refused)}); a resumed run computes "
            f"what it started to. Start a new run instead (e.g. with --init-from {run_dir}). "
            f"Only {', '.join(sorted(RESUMABLE_KEYS))} may change."
        )
    _join(cfg)
    return TrainPlan(head, cfg, run_dir, resume=True, recipe=info.get("recipe", "default"))


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's config and ``run.json`` info."""
    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG}).")
    try:
        cfg = json.loads((run_dir / CONFIG).read_text())
        info_path = run_dir / RUN_INFO
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except json.JSONDecodeError as e:
        raise RunDirError(f"{run_dir}: {CONFIG} or {RUN_INFO} is damaged ({e}).") from None
    return cfg, info


def run_training(
    plan: TrainPlan,
    stop_after_epoch: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build the head from the plan's config (its data checks run first) and train it."""
    head = plan.head(plan.cfg)
    return train(
        head,
        plan.cfg,
        plan.run_dir,
        resume=plan.resume,
        stop_after_epoch=stop_after_epoch,
        progress=progress,
        log=log,
        run_info=plan.info(),
    )


def eval_config(run_dir: Path, overrides: list[str] = ()) -> dict[str, Any]:
    """A run's config with ``eval.*`` overrides (the rest is what the run trained with)."""
    cfg, _ = read_run(run_dir)
    bad = [o for o in overrides if not o.strip().startswith("eval.")]
    if bad:
        raise ConfigError(
            f"heads eval takes only eval.* overrides ({bad[0]!r}); the rest is the "
            f"run's own config."
        )
    return config_mod.resolve(cfg, [], list(overrides))


def load_trained(
    head_name: str, run_dir: Path, overrides: list[str] = (), weights: str = "auto"
) -> tuple[Head, nn.Module, Path]:
    """The head and its trained model, ready to evaluate: ``(head, model, weights_path)``."""
    cfg = eval_config(run_dir, overrides)
    head_cls = get_head(head_name)
    _, info = read_run(run_dir)
    if info.get("head", head_cls.name) != head_cls.name:
        raise RunDirError(f"{run_dir} is a {info['head']!r} run, not {head_cls.name!r}.")
    path = ckpt_mod.weights_file(run_dir, weights)
    head = head_cls(cfg)
    model = build_model(head, cfg["train"]["seed"])
    optimizer_groups(head, model, config_mod.TrainConfig.from_dict(cfg["train"]))  # freezes
    ckpt_mod.load_trainable_state(model, ckpt_mod.read_weights(path), str(path))
    device = resolve_device(cfg["train"]["device"])
    model.to(device).eval()
    return head, model, path


def evaluate_run(
    head_name: str,
    run_dir: Path,
    overrides: list[str] = (),
    weights: str = "auto",
    split: str | None = None,
) -> tuple[Report, Path]:
    """``heads eval``: the head's final evaluation of a trained run (no gradients). ``split`` is
    shorthand for the override ``eval.split=SPLIT`` (heads whose [eval] has no split refuse it
    as an unknown key)."""
    if split is not None:
        overrides = [*overrides, f"eval.split={json.dumps(split)}"]
    head, model, path = load_trained(head_name, run_dir, overrides, weights)
    device = next(model.parameters(), torch.empty(0)).device
    _, dtype = resolve_precision(head.cfg["train"]["precision"], device)
    with torch.no_grad(), autocast(device, dtype):
        return head.evaluate(model, Path(run_dir)), path


def demo_run(
    head_name: str,
    cfg: dict[str, Any],
    run_dir: Path,
    eval_heading: str,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Report:
    """A demo's stage two: train ``cfg`` into a fresh ``run_dir`` (an earlier demo run there is
    replaced), evaluate it as ``heads eval`` does, and print the report under ``eval_heading``."""
    import shutil

    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train(get_head(head_name)(cfg), cfg, run_dir, progress=progress, log=log)
    report, _ = evaluate_run(head_name, run_dir)
    log(f"\n{eval_heading}")
    for line in report.format():
        log(f"  {line}")
    log(f"\nrun directory: {run_dir}  (config.json, metrics.jsonl, model.safetensors, plots/)")
    return report


def _join(cfg: dict[str, Any]) -> None:
    """Under torchrun, join the process group now, so ranks can agree on the run directory."""
    if distributed.launched_by_torchrun():
        distributed.setup(resolve_device(cfg["train"]["device"], distributed.local_rank()))
