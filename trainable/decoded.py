"""Decoded once: a folder's split, decoded at a stored size, kept on disk and memory-mapped by every later run.

Decoding is the slow part of starting anything on a large folder (on two cores: 2,000 photos at 224 px in 3.3 s,
50,000 at 64 px in 28 s), and every command starts by decoding: a study, its rerun, a comparison, a warm start, a prediction on the
test split. So the first one keeps what it decoded, as an entry of the cache, and the others memory-map it:

- **Where**: ``$HOTDOG_TUNE_CACHE`` if set, else ``decoded/`` in the project's cache folder (``~/.cache/hotdog-tune``,
  ``$XDG_CACHE_HOME/hotdog-tune`` where that is set). ``python -m trainable.decoded --clear`` empties it (or delete the
  folder: nothing else is kept there); ``--list`` shows its entries. ``--no-cache`` (every command) decodes in memory.
- **The key**: the split's fingerprint (``trainable.fingerprint``: every image's path, size and time), its class order
  and the stored size: a folder that changed (an image added, replaced, touched) makes a new entry; a copy of the same
  files elsewhere finds the old one. Old entries stay until cleared.
- **An entry**: ``images.npy`` (N x 3 x S x S uint8, read with ``numpy.load(mmap_mode="r")``: the page cache holds one
  copy per machine, however many processes read it, and a folder larger than memory runs from the disk), ``labels.npy``
  and ``meta.json`` (the folder it was decoded from, what was skipped and converted). It is decoded into a folder of its own and renamed into place:
  nobody ever sees half an entry, and of two processes decoding one folder at once the second waits for the first
  (a lock per key) and reads what it wrote.
- **When it cannot**: a cache location that cannot be made or written, or a disk that fills up while an entry is
  written, falls back to decoding in memory, said in one line; a damaged entry (a file cut short, meta.json unreadable)
  is removed and decoded again, said in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VERSION = 1  # of the decoder (trainable.data.decode_image): a change to how a photo is decoded makes new entries
ENV = "HOTDOG_TUNE_CACHE"


def cache_root() -> Path:
    """Where decoded entries live."""
    from .files import cache_dir

    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else cache_dir() / "decoded"


@dataclass
class Decoded:
    """A split, decoded: ``images`` (a memory map where it came from the cache), ``labels``, and what the decoding met."""

    images: np.ndarray
    labels: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)  # files that could not be decoded: (path, why)
    modes: dict[str, int] = field(default_factory=dict)  # images converted from another mode than RGB, by mode
    entry: Path | None = None  # the cache entry it is read from (None: decoded in memory)
    note: str = ""  # one line where the cache could not be used, or an entry was damaged
    seconds: float = 0.0  # decoding (0 where it came from the cache)


def entry_key(fingerprint: dict, classes: list[str], size: int) -> str:
    text = json.dumps({"fingerprint": fingerprint, "classes": list(classes), "size": int(size), "version": VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_entry(entry: Path) -> Decoded:
    """An entry as it was written; raises ValueError (or OSError) where it is damaged."""
    meta = json.loads((entry / "meta.json").read_text())
    images = np.load(entry / "images.npy", mmap_mode="r")
    labels = np.load(entry / "labels.npy")
    count = int(meta["count"])
    if images.shape[0] < count or labels.shape != (count,) or images.shape[1:] != (3, meta["size"], meta["size"]):
        raise ValueError(f"its arrays hold {images.shape} and {labels.shape}, its meta.json says {count} images")
    skipped = [tuple(item) for item in meta.get("skipped", [])]
    return Decoded(images[:count], labels, skipped, meta.get("modes", {}), entry)  # rows past count: skipped files


def decode_split(files: list[tuple[Path, int]], size: int, fingerprint: dict | None, classes: list[str],
                 progress: Callable[[int, int], None] | None = None) -> Decoded:
    """``files`` ((path, label), in the order a run reads them) decoded at ``size``: from the cache where an entry for
    ``fingerprint`` is there, else decoded (every CPU: PIL releases the GIL) and kept as a new entry; no ``fingerprint``
    (None): decoded in memory, the cache left alone. ``progress(done, total)`` is called as files are decoded."""
    if fingerprint is None:
        return _decode(files, size, None, progress)
    root = cache_root()
    key = entry_key(fingerprint, classes, size)
    entry = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock

        lock = FileLock(str(root / f"{key}.lock"))
        lock.acquire()
    except OSError as exc:
        decoded = _decode(files, size, None, progress)
        decoded.note = f"the decoded-image cache {root} cannot be used ({exc.strerror or exc}): decoded in memory this time"
        return decoded
    try:
        note = ""
        if entry.is_dir():
            try:
                return read_entry(entry)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                shutil.rmtree(entry, ignore_errors=True)
                note = f"the cached decoded images {entry} were damaged ({str(exc).splitlines()[0][:120]}): decoded again"
        work = root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.mkdir()
            seconds = _decode(files, size, work, progress).seconds
            os.rename(work, entry)
            decoded = read_entry(entry)
            decoded.note, decoded.seconds = note, seconds
            return decoded
        except OSError as exc:
            shutil.rmtree(work, ignore_errors=True)
            decoded = _decode(files, size, None, progress)
            decoded.note = (f"the decoded images could not be kept in the cache {root} ({exc.strerror or exc}): decoded in memory "
                            "this time")
            return decoded
    finally:
        lock.release()


def _decode(files: list[tuple[Path, int]], size: int, into: Path | None, progress) -> Decoded:
    """Decode ``files``; ``into``: write the entry's files there (the images straight into a memory map of their file:
    a folder larger than memory never needs it all at once)."""
    from .images import available_cpus, decode_each

    started = time.perf_counter()
    shape = (len(files), 3, size, size)
    images = _reserved_memmap(into / "images.npy", shape) if into else np.empty(shape, np.uint8)
    labels = np.empty(len(files), dtype=np.int64)
    skipped: list[tuple[str, str]] = []
    modes: list[str] = []

    n = 0
    results = decode_each([path for path, _ in files], size, max(1, available_cpus()), modes)
    for done, (result, (path, label)) in enumerate(zip(results, files), 1):
        if isinstance(result, Exception):
            skipped.append((str(path), str(result).splitlines()[0][:300] if str(result) else type(result).__name__))
        else:
            images[n], labels[n] = result, label
            n += 1
        if progress is not None:
            progress(done, len(files))
    counts = dict(Counter(modes))
    if into is None:
        return Decoded(images[:n], labels[:n], skipped, counts, None, "", time.perf_counter() - started)
    images.flush()  # a file that could not be decoded leaves its row at the end, unused: meta.json's count says how many hold images
    del images
    np.save(into / "labels.npy", labels[:n])
    folder = os.path.commonpath([str(Path(path).parent) for path, _ in files]) if files else ""  # what --list names the entry by
    (into / "meta.json").write_text(json.dumps({"count": n, "size": size, "folder": folder, "skipped": skipped, "modes": counts,
                                                "version": VERSION, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    return Decoded(np.empty((0, 3, size, size), np.uint8), labels[:n], skipped, counts, None, "", time.perf_counter() - started)


def _reserved_memmap(path: Path, shape: tuple) -> np.ndarray:
    """An .npy file of ``shape`` uint8, mapped for writing, its disk space reserved first: on a full disk writing into a
    sparse map is a bus error that kills the process; reserved, it is an OSError here, and the run decodes in memory."""
    import errno

    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    with open(path, "r+b") as fh:
        try:
            if hasattr(os, "posix_fallocate"):  # Linux; elsewhere the file is written as it goes
                os.posix_fallocate(fh.fileno(), 0, os.path.getsize(path))
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve: written as it goes
                del images
                raise
    return images


def entries() -> list[dict]:
    """The cache's entries: their folder, images, size on disk, when written."""
    root = cache_root()
    out = []
    for entry in sorted(root.glob("*")) if root.is_dir() else []:
        if entry.is_dir() and not entry.name.startswith("."):
            try:
                meta = json.loads((entry / "meta.json").read_text())
            except (OSError, ValueError):
                meta = {}
            out.append({"entry": str(entry), "images": meta.get("count"), "size": meta.get("size"), "folder": meta.get("folder"),
                        "written": meta.get("written"),
                        "bytes": sum(f.stat().st_size for f in entry.iterdir() if f.is_file())})
    return out


def clear() -> int:
    """Remove every entry (and leftovers of interrupted ones); returns the bytes freed."""
    root = cache_root()
    freed = 0
    for entry in root.glob("*") if root.is_dir() else []:
        if entry.is_dir():
            freed += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.suffix == ".lock":
            entry.unlink(missing_ok=True)
    return freed


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainable.decoded", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="the cache's entries, with their size on disk")
    action.add_argument("--clear", action="store_true", help="remove every entry")
    return parser


def main(argv: list[str] | None = None) -> int:
    import sys

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.clear:
        print(f"cleared {cache_root()}: {clear() / 1e6:.1f} MB freed")
    else:
        found = entries()
        for e in found:
            source = f" of {e['folder']}" if e["folder"] else ""
            print(f"{e['entry']}: {e['images']} images{source} at {e['size']} px, {e['bytes'] / 1e6:.1f} MB, written {e['written']}")
        total = sum(e["bytes"] for e in found)
        print(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}, {total / 1e6:.1f} MB, in {cache_root()} "
              "(python -m trainable.decoded --clear empties it)")
    return 0


if __name__ == "__main__":
    from trainable.cli import run_main

    run_main(main)
