"""t15 brain-to-text (Dryad ``hdf5_data_final``): sessions, trial tables and lazy trial reads.

Layout: ``<root>/<session>/data_{train,val,test}.hdf5``; one group ``trial_XXXX`` per trial with
``input_features [T, 512]`` (20 ms bins), ``seq_class_ids`` (phoneme ids, zero-padded; true length
in attribute ``seq_len``) and ``transcription`` (ASCII codes, zero-padded), attributes
``n_time_steps``, ``sentence_label``, ``session``, ``block_num``, ``trial_num``. Test files carry no
labels. A trial's id is ``"<session>/<split>/<group>"``, as featstore's ``t15-sentences`` source
names it, so cached audio targets are found by the same id.

Scanning reads only attributes (seconds for the 10,948 trials); features are read per batch from
files kept open per process, never the whole 11 GB.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DataError

# Class 0 is the CTC blank, 40 the silence between words (the baseline's LOGIT_TO_PHONEME).
PHONEMES = (
    "BLANK",
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH",
    "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH",
    "UW", "V", "W", "Y", "Z", "ZH",
    "SIL",
)  # fmt: skip
N_CLASSES = len(PHONEMES)  # 41
SPLITS = ("train", "val", "test")
FEATURES, PHONES, TRANSCRIPT = "input_features", "seq_class_ids", "transcription"
_FILE = re.compile(r"^data_(train|val|test)\.hdf5$")


def phoneme_string(ids: list[int] | np.ndarray) -> str:
    """Phoneme ids as text, words split by ``|`` (``"HH AH L OW | W ER L D"``)."""
    return " ".join("|" if i == N_CLASSES - 1 else PHONEMES[i] for i in np.asarray(ids).tolist())


def decode_transcription(codes: np.ndarray) -> str:
    """ASCII codes up to the first 0 (a raw bytes decode of a multi-byte dtype would keep NULs)."""
    codes = np.asarray(codes).reshape(-1)
    end = np.flatnonzero(codes == 0)
    codes = codes[: end[0]] if len(end) else codes
    return "".join(chr(int(c)) for c in codes)


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size == 1 else value.tolist()
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def find_sessions(root: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """``{session: {split: file}}`` for every session folder under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"t15 data folder {root} does not exist; point data.root at the Dryad "
            f"hdf5_data_final folder (<session>/data_<split>.hdf5)."
        )
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(root.glob("*/data_*.hdf5")):
        match = _FILE.match(path.name)
        if match and path.is_file():
            found.setdefault(path.parent.name, {})[match[1]] = path
    if not found:
        raise DataError(
            f"no <session>/data_{{train,val,test}}.hdf5 files under {root}; expected the Dryad "
            f"layout hdf5_data_final/t15.2023.08.11/data_train.hdf5 ..."
        )
    return dict(sorted(found.items()))


@dataclass
class TrialTable:
    """The trials of one split, one row each (numpy columns)."""

    split: str
    ids: np.ndarray  # object: "<session>/<split>/<group>"
    day: np.ndarray  # int64: index of the session in the run's session list
    file: np.ndarray  # int64: index into ``files``
    group: np.ndarray  # object: "trial_0003"
    n_time_steps: np.ndarray  # int64
    seq_len: np.ndarray  # int64, -1 without labels
    sentence: np.ndarray  # object, "" without labels
    files: list[Path]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labelled(self) -> bool:
        return bool(len(self)) and bool((self.seq_len >= 0).all())

    def subset(self, keep: np.ndarray) -> TrialTable:
        cols = ("ids", "day", "file", "group", "n_time_steps", "seq_len", "sentence")
        return TrialTable(self.split, **{c: getattr(self, c)[keep] for c in cols}, files=self.files)

    def where(self, row: int) -> str:
        return f"{self.files[int(self.file[row])]} ({self.group[row]})"


