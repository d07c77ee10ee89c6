"""Opening the featstore entry a config key names: one clear error for a key that is not set or
an entry that cannot be opened. Each head then checks the entry's shape for its own use."""

from __future__ import annotations

import numpy as np

from featstore import Entry, FeatstoreError, Store, open_entry

from ..errors import ConfigError, DataError

_ANY_ENTRY = "give the key of a featstore entry (`featstore ls` lists them)."


def open_config_entry(key: str, store: Store, what: str, hint: str = _ANY_ENTRY) -> Entry:
    """The entry ``key`` (config key ``what``) in ``store``. Only featstore's own errors (no such
    entry, an incomplete or damaged one) become a ``DataError``; anything else is a bug and
    propagates as it is."""
    if not key:
        raise ConfigError(f"{what} is not set: {hint}")
    try:
        return open_entry(key, store)
    except FeatstoreError as e:
        raise DataError(f"{what} = {key!r}: {e}") from None


def require_ids(entry: Entry, ids: np.ndarray, items: str, where: str, fix: str) -> None:
    """Every id in ``ids`` has a row in ``entry``; otherwise one error that counts the missing
    ``items``, names the entry (config key ``where``, key, teacher), shows the first few and says
    how to ``fix`` it."""
    missing = ids[~entry.contains(ids)]
    if len(missing):
        raise DataError(
            f"{len(missing)} of {len(ids)} {items} are missing from {where} ({entry.key}, "
            f"teacher {entry.manifest.get('teacher')}); first: {missing[:5].tolist()}. {fix}"
        )
