"""Multi-subject pretraining → a new subject, on labelled-synthetic data (a shared latent).

Every synthetic subject's betas encode the same latent of each image (a fixed projection of its
teacher tokens) through the subject's own random voxel map, plus noise: what a shared backbone
can learn once from several subjects and a new subject's ridge can then map into from little
data. :func:`compare` pretrains on ``n_pretrain`` subjects, then trains one more subject on one
session twice, from scratch and from the pretrained run (the ``finetune`` recipe's
``--init-from``), and returns their test retrieval. ``bench/mindeye_finetune.py`` prints it;
a test checks that fine-tuning wins.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featstore import Store, open_entry
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers import create_teacher

from ...runs import evaluate_run, plan_training, run_training
from .synthetic import shared_latent, write_images, write_subject


def write_subjects(
    workdir: Path,
    n_images: int,
    n_test: int,
    n_subjects: int,
    sessions: int,
    noise: float,
    latent_dim: int,
    teacher: str = "bigG-tiny",
    seed: int = 0,
) -> dict[str, Any]:
    """Images, stage one (``teacher`` tokens) and ``n_subjects`` subjects sharing one latent."""
    images, _ = write_images(workdir, n_images, seed)
    store = Store(workdir / "store")
    key = (
        extract(
            create_teacher(teacher, weights="random"),
            open_source(images),
            store,
            outputs=["tokens"],
            progress=False,
            log=lambda *_: None,
        )
        .entries[0]
        .key
    )
    tokens = open_entry(key, store).gather(np.arange(n_images))
    latent = shared_latent(tokens, latent_dim, seed)
    subjects = []
    for s in range(1, n_subjects + 1):
        folder = workdir / f"subj{s:02d}"
        folder.mkdir(exist_ok=True)
        betas, trials = write_subject(
            folder,
            tokens,
            n_test,
            n_voxels=80 + 20 * s,
            sessions=sessions,
            noise=noise,
            seed=seed,
            subject=s,
            latent=latent,
        )
        subjects.append((str(trials), str(betas)))
    return {"store": str(store.root), "key": key, "subjects": subjects}


def _overrides(data: dict, subjects: list, sessions: int, train: dict, model: dict) -> list[str]:
    trials, betas = [s[0] for s in subjects], [s[1] for s in subjects]
    sets = {
        "data.store": data["store"],
        "data.image_targets": data["key"],
        "data.trials": trials,
        "data.betas": betas,
        "data.num_sessions": sessions,
        "train.tensorboard": False,
        "train.eval_every": 0,
        **{f"model.{k}": v for k, v in model.items()},
        **{f"train.{k}": v for k, v in train.items()},
    }
    return [f"{k}={json.dumps(v)}" for k, v in sets.items()]


def compare(
    workdir: Path,
    n_images: int = 160,
    n_test: int = 32,
    n_pretrain: int = 3,
    sessions: int = 4,
    noise: float = 0.25,
    latent_dim: int = 12,
    pretrain_epochs: int = 20,
    finetune_epochs: int = 40,
    hidden: int = 64,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Pretrain, then the new subject from scratch and fine-tuned; their test retrieval."""
    workdir = Path(workdir)
    data = write_subjects(workdir, n_images, n_test, n_pretrain + 1, sessions, noise, latent_dim)
    model = {"hidden": hidden, "n_blocks": 1}
    per_session = (n_images - n_test) // sessions
    results: dict[str, Any] = {}

    def run(name: str, subjects: list, n_sessions: int, train: dict, **kw: Any) -> dict:
        shutil.rmtree(workdir / name, ignore_errors=True)
        plan = plan_training(
            "mindeye",
            kw.pop("recipe", "default"),
            overrides=_overrides(data, subjects, n_sessions, train, model),
            run_dir=workdir / name,
            **kw,
        )
        run_training(plan, progress=False, log=lambda *_: None)
        report, _ = evaluate_run("mindeye", workdir / name)
        return {
            k: {m: v[m]["mean"] for m in ("image_retrieval", "brain_retrieval")}
            for k, v in report.metrics["subjects"].items()
        }

    pretrain_batch = 8 * n_pretrain
    log(f"pretraining on {n_pretrain} synthetic subjects ...")
    results["pretrain"] = run(
        "pretrain",
        data["subjects"][:n_pretrain],
        sessions,
        {
            "epochs": pretrain_epochs,
            "batch_size": pretrain_batch,
            "lr": 1e-3,
            "samples_per_epoch": n_pretrain
            * (n_images - n_test)
            // pretrain_batch
            * pretrain_batch,
        },
    )
    new = data["subjects"][n_pretrain:]
    one = {
        "epochs": finetune_epochs,
        "batch_size": 8,
        "lr": 1e-3,
        "samples_per_epoch": per_session // 8 * 8,
    }
    log("the new subject on one session, from scratch ...")
    results["scratch"] = run("scratch", new, 1, one)["subj1"]
    log("the new subject on one session, from the pretrained run ...")
    results["finetune"] = run(
        "finetune", new, 1, one, recipe="finetune", init_from=str(workdir / "pretrain")
    )["subj1"]
    results["setup"] = {
        "n_images": n_images,
        "n_test": n_test,
        "n_pretrain": n_pretrain,
        "sessions": sessions,
        "trials_in_one_session": per_session,
        "noise": noise,
        "latent_dim": latent_dim,
        "hidden": hidden,
    }
    return results
