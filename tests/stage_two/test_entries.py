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
