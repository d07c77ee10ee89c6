"""Captioning images and scoring the captions (``heads eval viecap``, ``heads caption``).

Image features come from a ``vitb32-image`` `embeds` entry; its ids (paths relative to the image
folder, as featstore's ``image-folder`` source gives them) are matched to the Karpathy file's
``filepath/filename`` or ``filename`` of each COCO image. Entities are detected against a
``vitb32-vocab`` entry (its ids are the entity names).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...errors import DataError
from ...report import Report
from .decoding import Detection, caption_features, detect_entities

if TYPE_CHECKING:
    from .head import ViECap

METRIC_ORDER = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")


def load_vocabulary(head: ViECap) -> tuple[list[str], torch.Tensor]:
    """Entity names and their embeddings from ``eval.vocab_entry``."""
    from .head import open_feature_entry

    entry = open_feature_entry(head.cfg["eval"]["vocab_entry"], head.store, "eval.vocab_entry")
    if len(entry) == 0:
        raise DataError(
            f"eval.vocab_entry ({entry.key}) holds no entities: extract vitb32-vocab over a "
            f"vocabulary with at least one name, or caption without entities "
            f"(eval.use_entities = false, `heads caption --no-entities`)."
        )
    names = [str(x) for x in entry.ids.tolist()]
    if entry.row_shape[0] != head.text.row_shape[0]:
        raise DataError(
            f"eval.vocab_entry has {entry.row_shape[0]}-d embeddings, the text features "
            f"{head.text.row_shape[0]}-d; use the vocab teacher of the same CLIP model."
        )
    return names, torch.from_numpy(entry.gather(np.arange(len(entry))).astype(np.float32))


@torch.no_grad()
def caption_vectors(head: ViECap, model: nn.Module, features: np.ndarray) -> list[dict[str, Any]]:
    """Caption CLIP image features ``[N, d]``: ``[{caption, entities, probs}]``."""
    e = head.cfg["eval"]
    if features.ndim != 2 or features.shape[1] != head.text.row_shape[0]:
        raise DataError(
            f"image features have shape {features.shape[1:]}, the captioner was trained on "
            f"{head.text.row_shape[0]}-d text features; use the image tower of the same CLIP."
        )
    device = next(model.parameters()).device
    x = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(device)
    detections: list[Detection] | None = None
    if e["use_entities"] and model.prompt_order != "soft_only":
        names, vocab = load_vocabulary(head)
        detections = detect_entities(x, vocab, names, e["top_k"], e["threshold"], e["temperature"])
    captions = caption_features(
        model, head.tokenizer, x, detections, e["beam_width"], e["max_length"], e["batch_size"]
    )
    return [
        {
            "caption": c,
            "entities": detections[i].entities if detections else [],
            "probs": [round(p, 4) for p in detections[i].probs] if detections else [],
        }
        for i, c in enumerate(captions)
    ]


def match_images(entry, files: dict[int, str], image_ids: list[int]) -> np.ndarray:
    """Entry rows of COCO images: ids equal to the image id, its ``filepath/filename``, or a
    path ending in its file name."""
    ids = entry.ids.tolist()
    if entry.ids.dtype.kind in "iu":
        index = {int(k): i for i, k in enumerate(ids)}
        keys = list(image_ids)
    else:
        index = {}
        for i, k in enumerate(ids):
            index.setdefault(str(k), i)
            index.setdefault(PurePosixPath(str(k)).name, i)
        keys = [files.get(i, "") for i in image_ids]
        keys = [k if k in index else PurePosixPath(k).name for k in keys]
    rows = np.array([index.get(k, -1) for k in keys], dtype=np.int64)
    if (rows < 0).any():
        missing = [image_ids[j] for j in np.flatnonzero(rows < 0)[:5]]
        raise DataError(
            f"{int((rows < 0).sum())} of {len(rows)} images have no features in "
            f"eval.image_entry ({entry.key}); first COCO ids: {missing} "
            f"(files {[files.get(m, '?') for m in missing[:3]]}). Extract vitb32-image over the "
            f"folder that holds them: featstore extract -t vitb32-image -s val2014/"
        )
    return rows


def evaluate_split(head: ViECap, model: nn.Module, run_dir: Path) -> Report:
    """Caption every image of ``eval.split``, score against its references, write the results
    (COCO results format), per-image JSON, metrics and a grid of captioned images."""
    from ...metrics.captioning import caption_scores
    from .head import open_feature_entry

    e = head.cfg["eval"]
    references = head.captions.references(e["split"])
    image_ids = list(references)[: e["max_images"] or None]
    entry = open_feature_entry(e["image_entry"], head.store, "eval.image_entry")
    rows = match_images(entry, head.captions.files, image_ids)
    results = caption_vectors(head, model, entry.gather(rows))
    predictions = {i: r["caption"] for i, r in zip(image_ids, results, strict=True)}
    refs = {i: references[i] for i in image_ids}
    scored = caption_scores(refs, predictions, meteor=e["meteor"], spice=e["spice"])
    tag = e["split"].replace("+", "_")
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    files = [
        _write_json(
            out / f"{tag}_results.json",
            [{"image_id": i, "caption": predictions[i]} for i in image_ids],
        )
    ]
    per_image = [
        {
            "image_id": i,
            "file": head.captions.files.get(i, ""),
            **r,
            "references": references[i],
            "scores": scored.per_image[i],
        }
        for i, r in zip(image_ids, results, strict=True)
    ]
    files.append(_write_json(out / f"{tag}_captions.json", per_image))
    metrics = {
        "split": e["split"],
        "n_images": len(image_ids),
        "decoding": "greedy" if e["beam_width"] == 1 else f"beam {e['beam_width']}",
        "entities": e["use_entities"],
        "threshold": e["threshold"],
        "tokenizer": scored.tokenizer,
        **{k: scored.scores[k] for k in METRIC_ORDER if k in scored.scores},
        "unavailable": scored.unavailable,
    }
    lines = [f"{e['split']}: {len(image_ids)} images, {metrics['decoding']}"]
    lines += [f"{k}: {100 * scored.scores[k]:.1f}" for k in METRIC_ORDER if k in scored.scores]
    lines += [f"{k}: unavailable ({why})" for k, why in scored.unavailable.items()]
    if scored.tokenizer != "ptb":
        lines.append("tokenizer: Python stand-in for the PTB tokenizer (no Java)")
    report = Report("viecap", metrics, lines, files)
    report.save(run_dir / "eval.json")
    grid = caption_grid(per_image[: e["grid_images"]], _image_folder(entry), run_dir / "plots")
    if grid is not None:
        report.files.append(grid)
    return report


def _write_json(path: Path, data: Any) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return path


def _image_folder(entry) -> Path | None:
    source = entry.manifest.get("source", {})
    path = Path(source.get("path", ""))
    return path if source.get("kind") == "image-folder" and path.is_dir() else None


def caption_grid(
    items: list[dict[str, Any]], folder: Path | None, out_dir: Path, name: str = "captions.png"
) -> Path | None:
    """``out_dir/name``: each item's image (when ``folder`` holds its ``file``) above its caption
    and entities; without the image, the caption and entities alone."""
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    cols = min(4, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.6 * rows), squeeze=False)
    for ax, item in zip(axes.flat, items, strict=False):
        path = _find_image(folder, item.get("file", "")) if folder else None
        if path is not None:
            ax.imshow(Image.open(path).convert("RGB"))
        ents = ", ".join(
            f"{n} {p:.2f}" for n, p in zip(item["entities"], item["probs"], strict=True)
        )
        ax.set_title(_wrap(item["caption"]) + f"\n[{ents or 'no entities'}]", fontsize=8)
        ax.set_axis_off()
    for ax in list(axes.flat)[len(items) :]:
        ax.set_axis_off()
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / name
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _find_image(folder: Path, file: str) -> Path | None:
    for candidate in (folder / file, folder / PurePosixPath(file).name):
        if file and candidate.is_file():
            return candidate
    return None


def _wrap(text: str, width: int = 48) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or "(empty)"


def image_teacher_for(text_manifest: dict[str, Any]) -> tuple[str, str]:
    """The image tower that matches the run's text features: (teacher, weights)."""
    teacher = str(text_manifest.get("teacher", "vitb32-text"))
    image = teacher.replace("-text", "-image")
    weights = text_manifest.get("key_inputs", {}).get("weights", {}).get("kind", "pretrained")
    return image, "random" if weights == "random" else "pretrained"


