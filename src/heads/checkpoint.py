"""Weights and checkpoints of a run.

A run saves what training changes: every trainable parameter and every buffer. Frozen
parameters (``requires_grad=False``: a pretrained LLM held still, a cached teacher) are left out;
they come back from the config when the head builds its model (pretrained weights or the seeded
init). Files:

- ``checkpoints/last.pt``: weights + optimizer, scheduler, scaler, RNG states and position;
  written through a temporary file and a rename, so a kill never leaves half a checkpoint.
- ``model.safetensors``: the final weights; ``best.safetensors``: the best by ``train.best_metric``.
"""

from __future__ import annotations

import fnmatch
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import RunDirError

LAST = "checkpoints/last.pt"
FINAL_WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"


def frozen_names(model: nn.Module) -> set[str]:
    """State-dict keys of parameters that do not train."""
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without frozen parameters, detached, on CPU, unshared (safetensors
    refuses tensors that share memory, e.g. tied embeddings)."""
    frozen = frozen_names(model)
    return {
        k: v.detach().cpu().clone().contiguous()
        for k, v in model.state_dict().items()
        if k not in frozen
    }


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load saved weights; every trainable tensor must be there with the model's shape."""
    own = model.state_dict()
    frozen = frozen_names(model)
    shapes = [
        f"{k}: saved {list(v.shape)}, model has {list(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = sorted(set(own) - set(state) - frozen)
    unexpected = sorted(set(state) - set(own))
    if shapes or missing or unexpected:
        detail = "; ".join(
            shapes[:4]
            + [f"missing {m}" for m in missing[:4]]
            + [f"unexpected {u}" for u in unexpected[:4]]
        )
        raise RunDirError(
            f"the weights in {source} do not fit the model built from the data and "
            f"config given now: {detail}"
        )
    model.load_state_dict(state, strict=False)


def save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(trainable_state(model), str(tmp))
    tmp.replace(path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise RunDirError(f"{path} does not exist; train the run first (or resume it).")
    return load_file(str(path))


def epoch_weights(run_dir: Path, epoch: int) -> Path:
    """Where ``train.keep_epoch_weights`` keeps the weights at the end of ``epoch`` (from 1)."""
    return Path(run_dir) / "weights" / f"epoch-{epoch:03d}.safetensors"


def weights_file(run_dir: Path, which: str = "auto") -> Path:
    """``best`` / ``last`` / ``epoch-N`` weights of a run; ``auto`` = best when the run kept
    one."""
    run_dir = Path(run_dir)
    if which.startswith("epoch-") and which[6:].isdigit():
        path = epoch_weights(run_dir, int(which[6:]))
        if not path.is_file():
            kept = sorted(p.stem for p in (run_dir / "weights").glob("epoch-*.safetensors"))
            have = ", ".join(kept) if kept else "none (train.keep_epoch_weights was off)"
            raise RunDirError(f"{run_dir} kept no {which} weights; kept: {have}.")
        return path
    if which not in ("auto", "best", "last"):
        raise RunDirError(f"weights {which!r}: use auto, best, last or epoch-N.")
    best, last = run_dir / BEST_WEIGHTS, run_dir / FINAL_WEIGHTS
    if which == "best" or (which == "auto" and best.is_file()):
        if not best.is_file():
            raise RunDirError(f"{run_dir} kept no best weights (train.best_metric was not set).")
        return best
    if not last.is_file():
        hint = ""
        if (run_dir / "config.json").is_file():
            info = run_dir / "run.json"
            head = json.loads(info.read_text()).get("head", "HEAD") if info.is_file() else "HEAD"
            hint = (
                f" It was stopped before the end: continue it with `heads train {head} "
                f"--resume {run_dir}`."
            )
        raise RunDirError(f"{run_dir} has no trained weights ({FINAL_WEIGHTS}).{hint}")
    return last


def init_from(model: nn.Module, source: str | Path, skip: Sequence[str] = ()) -> list[str]:
    """Start ``model`` from another run's weights (a run directory or a .safetensors file),
    leaving out tensors that match a ``skip`` glob. Returns the model's keys left at their
    initial values. Shape mismatches and saved tensors the model lacks are one clear error."""
    source = Path(source)
    path = weights_file(source) if source.is_dir() else source
    state = read_weights(path)
    own = model.state_dict()
    take, shapes, extra = {}, [], []
    for key, value in state.items():
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in skip):
            continue
        if key not in own:
            extra.append(key)
        elif value.shape != own[key].shape:
            shapes.append(f"{key}: {list(value.shape)} there, {list(own[key].shape)} here")
        else:
            take[key] = value
    if shapes or extra:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} tensors have other shapes ({'; '.join(shapes[:6])})")
        if extra:
            parts.append(f"{len(extra)} tensors are not in this model ({', '.join(extra[:6])})")
        raise RunDirError(
            f"cannot initialise from {path}: {' and '.join(parts)}. Leave them out "
            f"with --init-skip GLOB (e.g. --init-skip 'ridge.*')."
        )
    model.load_state_dict(take, strict=False)
    return sorted(set(own) - set(take) - frozen_names(model))


# -- full training state --------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - a damaged file is reported as such
        raise RunDirError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
            f"it is damaged: delete it to restart the run from scratch."
        ) from None
