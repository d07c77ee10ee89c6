"""Labelled-synthetic COCO-like captions in Karpathy's layout, for the demo and the tests.

Each image shows a subject (an animal or a person) and an object, drawn from a small set; its five
captions come from a small grammar that names both ("Two dogs sitting next to a bus."). The
entities of a caption are therefore known (the planted signal): a captioner that reads a caption's
text feature must say the same subject and object again. Images are flat colour fields (one
colour per subject) named like COCO's files, for the inference path; with random-weight CLIP
towers their features carry nothing a text-trained captioner can read.

Files: ``dataset_coco.json`` (images[cocoid, filepath, filename, split, sentences[sentid, raw]]),
``objects.txt`` (the object vocabulary), ``coco_categories.json`` (the detection vocabulary),
``val2014/COCO_val2014_<id>.jpg`` (the test images only), and ``tokenizer.json`` (a byte-level
BPE trained on the captions: the offline stand-in for GPT-2's tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SUBJECTS = {
    "dog": "dogs",
    "cat": "cats",
    "horse": "horses",
    "bird": "birds",
    "man": "men",
    "woman": "women",
}
OBJECTS = ["bus", "car", "boat", "tree", "bench", "kite", "umbrella", "truck"]
TEMPLATES = [
    "A {s} next to a {o}.",
    "A {s} near the {o}.",
    "Two {sp} and a {o}.",
    "A {o} with a {s}.",
    "The {s} by a {o}.",
]
DISTRACTORS = ["table", "pizza", "clock", "grass", "park", "sky"]


def entities_of(subject: str, obj: str) -> set[str]:
    """The entities the grammar plants in every caption of an image."""
    return {"person" if subject in ("man", "woman") else subject, obj}


def write_dataset(
    workdir: Path, n_train: int = 400, n_val: int = 20, n_test: int = 40, seed: int = 0
) -> dict[str, Path]:
    """Write the captions, vocabularies, images and tokenizer; returns their paths."""
    rng = np.random.default_rng(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "val2014").mkdir(exist_ok=True)
    subjects = list(SUBJECTS)
    images, sentid = [], 0
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for k, split in enumerate(splits):
        cocoid = 1000 + k
        s, o = subjects[rng.integers(len(subjects))], OBJECTS[rng.integers(len(OBJECTS))]
        sentences = []
        for template in TEMPLATES:
            sentences.append({"sentid": sentid, "raw": template.format(s=s, sp=SUBJECTS[s], o=o)})
            sentid += 1
        filename = f"COCO_val2014_{cocoid:012d}.jpg"
        images.append(
            {
                "cocoid": cocoid,
                "filepath": "val2014",
                "filename": filename,
                "split": split,
                "sentences": sentences,
                "subject": s,
                "object": o,
            }
        )
        if split == "test":  # only the evaluated images need files (and features)
            _write_image(workdir / "val2014" / filename, subjects.index(s), OBJECTS.index(o))
    captions = workdir / "dataset_coco.json"
    captions.write_text(json.dumps({"images": images, "dataset": "coco"}))
    objects = workdir / "objects.txt"
    objects.write_text("\n".join(sorted({*subjects, *OBJECTS, *DISTRACTORS})) + "\n")
    categories = workdir / "coco_categories.json"
    categories.write_text(json.dumps(["person", *SUBJECTS.keys() - {"man", "woman"}, *OBJECTS]))
    texts = [s["raw"] for img in images for s in img["sentences"]]
    tokenizer = write_tokenizer(workdir / "tokenizer.json", texts)
    return {
        "captions": captions,
        "objects": objects,
        "categories": categories,
        "images": workdir / "val2014",
        "tokenizer": tokenizer,
    }


def _write_image(path: Path, subject: int, obj: int) -> None:
    from PIL import Image

    colour = (40 * subject % 256, 30 * obj % 256, 128)
    Image.new("RGB", (32, 32), colour).save(path, quality=95)


def write_tokenizer(path: Path, texts: list[str], vocab_size: int = 300) -> Path:
    """A byte-level BPE (GPT-2's kind of tokenizer) trained on ``texts`` and the hard prompts;
    ``<|endoftext|>`` is id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    prompts = ["There are something in image.", "There are person, dog in image."]
    tok.train_from_iterator([*texts, *prompts] * 2, trainer)
    tok.save(str(path))
    return path
