"""VLM (minimind-v) training steps: cached patch tokens vs the original's way, store vs RAM, and
what the real sizes cost.

What is measured (``--only 1,2,3`` picks sections)
    1. The original's way vs cached, per step. Original: each step opens its JPEGs, runs the
       teacher's preprocessing and ``vitb16-patch-tiny`` (the ViT-B/16 architecture at width 32,
       random weights), then the VLM step. Cached: stage one (``featstore.extract``, timed once)
       ran that teacher over the folder and steps gather the tokens from the entry. The step is
       the head's own code (``Vlm.loss``: tokenize, pad, splice, masked CE) + backward + AdamW
       on the projector (stage 1), with the demo's tiny LLM (hidden 64, 2 layers). Both ways run
       the same batches in rounds, order alternating, so drift on a shared machine hits both.
    2. Store vs RAM, per step: real-size patch tokens ``[196, 768]`` fp16 in a featstore entry
       (``EntryWriter``, random values, image-name ids) vs the same array in RAM; the rest is
       identical (the head's batch assembly and loss). Stage 1 with the tiny LLM (a short step:
       the stricter test) and with MiniMind2-Small at full size (random weights).
    3. FLOPs at real size, counted by ``torch.utils.flop_counter`` (batch 1, scaled to 16): the
       ViT-B/16 forward per image (what the original runs every step) and a MiniMind2-Small
       step, stage 1 (projector only) and stage 2 (all), at the original's fixed padding
       (640 / 1536 tokens) and at a typical real length (~260 tokens: 196 image tokens +
       prompt + answer), which is what padding to each batch's longest sample costs.

How to run
    python bench/vlm_step.py                  # all sections, ~5-10 min on 2 busy cores
    python bench/vlm_step.py --only 2 --rows 512 --rounds 6

    Data goes to ``--workdir``/vlm_step_data (default ``bench/out/``); results are printed as
    markdown tables and written to ``<workdir>/vlm_step.json`` with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import env_info, finish  # noqa: E402

import featstore  # noqa: E402, F401  (torchvision import fix before transformers)
from featstore import Store, open_entry  # noqa: E402
from featstore.extract import extract  # noqa: E402
from featstore.sources import open_source  # noqa: E402
from featstore.teachers import create_teacher  # noqa: E402
from featstore.writer import EntryWriter  # noqa: E402
from heads import config as config_mod  # noqa: E402
from heads.head import Progress  # noqa: E402
from heads.registry import get_head, recipe  # noqa: E402
from heads.train import build_model, optimizer_groups  # noqa: E402
from heads.zoo.vlm import synthetic as syn  # noqa: E402
from heads.zoo.vlm.head import ChatBatches  # noqa: E402

GOAL_STEP_RATIO = 1.10
PATCH_ROW = (196, 768)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--only", default="1,2,3", help="sections to run, e.g. 2 or 1,3")
    p.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    p.add_argument("--images", type=int, default=96, help="section 1: synthetic images")
    p.add_argument("--rows", type=int, default=512, help="section 2: entry rows [196, 768]")
    p.add_argument("--batch", type=int, default=16, help="the recipe's stage-1 batch")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=3, help="steps per way per round")
    p.add_argument("--big-rounds", type=int, default=2, help="section 2 rounds at full size")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def table(header: list[str], rows: list[list[Any]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|---|" + "|".join("---:" for _ in header[1:]) + "|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


def tiny_llm_dir(data_dir: Path, records: list[dict[str, Any]]) -> Path:
    """The demo's tokenizer and tiny LLM (hidden 64, 2 layers), made once."""
    llm = data_dir / "llm"
    if not (llm / "config.json").is_file():
        tokenizer = syn.train_tokenizer(syn.corpus(records), llm)
        syn.write_tiny_llm(llm, tokenizer, hidden=64, layers=2)
    return llm


def make_head(
    store: Path, key: str, train_file: Path, llm: str | Path, weights: str, tokenizer: Path
):
    """The vlm head on ``store``'s entry ``key``, a JSONL, an LLM and a tokenizer."""
    cfg = recipe(get_head("vlm"))
    cfg = config_mod.merge(
        cfg,
        {
            "data": {
                "store": str(store),
                "patches": key,
                "train": str(train_file),
            },
            "model": {"llm": str(llm), "llm_weights": weights, "tokenizer": str(tokenizer)},
            "train": {"batch_size": 16, "device": "cpu"},
        },
    )
    return get_head("vlm")(cfg), cfg


