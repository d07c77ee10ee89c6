"""A second head defined only in the tests: a linear probe on a featstore entry.

Labelled synthetic: the target of each row is a fixed random linear map of its cached features
(a planted signal), so validation error falling shows learning. ``body`` → ``readout`` (two
Linear layers) lets the tests freeze a part. The class attributes ``crash_at_step`` and
``scripted`` are test hooks (a kill mid-run; a validation curve chosen in advance).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from featstore import Store, open_entry
from heads import Head, Report, register_head
from heads.errors import DataError

RECIPES = Path(__file__).with_name("probe_recipes")
OUT = 3


class ProbeNet(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Linear(dim, dim)
        self.readout = nn.Linear(dim, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.body(x))


@register_head("probe", "Linear probe on a featstore entry (test-only head)")
class Probe(Head):
    """Features → a planted linear target, MSE."""

    # test hooks (class attributes, so a recipe of three keys is all the config there is)
    crash_at_step: int | None = None  # raise KeyboardInterrupt at this optimizer step
    scripted: list[float] | None = None  # validate() returns these values in turn as val_score
    seen_weights: list[dict] = []  # the weights at every validate() call
    freeze_body: bool = False
    hold_body_epochs: int = 0
    readout_lr_scale: float = 1.0

    def __init__(self, cfg):
        super().__init__(cfg)
        entry = open_entry(cfg["data"]["entry"], Store(cfg["data"]["store"] or None))
        if entry.ragged:
            raise DataError("the probe needs fixed rows")
        x = entry.gather(np.arange(len(entry))).reshape(len(entry), -1).astype(np.float32)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        w = np.random.default_rng(7).standard_normal((x.shape[1], OUT)).astype(np.float32)
        y = x @ w / np.sqrt(x.shape[1])
        n_val = len(x) // 4
        self.x, self.y = torch.from_numpy(x[n_val:]), torch.from_numpy(y[n_val:])
        self.x_val, self.y_val = torch.from_numpy(x[:n_val]), torch.from_numpy(y[:n_val])
        self.calls = 0

    def build_model(self) -> nn.Module:
        return ProbeNet(self.x.shape[1])

    def param_groups(self, model):
        return [
            {
                "name": "body",
                "params": list(model.body.parameters()),
                "frozen": self.freeze_body,
                "frozen_epochs": self.hold_body_epochs,
            },
            {
                "name": "readout",
                "params": list(model.readout.parameters()),
                "lr_scale": self.readout_lr_scale,
            },
        ]

    def train_dataset(self):
        return torch.utils.data.TensorDataset(self.x, self.y)

    def loss(self, model, batch, progress):
        if self.crash_at_step is not None and progress.step == self.crash_at_step:
            raise KeyboardInterrupt
        x, y = batch
        loss = ((model(x) - y) ** 2).mean()
        return loss, {"mse": loss.detach(), "batch_rows": float(len(x))}

    def validate(self, model):
        Probe.seen_weights.append({k: v.clone() for k, v in model.state_dict().items()})
        if self.scripted is not None:
            value = self.scripted[self.calls % len(self.scripted)]
            self.calls += 1
            return {"val_score": value}
        pred = model(self.x_val)
        return {"val_mse": float(((pred - self.y_val) ** 2).mean())}

    @torch.no_grad()
    def evaluate(self, model, run_dir):
        metrics = self.validate(model)
        report = Report("probe", metrics, [f"val_mse: {metrics['val_mse']:.4f} (lower is better)"])
        report.save(Path(run_dir) / "eval.json")
        return report


Probe.recipes_dir = RECIPES  # the registry would look beside this module in recipes/


if __name__ == "__main__":  # the DDP tests run `torchrun ... probe_head.py train probe ...`
    from featstore_cli.heads_app import main

    sys.argv[0] = "heads"
    main()
