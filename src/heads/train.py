"""The one training loop every head uses.

A head supplies the model, the batches and the loss (see ``Head``); this loop owns everything
else: AdamW with decay-free biases/norms, the LR schedule (stepped after each optimizer step),
gradient clipping, AMP on GPU, seeding, progress, metrics, checkpoints, plots and resume.
A checkpoint is written at every epoch end with the optimizer, scheduler, scaler and RNG states;
batch order is a pure function of (seed, epoch), so a resumed run continues exactly where an
uninterrupted one would be.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config as config_mod
from .errors import HeadsError

CHECKPOINT = "checkpoints/last.pt"


@dataclass
class Progress:
    """Where training is, for losses with schedules (e.g. MindEye's mixup phase)."""

    epoch: int
    step: int  # global optimizer step
    epochs: int
    steps_per_epoch: int

    @property
    def epoch_fraction(self) -> float:
        return self.step / max(1, self.epochs * self.steps_per_epoch)


class Head:
    """What a head provides to the loop. ``model`` holds the trainable parts only."""

    model: torch.nn.Module

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[Any]:
        """The epoch's batches; their order must depend only on ``rng``."""
        raise NotImplementedError

    def training_step(
        self, batch: Any, progress: Progress
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """A quick evaluation run at epoch ends (model in eval mode, no grad)."""
        return {}

    def to(self, device: torch.device) -> Head:
        self.model.to(device)
        self.device = device
        return self


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and norm weights (every parameter below 2-d)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_scheduler(
    opt: torch.optim.Optimizer, t: dict[str, Any], total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    kind = t["scheduler"]
    if kind == "onecycle":
        pct = min(0.99, max(1e-3, t["warmup_epochs"] / max(1, t["epochs"])))
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=t["lr"], total_steps=max(1, total_steps), pct_start=pct,
            final_div_factor=t["final_div_factor"],
        )  # fmt: skip
    if kind == "cosine":
        warmup, floor = t["warmup_steps"], t["min_lr"] / t["lr"]

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            frac = (step - warmup) / max(1, total_steps - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise HeadsError(f"unknown scheduler {kind!r}; use onecycle, cosine or constant.")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HeadsError(
            f"train.device={name} was asked for but no CUDA device is available; "
            f"use --set train.device=cpu (or auto)."
        )
    return torch.device(name)


def train(
    head: Head,
    cfg: dict[str, Any],
    run_dir: Path,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``head`` with ``cfg["train"]`` into ``run_dir``; returns the last epoch's metrics.

    ``stop_after_epoch`` ends the run cleanly after that epoch's checkpoint (for time-limited
    jobs); ``resume=True`` continues from ``run_dir``'s last checkpoint.
    """
    from tqdm.auto import tqdm

    t = cfg["train"]
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    device = resolve_device(t["device"])
    precision = t["precision"]
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}.get(precision, 0)
    if amp_dtype == 0:
        raise HeadsError(f"precision {precision!r} unknown; use auto, fp32, fp16 or bf16.")

    seed_everything(t["seed"])
    head.to(device)
    model = head.model
    steps_per_epoch = head.steps_per_epoch()
    if steps_per_epoch < 1:
        raise HeadsError("the training set is smaller than one batch; lower train.batch_size.")
    total_steps = t["epochs"] * steps_per_epoch
    opt = torch.optim.AdamW(
        param_groups(model, t["weight_decay"]), lr=t["lr"], betas=tuple(t["betas"]), eps=t["eps"]
    )
    sched = build_scheduler(opt, t, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    start_epoch, step = 0, 0
    ckpt_path = run_dir / CHECKPOINT
    if resume:
        if not ckpt_path.exists():
            raise HeadsError(f"{run_dir} has no checkpoint to resume from ({CHECKPOINT}).")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        _truncate_metrics(run_dir, step)
        if start_epoch >= t["epochs"]:
            log(f"{run_dir} already finished all {t['epochs']} epochs; nothing to train.")
        else:
            log(f"resumed {run_dir} at epoch {start_epoch}/{t['epochs']} (step {step})")
    else:
        config_mod.save(cfg, run_dir / "config.json")

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"training {n_params / 1e6:.2f} M parameters on {device} ({precision}), "
        f"{t['epochs']} epochs x {steps_per_epoch} steps")  # fmt: skip
    metrics_file = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in finally
    last: dict[str, Any] = {}
    # On CPU, tiny gradients early in training become denormal floats, which x86 handles ~100x
    # slower; flushing them to zero changes nothing measurable and is restored afterwards.
    flushed = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        for epoch in range(start_epoch, t["epochs"]):
            model.train()
            rng = np.random.default_rng([t["seed"], epoch])
            bar = tqdm(head.batches(epoch, rng), total=steps_per_epoch, disable=not progress,
                       desc=f"epoch {epoch + 1}/{t['epochs']}", dynamic_ncols=True)  # fmt: skip
            losses = []
            started = time.perf_counter()
            for batch in bar:
                prog = Progress(epoch, step, t["epochs"], steps_per_epoch)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):  # fmt: skip
                    loss, parts = head.training_step(batch, prog)
                if not torch.isfinite(loss):
                    raise HeadsError(f"loss became {loss.item()} at step {step}; lower train.lr "
                                     f"or check the inputs for extreme values.")  # fmt: skip
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if t["grad_clip"] > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                losses.append(loss.item())
                lr = opt.param_groups[0]["lr"]
                if step % t["log_every"] == 0 or step == total_steps:
                    record = {"step": step, "epoch": epoch, "loss": losses[-1], "lr": lr, **parts}
                    metrics_file.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            bar.close()
            model.eval()
            with torch.no_grad():
                evaluation = head.evaluate()
            seconds = time.perf_counter() - started
            last = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
                    "epoch_seconds": seconds, **evaluation}  # fmt: skip
            metrics_file.write(json.dumps(last) + "\n")
            metrics_file.flush()
            shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("epoch", "step"))
            log(f"epoch {epoch + 1}/{t['epochs']}: {shown}")
            _save_checkpoint(ckpt_path, model, opt, sched, scaler, epoch + 1, step, cfg)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                break
    finally:
        metrics_file.close()
        if flushed:
            torch.set_flush_denormal(False)
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              run_dir / "model.safetensors")  # fmt: skip
    from .plots import plot_training

    plot_training(run_dir)
    return last


def _save_checkpoint(path, model, opt, sched, scaler, epoch, step, cfg) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                "rng": _rng_state(), "epoch": epoch, "step": step, "config": cfg}, tmp)  # fmt: skip
    tmp.replace(path)


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records logged after the checkpoint (an epoch cut short), so resumed runs never
    repeat steps in metrics.jsonl."""
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    tmp = Path(run_dir) / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(Path(run_dir) / "metrics.jsonl")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_weights(model: torch.nn.Module, run_dir: Path) -> None:
    """Load a run's trained weights, naming every shape that differs from the model's."""
    from safetensors.torch import load_file

    path = Path(run_dir) / "model.safetensors"
    if not path.exists():
        raise HeadsError(f"{run_dir} has no trained weights (model.safetensors); train it first.")
    saved = load_file(str(path))
    own = model.state_dict()
    problems = [f"{k}: run has {list(saved[k].shape)}, model has {list(own[k].shape)}"
                for k in own if k in saved and saved[k].shape != own[k].shape]  # fmt: skip
    missing = sorted(set(own) - set(saved))
    if problems or missing:
        detail = "; ".join(problems[:4] + [f"missing {m}" for m in missing[:4]])
        raise HeadsError(f"the weights in {path} do not fit the data/targets given now: {detail}")
    model.load_state_dict(saved)
