"""A small synthetic NSD-like dataset in the original file layouts — labelled synthetic.

Images are drawn shapes (featstore's demo generator). Stage one extracts their bigG-architecture
tokens (tiny, random weights) and caption features. Each trial's betas are a fixed random linear
encoding of its image's tokens plus Gaussian noise, z-scored per voxel — a planted signal that a
head must recover, so retrieval accuracy measures learning.

Files: ``coco_images_224_float16.hdf5`` (``images``), ``captions.jsonl`` (ids = image index),
``betas_all_subj01_fp32_renorm.hdf5`` (``betas``), ``wds/subj01/{train,test}/0.tar`` with
``<trial>.behav.npy`` members ``[1, 17]``.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import h5py
import numpy as np

from ...data.nsd import BETAS_ROW, IMAGE, N_COLUMNS, SESSION, SHARED1000, SUBJECT


def write_images(workdir: Path, n_images: int, seed: int) -> tuple[Path, Path]:
    """The images HDF5 and captions JSONL (featstore's demo scenes)."""
    from featstore.demo import write_scenes

    images, captions, _ = write_scenes(workdir, n_images, seed)
    return images, captions


def write_subject(
    workdir: Path,
    tokens: np.ndarray,
    n_test_images: int,
    n_voxels: int = 400,
    sessions: int = 3,
    repeats: int = 3,
    noise: float = 1.0,
    seed: int = 0,
    subject: int = 1,
    latent: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """Betas and trial table for one subject; the last ``n_test_images`` images are shared1000.

    The betas encode each image's tokens through a random linear map of the subject's own, or,
    with ``latent`` (``[n_images, k]``, see :func:`shared_latent`), the latent shared by all
    subjects through the subject's own map: what multi-subject pretraining can learn once."""
    rng = np.random.default_rng(seed + 1000 * subject)
    n_images = len(tokens)
    train_images = np.arange(n_images - n_test_images)
    test_images = np.arange(n_images - n_test_images, n_images)
    trials = [(int(i), 0) for i in train_images] + [
        (int(i), 1) for i in test_images for _ in range(repeats)
    ]
    order = rng.permutation(len(trials))
    trials = [trials[k] for k in order]
    features = tokens.reshape(n_images, -1).astype(np.float32) if latent is None else latent
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    encoding = rng.standard_normal((features.shape[1], n_voxels)).astype(np.float32)
    encoding /= np.sqrt(features.shape[1])
    signal = features @ encoding  # [images, voxels]
    betas = np.stack([signal[i] for i, _ in trials])
    betas += noise * signal.std() * rng.standard_normal(betas.shape).astype(np.float32)
    betas = (betas - betas.mean(0)) / betas.std(0)
    betas_path = workdir / f"betas_all_subj{subject:02d}_fp32_renorm.hdf5"
    with h5py.File(betas_path, "w") as f:
        f.create_dataset("betas", data=betas.astype(np.float32))
    table = np.full((len(trials), N_COLUMNS), -1.0)
    per_session = -(-len(trials) // sessions)
    for row, (image, shared) in enumerate(trials):
        table[row, IMAGE] = image
        table[row, SUBJECT] = subject
        table[row, SESSION] = row // per_session + 1
        table[row, 3] = 1 + (row % per_session) // 63  # run
        table[row, 4] = row % 63  # trial within run
        table[row, BETAS_ROW] = row
        table[row, SHARED1000] = shared
    wds = workdir / "wds" / f"subj{subject:02d}"
    for split, keep in (("train", table[:, SHARED1000] == 0), ("test", table[:, SHARED1000] == 1)):
        (wds / split).mkdir(parents=True, exist_ok=True)
        with tarfile.open(wds / split / "0.tar", "w") as tar:
            for row in np.flatnonzero(keep):
                buf = io.BytesIO()
                np.save(buf, table[row][None])
                info = tarfile.TarInfo(f"sample{row:06d}.behav.npy")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    return betas_path, wds


def shared_latent(tokens: np.ndarray, dim: int = 32, seed: int = 0) -> np.ndarray:
    """``[n_images, dim]``: a fixed random projection of each image's tokens, shared by every
    synthetic subject (each subject then sees it through its own voxel map)."""
    rng = np.random.default_rng(seed + 777)
    features = tokens.reshape(len(tokens), -1).astype(np.float32)
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    projection = rng.standard_normal((features.shape[1], dim)).astype(np.float32)
    return features @ projection / np.sqrt(features.shape[1])
