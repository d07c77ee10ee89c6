"""``heads demo viecap``: both stages on labelled-synthetic captions (see ``synthetic``).

Stage one extracts tiny random-weight CLIP ViT-B/32-architecture features (captions, vocabulary,
images); stage two trains a tiny random GPT-2 behind the mapping network. The measure of learning
is ViECap's training task itself: from a held-out caption's *noisy* text feature, with no entities
given ("There are something in image."), the captioner must say the caption's subject and object
again; the baseline is the same captioner given another held-out caption's feature. Captioning
*images* needs the real, aligned CLIP weights: with random towers the image features say nothing
about the captions, so the closing ``heads eval`` only shows the inference path at work.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featstore import Store
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers import create_teacher

from ... import config as config_mod
from ...registry import get_head, recipe
from ...report import Report
from ...runs import evaluate_run, load_trained
from ...train import train
from .decoding import Detection, caption_features
from .entities import filter_entities, vocabulary_nouns
from .head import noise_injection
from .synthetic import entities_of, write_dataset


def prepare(
    workdir: Path, progress: bool = False, log: Callable[[str], None] = print, **sizes: int
) -> dict[str, Any]:
    """Write the synthetic data and run stage one; returns the config overrides for it."""
    paths = write_dataset(workdir, **sizes)
    store = Store(workdir / "store")
    log(f"stage one: synthetic captions, vocabularies and images in {workdir}, store {store.root}")

    def run(teacher: str, source: Path, kind: str | None = None) -> str:
        result = extract(
            create_teacher(teacher, weights="random"),
            open_source(source, kind=kind),
            store,
            batch_size=64,
            progress=progress,
            log=log,
        )
        return result.entries[0].key

    text = run("vitb32-text-tiny", paths["captions"])
    vocab = run("vitb32-vocab-tiny", paths["categories"], "vocabulary")
    image = run("vitb32-image-tiny", paths["images"], "image-folder")
    return {
        "data": {
            "store": str(store.root),
            "captions": str(paths["captions"]),
            "text_entry": text,
            "objects": str(paths["objects"]),
            "val_captions": 100,
        },
        "model": {
            "lm_weights": "random",
            "tokenizer": str(paths["tokenizer"]),
            "lm_layers": 2,
            "lm_width": 64,
            "lm_heads": 2,
            "num_layers": 2,
            "num_heads": 4,
        },
        "eval": {"image_entry": image, "vocab_entry": vocab, "batch_size": 64, "grid_images": 8},
        "train": {
            "epochs": 12,
            "batch_size": 32,
            "lr": 2e-3,
            "warmup_steps": 20,
            "precision": "fp32",
            "log_every": 10,
            "checkpoint_every_steps": 0,
        },
    }


@torch.no_grad()
def regenerate(head, model, split: str = "test", seed: int = 0) -> dict[str, float]:
    """Captions from noisy text features of ``split``'s captions, without entities: how often
    they name the caption's planted subject and object, and the same for mismatched features."""
    data = json.loads(head.captions.path.read_text())
    planted = {img["cocoid"]: entities_of(img["subject"], img["object"]) for img in data["images"]}
    rows = head.captions.select(split)
    features = torch.from_numpy(
        head.text.gather(head.text.positions(head.captions.caption_ids[rows])).astype(np.float32)
    )
    torch.manual_seed(seed)
    noisy = noise_injection(features, head.cfg["loss"]["noise_variance"])
    shuffled = noisy[torch.from_numpy(np.roll(np.arange(len(rows)), len(rows) // 2))]
    truth = [planted[int(head.captions.image_ids[r])] for r in rows.tolist()]
    out = {}
    for name, feats in (("matched", noisy), ("mismatched", shuffled)):
        none = [Detection([], [])] * len(feats)
        captions = caption_features(model, head.tokenizer, feats, none, beam_width=3)
        found = [
            set(filter_entities(vocabulary_nouns(c, head.objects), head.objects)) for c in captions
        ]
        out[f"{name}_entity_recall"] = float(
            np.mean([len(f & t) / len(t) for f, t in zip(found, truth, strict=True)])
        )
        out[f"{name}_both_entities"] = float(
            np.mean([t <= f for f, t in zip(found, truth, strict=True)])
        )
        out[f"{name}_examples"] = [  # the first caption of the first three images
            {"caption": captions[i], "planted": sorted(truth[i]), "named": sorted(found[i])}
            for i in range(0, min(len(captions), 15), 5)
        ]
    return out


def run_demo(
    workdir: Path, progress: bool = True, log: Callable[[str], None] = print, **sizes: int
) -> Report:
    """The demo: ``sizes`` (``n_train``, ``n_val``, ``n_test`` images) shrink it; the defaults
    are the documented run."""
    with one_thread():
        return _run_demo(workdir, progress, log, sizes)


@contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy-sized matmuls: more threads only add sync cost (10x on 2 cores)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_demo(
    workdir: Path,
    progress: bool = False,
    log: Callable[[str], None] = print,
    settings: dict[str, Any] | None = None,
    **sizes: int,
) -> Path:
    """Stage one and training of the demo; returns the run directory. ``settings`` override
    the demo's config (e.g. ``{"train": {"epochs": 6}}``), ``sizes`` the data's."""
    overrides = prepare(workdir, progress=progress, log=log, **sizes)
    head_cls = get_head("viecap")
    cfg = config_mod.merge(config_mod.merge(recipe(head_cls), overrides), settings or {})
    run_dir = workdir / "runs" / "viecap-demo"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    log("\nstage two: heads train viecap (synthetic captions, tiny random GPT-2)")
    with one_thread():
        train(head_cls(cfg), cfg, run_dir, progress=progress, log=log)
    return run_dir


def _run_demo(
    workdir: Path, progress: bool, log: Callable[[str], None], sizes: dict[str, int]
) -> Report:
    run_dir = train_demo(workdir, progress, log, **sizes)
    head, model, _ = load_trained("viecap", run_dir)
    found = regenerate(head, model)
    records = [r for r in _metrics(run_dir) if "train_loss" in r]
    lines = [
        "LABELLED-SYNTHETIC data (captions from a small grammar), tiny random-weight teachers.",
        f"caption loss: epoch 1 {records[0]['train_loss']:.3f} -> epoch {len(records)} "
        f"{records[-1]['train_loss']:.3f}",
        "held-out captions regenerated from their noisy text features (no entities given):",
        f"  names the planted entities: {found['matched_entity_recall']:.1%} "
        f"(both: {found['matched_both_entities']:.1%})",
        f"  baseline, another caption's feature: {found['mismatched_entity_recall']:.1%} "
        f"(both: {found['mismatched_both_entities']:.1%})",
    ]
    lines += [
        f"  e.g. {x['caption']!r}  planted {x['planted']}, names {x['named']}"
        for x in found["matched_examples"]
    ]
    log("\n" + "\n".join(lines))
    report_eval, _ = evaluate_run("viecap", run_dir)
    log(
        "\nheads eval viecap (test images through random CLIP towers: the pipeline at work; "
        "captioning images needs the real, aligned CLIP weights):"
    )
    for line in report_eval.format():
        log(f"  {line}")
    metrics = {
        "first_epoch_loss": records[0]["train_loss"],
        "last_epoch_loss": records[-1]["train_loss"],
        **{k: v for k, v in found.items() if not k.endswith("examples")},
        "eval": report_eval.metrics,
    }
    report = Report("viecap", metrics, lines, report_eval.files)
    report.save(run_dir / "demo.json")
    log(f"\nrun directory: {run_dir}")
    return report


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    from ...tracking import read_metrics

    return read_metrics(run_dir)
