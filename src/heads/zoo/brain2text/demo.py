"""``heads demo brain2text``: both stages on a small labelled-synthetic t15-like dataset.

Stage one speaks every labelled sentence with ``qwen-audio-tiny`` (random-weight MMS-TTS →
Whisper features → Qwen2-Audio encoder, the real pipeline at toy size) into a ragged ``frames``
entry; stage two trains the GRU baseline (smaller) with CTC + alignment to those frames. The
neural data are synthetic (see ``synthetic``): phoneme error rate far below chance shows the
planted phoneme patterns were recovered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from featstore import Store
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers import create_teacher

from ... import config as config_mod
from ...registry import get_head, recipe
from ...report import Report
from ...runs import demo_run
from .synthetic import SESSIONS, write_dataset


def prepare(
    workdir: Path,
    progress: bool = False,
    log: Callable[[str], None] = print,
    sessions: tuple[str, ...] = SESSIONS,
    trials: dict[str, int] | None = None,
    n_channels: int = 512,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the dataset (Dryad layout) and run stage one; returns the config overrides."""
    workdir = Path(workdir)
    root = write_dataset(workdir / "hdf5_data_final", sessions, trials, n_channels, seed=seed)
    store = Store(workdir / "store")
    log(f"stage one: synthetic t15 trials in {root}; qwen-audio-tiny frames into {store.root}")
    result = extract(
        create_teacher("qwen-audio-tiny", weights="random"),
        open_source(root),
        store,
        outputs=["frames"],
        batch_size=32,
        progress=progress,
        log=log,
    )
    return {
        "data": {"root": str(root), "store": str(store.root), "audio": result.entries[0].key},
        "model": {"n_input_features": n_channels},
    }


DEMO_TRIALS = {"train": 48, "val": 8, "test": 4}  # per session
DEMO_CHANNELS = 128  # t15 has 512; a quarter keeps the demo within CPU minutes
DEMO_TRAIN = {
    "model": {"n_units": 64, "n_layers": 2},
    "data": {"batches_per_epoch": 50},
    "train": {"steps": 200, "batch_size": 16, "warmup_steps": 20, "lr": 5e-3, "num_workers": 0,
              "log_every": 10},
}  # fmt: skip


def run_demo(
    workdir: Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
    trials: dict[str, int] | None = None,
    n_channels: int = DEMO_CHANNELS,
    train: dict[str, Any] | None = None,
    seed: int = 0,
) -> Report:
    """Both stages; ``trials`` (per session and split), ``n_channels``, ``train`` (config
    overrides for stage two) and ``seed`` (the synthetic data's) size it: the defaults are
    ``heads demo brain2text``'s, the tests run it smaller."""
    workdir = Path(workdir)
    overrides = prepare(
        workdir, progress=progress, log=log, trials=trials or DEMO_TRIALS, n_channels=n_channels,
        seed=seed,
    )  # fmt: skip
    head_cls = get_head("brain2text")
    cfg = config_mod.merge(config_mod.merge(recipe(head_cls), overrides), train or DEMO_TRAIN)
    log("\nstage two: heads train brain2text (SYNTHETIC t15-like data: planted phoneme patterns)")
    heading = "heads eval brain2text (validation trials; chance PER is about 100%):"
    return demo_run("brain2text", cfg, workdir / "runs" / "brain2text-demo", heading, progress, log)
