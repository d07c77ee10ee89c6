"""COCO captions, from the official ``captions_*.json`` or the Karpathy ``dataset_coco.json``.

``path`` is one JSON file, or a folder whose ``captions_*.json`` files are read together (e.g.
COCO's ``annotations/`` with train2017 and val2017, which together cover NSD's images).

- COCO format: ``annotations[{id, image_id, caption}]``; the caption id is the annotation ``id``.
- Karpathy format: ``images[{cocoid, split, sentences[{raw, sentid}]}]``; the caption id is
  ``sentid``. ``split`` keeps the images of one Karpathy split ("train", "val", "test",
  "restval"); join several with "+", e.g. ``"train+restval"`` (the usual 113k training set).
  "train" alone does NOT include "restval". ``split=None`` keeps every image. COCO-format files
  are one split each, so ``split`` is an error there.

``per_image="all"``: one item per caption, id = caption id, columns ``image_id`` (COCO id).
``per_image="first"``: one item per image (its caption with the lowest id), id = COCO image id,
columns ``image_id`` and ``caption_id``. Karpathy sources also get a ``split`` column.

With ``nsd_stim_info`` (NSD's ``nsd_stim_info_merged.csv``, columns ``nsdId`` (0-based 73k index)
and ``cocoId``) only the COCO images shown in NSD are kept and keyed by NSD index: "first" → id =
nsdId; "all" → id = caption id with an extra column ``nsd_id``. ``self.nsd_missing`` counts NSD
images that have no caption in the given file(s).

Items are ordered by image (nsdId with ``nsd_stim_info``, else COCO id), then caption id.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SourceError
from ..hashing import DigestMemo
from ._common import duplicates, text_digest
from .base import Source, register_source

PER_IMAGE = ("all", "first")
KARPATHY_SPLITS = ("train", "val", "test", "restval")

Caption = tuple[int, int, str, str]  # (caption id, COCO image id, caption, Karpathy split or "")


def _missing(record: Any, keys: tuple[str, ...], path: Path, where: str) -> None:
    if not isinstance(record, dict):
        raise SourceError(f"{path}: captions JSON {where} is not an object")
    lost = [k for k in keys if k not in record]
    if lost:
        raise SourceError(
            f"{path}: captions JSON missing keys {lost} in {where}; expected COCO "
            f"captions_*.json or Karpathy dataset_coco.json."
        )


def _int(value: Any, path: Path, what: str) -> int:
    if isinstance(value, bool):
        raise SourceError(f"{path}: {what} is {value!r}, not an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SourceError(f"{path}: {what} is {value!r}, not an integer") from None


def _read_json(path: Path, split: str | None) -> list[Caption]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot parse {path}: {e}") from None
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise SourceError(
            f"{path}: captions JSON missing keys: expected an object with 'annotations' (COCO) "
            f"or 'images' (Karpathy), got a {type(data).__name__}."
        )
    if "annotations" in data:
        if split is not None:
            raise SourceError(
                f"{path} is a COCO captions file (one split per file); split={split!r} applies "
                f"only to Karpathy's dataset_coco.json. Drop it or pick the file of that split."
            )
        anns = data["annotations"]
        if not isinstance(anns, list):
            raise SourceError(f"{path}: 'annotations' must be a list")
        out = []
        for n, ann in enumerate(anns):
            _missing(ann, ("id", "image_id", "caption"), path, f"annotations[{n}]")
            cid = _int(ann["id"], path, f"annotations[{n}].id")
            out.append((cid, _int(ann["image_id"], path, f"annotations[{n}].image_id"),
                        ann["caption"], ""))  # fmt: skip
        return out
    if isinstance(data.get("images"), list):
        out = []
        for n, img in enumerate(data["images"]):
            _missing(img, ("cocoid", "sentences", "split"), path, f"images[{n}]")
            image_id = _int(img["cocoid"], path, f"images[{n}].cocoid")
            for k, sent in enumerate(img["sentences"]):
                where = f"images[{n}].sentences[{k}]"
                _missing(sent, ("raw", "sentid"), path, where)
                out.append((_int(sent["sentid"], path, f"{where}.sentid"), image_id,
                            sent["raw"], str(img["split"])))  # fmt: skip
        return out
    raise SourceError(
        f"{path}: captions JSON missing keys 'annotations' (COCO captions_*.json) or 'images' "
        f"(Karpathy dataset_coco.json); found keys {sorted(data)[:10]}."
    )


def read_nsd_stim_info(path: Path) -> dict[int, int]:
    """``{cocoId: nsdId}`` from NSD's ``nsd_stim_info_merged.csv``."""
    if not path.is_file():
        raise SourceError(f"NSD stimulus info {path} does not exist.")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            if "nsdId" not in fields or "cocoId" not in fields:
                raise SourceError(
                    f"{path} lacks the columns nsdId and cocoId (found: {fields[:10]}); expected "
                    f"NSD's nsd_stim_info_merged.csv."
                )
            rows = [(r["cocoId"], r["nsdId"], n) for n, r in enumerate(reader, 2)]
    except (csv.Error, UnicodeDecodeError) as e:
        raise SourceError(f"cannot parse {path}: {e}") from None
    mapping: dict[int, int] = {}
    for coco, nsd, line in rows:
        coco_id = _int(coco, path, f"cocoId on line {line}")
        nsd_id = _int(nsd, path, f"nsdId on line {line}")
        if mapping.setdefault(coco_id, nsd_id) != nsd_id:
            raise SourceError(f"{path}: cocoId {coco_id} appears with two nsdIds (line {line}).")
    if not mapping:
        raise SourceError(f"{path} lists no images.")
    return mapping


