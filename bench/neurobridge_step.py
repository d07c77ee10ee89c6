"""NeuroBridge training steps: cached CLIP targets from the store vs RAM, and the seed's way
(a CLIP image forward for every batch) vs cached targets.

What is measured
    1. Step time, targets from a featstore entry vs the same targets in RAM. One
       ``AlignmentModel``, the head's own loss (``NeuroBridge.loss``: V2 augmentation, symmetric
       InfoNCE) and AdamW; batches come from the head's dataset (``MuaRows``: MUA rows in RAM as
       the head holds them). Only the target source differs:
         store: ``entry.gather(rows)`` over a clip-l-image-shaped entry ``[22248, 768]`` fp16
                (written with ``EntryWriter``, memory-mapped as the head reads it);
         RAM:   ``ram[rows]`` (a numpy array of the same rows).
       One untimed warm-up round (it also verifies each chunk's checksum on first touch, a
       one-time cost), then rounds alternating the arms (A,B / B,A); reported: median step
       per arm and the median of per-round store/RAM ratios. Two models: ``small`` (dim 32,
       depth 1: a short step, where the read path weighs most) and ``seed`` (3.3M params).
    2. The seed's way vs cached, per epoch, on the demo's synthetic THINGS-like images. Seed's
       way: each batch decodes its JPEGs, runs the teacher's preprocessing and forward
       (``clip-l-image-tiny``, random weights) and then the same training step. Cached: stage one
       (``featstore.extract``) once (timed, a one-time cost), steps read the entry. Epochs
       alternate; reported: median epoch seconds and the ratio.
       Then an ESTIMATE, not a measurement: the same ratio with the real ViT-L/14 (its vision
       tower's forward FLOPs per 224 px image counted on the meta device) against the FLOPs of
       a seed-size NeuroBridge step (forward + backward, ``torch.utils.flop_counter`` on the
       meta device), at equal FLOP/s.

How to run
    python bench/neurobridge_step.py                 # both sections
    python bench/neurobridge_step.py --only 1 --rounds 6
    Data goes to ``--workdir``/neurobridge_step_data (default ``bench/out/``, git-ignored);
    results to ``<workdir>/neurobridge_step.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import featstore  # noqa: F401  (featstore's import fix-ups first)
from featstore.reader import Entry
from featstore.writer import EntryWriter
from heads.head import Progress
from heads.registry import get_head, recipe
from heads.zoo.neurobridge.head import MuaRows, NeuroBridge
from heads.zoo.neurobridge.model import AlignmentModel, EncoderConfig

sys.path.insert(0, str(Path(__file__).parent))
from _common import env_info, finish, warm_page_cache  # noqa: E402

N_TRAIN, CLIP_DIM, N_CHANNELS = 22248, 768, 1024
MODELS = {  # (encoder config, projector hidden width)
    "small": ({"dim": 32, "depth": 1, "dim_head": 16}, 64),
    "seed": ({}, 512),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="1,2")
    p.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=4, help="steps per arm per round")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed-batch", type=int, default=32, help="batch of the seed-size model")
    p.add_argument("--images", type=int, default=256, help="section 2: images per epoch")
    p.add_argument("--epochs", type=int, default=4, help="section 2: epochs per way")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--clean", action="store_true")
    return p.parse_args()


class RamTargets:
    """The entry's rows held in a numpy array, with the entry's ``gather``."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def gather(self, index: np.ndarray) -> np.ndarray:
        return self.rows[index]


def bare_head() -> NeuroBridge:
    """The head's loss without its data files (only ``kind`` and ``cfg`` are read)."""
    head = NeuroBridge.__new__(NeuroBridge)
    head.kind, head.cfg = "align", recipe(get_head("neurobridge"))
    return head


