"""COCO captions in Karpathy's ``dataset_coco.json`` layout (or COCO's ``captions_*.json``).

Karpathy: ``images[{cocoid, filepath, filename, split, sentences[{sentid, raw}]}]``, splits
``train``, ``restval``, ``val``, ``test``. COCO: ``images[{id, file_name}]`` +
``annotations[{id, image_id, caption}]`` (one split per file, named by the file: ``val2014``).
Caption ids are ``sentid`` / annotation ``id``, the same ids featstore's ``coco-captions`` source
gives its rows, so caption features are read from the store by caption id.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

PUNCTUATION = set("!\"#$%&'()*+, -./:;<=>?@[\\]^_`{|}~")


@dataclass
class CocoCaptions:
    """Every caption of the file, in file order, with its image and split."""

    path: Path
    caption_ids: np.ndarray  # int64 [N]
    image_ids: np.ndarray  # int64 [N]
    splits: np.ndarray  # object [N]: "train", "restval", "val", "test" (or the COCO file's split)
    texts: list[str]
    files: dict[int, str]  # COCO image id -> "filepath/filename" (or "filename")

    def select(self, splits: str) -> np.ndarray:
        """Row positions of the captions in ``splits`` (``"train+restval"``)."""
        wanted = {s.strip() for s in splits.split("+") if s.strip()}
        keep = np.flatnonzero(np.isin(self.splits, list(wanted)))
        if not len(keep):
            raise DataError(
                f"{self.path}: no captions in split {splits!r}; the file has splits "
                f"{sorted(set(self.splits.tolist()))}. Join splits with '+', e.g. 'train+restval'."
            )
        return keep

    def references(self, splits: str) -> dict[int, list[str]]:
        """``{image id: [raw captions]}`` of ``splits``, images in first-appearance order."""
        refs: dict[int, list[str]] = {}
        for row in self.select(splits).tolist():
            refs.setdefault(int(self.image_ids[row]), []).append(self.texts[row])
        return refs


def normalize_caption(text: str) -> str:
    """ViECap's caption cleaning: strip, lower-case an all-caps caption, capitalise the first
    letter, and end with "." when the caption has no final punctuation."""
    text = text.strip()
    if not text:
        return text
    if text.isupper():
        text = text.lower()
    text = text[0].upper() + text[1:]
    return text if text[-1] in PUNCTUATION else text + "."


def read_coco_captions(path: str | os.PathLike) -> CocoCaptions:
    """Read ``dataset_coco.json`` (Karpathy) or one COCO ``captions_*.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"captions file {path} does not exist; give Karpathy's dataset_coco.json "
            f"(or a COCO captions_*.json) as data.captions."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"cannot parse {path}: {e}") from None
    rows: list[tuple[int, int, str, str]] = []
    files: dict[int, str] = {}
    try:
        if isinstance(data, dict) and "annotations" in data:
            split = path.stem.split("_")[-1]  # captions_val2014.json -> val2014
            for img in data.get("images", []):
                files[int(img["id"])] = str(img["file_name"])
            for ann in data["annotations"]:
                rows.append((int(ann["id"]), int(ann["image_id"]), str(ann["caption"]), split))
        elif isinstance(data, dict) and isinstance(data.get("images"), list):
            for img in data["images"]:
                cocoid = int(img["cocoid"])
                name = str(img.get("filename", ""))
                files[cocoid] = f"{img['filepath']}/{name}" if img.get("filepath") else name
                for sent in img["sentences"]:
                    rows.append((int(sent["sentid"]), cocoid, str(sent["raw"]), str(img["split"])))
        else:
            raise KeyError("images")
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"{path} is not Karpathy's dataset_coco.json (images[cocoid, split, sentences[sentid, "
            f"raw]]) nor a COCO captions_*.json (annotations[id, image_id, caption]): bad or "
            f"missing {e}."
        ) from None
    if not rows:
        raise DataError(f"{path} holds no captions.")
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{path}: caption ids repeat; each caption id must be unique.")
    return CocoCaptions(
        path=path,
        caption_ids=ids,
        image_ids=np.array([r[1] for r in rows], dtype=np.int64),
        splits=np.array([r[3] for r in rows], dtype=object),
        texts=[r[2] for r in rows],
        files=files,
    )