def scan_split(
    sessions: dict[str, dict[str, Path]], split: str, day_of: dict[str, int]
) -> TrialTable:
    """Every trial of ``split`` in the given sessions (attributes only). ``day_of`` maps a session
    to its day index; a session it lacks is a ``DataError``."""
    cols: dict[str, list] = {k: [] for k in ("ids", "day", "file", "group", "n", "seq", "text")}
    files: list[Path] = []
    for session, by_split in sessions.items():
        path = by_split.get(split)
        if path is None:
            continue
        if session not in day_of:
            known = ", ".join(list(day_of)[:4])
            raise DataError(
                f"{path}: session {session!r} was not among the run's training sessions "
                f"({len(day_of)}: {known}, ...), so it has no day layer. Evaluate only sessions "
                f"the run was trained on."
            )
        try:
            handle = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"{path} is not a readable HDF5 file: {e}") from None
        files.append(path)
        with handle as f:
            groups = sorted((k for k in f if k.startswith("trial_")), key=_trial_number)
            if not groups:
                raise DataError(f"{path} has no trial_XXXX groups; is it a t15 data file?")
            for name in groups:
                g = f[name]
                attrs = g.attrs
                if FEATURES not in g:
                    raise DataError(f"{path} ({name}) has no {FEATURES} dataset.")
                sess = _text(attrs["session"]) if "session" in attrs else session
                cols["ids"].append(f"{sess or session}/{split}/{name}")
                cols["day"].append(day_of[session])
                cols["file"].append(len(files) - 1)
                cols["group"].append(name)
                n = attrs.get("n_time_steps")
                cols["n"].append(int(np.asarray(n).reshape(-1)[0]) if n is not None else -1)
                labelled = PHONES in g and "seq_len" in attrs
                cols["seq"].append(
                    int(np.asarray(attrs["seq_len"]).reshape(-1)[0]) if labelled else -1
                )
                label = attrs.get("sentence_label")
                cols["text"].append(_text(label).strip() if label is not None else "")
    table = TrialTable(
        split,
        ids=np.asarray(cols["ids"], dtype=object),
        day=np.asarray(cols["day"], dtype=np.int64),
        file=np.asarray(cols["file"], dtype=np.int64),
        group=np.asarray(cols["group"], dtype=object),
        n_time_steps=np.asarray(cols["n"], dtype=np.int64),
        seq_len=np.asarray(cols["seq"], dtype=np.int64),
        sentence=np.asarray(cols["text"], dtype=object),
        files=files,
    )
    missing_n = np.flatnonzero(table.n_time_steps < 0)
    if len(missing_n):
        raise DataError(f"{table.where(missing_n[0])} has no n_time_steps attribute.")
    return table


def missing_labels(table: TrialTable, row: int) -> DataError:
    """The error for labels asked of a trial that has none: the test split's (Dryad's test files
    carry no labels), or a train/val file that lacks them."""
    if table.split == "test":
        return DataError(
            f"{table.where(row)}: labels were asked of the test split, which has none (test files "
            f"carry no seq_class_ids / seq_len / transcription). Test trials give predictions "
            f"only (eval.split=test); PER, WER and training use the train and val splits."
        )
    return DataError(
        f"{table.where(row)} in the {table.split} split has no labels (seq_class_ids / seq_len); "
        f"only test files may lack them."
    )


def _trial_number(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 62, name)


class TrialReader:
    """Lazy reads of trials from a table's files; one open handle per file and process (safe in
    DataLoader workers: handles are reopened after a fork and never pickled)."""

    def __init__(self, table: TrialTable) -> None:
        self.table = table
        self._files: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def _group(self, row: int) -> h5py.Group:
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        index = int(self.table.file[row])
        handle = self._files.get(index)
        if handle is None:
            handle = self._files[index] = h5py.File(self.table.files[index], "r")
        return handle[self.table.group[row]]

    def channels(self, row: int) -> int:
        """Feature channels of a trial, from the dataset's shape (no data read)."""
        return int(self._group(row)[FEATURES].shape[1])

    def features(self, row: int) -> np.ndarray:
        """``[n_time_steps, C]`` float32; NaN or inf is a ``DataError`` naming file and trial."""
        g = self._group(row)
        n = int(self.table.n_time_steps[row])
        x = np.asarray(g[FEATURES][:n], dtype=np.float32)
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise DataError(
                f"{self.table.where(row)}: input_features holds NaN or inf (first at time step "
                f"{bad[0]}, channel {bad[1]}); clean or drop the trial."
            )
        return x

    def phonemes(self, row: int) -> np.ndarray:
        """The trial's phoneme ids ``[seq_len]`` (int64); :func:`missing_labels` if it has none."""
        n = int(self.table.seq_len[row])
        if n < 0:
            raise missing_labels(self.table, row)
        return np.asarray(self._group(row)[PHONES][:n], dtype=np.int64)

    def transcription(self, row: int) -> str:
        """The sentence: ``transcription`` up to the first 0, else ``sentence_label``;
        :func:`missing_labels` for an unlabelled trial with neither."""
        g = self._group(row)
        if TRANSCRIPT in g:
            return decode_transcription(g[TRANSCRIPT][:])
        if self.table.seq_len[row] < 0 and not self.table.sentence[row]:
            raise missing_labels(self.table, row)
        return str(self.table.sentence[row])

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files = {}
