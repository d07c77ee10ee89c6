"""Word and character error rates of decoded text, corpus level, with jiwer.

jiwer (over RapidFuzz's C++ Levenshtein) counts substitutions, deletions and insertions over a
whole corpus in one call, is the library speech papers report with, and is orders of magnitude
faster than a Python edit distance over words and characters. Sentences are normalised first the
way nejm-brain-to-text scores its WER: letters, hyphens, apostrophes and spaces only, lower case,
single spaces.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def normalize_sentence(sentence: str) -> str:
    """nejm-brain-to-text's ``remove_punctuation``: keep ``[a-zA-Z- ']``, lower-case, drop
    ``"- "``, ``"--"`` and the space before an apostrophe, collapse spaces."""
    s = re.sub(r"[^a-zA-Z\- \']", "", sentence)
    s = s.replace("- ", " ").replace("--", "").replace(" '", "'").lower().strip()
    return " ".join(w for w in s.split() if w)


def error_counts(refs: Sequence[str], hyps: Sequence[str], unit: str = "word") -> tuple[int, int]:
    """``(edits, reference length)`` summed over the corpus, in words or characters. Pairs with
    an empty reference count every hypothesis unit as an insertion (jiwer refuses or special-cases
    them, depending on its version)."""
    import jiwer

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    split = str.split if unit == "word" else list
    edits = total = 0
    kept_r, kept_h = [], []
    for r, h in zip(refs, hyps, strict=True):
        if split(r):
            kept_r.append(r)
            kept_h.append(h)
        else:
            edits += len(split(h))
    if kept_r:
        process = jiwer.process_words if unit == "word" else jiwer.process_characters
        out = process(kept_r, kept_h)
        edits += out.substitutions + out.deletions + out.insertions
        total += out.substitutions + out.deletions + out.hits
    return edits, total


def text_error_rates(
    refs: Sequence[str], hyps: Sequence[str], normalize: bool = True
) -> dict[str, float]:
    """``{"wer", "cer"}``: corpus edits / corpus reference length (``edits > 0`` when there is no
    reference at all), after :func:`normalize_sentence` unless ``normalize=False``."""
    if normalize:
        refs = [normalize_sentence(r) for r in refs]
        hyps = [normalize_sentence(h) for h in hyps]
    out = {}
    for name, unit in (("wer", "word"), ("cer", "char")):
        edits, total = error_counts(refs, hyps, unit)
        out[name] = edits / total if total else float(edits > 0)
    return out
