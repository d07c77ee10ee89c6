"""The one training loop every head uses.

A head supplies data, model, loss and evaluation (``heads.head.Head``); this loop owns the rest:
seeding, the DataLoader (workers, pinned memory, a rank-aware batch sampler), DDP under torchrun,
AdamW with the head's parameter groups, the LR schedule (stepped after every optimizer step),
gradient accumulation and clipping, mixed precision, logging, evaluation, best-checkpoint
selection, early stopping, checkpoints and exact resume.

Batch order is a pure function of (seed, epoch) and a checkpoint records the step, the RNG states
and every running sum, so a run resumed from any checkpoint (mid-epoch included) continues
exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt_mod
from . import config as config_mod
from . import distributed
from .config import TrainConfig
from .data.sampling import ShardedBatchSampler, epoch_rng
from .errors import ConfigError, DataError, HeadsError
from .head import Head, Progress
from .tracking import MetricsLog, ProgressDisplay, truncate_metrics

GROUP_KEYS = {"name", "params", "lr_scale", "weight_decay", "frozen", "frozen_epochs"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device={name} was asked for but no CUDA device is "
                f"available; use --set train.device=cpu (or auto)."
            )
        index = int(name.split(":")[1]) if ":" in name else local_rank
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device={name}: this machine has "
                f"{torch.cuda.device_count()} CUDA devices (0.."
                f"{torch.cuda.device_count() - 1})."
            )
        return torch.device("cuda", index)
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    """``auto`` = bf16 autocast on CUDA GPUs that support it, else fp32."""
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and bf16_ok else "fp32"
    if precision == "bf16" and not bf16_ok:
        raise ConfigError(
            f"train.precision=bf16, but {torch.cuda.get_device_name(device)} does "
            f"not support bfloat16; use fp16 (with a GradScaler) or fp32."
        )
    return precision, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision for forward passes (training, validation, evaluation); off for fp32."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def build_model(head: Head, seed: int) -> nn.Module:
    """Seed, then build: the initial weights are a function of the config."""
    seed_everything(seed)
    return head.build_model()


def optimizer_groups(head: Head, model: nn.Module, t: TrainConfig) -> tuple[list[dict], list]:
    """The head's groups as AdamW groups (frozen ones switched off), and the groups held still
    for their first epochs as ``(epochs, params)``."""
    groups, held, seen = [], [], set()
    for i, g in enumerate(head.param_groups(model)):
        unknown = set(g) - GROUP_KEYS
        if unknown:
            raise ValueError(f"{type(head).__name__}.param_groups: unknown keys {sorted(unknown)}")
        params = list(g["params"])
        if g.get("frozen", False):
            for p in params:
                p.requires_grad_(False)
            continue
        if any(id(p) in seen for p in params):
            raise ValueError(f"{type(head).__name__}.param_groups: a parameter is in two groups")
        seen.update(id(p) for p in params)
        groups.append(
            {
                "params": params,
                "name": g.get("name", f"group{i}"),
                "lr": t.lr * g.get("lr_scale", 1.0),
                "weight_decay": g.get("weight_decay", t.weight_decay),
            }
        )
        if g.get("frozen_epochs", 0) > 0:
            held.append((int(g["frozen_epochs"]), params))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(
            f"{type(head).__name__}.param_groups leaves out {len(missing)} trainable "
            f"parameters (first: {missing[:3]}); freeze them or group them"
        )
    return groups, held


def build_scheduler(
    opt: torch.optim.Optimizer, t: TrainConfig, total_steps: int, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if t.scheduler == "onecycle":
        pct = min(0.99, max(1e-3, t.warmup_epochs / max(1, epochs)))
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=[g["lr"] for g in opt.param_groups],
            total_steps=max(1, total_steps),
            pct_start=pct,
            final_div_factor=t.final_div_factor,
            cycle_momentum=t.cycle_momentum,
        )
    warmup, floor = t.warmup_steps, t.min_lr / t.lr

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        if t.scheduler == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * frac)) if t.scheduler == "cosine" else 1 - frac
        return floor + (1 - floor) * shape

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors anywhere in a batch (dicts, lists, tuples) to ``device``, asynchronously from
    pinned memory."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class _Window:
    """Running sums of the loss and its parts over a logging window, kept on the device (no
    sync per step). A part may be missing from some steps; each is averaged over the steps
    that reported it."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}

    def add(self, loss: torch.Tensor, parts: dict[str, Any]) -> None:
        for key, value in {"loss": loss, **parts}.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self, device: torch.device) -> dict[str, float]:
        """Means over the window and over ranks (one device sync)."""
        keys = sorted(set().union(*distributed.gather(sorted(self.sums))) - {"loss"})
        keys = ["loss", *keys]
        sums = torch.stack(
            [
                torch.as_tensor(self.sums.get(k, 0.0), dtype=torch.float32, device=device).reshape(
                    ()
                )
                for k in keys
            ]
        )
        counts = torch.tensor([float(self.counts.get(k, 0)) for k in keys], device=device)
        sums, counts = distributed.total(sums), distributed.total(counts)
        return {
            k: s / c if c else float("nan")
            for k, s, c in zip(keys, sums.tolist(), counts.tolist(), strict=True)
        }


