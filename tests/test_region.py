"""featstore._region: equal-size files mapped back to back as one read-only array."""

from __future__ import annotations

import gc
import mmap
import os

import numpy as np
import pytest

from featstore import _region

pytestmark = pytest.mark.skipif(not _region.available(), reason="Linux x86-64/arm64 only")


def _files(tmp_path, n: int, size: int) -> list[int]:
    fds = []
    for i in range(n):
        path = tmp_path / f"f{i}"
        path.write_bytes(np.full(size, i, np.uint8).tobytes())
        fds.append(os.open(path, os.O_RDONLY))
    return fds


def test_files_read_as_one_array_that_outlives_its_owner(tmp_path):
    size = 2 * mmap.PAGESIZE
    region = _region.MappedFiles(3, size)
    assert region.base % _region.HUGE_PAGE == 0  # 2 MiB-aligned, so files can map huge
    for i, fd in enumerate(_files(tmp_path, 3, size)):
        region.map_file(i, fd)
        os.close(fd)  # the map keeps the file
    assert region.contiguous  # small files: whole pages, back to back
    rows = region.rows(np.dtype(np.uint8), 2, (mmap.PAGESIZE,)).reshape(6, -1)
    np.testing.assert_array_equal(rows[:, 0], [0, 0, 1, 1, 2, 2])
    tail = rows[3:]
    del region, rows
    gc.collect()
    np.testing.assert_array_equal(tail[:, -1], [1, 2, 2])  # still mapped through the view
    assert not tail.flags.writeable
    with pytest.raises(ValueError):
        tail.flags.writeable = True  # the buffer itself is read-only


def test_files_of_other_sizes_start_on_page_or_2mib_boundaries(tmp_path):
    """A file of 2 MiB or more starts on a 2 MiB boundary (its pages can map as 2 MiB pages),
    a smaller one on a page boundary; the rows array is strided over the gaps."""
    big = _region.MappedFiles(2, (2 << 20) + 4096)
    assert big.slot == 4 << 20 and not big.contiguous
    small = _region.MappedFiles(3, 1000)
    assert small.slot == mmap.PAGESIZE and not small.contiguous
    for i, fd in enumerate(_files(tmp_path, 3, 1000)):
        small.map_file(i, fd)
        os.close(fd)
    rows = small.rows(np.dtype(np.uint8), 10, (100,))
    assert rows.shape == (3, 10, 100) and rows.strides[0] == mmap.PAGESIZE
    np.testing.assert_array_equal(rows[:, 9, 99], [0, 1, 2])
    with pytest.raises(ValueError, match="exceed"):
        small.rows(np.dtype(np.uint8), 11, (100,))