class Stepper:
    """One stage-1 optimizer step as the loop runs it: ``Vlm.loss``, backward, clip, AdamW."""

    def __init__(self, head, cfg: dict[str, Any]) -> None:
        self.head = head
        self.model = build_model(head, 0).train()
        groups, _ = optimizer_groups(
            head, self.model, config_mod.TrainConfig.from_dict(cfg["train"])
        )
        self.opt = torch.optim.AdamW(groups, lr=cfg["train"]["lr"])
        self.progress = Progress(0, 0, 1, 1, 1)

    def __call__(self, batch: dict[str, torch.Tensor]) -> float:
        loss, _ = self.head.loss(self.model, batch, self.progress)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return float(loss.detach())


def paired_rounds(
    ways: dict[str, Any], stepper: Stepper, plan: list[list[int]], rounds: int, steps: int
) -> dict[str, dict[str, list[float]]]:
    """Each round runs the same ``steps`` batches through every way (order alternating);
    returns per-way lists of round-median step seconds and batch-fetch seconds."""
    out = {w: {"step_s": [], "fetch_s": []} for w in ways}
    names = list(ways)
    for r in range(rounds):
        batches = plan[(r * steps) % len(plan) :][:steps]
        for way in names if r % 2 == 0 else names[::-1]:
            step_s, fetch_s = [], []
            for indices in batches:
                t0 = time.perf_counter()
                batch = ways[way].__getitems__(indices)
                t1 = time.perf_counter()
                stepper(batch)
                step_s.append(time.perf_counter() - t0)
                fetch_s.append(t1 - t0)
            out[way]["step_s"].append(statistics.median(step_s))
            out[way]["fetch_s"].append(statistics.median(fetch_s))
    return out


def summarize(res: dict[str, dict[str, list[float]]], base: str) -> dict[str, Any]:
    ways = list(res)
    other = [w for w in ways if w != base][0]
    ratio = statistics.median(
        a / b for a, b in zip(res[other]["step_s"], res[base]["step_s"], strict=True)
    )
    return {
        "median_step_s": {w: statistics.median(v["step_s"]) for w, v in res.items()},
        "median_fetch_s": {w: statistics.median(v["fetch_s"]) for w, v in res.items()},
        f"{other}_over_{base}": ratio,
        "rounds": res,
    }


# -- section 1 ----------------------------------------------------------------------------------
class TeacherEveryStep(ChatBatches):
    """minimind-v's way: every batch decodes its images and runs the vision tower."""

    def __init__(self, base: ChatBatches, folder: Path, teacher) -> None:
        super().__init__(base.samples, base.encoder, base.entry)
        self.folder, self.teacher = folder, teacher

    def patches(self, names: list[str]) -> np.ndarray:
        from PIL import Image

        pixels = []
        for name in names:
            with Image.open(self.folder / name) as image:
                pixels.append(self.teacher.preprocessor(image.convert("RGB")))
        with torch.no_grad():
            out = self.teacher.forward(torch.stack(pixels), ["patches"])["patches"]
        return out.numpy()


