"""Opening the featstore entry a config key names: one clear error for a key that is not set or
an entry that cannot be opened. Each head then checks the entry's shape for its own use."""

from __future__ import annotations

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