def write_entry(path: Path, rows: np.ndarray) -> Entry:
    if not (path / "manifest.json").is_file():
        writer = EntryWriter.create(
            path,
            {"key": "bench-clip-l", "teacher": "synthetic", "output": "embeds"},
            np.arange(len(rows), dtype=np.int64),
            row_shape=rows.shape[1:],
            dtype="float16",
            ragged=False,
            chunk_rows=4096,
        )
        for unit in range(writer.n_chunks):
            start, stop = writer.unit_rows(unit)
            writer.commit(unit, rows[start:stop])
        writer.finalize({"bench": "neurobridge_step"})
    return Entry(path)


def make_model(size: str, output_dim: int) -> AlignmentModel:
    torch.manual_seed(0)
    encoder, hidden = MODELS[size]
    return AlignmentModel(EncoderConfig(**encoder), output_dim=output_dim, projector_hidden=hidden)


def timed_steps(head, model, opt, dataset, batches) -> tuple[float, float]:
    """Median seconds per step (fetch + loss + backward + AdamW) and per fetch."""
    steps, fetches = [], []
    progress = Progress(0, 0, 1, len(batches), len(batches))
    for batch in batches:
        t0 = time.perf_counter()
        items = dataset.__getitems__(batch)
        t1 = time.perf_counter()
        loss, _ = head.loss(model, items, progress)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps.append(time.perf_counter() - t0)
        fetches.append(t1 - t0)
    return statistics.median(steps), statistics.median(fetches)


