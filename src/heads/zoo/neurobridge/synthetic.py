"""A small TVSD-like dataset in the original file layouts — labelled synthetic.

Images are drawn scenes (featstore's demo generator) in a THINGS-like folder
(``object_images/<concept>/<concept>_NNb.jpg``); ``monkeyF/_logs/things_imgs.mat`` names them
in MUA row order and ``monkeyF/THINGS_normMUA.mat`` holds the MUA, both MATLAB v7.3 as MATLAB
writes them (a 512-byte MAT header, column-major arrays that h5py reads transposed).

The MUA is planted: each area reads a fixed random projection of the images' standardized
teacher embeddings (stage one's output), through a different number of embedding dimensions
and with different noise — IT sees all dimensions with little noise, V4 a third of them with
more, V1 an eighth with the most — so retrieval from IT beats V4 beats V1, as in the seed.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from ...data.tvsd import AREAS, N_ELECTRODES

MAT_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2026 "
    b"HDF5 schema 1.00 ."
)
# area -> (share of embedding dimensions it encodes, noise std relative to its signal)
PLANTED = {"IT": (1.0, 0.6), "V4": (0.33, 1.5), "V1": (0.12, 2.0)}
REPEATS = 30


def _write_header(path: Path) -> None:
    header = MAT_HEADER.ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header.ljust(512, b"\0"))


def write_images(root: Path, n_images: int, seed: int) -> list[str]:
    """Scenes as JPEGs under ``root/object_images``; returns their THINGS-style ids."""
    from featstore.demo import synthetic_scene

    rng = np.random.default_rng(seed)
    ids, counts = [], {}
    for _ in range(n_images):
        img, caption = synthetic_scene(rng, size=96)
        words = caption.split()
        concept = f"{words[1]}_{words[2]}"  # "a red circle on a blue background" -> red_circle
        counts[concept] = counts.get(concept, 0) + 1
        rel = f"{concept}/{concept}_{counts[concept]:02d}b.jpg"
        (root / "object_images" / concept).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "object_images" / rel, quality=95)
        ids.append(rel)
    return ids


def write_things_imgs(path: Path, train: list[str], test: list[str]) -> Path:
    """``things_imgs.mat``: structs ``train_imgs``/``test_imgs`` whose ``things_path`` field is
    a cell of references to uint16 char arrays holding Windows paths."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        for name, paths in (("train_imgs", train), ("test_imgs", test)):
            group = f.create_group(name)
            group.attrs["MATLAB_class"] = np.bytes_("struct")
            targets = []
            for rel in paths:
                text = rel.replace("/", "\\")
                units = np.frombuffer(text.encode("utf-16-le"), dtype="<u2").reshape(-1, 1)
                ds = refs.create_dataset(f"{name}{len(targets)}", data=units)
                ds.attrs["MATLAB_class"] = np.bytes_("char")
                ds.attrs["MATLAB_int_decode"] = np.int32(2)
                targets.append(ds.ref)
            cell = group.create_dataset(
                "things_path", data=np.array(targets, dtype=h5py.ref_dtype).reshape(-1, 1)
            )
            cell.attrs["MATLAB_class"] = np.bytes_("cell")
    _write_header(path)
    return path


def write_normmua(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``THINGS_normMUA.mat`` with each array stored as h5py reads MATLAB's (transposed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in arrays.items():
            ds = f.create_dataset(name, data=value)
            ds.attrs["MATLAB_class"] = np.bytes_(
                "single" if value.dtype == np.float32 else "double"
            )
    _write_header(path)
    return path


def planted_mua(
    embeddings: np.ndarray, n_train: int, monkey: str = "F", seed: int = 0
) -> dict[str, np.ndarray]:
    """TVSD-shaped MUA for images whose teacher embeddings are ``embeddings`` (train rows first,
    then test rows): ``train_MUA``, ``test_MUA_reps`` (30 noisy repeats), ``test_MUA`` (their
    mean), z-scored per channel with the training statistics, and quality fields."""
    rng = np.random.default_rng(seed + 7)
    z = embeddings.astype(np.float64)
    z = (z - z.mean(0)) / (z.std(0) + 1e-8)
    n_images, dims = z.shape
    signal = np.zeros((n_images, N_ELECTRODES))
    noise = np.zeros(N_ELECTRODES)
    for area, (start, stop) in AREAS[monkey].items():
        share, level = PLANTED[area]
        seen = rng.permutation(dims)[: max(1, round(share * dims))]
        weights = rng.standard_normal((len(seen), stop - start)) / np.sqrt(len(seen))
        signal[:, start:stop] = z[:, seen] @ weights
        noise[start:stop] = level
    train = signal[:n_train] + noise * rng.standard_normal((n_train, N_ELECTRODES))
    test_signal = signal[n_train:]
    reps = test_signal + noise * rng.standard_normal((REPEATS, *test_signal.shape))
    mean, std = train.mean(0), train.std(0)
    train, reps = (train - mean) / std, (reps - mean) / std
    snr = 1.0 / noise + 0.1 * rng.standard_normal((3, N_ELECTRODES))
    return {
        "train_MUA": train.astype(np.float32),
        "test_MUA": reps.mean(0).astype(np.float32),
        "test_MUA_reps": reps.astype(np.float32),
        "SNR": snr,
        "SNR_max": snr.max(0, keepdims=True),
        "reliab": (1.0 / (1.0 + noise**2))[None],
        "oracle": (1.0 / (1.0 + noise))[None],
        "lats": np.tile([[75.0], [50.0], [100.0], [120.0]], (1, N_ELECTRODES)),
    }
