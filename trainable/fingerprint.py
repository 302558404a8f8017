"""What a run's data and weights were, cheaply enough to check on every resume and every rerun.

The data: per split (train, test) and class, the number of image files and a SHA-256 of every file's
(path relative to the data folder, size in bytes, modification time in ns), in sorted order. That catches
images added, removed, renamed, replaced or edited (a copy or an edit changes the size or the time) and
classes renamed, with one ``stat`` per file and no read: the image contents are not hashed, because that
reads every byte (gigabytes for a large folder) where the metadata says the same for any real change. A
file only touched (its time changed, its bytes not) reads as changed: the override flag says to go on.

The weights file: its size and a SHA-256 of its contents (one read of ~45 MB for a ResNet18): a changed
backbone makes every comparison between trials meaningless, and a file swapped for one of the same size
must not pass.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .images import is_image, visible_files

SPLITS = ("train", "test")


def _images(folder: Path, root: Path) -> list[tuple[str, int, int]]:
    """(path relative to root, size, mtime_ns) of every image under ``folder`` the loader reads (``visible_files``),
    sorted: one scandir stat per file."""
    found = []
    for entry in visible_files(folder):
        if is_image(entry.name):
            info = entry.stat()
            found.append((Path(entry.path).relative_to(root).as_posix(), info.st_size, info.st_mtime_ns))
    return sorted(found)


def data_fingerprint(root: str | Path) -> dict:
    """``{"train": {"hotdog": {"files": 1000, "digest": "..."}, ...}, "test": {...}}`` (a split that is absent: left out)."""
    root = Path(root).expanduser().resolve()
    return {split: found for split in SPLITS if (found := split_fingerprint(root, split)) is not None}


def split_fingerprint(root: str | Path, split: str) -> dict | None:
    """One split's part of ``data_fingerprint``: per class folder, its image count and digest; None where it is absent."""
    root = Path(root).expanduser().resolve()
    folder = root / split
    if not folder.is_dir():
        return None
    classes = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        files = _images(entry, root)
        digest = hashlib.sha256("".join(f"{path}\t{size}\t{mtime}\n" for path, size, mtime in files).encode())
        classes[entry.name] = {"files": len(files), "digest": digest.hexdigest()}
    return classes


def weights_fingerprint(path: str | Path) -> dict:
    """``{"bytes": N, "sha256": "..."}`` of a weights file."""
    path = Path(path).expanduser()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def data_changes(before: dict, now: dict) -> list[str]:
    """What changed between two data fingerprints, one phrase each (empty when nothing did)."""
    changes = []
    for split in SPLITS:
        old, new = before.get(split), now.get(split)
        if old is None and new is None:
            continue
        if old is None:
            changes.append(f"{split}/: added since the study started ({len(new)} class folder(s))")
            continue
        if new is None:
            changes.append(f"{split}/: gone since the study started")
            continue
        if list(old) != list(new):
            changes.append(f"{split}/ classes are now {list(new)}; the study started with {list(old)}")
            continue
        for name in old:
            a, b = old[name]["files"], new[name]["files"]
            if a < b:
                changes.append(f"{split}/{name}: {b - a} image(s) added since the study started ({a} then, {b} now)")
            elif a > b:
                changes.append(f"{split}/{name}: {a - b} image(s) removed since the study started ({a} then, {b} now)")
            elif old[name]["digest"] != new[name]["digest"]:
                changes.append(f"{split}/{name}: images replaced, renamed or edited since the study started (still {b})")
    return changes


def weights_changes(before: dict | None, now: dict | None) -> list[str]:
    if not before or not now or before.get("sha256") == now.get("sha256"):
        return []
    size = "" if before.get("bytes") != now.get("bytes") else " (the same size)"
    return [f"the weights file's contents changed since the study started{size}"]
