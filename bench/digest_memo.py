"""Digest-memo benchmark: the bookkeeping of hashing an image folder of NSD's size (73k files).

What is measured
    An ``image-folder`` source hashes every file once and remembers each digest in the store's
    memo, so that a re-run reads nothing. This script creates ``--files`` small files (content
    does not matter: the memo's cost is per file) and times, with ``featstore.hashing``:

    (a) first pass: ``file_digest(f, memo)`` for every file (sha256 + one memo entry each), then
        the memo flush; the bookkeeping alone (``DigestMemo.put`` + flush, digests given) is
        timed separately;
    (b) second pass: a fresh ``DigestMemo`` loaded from disk and every digest served from it;
    (c) the format-1 memo for reference: one JSON object rewritten on every put (the quadratic
        behaviour issue 13 measured at 0.7 s for 1k files and 7.9 s for 4k), at ``--legacy``
        sizes only, since at 73k it would take tens of minutes.

How to run
    python bench/digest_memo.py                    # 73,000 files, legacy reference at 1k and 4k
    python bench/digest_memo.py --files 10000 --legacy 1000

    Files go to ``--workdir`` (default ``bench/out/``); results are printed and written to
    ``<workdir>/digest_memo.json``; ``--clean`` removes the files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import env_info, finish

from featstore.hashing import DigestMemo, file_digest


class LegacyMemo:
    """Format 1's memo: a JSON object rewritten whole (temporary file + rename) on every put."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def put(self, file: Path, digest: str) -> None:
        st = os.stat(file)
        self.data[f"{os.path.realpath(file)}|{st.st_size}|{st.st_mtime_ns}|"] = digest
        tmp = self.path.with_name(f"{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)


def make_files(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{i // 1000:03d}" / f"img{i:06d}.jpg" for i in range(n)]
    for f in files:
        if not f.exists():
            f.parent.mkdir(exist_ok=True)
            f.write_bytes(b"%d" % len(files) + b"x" * 512)
    return files


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=73_000)
    p.add_argument("--legacy", type=int, nargs="*", default=[1000, 4000])
    p.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    p.add_argument("--clean", action="store_true")
    args = p.parse_args(argv)
    data_dir = args.workdir / "digest_memo_data"
    load = [os.getloadavg()[0]]
    files = make_files(data_dir / "images", args.files)
    memo_file = data_dir / "digests.jsonl"
    memo_file.unlink(missing_ok=True)

    memo = DigestMemo(memo_file)
    t0 = time.perf_counter()
    digests = [file_digest(f, memo) for f in files]
    memo.flush()
    first = time.perf_counter() - t0

    memo_file.unlink()
    memo = DigestMemo(memo_file)
    t0 = time.perf_counter()
    for f, d in zip(files, digests, strict=True):
        memo.put(f, d)
    memo.flush()
    bookkeeping = time.perf_counter() - t0

    t0 = time.perf_counter()
    again = DigestMemo(memo_file)
    served = [again.get(f) for f in files]
    second = time.perf_counter() - t0
    assert served == digests, "the memo must serve every digest"
    load.append(os.getloadavg()[0])

    legacy = {}
    for n in args.legacy:
        old = LegacyMemo(data_dir / f"legacy-{n}.json")
        t0 = time.perf_counter()
        for f, d in zip(files[:n], digests[:n], strict=True):
            old.put(f, d)
        legacy[n] = time.perf_counter() - t0
    load.append(os.getloadavg()[0])

    print(f"{args.files:,} files, memo {memo_file.stat().st_size / 2**20:.1f} MiB, "
          f"load average {min(load):.2f}-{max(load):.2f}")  # fmt: skip
    print()
    print("| step | seconds | per file |")
    print("|---|---:|---:|")
    rows = [
        ("first pass: sha256 + memo entry per file", first, args.files),
        ("of which memo bookkeeping (put + flush)", bookkeeping, args.files),
        ("second pass: load memo + serve every digest", second, args.files),
        *((f"format-1 memo (rewrite per put), {n:,} files", s, n) for n, s in legacy.items()),
    ]
    for label, seconds, n in rows:
        print(f"| {label} | {seconds:.2f} | {1e6 * seconds / n:.1f} µs |")
    result = {"benchmark": "digest_memo", "files": args.files, "first_pass_s": first,
              "bookkeeping_s": bookkeeping, "second_pass_s": second,
              "legacy_s": legacy, "loadavg": load, "env": env_info()}  # fmt: skip
    return finish(result, args.workdir, "digest_memo", data_dir, args.clean)


if __name__ == "__main__":
    main(sys.argv[1:])
