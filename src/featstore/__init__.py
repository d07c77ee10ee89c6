"""featstore: run each frozen teacher once, cache its outputs in chunked Zarr v3 stores.

>>> import featstore
>>> entry = featstore.open_entry("3f2a")          # by key prefix, in the default store
>>> batch = entry.gather([0, 17, 5])              # zero-copy memory-mapped rows
"""

from ._compat import ensure_torchvision_importable

# Before anything imports torchvision (open_clip, transformers, and stage two's models through
# transformers). Guarded: does nothing when torchvision's compiled ops load (see _compat).
ensure_torchvision_importable()

from .errors import (  # noqa: E402
    CorruptChunkError,
    EntryLockedError,
    FeatstoreError,
    MissingIdsError,
    NoSuchColumnError,
    SourceError,
    StoreError,
    UnknownTeacherError,
)
from .reader import Entry, FeatureDataset, open_entry  # noqa: E402
from .store import Store, default_store_root  # noqa: E402

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
