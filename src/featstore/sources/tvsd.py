"""The THINGS images of TVSD, in the row order of its MUA arrays (``things_imgs.mat``).

``path`` is TVSD's ``monkey{F,N}/_logs/things_imgs.mat`` (MATLAB v7.3, i.e. HDF5). Its struct
``train_imgs`` / ``test_imgs`` has a field ``things_path``: HDF5 object references, each to a
MATLAB char array (uint16, stored transposed) holding a Windows path such as
``aardvark\\aardvark_01b.jpg``. Row i of ``train_MUA`` / ``test_MUA`` is the image at
``things_path[i]``.

The id of an image is that path with forward slashes (``aardvark/aardvark_01b.jpg``); images are
read from ``images_root / id`` (the THINGS ``object_images`` folder) as RGB PIL images.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from ..errors import SourceError
from ..hashing import DigestMemo, file_digest
from ._common import duplicates
from .base import Source, register_source

SPLITS = {"train": "train_imgs", "test": "test_imgs"}
FIELD = "things_path"
V5_MAGIC = b"MATLAB 5.0 MAT-file"


def open_mat_v73(path: Path, expected: str, error: type[Exception] = SourceError) -> h5py.File:
    """A MATLAB v7.3 file (HDF5 inside) opened with h5py. v5/v7 MAT-files and other files are
    one ``error`` saying how to re-save them; ``expected`` names the file the caller wants (stage
    two's TVSD reader shares this with its own error type)."""
    try:
        return h5py.File(path, "r")
    except OSError:
        with open(path, "rb") as fh:
            head = fh.read(128)
        if head.startswith(V5_MAGIC):
            raise error(
                f"{path} is a MATLAB v5/v7 MAT-file, which h5py cannot read. Re-save it as v7.3 "
                f"in MATLAB: load('{path.name}'); save('{path.name}', '-v7.3')."
            ) from None
        raise error(
            f"{path} is not a MATLAB v7.3 (HDF5) file; expected {expected}. If it is an older "
            f"MAT-file, re-save it with save(..., '-v7.3')."
        ) from None


def _is_refs(ds: h5py.Dataset) -> bool:
    return h5py.check_ref_dtype(ds.dtype) is h5py.Reference


def _char_string(f: h5py.File, obj: Any, where: str, path: Path) -> str:
    """A MATLAB char array (uint16 code units, any orientation) as str."""
    if isinstance(obj, h5py.Dataset) and _is_refs(obj) and obj.size == 1:
        obj = f[obj[()].reshape(-1)[0]]  # a cell holding one char array
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "ui":
        raise SourceError(f"{path}: {where} is not a MATLAB char array.")
    if obj.attrs.get("MATLAB_empty", 0):
        return ""
    units = np.asarray(obj[()]).astype("<u2").reshape(-1)
    return units.tobytes().decode("utf-16-le", errors="replace")


def _fast_char_string(f: h5py.File, ref: h5py.Reference) -> str | None:
    """The common case (a uint16 char array) through h5py's low-level API, ~6x faster than
    ``f[ref][()]`` over THINGS' 22,248 references; None for anything else."""
    oid = h5py.h5r.dereference(ref, f.id)
    if not isinstance(oid, h5py.h5d.DatasetID):
        return None
    tid = oid.get_type()
    if not isinstance(tid, h5py.h5t.TypeIntegerID) or tid.get_size() != 2:
        return None
    units = np.empty(oid.shape, dtype="<u2")
    oid.read(h5py.h5s.ALL, h5py.h5s.ALL, units)
    return units.reshape(-1).tobytes().decode("utf-16-le", errors="replace")


def read_things_paths(path: Path, split: str) -> list[str]:
    """The relative image paths of one split of ``things_imgs.mat``, in MUA row order."""
    group_name = SPLITS[split]
    with open_mat_v73(path, "TVSD's things_imgs.mat") as f:
        if group_name not in f:
            found = ", ".join(k for k in f if not k.startswith("#")) or "nothing"
            raise SourceError(
                f"{path} has no {group_name!r} (found: {found}); expected TVSD's things_imgs.mat "
                f"with train_imgs and test_imgs."
            )
        group = f[group_name]
        if not isinstance(group, h5py.Group) or FIELD not in group:
            raise SourceError(
                f"{path}: {group_name} has no field {FIELD!r}; expected "
                f"{group_name}.{FIELD} (object references to the image paths)."
            )
        refs = group[FIELD]
        if not isinstance(refs, h5py.Dataset) or not _is_refs(refs):
            raise SourceError(
                f"{path}: {group_name}/{FIELD} is not a MATLAB cell/struct field of object "
                f"references (dtype {getattr(refs, 'dtype', None)})."
            )
        out = []
        for n, ref in enumerate(np.asarray(refs[()]).reshape(-1)):
            where = f"{group_name}/{FIELD}[{n}]"
            if not ref:
                raise SourceError(f"{path}: {where} is a null reference.")
            text = _fast_char_string(f, ref)
            if text is None:  # not a plain char array: nested cell, MATLAB empty, or wrong type
                text = _char_string(f, f[ref], where, path)
            text = text.strip()
            if not text:
                raise SourceError(f"{path}: {where} is an empty path.")
            out.append(text.replace("\\", "/").lstrip("/"))
    return out


@register_source
class TvsdImages(Source):
    kind = "tvsd-images"
    modality = "image"

    @classmethod
    def detect(cls, path: Path) -> int:
        return 10 if path.suffix.lower() == ".mat" else 0

    def __init__(
        self, path: str | os.PathLike, images_root: str | os.PathLike, split: str = "train"
    ):
        path = Path(path)
        root = Path(images_root)
        if split not in SPLITS:
            raise SourceError(f"split must be 'train' or 'test', not {split!r}.")
        if not path.is_file():
            raise SourceError(f"TVSD image list {path} does not exist.")
        if not root.is_dir():
            raise SourceError(f"THINGS image folder {root} does not exist.")
        rel = read_things_paths(path, split)
        if not rel:
            raise SourceError(f"{path}: {SPLITS[split]}/{FIELD} lists no images.")
        dup = duplicates(rel)
        if dup:
            raise SourceError(
                f"{path}: {len(dup)} image paths repeat in {SPLITS[split]} (first: {dup[:5]}); "
                f"ids must be unique."
            )
        missing = [r for r in rel if not (root / r).is_file()]
        if missing:
            raise SourceError(
                f"{len(missing)} of {len(rel)} images listed in {path} ({split}) are not under "
                f"{root} (first: {missing[:5]}); images_root must be the THINGS object_images "
                f"folder (one subfolder per concept)."
            )
        self.images_root = root
        self.split = split
        super().__init__(path, np.asarray(rel, dtype=object))

    def load(self, i: int) -> Image.Image:
        file = self.images_root / self.ids[i]
        try:
            with Image.open(file) as im:
                return im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise SourceError(f"cannot decode image {file}: {e}") from None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "split": self.split, "images_root": str(self.images_root)}

    def content_digest(self, memo: DigestMemo | None) -> str:
        """sha256 over each selected image's id and file digest (memoized by size and mtime)."""
        h = hashlib.sha256()
        for rel in self.ids.tolist():
            h.update(rel.encode() + b"\0" + file_digest(self.images_root / rel, memo).encode())
        return h.hexdigest()