@dataclass
class _State:
    step: int = 0
    best: float | None = None
    best_step: int = 0
    stale: int = 0
    epoch_loss: float = 0.0
    epoch_count: int = 0
    last_eval: dict[str, float] | None = None
    stopped: str = ""  # why training ended early (kept, so a resume does not train on)


def train(
    head: Head,
    cfg: dict[str, Any],
    run_dir: Path,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``head`` with ``cfg["train"]`` into ``run_dir``; returns the final summary.

    ``resume=True`` continues from ``run_dir``'s checkpoint (or starts it from scratch when it was
    killed before its first one); ``stop_after_epoch`` ends cleanly after that epoch's checkpoint.
    Under torchrun this runs DDP; only rank 0 writes files or prints.
    """
    t = TrainConfig.from_dict(cfg["train"])
    run_dir = Path(run_dir)
    ctx = distributed.setup(resolve_device(t.device, distributed.local_rank()))
    device = resolve_device(t.device, ctx.local_rank)
    precision, amp_dtype = resolve_precision(t.precision, device)
    say = log if ctx.is_main else (lambda *_: None)

    # -- data: every input problem surfaces before anything is written
    dataset = head.train_dataset()
    n_samples = len(dataset)
    parts = ctx.world_size * t.grad_accum
    if t.batch_size % parts:
        raise ConfigError(
            f"train.batch_size={t.batch_size} cannot be split into {ctx.world_size} "
            f"ranks x {t.grad_accum} accumulation steps; use a multiple of "
            f"{parts}."
        )

    def plan(epoch: int) -> list[list[int]]:
        return head.batch_plan(epoch, epoch_rng(t.seed, epoch), t.batch_size, n_samples)

    steps_per_epoch = len(plan(0))
    if steps_per_epoch < 1:
        raise DataError(
            f"the training set ({n_samples} samples) is smaller than one batch of "
            f"{t.batch_size}; lower train.batch_size."
        )
    total_steps = t.steps or t.epochs * steps_per_epoch
    epochs = -(-total_steps // steps_per_epoch)

    # -- model, optimizer, schedule
    model = build_model(head, t.seed)
    groups, held = optimizer_groups(head, model, t)
    ckpt_path = run_dir / ckpt_mod.LAST
    ckpt = ckpt_mod.load_checkpoint(ckpt_path, device) if resume and ckpt_path.exists() else None
    if ckpt is None and t.init_from:
        kept = ckpt_mod.init_from(model, t.init_from, t.init_skip)
        say(f"initialised from {t.init_from}" + (f"; kept at init: {_short(kept)}" if kept else ""))
    model.to(device)
    opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps)
    sched = build_scheduler(opt, t, total_steps, epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    state = _State()
    if ckpt is not None:
        ckpt_mod.load_trainable_state(model, ckpt["model"], str(ckpt_path))
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state = _State(**ckpt["state"])
        rngs = ckpt["rng"]
        ckpt_mod.set_rng_state(rngs[ctx.rank] if len(rngs) == ctx.world_size else rngs[0])
        if len(rngs) != ctx.world_size:
            say(
                f"note: the checkpoint was written by {len(rngs)} ranks, this run has "
                f"{ctx.world_size}: dropout and other random draws will differ from the "
                f"original run."
            )
        if ctx.is_main:
            truncate_metrics(run_dir, state.step)
        say(
            f"resumed {run_dir} at step {state.step}/{total_steps} "
            f"(epoch {state.step // steps_per_epoch + 1}/{epochs})"
        )
    else:
        if resume:
            say(
                f"{run_dir} has no checkpoint yet (it stopped before the first one): "
                f"starting it from step 0."
            )
        if ctx.is_main:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            config_mod.save(cfg, run_dir / "config.json")
            info = {"head": head.name, **(run_info or {}), "world_size": ctx.world_size}
            (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
            truncate_metrics(run_dir, 0)
        seed_everything(t.seed)
    distributed.barrier()

    train_model: nn.Module = model
    # One rank has nothing to average: DDP would only copy gradients (unless asked to, to
    # exercise the DDP path on a machine with one GPU).
    ddp = ctx.world_size > 1 or (ctx.distributed and t.ddp_one_rank)
    if ddp:
        train_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=t.ddp_find_unused_parameters,
        )
    if t.compile:
        train_model = torch.compile(train_model)

    sampler = ShardedBatchSampler(
        plan, head.split_batch, steps_per_epoch, ctx.rank, ctx.world_size, t.grad_accum
    )
    workers = t.num_workers
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=head.collate,
        num_workers=workers,
        pin_memory=t.pin_memory and device.type == "cuda",
        persistent_workers=t.persistent_workers and workers > 0,
        prefetch_factor=t.prefetch_factor if workers > 0 else None,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(t.seed),
    )

    n_params = sum(p.numel() for g in groups for p in g["params"])
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    say(
        f"training {n_params / 1e6:.2f} M parameters"
        + (f" ({n_frozen / 1e6:.2f} M frozen)" if n_frozen else "")
        + f" on {device} ({precision})"
        + (f" x {ctx.world_size} ranks (DDP)" if ddp else "")
        + f", {epochs} epochs x {steps_per_epoch} steps"
        + (f" ({total_steps} steps)" if t.steps else "")
    )

    metrics = MetricsLog(run_dir, ctx.is_main, t.tensorboard, resume_step=state.step)
    if metrics.tensorboard_note:
        say(metrics.tensorboard_note)
    best_sign = 1.0 if t.best_mode == "max" else -1.0
    finished_before = ckpt is not None and (state.step >= total_steps or state.stopped)

    def save_checkpoint() -> None:
        rngs = distributed.gather(ckpt_mod.rng_state())
        if ctx.is_main:
            ckpt_mod.save_checkpoint(
                ckpt_path,
                {
                    "model": ckpt_mod.trainable_state(model),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rngs,
                    "state": state.__dict__.copy(),
                    "config": cfg,
                },
            )
        distributed.barrier()

    def evaluate() -> dict[str, float]:
        found: dict[str, float] = {}
        if ctx.is_main:
            model.eval()
            with torch.no_grad(), autocast(device, amp_dtype):
                found = {k: float(v) for k, v in head.validate(model).items()}
            model.train()
        found = distributed.broadcast(found)
        state.last_eval = found
        epoch = round(state.step / steps_per_epoch, 4)
        metrics.write({"step": state.step, "epoch": epoch, "eval": True, **found}, "val")
        if not t.best_metric:
            return found
        if t.best_metric not in found:
            raise ConfigError(
                f"train.best_metric={t.best_metric!r} is not a validation metric of "
                f"{head.name!r} (it reports: {', '.join(found) or 'none'})."
            )
        value = found[t.best_metric]
        if state.best is None or best_sign * (value - state.best) > 0:
            state.best, state.best_step, state.stale = value, state.step, 0
            if ctx.is_main:
                ckpt_mod.save_weights(model, run_dir / ckpt_mod.BEST_WEIGHTS)
        else:
            state.stale += 1
            if t.patience and state.stale >= t.patience:
                state.stopped = (
                    f"early stop at step {state.step}: {t.best_metric} has not improved "
                    f"for {state.stale} evaluations (best {state.best:.4g} at step "
                    f"{state.best_step})"
                )
        return found

    flushed = device.type == "cpu" and torch.set_flush_denormal(True)
    clock = time.perf_counter()  # step records carry the seconds since training started here
    window = _Window()
    epoch_sum = torch.zeros((), device=device)
    try:
        while state.step < total_steps and not state.stopped:
            epoch = state.step // steps_per_epoch
            skip = state.step - epoch * steps_per_epoch
            sampler.set_epoch(epoch, skip)
            if skip == 0:
                state.epoch_loss, state.epoch_count = 0.0, 0
            epoch_sum.fill_(state.epoch_loss * state.epoch_count)
            steps_this_epoch = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            bar = ProgressDisplay(
                steps_this_epoch - skip, f"epoch {epoch + 1}/{epochs}", progress and ctx.is_main
            )
            started = time.perf_counter()
            model.train()
            micro = 0
            data_wait = 0.0  # host time spent waiting for the next batch (the GPU may idle)
            waiting_since = time.perf_counter()
            for batch in loader:
                data_wait += time.perf_counter() - waiting_since
                batch = to_device(batch, device)
                last_micro = (micro + 1) % t.grad_accum == 0
                prog = Progress(epoch, state.step, epochs, steps_per_epoch, total_steps)
                sync = nullcontext() if last_micro or not ddp else train_model.no_sync()
                with sync:
                    with autocast(device, amp_dtype):
                        loss, loss_parts = head.loss(train_model, batch, prog)
                    scaler.scale(loss / t.grad_accum).backward()
                window.add(loss, loss_parts)
                epoch_sum += loss.detach().float()
                state.epoch_count += 1
                micro += 1
                if not last_micro:
                    waiting_since = time.perf_counter()
                    continue
                for until, params in held:
                    if epoch < until:
                        for p in params:
                            p.grad = None
                if t.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
                state.step += 1
                if state.step % t.log_every == 0 or state.step == total_steps:
                    record = _step_record(window, state.step, epoch, opt, device)
                    record["seconds"] = round(time.perf_counter() - clock, 4)
                    window = _Window()
                    metrics.write(record)
                    bar.update(1, loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                else:
                    bar.update(1)
                if t.eval_every_steps and state.step % t.eval_every_steps == 0:
                    evaluate()
                if t.checkpoint_every_steps and state.step % t.checkpoint_every_steps == 0:
                    _sync_epoch_loss(state, epoch_sum)
                    save_checkpoint()
                if state.step >= total_steps or state.stopped:
                    break
                waiting_since = time.perf_counter()
            bar.close()
            _sync_epoch_loss(state, epoch_sum)
            epoch_done = state.step % steps_per_epoch == 0 or state.step >= total_steps
            if not epoch_done:  # early stop mid-epoch
                save_checkpoint()
                break
            train_loss = float(distributed.mean(torch.tensor(state.epoch_loss, device=device)))
            record = {
                "epoch": epoch + 1,
                "step": state.step,
                "train_loss": train_loss,
                "epoch_seconds": time.perf_counter() - started,
                "data_wait": data_wait / max(time.perf_counter() - started, 1e-9),
            }
            metrics.write(record, "epoch")
            evaluated = {}
            last = state.step >= total_steps
            if not t.eval_every_steps and (
                last or (t.eval_every and (epoch + 1) % t.eval_every == 0)
            ):
                evaluated = evaluate()
            shown = ", ".join(
                f"{k} {v:.4g}"
                for k, v in {**record, **evaluated}.items()
                if k not in ("epoch", "step")
            )
            say(f"epoch {epoch + 1}/{epochs}: {shown}")
            save_checkpoint()
            if t.keep_epoch_weights and ctx.is_main:
                ckpt_mod.save_weights(model, ckpt_mod.epoch_weights(run_dir, epoch + 1))
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                break
    finally:
        metrics.close()
        if flushed:
            torch.set_flush_denormal(False)
    if finished_before:
        say(
            f"{run_dir} had already finished ({state.stopped or f'{total_steps} steps'}); "
            f"nothing to train."
        )
    elif state.stopped:
        say(state.stopped)
    if ctx.is_main:
        ckpt_mod.save_weights(model, run_dir / ckpt_mod.FINAL_WEIGHTS)
        from .plots import plot_training

        plot_training(run_dir)
    distributed.barrier()
    summary = {
        "step": state.step,
        "epochs": epochs,
        "train_loss": state.epoch_loss,
        **(state.last_eval or {}),
    }
    if t.best_metric and state.best is not None:
        summary.update(best=state.best, best_step=state.best_step)
    return summary


def _sync_epoch_loss(state: _State, epoch_sum: torch.Tensor) -> None:
    state.epoch_loss = float(epoch_sum) / max(1, state.epoch_count)


def _step_record(
    window: _Window, step: int, epoch: int, opt: torch.optim.Optimizer, device: torch.device
) -> dict:
    means = window.means(device)
    if not math.isfinite(means["loss"]):
        raise HeadsError(
            f"the loss became {means['loss']} by step {step}; lower train.lr or "
            f"check the inputs for extreme values."
        )
    return {"step": step, "epoch": epoch, **means, "lr": opt.param_groups[0]["lr"]}


def _short(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")
