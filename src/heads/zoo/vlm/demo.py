"""``heads demo vlm``: both stages end to end on labelled-synthetic shapes, in minimind-v's
layouts (an image folder + chat JSONL files), on the CPU in a few minutes.

1. Data: coloured shapes on coloured backgrounds (JPEG), conversations whose answers are a
   function of the image, a BPE tokenizer trained on their text, a tiny random Llama LLM.
2. Stage one: ``featstore extract -t vitb16-patch-tiny`` over the image folder (random weights).
3. The LLM learns the language first (minimind-v starts from a pretrained MiniMind): it trains
   on the same questions about scenes *described in words*, and is saved as a transformers
   directory, the form ``model.llm`` loads.
4. Stage 1 (default recipe): only the projector trains, on captions, against that frozen LLM.
5. Stage 2 (``sft`` recipe, ``--init-from`` stage 1): LLM + projector on the questions.
6. ``heads eval`` after each stage on held-out images, and a chat answer.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featstore import Store
from featstore.extract import extract
from featstore.sources import open_source
from featstore.teachers import create_teacher

from ... import config as config_mod
from ...registry import get_head, recipe
from ...report import Report
from ...runs import evaluate_run
from ...train import train
from . import synthetic as syn
from .model import quiet_transformers


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is (the tests run a smaller one)."""

    n_train: int = 300
    n_val: int = 48
    pairs: int = 30
    hidden: int = 64
    layers: int = 2
    text_epochs: int = 3
    stage1_epochs: int = 3
    stage2_epochs: int = 20
    batch_size: int = 16
    seed: int = 0  # the images, conversations, tiny LLM and training order


