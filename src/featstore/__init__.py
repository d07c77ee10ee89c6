"""featstore: run each frozen teacher once, cache its outputs in chunked Zarr v3 stores.

>>> import featstore
>>> entry = featstore.open_entry("3f2a")          # by key prefix, in the default store
>>> batch = entry.gather([0, 17, 5])              # zero-copy memory-mapped rows
"""

from .errors import (
    CorruptChunkError,
    EntryLockedError,
    FeatstoreError,
    MissingIdsError,
    NoSuchColumnError,
    SourceError,
    StoreError,
    UnknownTeacherError,
)
from .reader import Entry, FeatureDataset, open_entry
from .store import Store, default_store_root

__all__ = [
    "CorruptChunkError",
    "Entry",
    "EntryLockedError",
    "FeatstoreError",
    "FeatureDataset",
    "MissingIdsError",
    "NoSuchColumnError",
    "SourceError",
    "Store",
    "StoreError",
    "UnknownTeacherError",
    "default_store_root",
    "open_entry",
]
