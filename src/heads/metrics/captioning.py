"""COCO caption metrics through pycocoevalcap: BLEU@1–4, METEOR, ROUGE-L, CIDEr, SPICE.

The captions are tokenized as the COCO evaluation server does (Stanford PTBTokenizer, lower case,
punctuation removed) when Java is installed; without Java a Python tokenizer that follows the same
rules stands in, and the report says so (BLEU/CIDEr can then differ in the last digit). METEOR
needs Java; SPICE needs Java and the Stanford CoreNLP 3.6.0 jars that pycocoevalcap downloads on
first use. A metric that cannot run is reported as unavailable with the reason, never as 0.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

PTB_PUNCTUATION = {"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",",
                   ":", "-", "--", "...", ";"}  # fmt: skip
_TOKEN = re.compile(r"\.\.\.|--|n't|'[a-z]+|[a-z0-9]+(?:[-/.][a-z0-9]+)*|[^\sa-z0-9]")


@dataclass
class CaptionScores:
    scores: dict[str, float]  # BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE (those that ran)
    per_image: dict[Any, dict[str, float]]
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> why
    tokenizer: str = "ptb"


@cache
def java_available() -> bool:
    java = shutil.which("java")
    if java is None:
        return False
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _package_dir() -> Path:
    import pycocoevalcap

    return Path(next(iter(pycocoevalcap.__path__)))


def spice_ready() -> str | None:
    """None when SPICE can run, else why not."""
    if not java_available():
        return "needs Java (no `java` on PATH)"
    lib = _package_dir() / "spice" / "lib"
    if not (lib / "stanford-corenlp-3.6.0.jar").is_file():
        return (
            f"needs the Stanford CoreNLP 3.6.0 jars in {lib} (pycocoevalcap downloads them on "
            f"first use with network access: python -c 'from pycocoevalcap.spice.spice import "
            f"Spice; Spice()')"
        )
    return None


def simple_tokenize(text: str) -> str:
    """PTB-like tokens, lower case, the COCO evaluation's punctuation removed (no Java)."""
    tokens = _TOKEN.findall(text.lower().replace("\n", " "))
    return " ".join(t for t in tokens if t not in PTB_PUNCTUATION)


def _tokenize(captions: dict[Any, list[str]], ptb: bool) -> dict[Any, list[str]]:
    if not ptb:
        return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with _quiet():
        return PTBTokenizer().tokenize(
            {k: [{"caption": c} for c in v] for k, v in captions.items()}
        )


@contextlib.contextmanager
def _quiet():
    """Silence stdout (Python prints) and fd 2 (the Java tools' progress lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(io.StringIO()):
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def caption_scores(
    references: dict[Any, list[str]],
    predictions: dict[Any, str],
    meteor: bool = True,
    spice: bool = True,
) -> CaptionScores:
    """Corpus scores of ``predictions`` (one caption per image) against ``references``.
    ``meteor``/``spice`` = False skips those (METEOR's Java start takes ~30 s)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = list(predictions)
    missing = [i for i in ids if i not in references]
    if missing:
        raise ValueError(f"{len(missing)} predicted images have no references: {missing[:5]}")
    java = java_available()
    gts = _tokenize({i: references[i] for i in ids}, java)
    res = _tokenize({i: [predictions[i]] for i in ids}, java)
    out = CaptionScores({}, {i: {} for i in ids}, tokenizer="ptb" if java else "python")
    scorers: list[tuple[Any, list[str]]] = [(Bleu(4), [f"BLEU-{n}" for n in range(1, 5)])]
    if java and meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorers.append((Meteor(), ["METEOR"]))
    else:
        out.unavailable["METEOR"] = "not asked for" if java else "needs Java (no `java` on PATH)"
    scorers += [(Rouge(), ["ROUGE-L"]), (Cider(), ["CIDEr"])]
    why_not = spice_ready() if spice else "not asked for"
    if why_not is None:
        from pycocoevalcap.spice.spice import Spice

        scorers.append((Spice(), ["SPICE"]))
    else:
        out.unavailable["SPICE"] = why_not
    for scorer, names in scorers:
        with _quiet():  # the scorers print their internals; Java writes to stderr
            score, per = scorer.compute_score(gts, res)
        scores, per_lists = (score, per) if len(names) > 1 else ([score], [per])
        for name, value, values in zip(names, scores, per_lists, strict=True):
            out.scores[name] = float(value)
            for i, v in zip(ids, values, strict=True):
                out.per_image[i][name] = float(v["All"]["f"]) if isinstance(v, dict) else float(v)
    return out