def section1(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    print("\n## 1. The original's way (teacher every step) vs cached patch tokens\n", flush=True)
    folder = data_dir / "images"
    scenes = syn.write_images(folder, args.images, args.seed) if not folder.is_dir() else None
    scenes = scenes or [
        syn.Scene(p.name, "red", "circle", "blue") for p in sorted(folder.glob("*.jpg"))
    ]
    records = syn.pretrain_records(scenes, args.seed)
    train_file = syn.write_jsonl(data_dir / "pretrain_data.jsonl", records)
    llm = tiny_llm_dir(data_dir, records)
    teacher = create_teacher("vitb16-patch-tiny", weights="random")
    shutil.rmtree(data_dir / "store-tiny", ignore_errors=True)  # time a real extraction
    t0 = time.perf_counter()
    result = extract(
        teacher,
        open_source(folder),
        Store(data_dir / "store-tiny"),
        batch_size=32,
        progress=False,
        log=lambda *_: None,
    )
    extraction_s = time.perf_counter() - t0
    key = result.entries[0].key
    head, cfg = make_head(data_dir / "store-tiny", key, train_file, llm, "pretrained", llm)
    cached = head.train_dataset()
    ways = {"original": TeacherEveryStep(cached, folder, teacher), "cached": cached}
    plan = head.batch_plan(0, np.random.default_rng(args.seed), args.batch, len(cached))
    res = paired_rounds(ways, Stepper(head, cfg), plan, args.rounds, args.steps)
    out = summarize(res, "cached")
    out.update(extraction_s=extraction_s, images=args.images, batch=args.batch)
    m, f = out["median_step_s"], out["median_fetch_s"]
    table(
        ["way", "step (median)", "of which images → tokens", "ratio (paired)"],
        [
            [
                "original: JPEG → preprocess → ViT forward every step",
                f"{m['original']:.3f} s",
                f"{f['original']:.3f} s",
                f"**{out['original_over_cached']:.2f}×**",
            ],
            ["cached featstore entry", f"{m['cached']:.3f} s", f"{f['cached'] * 1e3:.1f} ms", "1"],
            [f"extraction, once ({args.images} images)", f"{extraction_s:.2f} s", "", ""],
        ],
    )
    return out


# -- section 2 ----------------------------------------------------------------------------------
class InRam(ChatBatches):
    """The same batches with the patch tokens from a numpy array in RAM."""

    def __init__(self, base: ChatBatches, array: np.ndarray) -> None:
        super().__init__(base.samples, base.encoder, base.entry)
        self.array = array
        self.index = {name: i for i, name in enumerate(base.entry.ids.tolist())}

    def patches(self, names: list[str]) -> np.ndarray:
        return self.array[[self.index[n] for n in names]]


def build_entry(data_dir: Path, names: list[str], seed: int) -> str:
    """An uncompressed entry of random fp16 ``[196, 768]`` rows keyed by image name."""
    store = Store(data_dir / "store")
    key = f"bench-patches-{len(names)}"
    path = store.root / key
    if (path / "zarr.json").is_file():
        return key
    writer = EntryWriter.create(
        path,
        {"key": key, "teacher": "vitb16-patch", "output": "patches"},
        np.asarray(names, dtype=object),
        row_shape=PATCH_ROW,
        dtype="float16",
        ragged=False,
        chunk_rows=64,
    )
    rng = np.random.default_rng(seed)
    for unit in range(writer.n_chunks):
        start, stop = writer.unit_rows(unit)
        block = rng.standard_normal((stop - start, *PATCH_ROW), dtype=np.float32)
        writer.commit(unit, block.astype(np.float16))
    writer.finalize({"bench": "vlm_step"})
    return key


def patch_fetch(ways: dict[str, ChatBatches], plan: list[list[int]], repeats: int) -> dict:
    """Median seconds of ``patches(names)`` alone (the read path), alternating the ways."""
    times: dict[str, list[float]] = {w: [] for w in ways}
    for r in range(repeats):
        for indices in plan:
            for way in list(ways) if r % 2 == 0 else list(ways)[::-1]:
                names = [n for i in indices for n in ways[way].samples[i].images]
                t0 = time.perf_counter()
                ways[way].patches(names)
                times[way].append(time.perf_counter() - t0)
    return {w: statistics.median(t) for w, t in times.items()}


def section2(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    print("\n## 2. Step time: patch tokens from the store vs the same tokens in RAM\n", flush=True)
    rng = np.random.default_rng(args.seed)
    colors = ["red", "green", "blue", "yellow", "purple", "white"]
    scenes = [
        syn.Scene(
            f"img_{i:05d}.jpg",
            colors[rng.integers(6)],
            syn.SHAPES[rng.integers(3)],
            colors[rng.integers(6)],
        )
        for i in range(args.rows)
    ]
    records = syn.pretrain_records(scenes, args.seed)
    train_file = syn.write_jsonl(data_dir / "pretrain_rows.jsonl", records)
    llm = tiny_llm_dir(data_dir, records)
    key = build_entry(data_dir, [s.name for s in scenes], args.seed)
    entry = open_entry(key, Store(data_dir / "store"))
    ram = entry.gather(np.arange(len(entry)))
    results = {}
    for label, llm_name, weights, rounds in [
        ("tiny LLM (hidden 64, 2 layers)", str(llm), "pretrained", args.rounds),
        ("MiniMind2-Small (25.8 M, random weights)", "minimind2-small", "random", args.big_rounds),
    ]:
        head, cfg = make_head(data_dir / "store", key, train_file, llm_name, weights, llm)
        store_way = head.train_dataset()
        ways = {"store": store_way, "ram": InRam(store_way, ram)}
        plan = head.batch_plan(0, np.random.default_rng(args.seed), args.batch, len(store_way))
        res = paired_rounds(ways, Stepper(head, cfg), plan, rounds, args.steps)
        results[label] = summarize(res, "ram")
    fetch = patch_fetch(ways, plan, repeats=3)
    rows = []
    for label, out in results.items():
        m, f = out["median_step_s"], out["median_fetch_s"]
        rows.append(
            [
                label,
                "featstore",
                f"{m['store']:.3f} s",
                f"{f['store'] * 1e3:.1f} ms",
                f"**{out['store_over_ram']:.3f}**",
            ]
        )
        rows.append(["", "RAM", f"{m['ram']:.3f} s", f"{f['ram'] * 1e3:.1f} ms", "1"])
    table(["model", "patch tokens from", "step (median)", "batch assembly", "store / RAM"], rows)
    print(
        f"\npatch tokens alone ({args.batch} x [196, 768] fp16 per batch): featstore "
        f"{fetch['store'] * 1e3:.2f} ms, RAM {fetch['ram'] * 1e3:.2f} ms (median)"
    )
    worst = max(out["store_over_ram"] for out in results.values())
    verdict = "met" if worst <= GOAL_STEP_RATIO else "NOT met"
    print(f"\ngoal store / RAM <= {GOAL_STEP_RATIO}: {verdict}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS of this process so far: {peak:.2f} GiB")
    return {
        "models": results,
        "rows": args.rows,
        "goal": GOAL_STEP_RATIO,
        "worst": worst,
        "patch_fetch_s": fetch,
        "peak_rss_gib": peak,
    }


# -- section 3 ----------------------------------------------------------------------------------
def section3(args: argparse.Namespace) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from featstore.teachers import get_spec
    from heads.zoo.vlm.model import VisionLanguageModel, load_llm

    print("\n## 3. FLOPs at real size (counted, batch 1 scaled to 16)\n", flush=True)
    vit = CLIPVisionModel(CLIPVisionConfig(**get_spec("vitb16-patch").config["model_cfg"]))
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        vit(pixel_values=torch.zeros(1, 3, 224, 224))
    vit_flops = fc.get_total_flops() * args.batch
    vlm = VisionLanguageModel(load_llm("minimind2-small", "random"), 768)
    steps = {}
    for stage, train_llm in (("stage 1", False), ("stage 2", True)):
        vlm.llm.requires_grad_(train_llm)
        for length in (260, 640 if stage == "stage 1" else 1536):
            fc = FlopCounterMode(display=False)
            with fc:
                logits = vlm(
                    torch.zeros(1, length, dtype=torch.long),
                    torch.zeros(1, 196, 768),
                    torch.tensor([[0, 20]]),
                )
                logits.float().logsumexp(-1).mean().backward()
            steps[f"{stage}, {length} tokens"] = fc.get_total_flops() * args.batch
            vlm.zero_grad(set_to_none=True)
    rows = [
        [
            f"ViT-B/16 forward, {args.batch} images (the original, every step)",
            f"{vit_flops / 1e12:.2f}",
            "",
        ]
    ]
    for name, flops in steps.items():
        rows.append(
            [
                f"MiniMind2-Small {name}, batch {args.batch}",
                f"{flops / 1e12:.2f}",
                f"{(flops + vit_flops) / flops:.2f}×",
            ]
        )
    table(["work", "TFLOP", "original / cached (same padding)"], rows)
    return {
        "vit_forward_flops": vit_flops,
        "step_flops": steps,
        "batch": args.batch,
        "vit_params": sum(p.numel() for p in vit.parameters()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data_dir = args.workdir / "vlm_step_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    only = {int(x) for x in args.only.split(",")}
    result: dict[str, Any] = {
        "env": env_info(torch=torch.__version__),
        "threads": args.threads,
        "command": " ".join(["python bench/vlm_step.py", *(argv or sys.argv[1:])]),
    }
    for number, run in (
        (1, lambda: section1(args, data_dir)),
        (2, lambda: section2(args, data_dir)),
        (3, lambda: section3(args)),
    ):
        if number in only:
            before = load()
            result[f"section{number}"] = {**run(), "load_before": before, "load_after": load()}
            print(f"\nload average (1, 5, 15 min): before {before}, after {load()}", flush=True)
    previous = args.workdir / "vlm_step.json"
    if previous.is_file():
        result = {**json.loads(previous.read_text()), **result}
    return finish(result, args.workdir, "vlm_step", data_dir, clean=False)


if __name__ == "__main__":
    main()
