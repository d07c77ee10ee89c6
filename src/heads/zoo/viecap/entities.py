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

Entities are computed once per caption and cached by caption id in a sidecar file
(``EntityTable``), never per training step; only the random masking (p = 0.4) happens per step.
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


CACHE_FORMAT = 2
# Bump when a change to the extraction or filter code changes what a caption yields: the rules'
# data (stop list, people words), the object vocabulary, the method, the limit and the extractor
# package's version are hashed into the cache's identity already.
RULES_VERSION = 1


@dataclass
class EntityTable:
    """Every caption's entities (after the vocabulary filter), in the order of the texts given."""

    method: str  # "nltk" or "vocabulary"
    entities: list[list[str]]
    tagged: int = 0  # how many captions were tagged by this build (the others came from the cache)

    @classmethod
    def build(
        cls,
        texts: Sequence[str],
        objects: frozenset[str],
        method: str = "auto",
        max_entities: int = MAX_ENTITIES,
        cache_dir: Path | None = None,
        log=print,
        ids: Sequence[int | str] | np.ndarray | None = None,
    ) -> EntityTable:
        """Extract the entities of ``texts``. ``method``: ``auto`` (NLTK when installed, else the
        vocabulary fallback), ``nltk`` or ``vocabulary``.

        With ``cache_dir`` the entities are cached by caption id (``ids``, one per text) in one
        sidecar per (method, limit, object vocabulary, rules): a later build with other captions
        of the same file tags only the ids it has not seen (or whose text changed) and adds them
        to the sidecar."""
        method = resolve_method(method)
        path = None
        if cache_dir is not None:
            if ids is None:
                raise ValueError("EntityTable.build: the cache is keyed by caption id; pass ids.")
            ids = np.asarray(ids).tolist()
            if len(ids) != len(texts):
                raise ValueError(f"EntityTable.build: {len(ids)} ids for {len(texts)} texts.")
            identity = cache_identity(method, max_entities, objects)
            path = Path(cache_dir) / f"viecap-entities-{identity[:24]}.json"
        cached = _read_cache(path, method, log) if path is not None else {}
        hashes = [_text_hash(t) for t in texts] if path is not None else []
        entities: list[list[str] | None] = [None] * len(texts)
        todo = []
        for i in range(len(texts)):
            hit = cached.get(ids[i]) if path is not None else None
            if hit is not None and hit[0] == hashes[i]:
                entities[i] = hit[1]
            else:
                todo.append(i)
        if todo:
            log(
                f"entities: tagging {len(todo)} of {len(texts)} captions ({method})"
                + (f", cached by caption id in {path.name}" if path is not None else "")
            )
        for i in todo:
            nouns = (
                nltk_nouns(texts[i]) if method == "nltk" else vocabulary_nouns(texts[i], objects)
            )
            entities[i] = filter_entities(nouns, objects, max_entities)
        if path is not None and todo:
            fresh = _read_cache(path, method, log=lambda _: None)  # another process may have added
            merged = {**cached, **fresh, **{ids[i]: (hashes[i], entities[i]) for i in todo}}
            _write_cache(path, method, merged, log)
        return cls(method, entities, len(todo))


def cache_identity(method: str, max_entities: int, objects: frozenset[str]) -> str:
    """The hash naming an entity sidecar: everything that decides a caption's entities except
    the caption itself."""
    digest = hashlib.sha256()
    parts = (
        f"viecap-entities format {CACHE_FORMAT} rules {RULES_VERSION}",
        method,
        _extractor_version(method),
        str(max_entities),
        "\n".join(sorted(objects)),
        "\n".join(sorted(PEOPLE_WORDS)),
        "\n".join(sorted(stopwords())),
    )
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x01")
    return digest.hexdigest()


def _extractor_version(method: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nltk" if method == "nltk" else "lemminflect")
    except PackageNotFoundError:
        return "unknown"


def _text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _read_cache(path: Path, method: str, log) -> dict[int | str, tuple[str, list[str]]]:
    """Caption id -> (text hash, entities) of a sidecar; empty when there is none or it cannot
    be read (it is then rewritten)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != CACHE_FORMAT or data.get("method") != method:
            raise ValueError(f"format {data.get('format')}, method {data.get('method')}")
        rows = zip(data["ids"], data["text_hashes"], data["entities"], strict=True)
        return {k: (h, e) for k, h, e in rows}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log(f"entities: ignoring the unreadable cache {path} ({e}); tagging again")
        return {}


def _write_cache(path: Path, method: str, table: dict, log) -> None:
    data = {
        "format": CACHE_FORMAT,
        "method": method,
        "ids": list(table),
        "text_hashes": [h for h, _ in table.values()],
        "entities": [e for _, e in table.values()],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(path)  # atomic: readers see the old or the new sidecar, never a part
    except OSError as e:  # a read-only store: use the entities, tag them again next time
        log(f"entities: cannot cache them in {path.parent} ({e}); continuing")


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
