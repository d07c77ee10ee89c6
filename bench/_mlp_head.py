"""A benchmark head: an MLP regressing a planted linear target from in-RAM features.

It times itself: ``loss`` records ``time.perf_counter()`` at every call, so a benchmark reads the
steady-state time per optimizer step from the loop's own hot path (data loading, device copy,
autocast, backward, optimizer and scheduler steps, logging sums) without counting set-up,
checkpoints or plots.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from heads import Head, register_head


def make_data(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    w = rng.standard_normal((dim, dim), dtype=np.float32) / np.sqrt(dim)
    return torch.from_numpy(x), torch.from_numpy(x @ w)


def make_model(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Rows(torch.utils.data.Dataset):
    """In-RAM rows; ``__getitems__`` gathers a whole batch with one index (as featstore's
    ``gather`` does for real heads)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.x[idx], self.y[idx]


@register_head("bench-mlp", "MLP on in-RAM features (benchmarks only)")
class MLPHead(Head):
    def __init__(self, cfg):
        super().__init__(cfg)
        d = cfg["data"]
        self.x, self.y = make_data(d["n"], d["dim"], d["seed"])
        self.stamps: list[float] = []

    def build_model(self) -> nn.Module:
        return make_model(self.cfg["data"]["dim"], self.cfg["data"]["hidden"])

    def train_dataset(self):
        return Rows(self.x, self.y)

    def collate(self, items):
        return items

    def loss(self, model, batch, progress):
        self.stamps.append(time.perf_counter())
        x, y = batch
        return nn.functional.mse_loss(model(x), y), {}


def config(n: int, dim: int, hidden: int, seed: int = 0, **train) -> dict:
    from heads.config import train_defaults

    t = {**train_defaults(), "tensorboard": False, "eval_every": 0, "log_every": 10, **train}
    return {"data": {"n": n, "dim": dim, "hidden": hidden, "seed": seed}, "train": t}


def step_seconds(stamps: list[float], skip: int = 5) -> float:
    """Median time between consecutive steps after ``skip`` warm-up steps."""
    gaps = np.diff(np.asarray(stamps[skip:]))
    return float(np.median(gaps))
