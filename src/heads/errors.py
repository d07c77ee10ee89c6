"""Errors a user can cause in stage two; the CLI prints them as one line and exits 1."""

from featstore.errors import FeatstoreError


class HeadsError(FeatstoreError):
    """Bad data, config or run directory for a head."""