def caption_source(
    head: ViECap,
    model: nn.Module,
    images: Path | None,
    entry_key: str | None,
    image_weights: str | None = None,
    log=print,
) -> tuple[list[dict[str, Any]], str, Path | None]:
    """Caption a folder of images (features extracted once into the store, then cached) or the
    rows of an image-feature entry; returns the results, a name for them and the folder of the
    images (``None`` when the entry did not come from an image folder that is still there)."""
    from featstore.extract import extract
    from featstore.sources import open_source
    from featstore.teachers import create_teacher

    from .head import open_feature_entry

    if images is not None:
        if not Path(images).is_dir():
            raise DataError(f"--images {images} is not a folder of images.")
        teacher, weights = image_teacher_for(head.text.manifest)
        result = extract(
            create_teacher(teacher, weights=image_weights or weights),
            open_source(images, kind="image-folder"),
            head.store,
            outputs=["embeds"],
            progress=False,
            log=log,
        )
        entry_key = result.entries[0].key
    entry = open_feature_entry(entry_key, head.store, "--entry")
    results = caption_vectors(head, model, entry.gather(np.arange(len(entry))))
    ids = entry.ids.tolist()
    named = [
        {"id": i if isinstance(i, int) else str(i), **r} for i, r in zip(ids, results, strict=True)
    ]
    name = Path(images).name if images is not None else entry.key[:12]
    return named, name, _image_folder(entry)
