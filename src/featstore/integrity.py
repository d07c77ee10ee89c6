"""Checksums of stored bytes: CRC32C (Castagnoli), the checksum of Zarr v3's ``crc32c`` codec,
iSCSI and ext4. ``google-crc32c`` computes it with the CPU's CRC instructions (~20 GB/s here,
6x zlib's CRC32), so a reader can check the bytes it actually reads on every cold read.
"""

from __future__ import annotations

from typing import Any

import google_crc32c
import numpy as np


def crc32c(data: Any, value: int = 0) -> int:
    """CRC32C of ``data``'s C-order bytes (an array or bytes), continuing from ``value``."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return google_crc32c.extend(value, data)


def crc_hex(value: int) -> str:
    return f"{value:08x}"


def block_checksums(rows: np.ndarray, block_rows: int) -> list[int]:
    """CRC32C of each run of ``block_rows`` rows (the last run may be shorter)."""
    return [crc32c(rows[i : i + block_rows]) for i in range(0, len(rows), block_rows)]
