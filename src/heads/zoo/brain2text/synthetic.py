"""A small t15-like dataset in the Dryad layout — labelled synthetic, for the demo and tests.

Sentences are 3-5 words from a small word list with hand-written ARPAbet spellings; the phoneme
sequence puts ``SIL`` (40) after every word, as t15's labels do. Each phoneme has a fixed random
pattern over the 512 channels (a random low-rank encoding of a per-phoneme code) that lasts a
random 6-9 bins (time jitter) after 8-15 bins of rest; each session scales and shifts the
channels by its own gains and offsets, and every bin gets Gaussian noise. A decoder must undo the
per-day gains (the day layers) and read the phonemes out of noisy, jittered patterns: phoneme
error rate far below chance (~100%) shows it learned.

Files: ``<root>/<session>/data_{train,val,test}.hdf5`` with groups ``trial_XXXX`` holding
``input_features [T, 512]`` float32, ``seq_class_ids [500]`` and ``transcription [500]`` int32
(zero-padded), attributes ``n_time_steps``, ``seq_len``, ``sentence_label``, ``session``,
``block_num``, ``trial_num``. Test files hold features and metadata only, as on Dryad.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ...data.t15 import N_CLASSES, PHONEMES

SIL = N_CLASSES - 1
WORDS = {
    "i": "AY", "you": "Y UW", "we": "W IY", "go": "G OW", "see": "S IY", "the": "DH AH",
    "cat": "K AE T", "dog": "D AO G", "big": "B IH G", "red": "R EH D", "blue": "B L UW",
    "house": "HH AW S", "water": "W AO T ER", "good": "G UH D", "time": "T AY M",
    "home": "HH OW M", "want": "W AA N T", "more": "M AO R", "now": "N AW", "is": "IH Z",
    "very": "V EH R IY", "happy": "HH AE P IY", "this": "DH IH S", "day": "D EY",
    "nice": "N AY S", "feel": "F IY L", "not": "N AA T", "going": "G OW IH NG",
    "chair": "CH EH R", "thing": "TH IH NG", "just": "JH AH S T", "boy": "B OY",
}  # fmt: skip
SESSIONS = ("t15.2023.08.11", "t15.2023.08.13", "t15.2023.08.18", "t15.2023.08.20")
PAD = 500


def phonemes_of(sentence: str) -> list[int]:
    """The class ids of a sentence of known words, ``SIL`` after each word."""
    index = {p: i for i, p in enumerate(PHONEMES)}
    out: list[int] = []
    for word in sentence.lower().strip(".").split():
        out += [index[p] for p in WORDS[word].split()] + [SIL]
    return out


def _padded(values: list[int]) -> np.ndarray:
    out = np.zeros(PAD, dtype=np.int32)
    out[: len(values)] = values
    return out


def write_dataset(
    root: Path,
    sessions: tuple[str, ...] = SESSIONS,
    trials: dict[str, int] | None = None,
    n_channels: int = 512,
    noise: float = 0.6,
    seed: int = 0,
) -> Path:
    """Write ``root/<session>/data_<split>.hdf5`` for every session; returns ``root``."""
    trials = trials or {"train": 64, "val": 12, "test": 8}
    rng = np.random.default_rng(seed)
    codes = rng.standard_normal((N_CLASSES, 24))
    patterns = np.tanh(codes @ rng.standard_normal((24, n_channels)) / np.sqrt(24)) * 2.0
    patterns[0] = patterns[SIL] = 0.0  # rest between words looks like silence
    words = list(WORDS)
    for session in sessions:
        gain = rng.uniform(0.6, 1.4, n_channels)
        offset = rng.normal(0.0, 0.4, n_channels)
        folder = Path(root) / session
        folder.mkdir(parents=True, exist_ok=True)
        block = 0
        for split, count in trials.items():
            with h5py.File(folder / f"data_{split}.hdf5", "w") as f:
                for t in range(count):
                    block += t % 10 == 0
                    sentence = " ".join(rng.choice(words, rng.integers(3, 6))).capitalize() + "."
                    phones = phonemes_of(sentence)
                    steps = [np.zeros(rng.integers(8, 16), dtype=np.int64)]
                    steps += [np.full(rng.integers(6, 10), p) for p in phones]
                    steps.append(np.zeros(rng.integers(8, 16), dtype=np.int64))
                    timeline = np.concatenate(steps)
                    x = patterns[timeline] * gain + offset
                    x += noise * rng.standard_normal(x.shape)
                    g = f.create_group(f"trial_{t:04d}")
                    g.create_dataset("input_features", data=x.astype(np.float32))
                    g.attrs["n_time_steps"] = len(timeline)
                    g.attrs["session"] = session
                    g.attrs["block_num"] = block
                    g.attrs["trial_num"] = t
                    if split != "test":
                        g.create_dataset("seq_class_ids", data=_padded(phones))
                        g.create_dataset("transcription", data=_padded([ord(c) for c in sentence]))
                        g.attrs["seq_len"] = len(phones)
                        g.attrs["sentence_label"] = sentence
    return Path(root)
