"""TVSD (THINGS Ventral Stream Spiking Dataset, Papale et al. 2025): time-averaged MUA.

``monkey{F,N}/THINGS_normMUA.mat`` is MATLAB v7.3 (HDF5); MATLAB's column-major arrays read
through h5py transposed, so ``train_MUA`` reads as ``[22248 images, 1024 electrodes]``,
``test_MUA`` as ``[100, 1024]`` (the mean over 30 repeats) and ``test_MUA_reps`` as
``[30, 100, 1024]``. Per-electrode quality arrays (``SNR``, ``SNR_max``, ``reliab``, ``oracle``,
``lats``) have one axis of 1024. Rows follow ``_logs/things_imgs.mat`` (featstore's
``tvsd-images`` source reads it).

There is no area field: areas are channel ranges, which differ between the two monkeys
(:data:`AREAS`). Arrays are read lazily: opening checks the fields and shapes only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featstore.sources.tvsd import open_mat_v73

from ..errors import ConfigError, DataError

N_ELECTRODES = 1024
# 0-based channel ranges [start, stop) per monkey (TVSD's norm_MUA.m; the seed's REGION_MAP)
AREAS: dict[str, dict[str, tuple[int, int]]] = {
    "F": {"V1": (0, 512), "IT": (512, 832), "V4": (832, 1024)},
    "N": {"V1": (0, 512), "V4": (512, 768), "IT": (768, 1024)},
}
AREA_ORDER = ("V1", "V4", "IT")
REQUIRED = {"train_MUA": 2, "test_MUA": 2}
OPTIONAL = {"test_MUA_reps": 3}


def monkey_from_path(path: Path) -> str | None:
    """``F`` or ``N`` from a TVSD path (``.../monkeyF/THINGS_normMUA.mat``), else None."""
    found = re.findall(r"monkey([FN])", str(path))
    return found[-1] if found else None


def parse_regions(text: str, monkey: str) -> list[str]:
    """``all`` or areas joined by commas (``IT``, ``V4,IT``) → the areas, in V1/V4/IT order."""
    names = [t.strip() for t in text.replace("+", ",").split(",") if t.strip()]
    if not names or names == ["all"]:
        return list(AREA_ORDER)
    known = {a.lower(): a for a in AREAS[monkey]}
    unknown = [n for n in names if n.lower() not in known]
    if unknown:
        raise ConfigError(
            f"data.region={text!r}: unknown area {unknown[0]!r}; use all, V1, V4, IT or a "
            f"comma-separated list such as 'V4,IT'."
        )
    chosen = {known[n.lower()] for n in names}
    return [a for a in AREA_ORDER if a in chosen]


def area_of(monkey: str) -> np.ndarray:
    """The area name of each of the 1024 channels."""
    out = np.empty(N_ELECTRODES, dtype=object)
    for area, (start, stop) in AREAS[monkey].items():
        out[start:stop] = area
    return out


def open_mat(path: Path) -> h5py.File:
    """A MATLAB v7.3 file opened with h5py; v5/v7 and non-MAT files are one clear error."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; give TVSD's monkey{{F,N}}/THINGS_normMUA.mat.")
    return open_mat_v73(path, "TVSD's THINGS_normMUA.mat", DataError)