def prepare(
    workdir: Path,
    size: DemoSize = DemoSize(),
    progress: bool = False,
    log: Callable[[str], None] = print,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the data, tokenizer and tiny LLM, run stage one; returns the data files and the
    config overrides every stage shares."""
    workdir.mkdir(parents=True, exist_ok=True)
    images = workdir / "images"
    if images.exists():
        shutil.rmtree(images)
    scenes = syn.write_images(images, size.n_train + size.n_val, seed)
    train_scenes, val_scenes = scenes[: size.n_train], scenes[size.n_train :]
    text = syn.text_records(train_scenes)
    pretrain = syn.pretrain_records(train_scenes, seed)
    sft = syn.sft_records(train_scenes, seed, pairs=size.pairs)
    val = syn.question_records(val_scenes)
    files = {
        "text": syn.write_jsonl(workdir / "text_data.jsonl", text),
        "pretrain": syn.write_jsonl(workdir / "pretrain_data.jsonl", pretrain),
        "sft": syn.write_jsonl(workdir / "sft_data.jsonl", sft),
        "val": syn.write_jsonl(workdir / "sft_val.jsonl", val),
    }
    log(
        f"data (labelled synthetic: answers are functions of the drawn shape and colours): "
        f"{size.n_train} training + {size.n_val} held-out images in {images}; "
        f"{len(pretrain)} captions, {len(sft)} conversations ({size.pairs} with two images), "
        f"{len(val)} held-out questions"
    )
    tokenizer = syn.train_tokenizer(syn.corpus(text + pretrain + sft), workdir / "llm-init")
    syn.write_tiny_llm(workdir / "llm-init", tokenizer, size.hidden, size.layers, seed=seed)
    log(f"tokenizer: byte-level BPE, {len(tokenizer)} tokens, trained on the data's own text")
    store = Store(workdir / "store")
    log(f"\nstage one: featstore extract -t vitb16-patch-tiny -s {images} (random weights)")
    result = extract(
        create_teacher("vitb16-patch-tiny", weights="random"),
        open_source(images),
        store,
        batch_size=32,
        progress=progress,
        log=log,
    )
    return {
        "files": files,
        "overrides": {
            "data": {
                "store": str(store.root),
                "patches": result.entries[0].key,
                "val": str(files["val"]),
                "max_seq_len": 640,
            },
            "eval": {"batch_size": 16, "max_new_tokens": 16},
            "train": {"batch_size": size.batch_size, "log_every": 10, "seed": seed},
        },
    }


def _stage(
    recipe_name: str,
    shared: dict[str, Any],
    run_dir: Path,
    data: dict[str, Any],
    llm: Path,
    train_settings: dict[str, Any],
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """Train one stage: the recipe, the shared overrides, then this stage's; the LR schedule is
    a cosine from ``lr`` to ``lr / 10``, like the recipes'."""
    cfg = recipe(get_head("vlm"), recipe_name)
    lr = train_settings["lr"]
    stage = {
        "data": data,
        "model": {"llm": str(llm)},
        "train": {"min_lr": lr / 10, **train_settings},
    }
    for layer in (shared, stage):
        cfg = config_mod.merge(cfg, layer)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train(get_head("vlm")(cfg), cfg, run_dir, progress=progress, log=log)


def run_demo(
    workdir: Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
    size: DemoSize = DemoSize(),
) -> Report:
    # The demo's matrices are tiny (width 64): a second intra-op thread adds only
    # synchronisation, and on a busy machine its spin-waits make steps several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(Path(workdir), progress, log, size)
    finally:
        torch.set_num_threads(threads)


def _run_demo(workdir: Path, progress: bool, log: Callable[[str], None], size: DemoSize) -> Report:
    from .runtime import load_run

    prepared = prepare(workdir, size, progress=progress, log=log, seed=size.seed)
    files, shared = prepared["files"], prepared["overrides"]
    runs_dir = workdir / "runs"

    log("\nthe LLM learns the language: questions about scenes described in words (no images)")
    text = {"train": str(files["text"]), "val": ""}
    settings = {"epochs": size.text_epochs, "lr": 3e-3}
    _stage(
        "sft", shared, runs_dir / "llm-text", text, workdir / "llm-init", settings, progress, log
    )
    llm_dir = workdir / "llm"
    if llm_dir.exists():
        shutil.rmtree(llm_dir)
    text_model = load_run(runs_dir / "llm-text", device="cpu")
    with quiet_transformers():
        text_model.model.llm.save_pretrained(llm_dir)
    text_model.encoder.tokenizer.save_pretrained(llm_dir)
    log(f"saved the text-trained LLM to {llm_dir} (transformers format)")

    log("\nstage 1 (heads train vlm): only the projector trains; captions of training images")
    stage1 = runs_dir / "vlm-pretrain"
    settings = {"epochs": size.stage1_epochs, "lr": 4.4e-3}
    _stage(
        "default",
        shared,
        stage1,
        {"train": str(files["pretrain"])},
        llm_dir,
        settings,
        progress,
        log,
    )
    stage1_report, _ = evaluate_run("vlm", stage1)

    log("\nstage 2 (heads train vlm -r sft --init-from stage 1): LLM + projector; questions")
    stage2 = runs_dir / "vlm-sft"
    settings = {"epochs": size.stage2_epochs, "lr": 3e-3, "init_from": str(stage1)}
    _stage("sft", shared, stage2, {"train": str(files["sft"])}, llm_dir, settings, progress, log)
    report, _ = evaluate_run("vlm", stage2)

    log("\nheads eval vlm on the held-out images (labelled synthetic data):")
    log(f"  after stage 1 (projector only): {stage1_report.lines[0]}")
    log("  after stage 2:")
    for line in report.format():
        log(f"    {line}")
    log("  chance: 16.7% for a colour (1 of 6), 5.6% for 'A <colour> <shape>.' (1 of 18)")
    _chat_example(stage2, workdir, log)
    log(f"\nrun directories: {runs_dir}")
    return report


def _chat_example(run: Path, workdir: Path, log: Callable[[str], None]) -> None:
    """One held-out image through ``heads chat``'s code path, greedy."""
    import json

    from .generation import generate
    from .runtime import ImageEncoder, load_run

    loaded = load_run(run, device="cpu")
    sample = json.loads((workdir / "sft_val.jsonl").read_text().splitlines()[0])
    image = workdir / "images" / sample["image"]
    question = sample["conversations"][0]["content"]
    patches, how = ImageEncoder(loaded)(image)
    answer = generate(
        loaded.model,
        loaded.encoder,
        [loaded.encoder.prompt([question])],
        patches[None],
        max_new_tokens=16,
    )[0]
    log(f"\nheads chat vlm {run} -i {image} {question.split(chr(10))[-1]!r} --temperature 0")
    log(f"  [{how}] {answer.strip()}   (reference: {sample['conversations'][1]['content']})")
