"""Errors a user can cause in stage two.

The CLI prints a ``HeadsError`` as one line and exits 1. Anything else (``KeyError``,
``ValueError`` from a bug) keeps its traceback: a bug is never dressed up as a user error.
"""

from featstore.errors import FeatstoreError


class HeadsError(FeatstoreError):
    """Bad data, config or run directory for a head."""


class ConfigError(HeadsError):
    """A recipe, config file or ``--set`` override that cannot be used."""


class RunDirError(HeadsError):
    """A run directory that does not hold what the command needs."""


class DataError(HeadsError):
    """Input data (files, featstore entries) that a head cannot train or evaluate on."""