@register_source
class CocoCaptions(Source):
    kind = "coco-captions"
    modality = "text"

    @classmethod
    def detect(cls, path: Path) -> int:
        name = path.name.lower()
        if path.is_dir():
            return 20 if any(path.glob("captions_*.json")) else 0
        is_captions = name.startswith("captions_") or name == "dataset_coco.json"
        return 20 if path.suffix.lower() == ".json" and is_captions else 0

    def __init__(
        self,
        path: str | os.PathLike,
        per_image: str = "all",
        nsd_stim_info: str | os.PathLike | None = None,
        split: str | None = None,
    ):
        path = Path(path)
        if per_image not in PER_IMAGE:
            raise SourceError(f"per_image must be 'all' or 'first', not {per_image!r}.")
        if path.is_dir():
            files = sorted(path.glob("captions_*.json"))
            if not files:
                raise SourceError(f"{path} holds no captions_*.json files.")
        elif path.is_file():
            files = [path]
        else:
            raise SourceError(f"captions file {path} does not exist.")
        captions: list[Caption] = []
        for file in files:
            captions += _read_json(file, split)
        if split is not None:
            wanted = {s.strip() for s in split.split("+")}
            present = sorted({c[3] for c in captions})
            captions = [c for c in captions if c[3] in wanted]
            if not captions:
                raise SourceError(
                    f"{path}: no images in split {split!r}; the file has splits {present}. "
                    f"Join splits with '+', e.g. 'train+restval'."
                )
        if not captions:
            raise SourceError(f"{path} holds no captions.")
        dup = duplicates(c[0] for c in captions)
        if dup:
            raise SourceError(
                f"{path}: caption ids repeat (first: {dup[:5]}); each must be unique."
            )
        texts = {}
        for cid, _, text, _ in captions:
            if not isinstance(text, str) or not text.strip():
                raise SourceError(f"{path}: caption {cid} is empty; remove or fill it.")
            texts[cid] = text.strip()

        self.nsd_missing = 0
        nsd_of: dict[int, int] | None = None
        if nsd_stim_info is not None:
            nsd_of = read_nsd_stim_info(Path(nsd_stim_info))
            have = {c[1] for c in captions}
            self.nsd_missing = sum(1 for coco in nsd_of if coco not in have)
            captions = [c for c in captions if c[1] in nsd_of]
            if not captions:
                raise SourceError(
                    f"{path}: none of its images are in {nsd_stim_info}; NSD uses COCO "
                    f"train2017/val2017 images."
                )

        def image_key(c: Caption) -> int:
            return nsd_of[c[1]] if nsd_of is not None else c[1]

        captions.sort(key=lambda c: (image_key(c), c[0]))
        if per_image == "first":
            firsts: dict[int, Caption] = {}
            for c in captions:
                firsts.setdefault(c[1], c)
            captions = list(firsts.values())
            ids = [image_key(c) for c in captions]
            columns = {"image_id": [c[1] for c in captions], "caption_id": [c[0] for c in captions]}
        else:
            ids = [c[0] for c in captions]
            columns = {"image_id": [c[1] for c in captions]}
            if nsd_of is not None:
                columns["nsd_id"] = [nsd_of[c[1]] for c in captions]
        if all(c[3] for c in captions):  # Karpathy: every image has a split
            columns["split"] = [c[3] for c in captions]
        self.per_image = per_image
        self.split = split
        self.nsd_stim_info = None if nsd_stim_info is None else str(nsd_stim_info)
        self.texts = [texts[c[0]] for c in captions]
        self._columns = {
            k: np.asarray(v, dtype=object if k == "split" else np.int64) for k, v in columns.items()
        }
        super().__init__(path, np.asarray(ids, dtype=np.int64))

    def load(self, i: int) -> str:
        return self.texts[int(self.positions[i])]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "per_image": self.per_image, "split": self.split,
                "nsd_stim_info": self.nsd_stim_info}  # fmt: skip

    def content_digest(self, memo: DigestMemo | None) -> str:
        texts = (self.load(i) for i in range(len(self)))
        return text_digest(self.ids, texts, self.columns())
