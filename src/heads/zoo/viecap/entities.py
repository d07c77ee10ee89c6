"""Entities of a caption: its nouns that name objects, for ViECap's hard prompt.

ViECap tags each caption with NLTK (``word_tokenize`` + ``pos_tag``), keeps the NN/NNS words,
lower-cased and lemmatized (WordNet), de-duplicated; at most 10 of them go on, and of those the
ones in the object vocabulary (single-word Visual Genome objects, not stop words, longer than one
letter) are kept, people words becoming "person". Two extractors give the noun list:

- ``nltk``: the original tagger path, used when NLTK and its tagger, tokenizer and WordNet data
  are installed.
- ``vocabulary``: the fallback when no tagger is installed. Every word whose noun lemma
  (lemminflect, a dictionary of English inflections) or the word itself is in the object
  vocabulary (or a people word) counts as a noun. Without a part-of-speech tag it also takes
  words used as verbs or adjectives ("a man *surfing*", "a *red* bus") when the vocabulary holds
  them; docs/heads/viecap.md discusses the difference.

Entities are computed once per caption and cached in a sidecar file (``EntityTable``), never per
training step; only the random masking (p = 0.4) happens per step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from ...errors import DataError

MAX_ENTITIES = 10
PERSON = "person"
PEOPLE_WORDS = frozenset(
    (
        "people",
        "person",
        "man",
        "men",
        "woman",
        "women",
        "adult",
        "boy",
        "girl",
        "kid",
        "children",
        "child",
        "baby",
        "guy",
        "player",
        "male",
        "female",
        "worker",
    )
)
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


@cache
def stopwords() -> frozenset[str]:
    """ViECap's stop list (English stop words, punctuation and photo words)."""
    lines = Path(__file__).with_name("stopwords.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(ln.strip() for ln in lines if ln.strip() and not ln.startswith("# "))


def load_object_vocabulary(path: str | os.PathLike) -> frozenset[str]:
    """The single-word objects of a vocabulary file (one per line, or a JSON list of strings),
    lower-cased, as ViECap filters Visual Genome's objects for training."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"object vocabulary {path} does not exist; give a text file with one object per "
            f"line (e.g. Visual Genome's objects) or a JSON list of strings as data.objects."
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"cannot parse {path}: {e}") from None
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise DataError(f"{path}: expected a JSON list of strings.")
    else:
        items = text.splitlines()
    words = frozenset(w.lower().strip() for w in items if len(w.split()) == 1)
    if not words:
        raise DataError(f"object vocabulary {path} holds no single-word objects.")
    return words


def nltk_ready() -> bool:
    """True when NLTK and the data ViECap's tagging needs are installed (no download)."""
    try:
        import nltk
        from nltk.stem import WordNetLemmatizer

        nltk.pos_tag(nltk.word_tokenize("A dog runs."))
        WordNetLemmatizer().lemmatize("dogs")
    except (ImportError, LookupError, OSError):
        return False
    return True


def nltk_nouns(caption: str) -> list[str]:
    """NN/NNS words of a caption, lower-cased and lemmatized, first occurrence first."""
    import nltk
    from nltk.stem import WordNetLemmatizer

    lemmatize = WordNetLemmatizer().lemmatize
    tagged = nltk.pos_tag(nltk.word_tokenize(caption))
    return _unique(lemmatize(w.lower().strip()) for w, tag in tagged if tag in ("NN", "NNS"))


@cache
def _noun_lemmas(word: str) -> tuple[str, ...]:
    from lemminflect import getLemma

    return (*getLemma(word, upos="NOUN", lemmatize_oov=True), word)


def vocabulary_nouns(caption: str, objects: frozenset[str]) -> list[str]:
    """Words of a caption that name an object (or a person), as their noun lemma: the fallback
    noun finder when no tagger is installed."""
    out = []
    for word in _WORD.findall(caption.lower()):
        for form in _noun_lemmas(word):  # the lemmas first, the surface form last
            if form in objects or form in PEOPLE_WORDS:
                out.append(form)
                break
    return _unique(out)


def filter_entities(
    nouns: Sequence[str], objects: frozenset[str], max_entities: int = MAX_ENTITIES
) -> list[str]:
    """ViECap's filter over the first ``max_entities`` nouns: people words become "person"
    (kept even if repeated, so masking treats each mention separately); others are kept when
    longer than one letter, not stop words, and in the object vocabulary."""
    stop, out = stopwords(), []
    for noun in nouns[:max_entities]:
        if noun in PEOPLE_WORDS:
            out.append(PERSON)
        elif len(noun) > 1 and noun not in stop and noun in objects:
            out.append(noun)
    return out


def mask_entities(entities: Sequence[str], p: float, rng: np.random.Generator) -> list[str]:
    """Drop each mention with probability ``p``, then de-duplicate (first mention first)."""
    if p <= 0:
        return _unique(entities)
    keep = rng.random(len(entities)) >= p
    return _unique(e for e, k in zip(entities, keep, strict=True) if k)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


@dataclass
class EntityTable:
    """Every caption's entities (after the vocabulary filter), in caption order."""

    method: str  # "nltk" or "vocabulary"
    entities: list[list[str]]

    @classmethod
    def build(
        cls,
        texts: Sequence[str],
        objects: frozenset[str],
        method: str = "auto",
        max_entities: int = MAX_ENTITIES,
        cache_dir: Path | None = None,
        log=print,
    ) -> EntityTable:
        """Extract (or read from ``cache_dir``) the entities of ``texts``. ``method``: ``auto``
        (NLTK when installed, else the vocabulary fallback), ``nltk`` or ``vocabulary``."""
        method = resolve_method(method)
        digest = hashlib.sha256()
        for part in (method, str(max_entities), "\n".join(sorted(objects)), "\x00".join(texts)):
            digest.update(part.encode("utf-8"))
            digest.update(b"\x01")
        path = cache_dir / f"viecap-entities-{digest.hexdigest()[:24]}.json" if cache_dir else None
        if path is not None and path.is_file():
            cached = json.loads(path.read_text(encoding="utf-8"))
            return cls(cached["method"], cached["entities"])
        log(f"entities: tagging {len(texts)} captions ({method}), cached once per caption set")
        if method == "nltk":
            nouns = (nltk_nouns(t) for t in texts)
        else:
            nouns = (vocabulary_nouns(t, objects) for t in texts)
        table = cls(method, [filter_entities(n, objects, max_entities) for n in nouns])
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps({"method": method, "entities": table.entities}))
                tmp.replace(path)
            except OSError as e:  # a read-only store: use the table, recompute next time
                log(f"entities: cannot cache them in {path.parent} ({e}); continuing")
        return table


def resolve_method(method: str) -> str:
    if method == "auto":
        return "nltk" if nltk_ready() else "vocabulary"
    if method == "nltk" and not nltk_ready():
        raise DataError(
            "data.entity_tagger = 'nltk' but NLTK or its data is not installed: pip install nltk, "
            "then nltk.download() punkt_tab, averaged_perceptron_tagger_eng and wordnet; or use "
            "'auto' / 'vocabulary'."
        )
    if method not in ("nltk", "vocabulary"):
        raise DataError(f"data.entity_tagger = {method!r}; use 'auto', 'nltk' or 'vocabulary'.")
    return method
