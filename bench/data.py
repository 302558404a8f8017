"""``python -m bench --make-gpu-data [DIR]``: the photos the GPU check reads, inside the checkout.

A lent GPU machine gets a copy of the working tree (and the ignored paths it is told to carry), not
``../shared``: so a stratified subset of the photos, under a size budget (40 MB at most), is copied, as real
files (links do not travel), into the git-ignored ``.gpu-data/hotdog`` with ``train/<class>/`` and
``test/<class>/``. A file ``.subset.json`` in it says what was taken; a folder without it is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from trainable import UserError
from trainable.data import IMAGE_SUFFIXES, check_layout

MARKER = ".subset.json"
MAX_BYTES = 40_000_000
TEST_EVERY = 9  # one test photo per class for every 9 training photos of it: a tenth of the subset (the bench trains on train/ only)


def _photos(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def choose(source: Path, classes: list[str], budget_bytes: int, seed: int = 0) -> list[tuple[str, str, Path]]:
    """(split, class, file) in the order taken: per class in turn one training photo, and one test photo
    every ``TEST_EVERY`` rounds (the first round included), each class's photos in a seeded random order;
    stops at the first photo that would pass the budget, so every class keeps its share."""
    rng = np.random.default_rng(seed)
    pools = {(split, name): list(rng.permutation(np.array(_photos(source / split / name), dtype=object)))
             for split in ("train", "test") for name in classes}
    chosen, total = [], 0
    for i in range(max(len(p) for p in pools.values())):
        wanted = [("train", name) for name in classes] + ([("test", name) for name in classes] if i % TEST_EVERY == 0 else [])
        for key in wanted:
            index = i if key[0] == "train" else i // TEST_EVERY
            if index >= len(pools[key]):
                continue
            path = pools[key][index]
            size = path.stat().st_size
            if total + size > budget_bytes:
                return chosen
            chosen.append((*key, path))
            total += size
    return chosen


def make_gpu_data(source: Path, target: Path, budget_bytes: int = 38_000_000, seed: int = 0) -> dict:
    if budget_bytes > MAX_BYTES:
        raise UserError(f"a budget of {budget_bytes / 1e6:g} MB is more than the {MAX_BYTES / 1e6:g} MB the GPU machine's copy allows")
    source, classes = check_layout(source)
    source = source.resolve()
    target = target.resolve()
    if target == source or target.is_relative_to(source) or source.is_relative_to(target):
        raise UserError(f"{target} overlaps the source {source}: copy the subset elsewhere")
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MARKER).is_file())):
        raise UserError(f"{target} exists and was not made by --make-gpu-data (no {MARKER} in it): remove it or pass another folder")
    chosen = choose(source, classes, budget_bytes, seed)
    counts = {split: {name: sum(1 for s, n, _ in chosen if s == split and n == name) for name in classes} for split in ("train", "test")}
    if any(n < 2 for n in counts["train"].values()):
        raise UserError(f"a budget of {budget_bytes / 1e6:g} MB holds fewer than 2 training photos of some class ({counts['train']}): raise --gpu-data-mb")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        total = 0
        for split, name, path in chosen:
            folder = staging / split / name
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / path.name)  # the bytes, never a link (a link would not travel)
            total += (folder / path.name).stat().st_size
        made = {"source": str(source), "target": str(target), "files": len(chosen), "bytes": total, "budget_bytes": budget_bytes,
                "seed": seed, "counts": counts}
        (staging / MARKER).write_text(json.dumps(made, indent=2))
        if target.exists():
            old = target.with_name(f".{target.name}-old-{os.getpid()}")
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return made
