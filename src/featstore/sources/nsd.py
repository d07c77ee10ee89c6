"""NSD's ``coco_images_224_float16.hdf5``: dataset ``images [73000, 3, 224, 224]`` fp16 in [0,1].

The id of an image is its row, NSD's "73k index" (``behav`` column 0 points here).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import SourceError
from ..hashing import DigestMemo, hash_ids
from .base import Source, register_source

DATASET = "images"


@register_source
class NsdImages(Source):
    kind = "nsd-images"
    modality = "image"

    @classmethod
    def detect(cls, path: Path) -> int:
        return 10 if path.suffix.lower() in (".h5", ".hdf5") else 0

    def __init__(self, path: str | os.PathLike, dataset: str = DATASET):
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"NSD image file {path} does not exist.")
        try:
            with h5py.File(path, "r") as f:
                if dataset not in f:
                    raise SourceError(
                        f"{path} has no dataset {dataset!r} "
                        f"(found: {', '.join(f.keys()) or 'none'}). "
                        f"Expected NSD's coco_images_224_float16.hdf5 with images [N,3,H,W]."
                    )
                shape, dtype = f[dataset].shape, f[dataset].dtype
        except OSError as e:
            raise SourceError(f"{path} is not a readable HDF5 file: {e}") from None
        if len(shape) != 4 or shape[1] != 3:
            raise SourceError(
                f"{path}:{dataset} has shape {shape}; expected [N, 3, H, W] (channels first)."
            )
        if shape[0] == 0:
            raise SourceError(f"{path}:{dataset} holds no images.")
        if dtype.kind != "f":
            raise SourceError(f"{path}:{dataset} has dtype {dtype}; expected float in [0, 1].")
        self.dataset = dataset
        self.shape = shape
        self._file: h5py.File | None = None
        self._pid = -1
        super().__init__(path, np.arange(shape[0], dtype=np.int64))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": -1}

    def _images(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file[self.dataset]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def load(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self._images()[int(self.positions[i])])

    def content_digest(self, memo: DigestMemo | None) -> str:
        """sha256 over the selected rows' bytes, read in sorted blocks; memoized per file state."""
        extra = f"{self.dataset}|{hash_ids(self.positions)}"
        if memo is not None and (hit := memo.get(self.path, extra)):
            return hit
        h = hashlib.sha256()
        order = np.sort(self.positions)
        with h5py.File(self.path, "r") as f:  # short-lived: keep no handle in the parent
            images = f[self.dataset]
            for start in range(0, len(order), 256):
                block = order[start : start + 256]
                lo, hi = int(block[0]), int(block[-1]) + 1
                contiguous = hi - lo == len(block)  # then one slab read
                data = images[lo:hi] if contiguous else images[block]
                h.update(np.ascontiguousarray(data).tobytes())
        digest = h.hexdigest()
        if memo is not None:
            memo.put(self.path, digest, extra)
        return digest
