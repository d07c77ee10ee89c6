"""Small files featstore generates for teachers that need no download (a CLIP tokenizer
vocabulary, a TTS character set): kept in the user's own cache directory, written atomically.

Per user (``platformdirs.user_cache_dir("featstore")/_bundled``, ``~/.cache/featstore/_bundled``
on Linux), never a fixed path in the shared temp directory that another user could own or
plant. Each file is written under a temporary name and renamed into place, so a reader never
sees half a file, and names carry a version so a format change never reuses an old file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def bundled_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("featstore", appauthor=False)) / "_bundled"


def bundled_files(name: str, files: dict[str, Callable[[], str]]) -> Path:
    """The folder ``name`` holding ``files`` (file name -> a function giving its text); each
    file is made once."""
    root = bundled_dir()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)  # private: no other user can plant files
    folder = root / name
    folder.mkdir(exist_ok=True, mode=0o700)
    for file_name, make in files.items():
        target = folder / file_name
        if target.exists():
            continue
        tmp = folder / f".{file_name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(make())
        os.replace(tmp, target)
    return folder
