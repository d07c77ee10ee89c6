"""How often the vocabulary fallback finds other entities than NLTK's tagger (ViECap's way).

Reads the training captions of a Karpathy file and an object vocabulary, extracts every caption's
entities both ways (``heads.zoo.viecap.entities``) and prints the share of captions whose entity
sets differ, the mean sizes, and the most frequent words each way adds. Needs NLTK with
punkt_tab, averaged_perceptron_tagger_eng and wordnet installed.

    python bench/viecap_entities.py dataset_coco.json vg_objects.json [--splits train+restval]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from heads.data.coco_karpathy import normalize_caption, read_coco_captions
from heads.zoo.viecap import entities as ent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("captions", type=Path)
    ap.add_argument("objects", type=Path)
    ap.add_argument("--splits", default="train+restval")
    ap.add_argument("--limit", type=int, default=0, help="first N captions only")
    args = ap.parse_args()
    if not ent.nltk_ready():
        raise SystemExit("NLTK or its tagger data is not installed; nothing to compare.")
    caps = read_coco_captions(args.captions)
    rows = caps.select(args.splits)[: args.limit or None]
    texts = [normalize_caption(caps.texts[r]) for r in rows.tolist()]
    objects = ent.load_object_vocabulary(args.objects)
    out = {"captions": len(texts)}
    found = {}
    for method in ("nltk", "vocabulary"):
        t = time.perf_counter()
        table = ent.EntityTable.build(texts, objects, method)
        out[f"{method}_seconds"] = time.perf_counter() - t
        found[method] = [set(e) for e in table.entities]
    pairs = list(zip(found["nltk"], found["vocabulary"], strict=True))
    out["differ"] = sum(a != b for a, b in pairs) / len(pairs)
    out["mean_entities"] = {m: sum(map(len, f)) / len(f) for m, f in found.items()}
    out["only_fallback"] = Counter(w for a, b in pairs for w in b - a).most_common(15)
    out["only_tagger"] = Counter(w for a, b in pairs for w in a - b).most_common(15)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
