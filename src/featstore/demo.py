"""The demo: stage one end to end on a small embedded, synthetic dataset.

It draws labelled synthetic images (a coloured shape on a coloured background) and their
captions, writes them in the real source formats (an NSD-style HDF5, an image folder, a JSONL
caption list), then extracts them with tiny random-weight teachers (the same architecture
classes as bigG and CLIP-L text). The numbers are meaningless; the mechanics are the real ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from .extract import extract
from .reader import open_entry
from .sources import open_source
from .store import Store
from .teachers import create_teacher

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220),
          "yellow": (235, 210, 40), "purple": (140, 50, 170), "white": (245, 245, 245)}  # fmt: skip
SHAPES = ("circle", "square", "triangle")


def synthetic_scene(rng: np.random.Generator, size: int = 224) -> tuple[np.ndarray, str]:
    """One synthetic image ``[size,size,3]`` uint8 and its caption."""
    names = list(COLORS)
    fg, bg = rng.choice(len(names), size=2, replace=False)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    img = np.empty((size, size, 3), np.uint8)
    img[:] = COLORS[names[bg]]
    cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
    r = int(rng.integers(size // 8, size // 4))
    yy, xx = np.mgrid[:size, :size]
    if shape == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif shape == "square":
        mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    else:
        mask = (yy - cy + r >= 0) & (yy - cy <= r) & (abs(xx - cx) <= (yy - cy + r) / 2)
    img[mask] = COLORS[names[fg]]
    noise = rng.normal(0, 6, img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    return img, f"a {names[fg]} {shape} on a {names[bg]} background"


def write_scenes(
    workdir: Path, n_images: int, seed: int = 0
) -> tuple[Path, Path, list[tuple[np.ndarray, str]]]:
    """Synthetic scenes as NSD's ``coco_images_224_float16.hdf5`` (``images`` fp16 [0,1],
    channels first) and ``captions.jsonl`` (id = row); returns both paths and the scenes."""
    rng = np.random.default_rng(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    scenes = [synthetic_scene(rng) for _ in range(n_images)]
    hdf5 = workdir / "coco_images_224_float16.hdf5"
    with h5py.File(hdf5, "w") as f:
        arr = np.stack([s[0] for s in scenes]).transpose(0, 3, 1, 2).astype(np.float16) / 255
        f.create_dataset("images", data=arr)
    captions = workdir / "captions.jsonl"
    with open(captions, "w") as f:
        for i, (_, caption) in enumerate(scenes):
            f.write(json.dumps({"id": i, "text": caption}) + "\n")
    return hdf5, captions, scenes


def write_demo_data(workdir: Path, n_images: int = 48, seed: int = 0) -> dict[str, Path]:
    """The scenes' HDF5 and captions, plus an image folder of the first 16 as PNG."""
    hdf5, captions, scenes = write_scenes(workdir, n_images, seed)
    folder = workdir / "images"
    folder.mkdir(exist_ok=True)
    for i, (img, _) in enumerate(scenes[:16]):
        Image.fromarray(img).save(folder / f"scene_{i:03d}.png")
    return {"hdf5": hdf5, "folder": folder, "captions": captions}


def run_demo(
    workdir: Path, progress: bool = True, log: Callable[[str], None] = print
) -> dict[str, str]:
    """Write the demo data and extract it; returns ``{name: key}`` of the entries."""
    workdir = Path(workdir)
    paths = write_demo_data(workdir)
    store = Store(workdir / "store")
    log(f"demo data (synthetic) in {workdir}; store in {store.root}")
    jobs = [
        ("bigG-tiny", paths["hdf5"], ["tokens", "embeds"], {}),
        ("bigG-tiny", paths["folder"], ["embeds"], {}),
        ("clip-l-text-tiny", paths["captions"], ["pooled"], {}),
    ]
    keys = {}
    for teacher_name, source_path, outputs, options in jobs:
        teacher = create_teacher(teacher_name, weights="random", **options)
        source = open_source(source_path)
        log(f"\n== {teacher_name} over {source_path.name} ({len(source)} items)")
        result = extract(teacher, source, store, outputs=outputs, batch_size=16,
                         num_workers=0, progress=progress, log=log)  # fmt: skip
        for e in result.entries:
            keys[f"{teacher_name}/{e.output}@{source_path.name}"] = e.key
    tokens = open_entry(keys["bigG-tiny/tokens@coco_images_224_float16.hdf5"], store)
    batch = tokens.gather([0, 5, 7])
    log(f"\nread back: {tokens}\n  gather([0,5,7]) -> {batch.shape} {batch.dtype} "
        f"(zero-copy memory map: {tokens.zero_copy})")  # fmt: skip
    log(f"\nstore: {store.root}\n  try: featstore ls --store {store.root}")
    return keys
