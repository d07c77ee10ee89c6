"""The sentences of the t15 brain-to-text copy task (Dryad ``hdf5_data_final``).

``path`` is one ``data_<split>.hdf5`` file or a folder searched recursively for them (the Dryad
layout ``hdf5_data_final/<session>/data_{train,val,test}.hdf5``). Every group ``trial_XXXX`` is
one trial; its attribute ``sentence_label`` is the sentence the participant attempted to say.

- Items are ordered by session folder, then split (in the order of ``splits``), then trial number.
- The id of a trial is ``"<session>/<split>/<trial group>"``, e.g.
  ``"t15.2023.08.11/train/trial_0003"``: stable and unique across files.
- Test files carry no labels: their trials are skipped and counted in ``self.skipped``.
- ``splits`` filters the files of a folder search; a single file given as ``path`` is read
  whatever its split.
- Columns: ``session``, ``block_num``, ``trial_num`` (-1 where the attribute is absent), ``split``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import SourceError
from ..hashing import DigestMemo
from ._common import as_int, as_str, duplicates, text_digest
from .base import Source, register_source

SPLITS = ("train", "val", "test")
FILE_RE = re.compile(r"^data_(?P<split>[^.]+)\.(hdf5|h5)$")
LABEL = "sentence_label"


def _parse_splits(splits: Any) -> tuple[str, ...]:
    if isinstance(splits, str):
        splits = splits.split(",")
    out = tuple(s.strip() for s in splits if s and s.strip())
    if not out:
        raise SourceError("splits is empty; name at least one of train, val, test.")
    return out


def _trial_order(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 62, name)


def _find_files(path: Path, splits: tuple[str, ...]) -> list[tuple[Path, str]]:
    if path.is_file():
        m = FILE_RE.match(path.name)
        return [(path, m["split"] if m else path.stem)]
    if not path.is_dir():
        raise SourceError(f"t15 data {path} does not exist.")
    found = []
    for p in path.rglob("data_*"):
        m = FILE_RE.match(p.name)
        if p.is_file() and m and m["split"] in splits:
            found.append((p, m["split"]))
    if not found:
        raise SourceError(
            f"no data_{{{','.join(splits)}}}.hdf5 files under {path}; expected the Dryad layout "
            f"hdf5_data_final/<session>/data_<split>.hdf5."
        )
    found.sort(key=lambda fs: (fs[0].parent.relative_to(path).as_posix(), splits.index(fs[1])))
    return found


@register_source
class T15Sentences(Source):
    kind = "t15-sentences"
    modality = "text"

    @classmethod
    def detect(cls, path: Path) -> int:
        if path.is_dir():
            return 30 if any(path.rglob("data_*.hdf5")) else 0
        named = path.name.lower().startswith("data_")
        return 30 if named and path.suffix.lower() in (".h5", ".hdf5") else 0

    def __init__(self, path: str | os.PathLike, splits: Any = SPLITS):
        path = Path(path)
        self.splits = _parse_splits(splits)
        files = _find_files(path, self.splits)
        ids: list[str] = []
        sentences: list[str] = []
        cols: dict[str, list] = {"session": [], "block_num": [], "trial_num": [], "split": []}
        skipped = 0
        n_trials = 0
        for file, split in files:
            try:
                handle = h5py.File(file, "r")
            except OSError as e:
                raise SourceError(f"{file} is not a readable HDF5 file: {e}") from None
            with handle as f:
                trials = sorted((k for k in f if k.startswith("trial_")), key=_trial_order)
                if not trials:
                    raise SourceError(
                        f"{file} has no trial_XXXX groups; expected a t15 data_<split>.hdf5 file."
                    )
                for name in trials:
                    n_trials += 1
                    attrs = f[name].attrs
                    if LABEL not in attrs:
                        skipped += 1
                        continue
                    session = as_str(attrs["session"]) if "session" in attrs else ""
                    session = session or file.parent.name
                    item_id = f"{session}/{split}/{name}"
                    sentence = as_str(attrs[LABEL]).strip()
                    if not sentence:
                        raise SourceError(
                            f"{file}: the sentence_label of {item_id!r} is empty; "
                            f"a sentence source needs text for every labeled trial."
                        )
                    ids.append(item_id)
                    sentences.append(sentence)
                    cols["session"].append(session)
                    cols["block_num"].append(as_int(attrs.get("block_num")))
                    cols["trial_num"].append(as_int(attrs.get("trial_num")))
                    cols["split"].append(split)
        if not ids:
            raise SourceError(
                f"{path}: none of the {n_trials} trials in {len(files)} file(s) has a "
                f"sentence_label; the files have no sentence labels (test split?). Use the "
                f"train/val files, e.g. splits=train,val."
            )
        dup = duplicates(ids)
        if dup:
            raise SourceError(
                f"{path}: trial ids repeat (first: {dup[:5]}); two files hold the same session "
                f"and split. Point the source at one copy of the data."
            )
        self.skipped = skipped
        self.files = [p for p, _ in files]
        self.sentences = sentences
        self._columns = {
            "session": np.asarray(cols["session"], dtype=object),
            "block_num": np.asarray(cols["block_num"], dtype=np.int64),
            "trial_num": np.asarray(cols["trial_num"], dtype=np.int64),
            "split": np.asarray(cols["split"], dtype=object),
        }
        super().__init__(path, np.asarray(ids, dtype=object))

    def load(self, i: int) -> str:
        return self.sentences[int(self.positions[i])]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "splits": list(self.splits),
            "skipped_unlabeled": self.skipped,
        }

    def content_digest(self, memo: DigestMemo | None) -> str:
        texts = (self.load(i) for i in range(len(self)))
        return text_digest(self.ids, texts, self.columns())
