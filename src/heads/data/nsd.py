"""NSD for MindEye: the trial table, the betas HDF5, and the train/test split.

The trial table has one row of 17 numbers per trial (MindEye's ``behav``): column 0 is the COCO
73k image index, 2 the session, 5 the row of the betas file, 16 ``is_shared1000``; -1 means NaN.
It is read from the original webdataset tars (``*.behav.npy`` members of shape ``[1, 17]``), a
``.npy`` array ``[n, 17]``, or a CSV with 17 columns (an optional header line).
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import HeadsError

IMAGE, SUBJECT, SESSION, BETAS_ROW, SHARED1000 = 0, 1, 2, 5, 16
N_COLUMNS = 17


def read_trials(path: str | os.PathLike) -> np.ndarray:
    """The trial table ``[n_trials, 17]`` (float64) from tars, a directory of tars, npy or CSV."""
    path = Path(path)
    if not path.exists():
        raise HeadsError(f"trial table {path} does not exist.")
    if path.is_dir() or path.suffix == ".tar":
        tars = sorted(path.rglob("*.tar")) if path.is_dir() else [path]
        if not tars:
            raise HeadsError(f"{path} holds no webdataset .tar files.")
        rows = []
        for tar in tars:
            with tarfile.open(tar) as tf:
                members = sorted((m for m in tf.getmembers() if m.name.endswith(".behav.npy")),
                                 key=lambda m: m.name)  # fmt: skip
                for m in members:
                    arr = np.load(io.BytesIO(tf.extractfile(m).read()), allow_pickle=False)
                    rows.append(np.asarray(arr, dtype=np.float64).reshape(-1, N_COLUMNS)[0])
        if not rows:
            raise HeadsError(f"no '*.behav.npy' members in {path}; is it MindEye's wds layout?")
        table = np.stack(rows)
    elif path.suffix == ".npy":
        table = np.load(path, allow_pickle=False).astype(np.float64)
    elif path.suffix in (".csv", ".txt"):
        lines = path.read_text().splitlines()
        skip = 1 if lines and not _is_number(lines[0].split(",")[0]) else 0
        table = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    else:
        raise HeadsError(f"trial table {path}: use webdataset tars, .npy or .csv")
    table = table.reshape(-1, table.shape[-1]) if table.ndim == 3 else table
    if table.ndim != 2 or table.shape[1] != N_COLUMNS:
        raise HeadsError(f"trial table {path} has shape {table.shape}; expected [n, {N_COLUMNS}].")
    # A trial is a betas row. MindEye's wds folders repeat trials (test/ and new_test/ hold the
    # same shared1000 trials), so keep each betas row once, in first-seen order.
    _, first = np.unique(table[:, BETAS_ROW], return_index=True)
    return table[np.sort(first)]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class Betas:
    """A subject's betas ``[n_trials, n_voxels]``, read lazily (or loaded with ``preload``).

    Reads are sorted and de-duplicated for h5py, then put back in the asked order, so batches
    with repeated trials or images are fine. Every read is checked for NaN/inf.
    """

    def __init__(self, path: str | os.PathLike, dataset: str = "betas", preload: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise HeadsError(f"betas file {self.path} does not exist.")
        try:
            with h5py.File(self.path, "r") as f:
                if dataset not in f:
                    raise HeadsError(f"{self.path} has no dataset {dataset!r} "
                                     f"(found: {', '.join(f) or 'none'}).")  # fmt: skip
                self.shape = f[dataset].shape
        except OSError as e:
            raise HeadsError(f"{self.path} is not a readable HDF5 file: {e}") from None
        if len(self.shape) != 2:
            raise HeadsError(
                f"{self.path}:{dataset} has shape {self.shape}; expected [trials, voxels]."
            )
        self.dataset = dataset
        self._file = None
        self._pid = -1
        self._ram = self._read(np.arange(self.shape[0])) if preload else None

    @property
    def n_voxels(self) -> int:
        return int(self.shape[1])

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": -1}

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        uniq, inverse = np.unique(rows, return_inverse=True)
        data = self._file[self.dataset][uniq].astype(np.float32, copy=False)[inverse]
        bad = ~np.isfinite(data)
        if bad.any():
            r, v = np.argwhere(bad)[0]
            raise HeadsError(
                f"{self.path}: betas row {int(rows[r])}, voxel {int(v)} is {data[r, v]} "
                f"({int(bad.sum())} non-finite values in this read). Fix or drop those trials."
            )
        return data

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise HeadsError(f"betas rows out of range 0..{len(self) - 1} in {self.path}")
        return self._ram[rows] if self._ram is not None else self._read(rows)


@dataclass
class SubjectSplit:
    """One subject's trials: train trials, and test trials grouped by image."""

    train: np.ndarray  # [n_train, 17]
    test_images: np.ndarray  # [n_test_images] 73k indices, sorted
    test_rows: list[np.ndarray] = field(default_factory=list)  # betas rows of each image's repeats


def split_trials(table: np.ndarray, num_sessions: int) -> SubjectSplit:
    """Train = the first ``num_sessions`` sessions' non-shared1000 trials; test = every
    shared1000 trial, repeats grouped per image (MindEye's split)."""
    sessions = np.unique(table[:, SESSION][table[:, SESSION] >= 0])
    if num_sessions < 1 or num_sessions > len(sessions):
        raise HeadsError(
            f"num_sessions={num_sessions}, but the trial table has {len(sessions)} sessions; "
            f"choose 1..{len(sessions)}."
        )
    keep = np.isin(table[:, SESSION], sessions[:num_sessions])
    shared = table[:, SHARED1000] == 1
    train = table[keep & ~shared]
    test = table[shared]
    images = np.unique(test[:, IMAGE]).astype(np.int64)
    rows = [test[test[:, IMAGE] == i, BETAS_ROW].astype(np.int64) for i in images]
    return SubjectSplit(train=train, test_images=images, test_rows=rows)