@dataclass
class NormMUA:
    """A lazily read ``THINGS_normMUA.mat``: shapes checked on open, arrays read on demand."""

    path: Path
    n_train: int
    n_test: int
    n_reps: int  # 0 when the file has no test_MUA_reps
    fields: tuple[str, ...]

    @classmethod
    def open(cls, path: str | Path) -> NormMUA:
        path = Path(path)
        with open_mat(path) as f:
            fields = tuple(k for k in f if not k.startswith("#"))
            missing = [k for k in REQUIRED if k not in f]
            if missing:
                raise DataError(
                    f"{path} has no {', '.join(missing)} (found: {', '.join(fields) or 'nothing'})"
                    f"; expected TVSD's THINGS_normMUA.mat with train_MUA and test_MUA."
                )
            shapes = {}
            for name, ndim in {**REQUIRED, **OPTIONAL}.items():
                if name not in f:
                    continue
                ds = f[name]
                if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
                    raise DataError(f"{path}: {name} is not a numeric array.")
                if ds.ndim != ndim or ds.shape[-1] != N_ELECTRODES:
                    want = "[images, 1024]" if ndim == 2 else "[repeats, images, 1024]"
                    raise DataError(
                        f"{path}: {name} has shape {list(ds.shape)} as read by h5py; expected "
                        f"{want} (MATLAB's [1024, images] read transposed)."
                    )
                shapes[name] = ds.shape
        n_test = shapes["test_MUA"][0]
        reps = shapes.get("test_MUA_reps")
        if reps is not None and reps[1] != n_test:
            raise DataError(
                f"{path}: test_MUA_reps has {reps[1]} images but test_MUA has {n_test}."
            )
        return cls(path, shapes["train_MUA"][0], n_test, reps[0] if reps else 0, fields)

    def read(self, name: str, electrodes: np.ndarray) -> np.ndarray:
        """``name``'s selected electrode columns as float32 (one read; NaN is an error)."""
        if name == "test_MUA_reps" and not self.n_reps:
            raise DataError(f"{self.path} has no test_MUA_reps.")
        with open_mat(self.path) as f:
            values = np.asarray(f[name][()], dtype=np.float32)[..., electrodes]
        bad = ~np.isfinite(values)
        if bad.any():
            cols = np.unique(np.nonzero(bad)[-1])
            raise DataError(
                f"{self.path}: {name} has {int(bad.sum())} NaN/inf values on {len(cols)} "
                f"electrodes (channels {electrodes[cols[:8]].tolist()}); leave them out with "
                f"data.drop_nan_electrodes = true or a quality threshold."
            )
        return values

    def nonfinite_channels(self, names: tuple[str, ...] = ("train_MUA", "test_MUA")) -> np.ndarray:
        """Channels with any NaN/inf in the given arrays (a boolean mask over 1024)."""
        mask = np.zeros(N_ELECTRODES, dtype=bool)
        with open_mat(self.path) as f:
            for name in names:
                mask |= ~np.isfinite(np.asarray(f[name][()], dtype=np.float32)).all(
                    axis=tuple(range(f[name].ndim - 1))
                )
        return mask

    def quality(self, name: str, reduce: str) -> np.ndarray:
        """A per-electrode quality vector (``SNR_max``, ``SNR``, ``reliab``, ``oracle``), reduced
        over any other axis (``max`` for SNR over days, ``mean`` for reliability)."""
        with open_mat(self.path) as f:
            if name not in f:
                raise DataError(
                    f"{self.path} has no {name!r} (found: {', '.join(self.fields)}); the "
                    f"threshold on it cannot be applied."
                )
            values = np.asarray(f[name][()], dtype=np.float64)
        axes = [i for i, n in enumerate(values.shape) if n == N_ELECTRODES]
        if not axes:
            raise DataError(f"{self.path}: {name} has shape {list(values.shape)}, no axis of 1024.")
        values = np.moveaxis(values, axes[-1], -1).reshape(-1, N_ELECTRODES)
        return np.nanmax(values, axis=0) if reduce == "max" else np.nanmean(values, axis=0)


@dataclass(frozen=True)
class Selection:
    """The electrodes a run uses: channel indices (0-based) and the areas they belong to."""

    monkey: str
    channels: np.ndarray
    areas: np.ndarray

    def counts(self) -> dict[str, int]:
        return {a: int((self.areas == a).sum()) for a in AREA_ORDER if (self.areas == a).any()}

    def describe(self) -> str:
        return ", ".join(f"{a} {n}" for a, n in self.counts().items())


def select_electrodes(
    mua: NormMUA,
    monkey: str,
    region: str = "all",
    snr_threshold: float = 0.0,
    reliab_threshold: float = -1.0,
    drop_nan: bool = False,
) -> Selection:
    """Channels in the chosen areas that pass the quality thresholds (SNR_max ≥ ``snr``, or the
    max of SNR over its other axis; mean ``reliab`` ≥ ``reliab``), in channel order."""
    keep = np.zeros(N_ELECTRODES, dtype=bool)
    for area in parse_regions(region, monkey):
        start, stop = AREAS[monkey][area]
        keep[start:stop] = True
    if snr_threshold > 0:
        name = "SNR_max" if "SNR_max" in mua.fields else "SNR"
        keep &= mua.quality(name, "max") >= snr_threshold
    if reliab_threshold > -1:
        keep &= mua.quality("reliab", "mean") >= reliab_threshold
    if drop_nan:
        keep &= ~mua.nonfinite_channels()
    channels = np.flatnonzero(keep)
    if not len(channels):
        raise DataError(
            f"no electrode of monkey {monkey} passes data.region={region!r}, "
            f"data.snr_threshold={snr_threshold} and data.reliab_threshold={reliab_threshold}; "
            f"loosen the thresholds."
        )
    return Selection(monkey, channels, area_of(monkey)[channels])