def section_store_vs_ram(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    targets = rng.standard_normal((N_TRAIN, CLIP_DIM)).astype(np.float16)
    entry = write_entry(data_dir / "clip_l_entry", targets)
    warm_page_cache([entry.path])
    mua = rng.standard_normal((N_TRAIN, N_CHANNELS)).astype(np.float32)
    rows = np.arange(N_TRAIN)
    arms = {"store": MuaRows(rows, mua, entry), "ram": MuaRows(rows, mua, RamTargets(targets))}
    head = bare_head()
    out = {}
    for size in MODELS:
        batch = args.batch if size == "small" else args.seed_batch
        model = make_model(size, CLIP_DIM)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
        per_arm: dict[str, list[float]] = {"store": [], "ram": []}
        fetch: dict[str, list[float]] = {"store": [], "ram": []}
        ratios = []
        warm = [rng.permutation(N_TRAIN)[:batch].tolist() for _ in range(2)]
        for arm in arms:  # first touches: chunk checksums, allocator, kernels
            timed_steps(head, model, opt, arms[arm], warm)
        for r in range(args.rounds):
            plan = [rng.permutation(N_TRAIN)[:batch].tolist() for _ in range(args.steps)]
            order = ["store", "ram"] if r % 2 == 0 else ["ram", "store"]
            found = {}
            for arm in order:
                found[arm] = timed_steps(head, model, opt, arms[arm], plan)
                per_arm[arm].append(found[arm][0])
                fetch[arm].append(found[arm][1])
            ratios.append(found["store"][0] / found["ram"][0])
        out[size] = {
            "batch": batch,
            "step_store_s": statistics.median(per_arm["store"]),
            "step_ram_s": statistics.median(per_arm["ram"]),
            "fetch_store_ms": 1000 * statistics.median(fetch["store"]),
            "fetch_ram_ms": 1000 * statistics.median(fetch["ram"]),
            "ratio_store_over_ram": statistics.median(ratios),
        }
        print(f"[1] {size}: {out[size]}", flush=True)
    return out


def vit_l14_flops_per_image() -> tuple[int, float]:
    """(vision-tower params, counted forward FLOPs per 224 px image) of clip-l-image."""
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    from featstore.teachers import get_spec
    from featstore.teachers.openclip_vision import model_config

    with torch.device("meta"):
        visual = open_clip.model.CLIP(**model_config(get_spec("clip-l-image"))).visual
        x = torch.randn(1, 3, 224, 224)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        visual(x)
    return sum(p.numel() for p in visual.parameters()), float(counter.get_total_flops())


def neurobridge_step_flops(batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = make_model("seed", CLIP_DIM)
        values = torch.empty(batch, N_CHANNELS)
        targets = torch.empty(batch, CLIP_DIM)
    head = bare_head()
    with FlopCounterMode(display=False) as counter:
        loss, _ = head.loss(model, {"mua": values, "targets": targets}, Progress(0, 0, 1, 1, 1))
        loss.backward()
    return float(counter.get_total_flops())


def section_seed_way(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from featstore.extract import extract
    from featstore.sources import open_source
    from featstore.store import Store
    from featstore.teachers import create_teacher
    from heads.zoo.neurobridge.synthetic import write_images, write_things_imgs

    n = args.images
    images = data_dir / "things"
    things = data_dir / "things_imgs.mat"
    if not things.is_file():
        ids = write_images(images, n, seed=0)
        write_things_imgs(things, ids, ids[:2])
    source = open_source(things, split="train", images_root=str(images / "object_images"))
    teacher = create_teacher("clip-l-image-tiny", weights="random")
    store = Store(data_dir / "store")
    t0 = time.perf_counter()
    result = extract(teacher, source, store, outputs=["embeds"], progress=False, log=lambda *_: 0)
    stage_one = time.perf_counter() - t0
    entry = Entry(result.entries[0].path)
    dim = entry.row_shape[0]
    mua = np.random.default_rng(1).standard_normal((n, N_CHANNELS)).astype(np.float32)
    head = bare_head()
    model = make_model("small", dim)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    progress = Progress(0, 0, 1, 1, 1)
    batch = args.batch

    def epoch(seed_way: bool) -> float:
        order = np.random.default_rng(0).permutation(n)
        t = time.perf_counter()
        for start in range(0, n - batch + 1, batch):
            rows = order[start : start + batch]
            if seed_way:
                pixels = torch.stack([teacher.preprocessor(source.load(int(i))) for i in rows])
                with torch.no_grad():
                    target = teacher.forward(pixels, ["embeds"])["embeds"]
            else:
                target = torch.from_numpy(entry.gather(rows))
            items = {"mua": torch.from_numpy(mua[rows]), "targets": target}
            loss, _ = head.loss(model, items, progress)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    times: dict[str, list[float]] = {"seed": [], "cached": []}
    epoch(True), epoch(False)  # warm-up: decoder caches, allocator, kernels
    for e in range(args.epochs):
        for way in ["seed", "cached"] if e % 2 == 0 else ["cached", "seed"]:
            times[way].append(epoch(way == "seed"))
    params, vit_flops = vit_l14_flops_per_image()
    step_flops = neurobridge_step_flops(256) / 256
    out = {
        "images": n,
        "batch": batch,
        "stage_one_s": stage_one,
        "epoch_seed_s": statistics.median(times["seed"]),
        "epoch_cached_s": statistics.median(times["cached"]),
        "ratio_seed_over_cached": statistics.median(times["seed"])
        / statistics.median(times["cached"]),
        "vit_l14_visual_params": params,
        "vit_l14_gflop_per_image": vit_flops / 1e9,
        "neurobridge_step_gflop_per_sample": step_flops / 1e9,
        "estimated_ratio_real_vit_l14": (vit_flops + step_flops) / step_flops,
    }
    print(f"[2] {out}", flush=True)
    return out


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.workdir / "neurobridge_step_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "env": env_info(torch=torch.__version__, threads=str(torch.get_num_threads())),
        "load_before": os.getloadavg(),
    }
    only = {s.strip() for s in args.only.split(",")}
    if "1" in only:
        result["store_vs_ram"] = section_store_vs_ram(args, data_dir)
    if "2" in only:
        result["seed_way_vs_cached"] = section_seed_way(args, data_dir)
    result["load_after"] = os.getloadavg()
    finish(result, args.workdir, "neurobridge_step", data_dir, args.clean)


if __name__ == "__main__":
    main()
