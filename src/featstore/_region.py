"""Equal-size files mapped back to back into one reserved address range.

An entry's data array is split into chunk files. Mapped one after another into a single range
they read as one numpy array, so a batch is numpy's own fancy index (one C loop over rows)
instead of a Python loop over per-file maps, and a run of rows across chunks is a view, not a
copy. Python's ``mmap`` cannot place a map at an address, so this goes through libc with
ctypes; it is offered on Linux (x86-64, arm64) only, and callers fall back to one map per file.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import sys

import numpy as np

HUGE_PAGE = 2 << 20  # the range starts on a 2 MiB boundary so files can map as 2 MiB pages
_MAP_FIXED = 0x10  # asm-generic and x86 values; other architectures are not offered
_MAP_NORESERVE = 0x4000
_PROT_NONE = 0
_libc: ctypes.CDLL | None = None


def available() -> bool:
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64")


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int, ctypes.c_long]  # fmt: skip
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = lib
    return _libc


def _failed(address: int | None) -> bool:
    return address is None or address == ctypes.c_void_p(-1).value


class MappedFiles:
    """``n_files`` files of ``file_bytes`` each, read-only, file ``i`` at ``base + i * slot``.

    The range is reserved (no access, no memory) when created; ``map_file`` places each file
    in its slot. A slot is the file's size when that is a multiple of 2 MiB (the files then
    follow each other without gaps), else the size rounded up to 2 MiB, so that every file
    starts on a 2 MiB boundary and its page-cache folios can map as 2 MiB pages (files under
    2 MiB are rounded to whole pages instead: they cannot use 2 MiB pages anyway). Arrays from
    ``rows`` keep this object, and so the maps, alive.
    """

    def __init__(self, n_files: int, file_bytes: int):
        self.n_files, self.file_bytes = n_files, file_bytes
        unit = HUGE_PAGE if file_bytes >= HUGE_PAGE else mmap.PAGESIZE
        self.slot = -(-file_bytes // unit) * unit
        self.size = n_files * self.slot
        self._reserved = self.size + HUGE_PAGE
        lib = _lib()
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        addr = lib.mmap(None, self._reserved, _PROT_NONE, flags, -1, 0)
        if _failed(addr):
            raise OSError(ctypes.get_errno(), f"cannot reserve {self._reserved} bytes")
        self._addr = addr
        self._pid = os.getpid()
        self.base = -(-addr // HUGE_PAGE) * HUGE_PAGE

    @property
    def contiguous(self) -> bool:
        """Whether the files follow each other without gaps (one flat array of rows)."""
        return self.slot == self.file_bytes

    def map_file(self, index: int, fd: int) -> None:
        """Map the whole file ``fd`` (exactly ``file_bytes`` long) into slot ``index``."""
        want = self.base + index * self.slot
        flags = mmap.MAP_SHARED | _MAP_FIXED
        got = _lib().mmap(want, self.file_bytes, mmap.PROT_READ, flags, fd, 0)
        if _failed(got) or got != want:
            raise OSError(ctypes.get_errno(), f"cannot map file {index} at {want:#x}")

    def madvise(self, advice: int) -> None:
        """``madvise`` over every slot; ``OSError`` if refused (as ``mmap.mmap.madvise``)."""
        if _lib().madvise(self.base, self.size, advice) != 0:
            raise OSError(ctypes.get_errno(), f"madvise({advice}) refused")

    def rows(self, dtype: np.dtype, rows_per_file: int, row_shape: tuple[int, ...]) -> np.ndarray:
        """The files as a read-only ``[n_files, rows_per_file, *row_shape]`` array (strided
        over the gaps between slots), keeping this object alive."""
        dtype = np.dtype(dtype)
        row_bytes = int(np.prod(row_shape)) * dtype.itemsize
        if rows_per_file * row_bytes > self.file_bytes:
            raise ValueError(f"{rows_per_file} rows of {row_bytes} bytes exceed {self.file_bytes}")
        span = max(self.size - self.slot + rows_per_file * row_bytes, 0)
        buffer = (ctypes.c_char * span).from_address(self.base)
        buffer._owner = self  # arrays hold ``buffer`` (through the view): no unmap while they live
        # A read-only buffer, so numpy refuses writes (the maps are PROT_READ: a segfault).
        flat = np.frombuffer(memoryview(buffer).toreadonly(), dtype=np.uint8)
        inner = np.empty(row_shape, dtype).strides  # C order within a row
        return np.lib.stride_tricks.as_strided(
            flat.view(dtype),  # span: whole pages plus whole rows, so whole items
            shape=(self.n_files, rows_per_file, *row_shape),
            strides=(self.slot, row_bytes, *inner),
            writeable=False,
        )

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():  # a forked child's copy is its own
            _lib().munmap(self._addr, self._reserved)
