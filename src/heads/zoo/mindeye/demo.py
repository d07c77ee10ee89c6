"""The end-to-end demo: stage one then stage two on a small synthetic NSD-like dataset.

Labelled synthetic (see ``synthetic``): betas are a planted linear encoding of each image's
teacher tokens plus noise, so retrieval far above chance shows the head learned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featstore import Store, open_entry
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers import create_teacher

from ... import config as config_mod
from ...registry import get_head, recipe
from ...report import Report
from ...runs import demo_run
from .synthetic import write_images, write_subject

N_IMAGES, N_TEST = 240, 40


def prepare(
    workdir: Path,
    progress: bool = False,
    log: Callable[[str], None] = print,
    seed: int = 0,
    n_images: int = N_IMAGES,
    n_test: int = N_TEST,
    n_voxels: int = 400,
) -> dict[str, Any]:
    """Write the synthetic dataset and run stage one; returns the config overrides for it."""
    workdir.mkdir(parents=True, exist_ok=True)
    images, captions = write_images(workdir, n_images, seed)
    store = Store(workdir / "store")
    log(f"stage one: synthetic images and captions in {workdir}, store {store.root}")
    tokens = extract(
        create_teacher("bigG-tiny", weights="random"),
        open_source(images),
        store,
        outputs=["tokens"],
        batch_size=16,
        progress=progress,
        log=log,
    )
    covered = np.arange(0, n_images, 4)[:, None] + np.arange(3)  # 3 of every 4 images have text
    covered = covered[covered < n_images]
    text = extract(
        create_teacher("clip-l-text-tiny", weights="random"),
        open_source(captions, ids=covered.reshape(-1).tolist()),
        store,
        outputs=["pooled"],
        batch_size=64,
        progress=progress,
        log=log,
    )
    token_key, text_key = tokens.entries[0].key, text.entries[0].key
    all_tokens = open_entry(token_key, store).gather(np.arange(n_images))
    betas, trials = write_subject(workdir, all_tokens, n_test, n_voxels=n_voxels, seed=seed)
    return {
        "data": {
            "store": str(store.root),
            "image_targets": token_key,
            "text_targets": text_key,
            "trials": [str(trials)],
            "betas": [str(betas)],
            "num_sessions": 3,
            "images": str(images),
        },
        "model": {"hidden": 256, "n_blocks": 2},
        # 192 samples per epoch: one pass over the 200 training trials (MindEye2's rule,
        # 750 per session, would make each demo epoch 11x longer)
        "train": {
            "epochs": 12,
            "batch_size": 16,
            "samples_per_epoch": 192,
            "lr": 1e-3,
            "log_every": 5,
        },
    }


def run_demo(workdir: Path, progress: bool = True, log: Callable[[str], None] = print) -> Report:
    workdir = Path(workdir)
    overrides = prepare(workdir, progress=progress, log=log)
    head_cls = get_head("mindeye")
    cfg = config_mod.merge(recipe(head_cls), overrides)
    log("\nstage two: heads train mindeye (synthetic NSD-like data)")
    heading = "heads eval mindeye (test images, outputs averaged over 3 repeats):"
    return demo_run("mindeye", cfg, workdir / "runs" / "mindeye-demo", heading, progress, log)
