"""``heads demo neurobridge``: both stages on a labelled-synthetic TVSD-like dataset.

Stage one extracts ``clip-l-image-tiny`` embeddings (random weights) of synthetic THINGS-like
images through featstore's ``tvsd-images`` source; the MUA is a planted encoding of those
embeddings (``synthetic``), strongest in IT, then V4, then V1. Stage two runs the region
ablation (all, IT, V4, V1) with a small model and prints the seed's table: top-5 far above
chance, in the planted order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featstore import Store, open_entry
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers import create_teacher

from ...report import Report
from .ablation import format_table, run_ablation
from .synthetic import planted_mua, write_images, write_normmua, write_things_imgs

N_TRAIN, N_TEST = 400, 50
REGIONS = ("all", "IT", "V4", "V1")
# a small Perceiver and a short schedule, so the four runs take a few CPU minutes
DEMO_SETTINGS = {
    "model": {"dim": 32, "depth": 2, "dim_head": 16, "projector_hidden": 128},
    "train": {"epochs": 20, "batch_size": 40, "lr": 2e-3, "min_lr": 2e-5, "patience": 8},
    "eval": {"batch_size": 40},
}


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is (a test runs a smaller one): images, epochs and the data's seed."""

    n_train: int = N_TRAIN
    n_test: int = N_TEST
    epochs: int = DEMO_SETTINGS["train"]["epochs"]
    seed: int = 0  # the images and the planted MUA


def prepare(
    workdir: Path,
    progress: bool = False,
    log: Callable[[str], None] = print,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the synthetic TVSD files, run stage one; returns the config sections for them."""
    workdir = Path(workdir)
    ids = write_images(workdir / "THINGS", n_train + n_test, seed)
    monkey = workdir / "TVSD" / "monkeyF"
    things = write_things_imgs(monkey / "_logs" / "things_imgs.mat", ids[:n_train], ids[n_train:])
    store = Store(workdir / "store")
    log(f"stage one: synthetic THINGS images and TVSD files in {workdir}, store {store.root}")
    teacher = create_teacher("clip-l-image-tiny", weights="random")
    keys = {}
    for split in ("train", "test"):
        source = open_source(
            things, split=split, images_root=str(workdir / "THINGS" / "object_images")
        )
        result = extract(
            teacher, source, store, outputs=["embeds"], batch_size=50, progress=progress, log=log
        )
        keys[split] = result.entries[0].key
    entries = [open_entry(keys[split], store) for split in ("train", "test")]
    embeddings = np.concatenate([e.gather(np.arange(len(e))) for e in entries])
    mua = planted_mua(embeddings, n_train, seed=seed)
    normmua = write_normmua(monkey / "THINGS_normMUA.mat", mua)
    return {
        "data": {
            "store": str(store.root),
            "normmua": str(normmua),
            "train_targets": keys["train"],
            "test_targets": keys["test"],
        },
        "eval": {"images_root": str(workdir / "THINGS" / "object_images")},
    }


def write_toml(sections: dict[str, dict[str, Any]], path: Path) -> Path:
    """A flat two-level config as TOML (strings, numbers and booleans)."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def merged(*configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        for section, values in cfg.items():
            out.setdefault(section, {}).update(values)
    return out


def run_demo(
    workdir: Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
    size: DemoSize = DemoSize(),
    regions: tuple[str, ...] = REGIONS,
) -> Report:
    # The demo's matrices are tiny (width 32): a second intra-op thread adds only
    # synchronisation, and on a busy machine its spin-waits make steps several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(Path(workdir), progress, log, size, regions)
    finally:
        torch.set_num_threads(threads)


def _run_demo(
    workdir: Path,
    progress: bool,
    log: Callable[[str], None],
    size: DemoSize,
    regions: tuple[str, ...],
) -> Report:
    n_train, n_test = size.n_train, size.n_test
    data = prepare(
        workdir, progress=progress, log=log, n_train=n_train, n_test=n_test, seed=size.seed
    )
    settings = merged(DEMO_SETTINGS, {"train": {"epochs": size.epochs}}, data)
    config = write_toml(settings, workdir / "demo.toml")
    log("\nstage two: heads ablate neurobridge -c demo.toml (synthetic TVSD-like data)")
    out = workdir / "runs" / "ablation"
    rows = run_ablation(list(regions), out, config_files=[config], progress=progress, log=log)
    lines = [
        f"SYNTHETIC data: {n_train} training and {n_test} test images; MUA planted from the "
        f"tiny teacher's embeddings, strongest in IT, then V4, then V1.",
        f"chance: top-1 {1 / n_test:.0%}, top-5 {5 / n_test:.0%}, top-10 {10 / n_test:.0%}",
        *format_table(rows),
    ]
    for line in lines:
        log(line)
    files = [out / "ablation.json", out / "ablation.png", Path(rows[0]["run"]) / "plots"]
    log("wrote " + ", ".join(str(f) for f in files))
    return Report("neurobridge", {"ablation": rows}, lines, files)
