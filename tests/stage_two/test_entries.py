"""Opening the entry a config key names: user mistakes are one error, bugs stay bugs."""

from __future__ import annotations

import pytest

from featstore import Store
from heads.data import entries
from heads.errors import ConfigError, DataError


def test_unset_and_unknown_keys_are_clear_errors(tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(ConfigError, match=r"^data.targets is not set: give the key of a"):
        entries.open_config_entry("", store, "data.targets")
    with pytest.raises(ConfigError, match="is not set: use the frames entry"):
        entries.open_config_entry("", store, "data.audio", "use the frames entry")
    with pytest.raises(DataError, match=r"^data.targets = 'abc123': "):
        entries.open_config_entry("abc123", store, "data.targets")


def test_a_bug_while_opening_is_not_reported_as_a_user_error(tmp_path, monkeypatch):
    def broken(key, store):
        raise KeyError("manifest")

    monkeypatch.setattr(entries, "open_entry", broken)
    with pytest.raises(KeyError):
        entries.open_config_entry("abc123", Store(tmp_path / "store"), "data.targets")


def test_require_ids_counts_names_and_shows_the_first_missing():
    import numpy as np

    class Entry:  # the two things require_ids reads of a featstore entry
        key, manifest = "1f2e", {"teacher": "bigG-tiny"}

        def contains(self, ids):
            return np.isin(ids, [1, 2, 3])

    entries.require_ids(Entry(), np.array([1, 3]), "trial images", "data.x", "Fix it.")
    with pytest.raises(DataError) as e:
        entries.require_ids(Entry(), np.array([1, 7, 2, 9]), "trial images", "data.x", "Fix it.")
    assert str(e.value) == (
        "2 of 4 trial images are missing from data.x (1f2e, teacher bigG-tiny); first: [7, 9]. "
        "Fix it."
    )
