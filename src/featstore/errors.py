"""Errors raised by featstore.

Every error a user can cause is a ``FeatstoreError``: its message says what is wrong and how to fix
it. The CLI prints the message and exits non-zero; library code never exits.
"""


class FeatstoreError(Exception):
    """Base class: a problem with the user's input, store or environment."""


class UnknownTeacherError(FeatstoreError):
    pass


class SourceError(FeatstoreError):
    """The source (HDF5, image folder, text list) is missing, malformed or inconsistent."""


class StoreError(FeatstoreError):
    """The store root or an entry is missing, unwritable or inconsistent."""


class EntryLockedError(StoreError):
    pass


class CorruptChunkError(StoreError):
    """A chunk's bytes do not match the checksum recorded when it was committed."""


class LookupFeatstoreError(FeatstoreError, KeyError):
    """A lookup by a user-given name or id that found nothing.

    Also a ``KeyError``, so callers that catch ``KeyError`` keep working; printed as the plain
    message (``KeyError`` alone would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingIdsError(LookupFeatstoreError):
    """Ids asked for that have no row in the entry."""


class NoSuchColumnError(LookupFeatstoreError):
    """A metadata column the entry does not have."""
