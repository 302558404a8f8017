"""Image folders in, decoded uint8 arrays out: each image is decoded once per run, never once per epoch.

Layout: ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` (the d2l hotdog layout, ImageFolder's
layout). Every image is decoded with PIL, converted to RGB and resized to ``stored_size`` x
``stored_size`` (``image_size * 256 / 224``, as the book's ``Resize([256, 256])``), so a whole split is one
``N x 3 x S x S`` uint8 array: ~400 MB for 2,000 images at 224 px, shared zero-copy between Ray trials.
Training crops (RandomResizedCrop) are taken from that stored image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import cache_dir  # noqa: F401  (where the book's archive goes)
from .images import (IMAGE_SUFFIXES, available_cpus, decode_image, image_array,  # noqa: F401  (a run's decoding)
                     is_image, visible_files)


HOTDOG_URL = "http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip"
HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"
def stored_size(image_size: int) -> int:
    """Side of the stored square image: the book's 256 for a 224 crop, scaled for other crops."""
    return round(image_size * 256 / 224)


# --- the book's archive ------------------------------------------------------------------------------
def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a zip, refusing any entry that would land outside ``target`` (zip slip) or is a link."""
    target = target.resolve()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            dest = (target / info.filename).resolve()
            if not dest.is_relative_to(target):
                raise UserError(f"archive {archive} has an entry outside its folder ({info.filename!r}): refusing to extract it")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UserError(f"archive {archive} holds a symbolic link ({info.filename!r}): refusing to extract it")
        zf.extractall(target)


def fetch_hotdog(root: Path | None = None, url: str = HOTDOG_URL, sha1: str = HOTDOG_SHA1) -> Path:
    """Download the book's hotdog.zip once, verify its sha1 before use, extract it; return the data folder."""
    from filelock import FileLock

    root = Path(root or cache_dir())
    data = root / "hotdog"
    if (data / "train").is_dir():
        return data
    root.mkdir(parents=True, exist_ok=True)
    # Two first runs at once (two studies, a study and a rerun) download once: the second waits, then finds it.
    with FileLock(str(root / ".hotdog.lock")):
        if (data / "train").is_dir():
            return data
        return _download_and_extract(root, data, url, sha1)


def _download_and_extract(root: Path, data: Path, url: str, sha1: str) -> Path:
    archive = root / "hotdog.zip"
    if not archive.exists() or _sha1(archive) != sha1:
        partial = root / "hotdog.zip.part"
        print(f"downloading {url} to {archive}", file=sys.stderr)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise UserError(
                f"cannot download the hotdog data from {url} ({exc}): unzip hotdog.zip yourself and pass --data-dir PATH/hotdog"
            ) from None
        got = _sha1(partial)
        if got != sha1:
            partial.unlink(missing_ok=True)
            raise UserError(f"downloaded {url} has sha1 {got}, expected {sha1}: the file is corrupt or changed; try again")
        os.replace(partial, archive)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        safe_extract(archive, staging)
        extracted = staging / "hotdog" if (staging / "hotdog").is_dir() else staging
        os.replace(extracted, data)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return data


# --- finding and decoding images --------------------------------------------------------------------
@dataclass
class Split:
    """One decoded split: images ``N x 3 x S x S`` uint8, labels ``N`` int64.

    A split may be a view of a larger decoded set (``rows``: which of its images, in order): a validation
    split or a cross-validation fold shares the decoded pixels instead of copying them, so a worker that
    holds the whole set (on a GPU: once on the device) trains any fold of it without another copy.
    ``images`` and ``labels`` give the split's own arrays (a copy where it is a view).
    """

    base_images: np.ndarray
    base_labels: np.ndarray
    rows: np.ndarray | None = None  # indices into base_images/base_labels; None: all of them

    def __len__(self) -> int:
        return len(self.base_labels) if self.rows is None else len(self.rows)

    @property
    def images(self) -> np.ndarray:
        return self.base_images if self.rows is None else self.base_images[self.rows]

    @property
    def labels(self) -> np.ndarray:
        return self.base_labels if self.rows is None else self.base_labels[self.rows]

    def subset(self, index: np.ndarray) -> "Split":
        """The images at ``index`` of this split, as a view of the same decoded set (no pixels copied)."""
        index = np.asarray(index, dtype=np.int64)
        return Split(self.base_images, self.base_labels, index if self.rows is None else self.rows[index])


@dataclass
class PreparedData:
    classes: list[str]
    stored_size: int
    train: Split
    val: Split | None
    test: Split | None
    skipped: list[str] = field(default_factory=list)  # files that could not be decoded, with the reason
    root: str = ""
    entries: dict = field(default_factory=dict)  # split -> the cache entry its images are memory-mapped from (None: in memory)
    decode_s: float = 0.0  # seconds spent decoding (0 where every split came from the cache)


def _class_folders(split_dir: Path) -> dict[str, list[Path]]:
    classes = {}
    for entry in sorted(split_dir.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            classes[entry.name] = [Path(f.path) for f in visible_files(entry) if is_image(f.name)]
    return classes


def check_layout(root: str | Path, need_test: bool = False, no_test: str = "") -> tuple[Path, list[str]]:
    """Validate the folder layout before anything is decoded (with ``need_test``, test/ too: the classes of train/,
    an image of each); return the root and the class names. ``no_test``: the flag that says there is no test split."""
    root = Path(root).expanduser()
    fix = "pass --data-dir a folder holding train/<class>/ and test/<class>/ image folders"
    if not root.exists():
        raise UserError(f"data folder {root} does not exist: {fix}")
    if not root.is_dir():
        raise UserError(f"data folder {root} is a file, not a folder: {fix}")
    if not (root / "train").is_dir():
        raise UserError(f"data folder {root} has no train/ folder: {fix}")
    classes = _class_folders(root / "train")
    if len(classes) < 2:
        raise UserError(f"{root / 'train'} holds {len(classes)} class folder(s) {list(classes)}: at least two are needed, one folder per class")
    for name, files in classes.items():
        if not files:
            raise UserError(f"class folder {root / 'train' / name} holds no image files: add images or remove the folder")
    if need_test:
        if not (root / "test").is_dir():
            raise UserError(f"data folder {root} has no test/ folder, which the final evaluation needs: {fix}"
                            + (f" (or {no_test} where there is none)" if no_test else ""))
        test_folders = _class_folders(root / "test")
        if list(test_folders) != list(classes):
            raise UserError(f"{root / 'test'} has classes {list(test_folders)} but train has {list(classes)}: use the same class folders")
        for name, files in test_folders.items():
            if not files:
                raise UserError(f"class folder {root / 'test' / name} holds no image files: the test split needs at least one image "
                                "of each class; add images")
    return root, list(classes)


def _not_images(split_dir: Path, classes: list[str]) -> list[Path]:
    """Files in the class folders that are left out for their suffix (hidden ones aside)."""
    return sorted(Path(f.path) for name in classes for f in visible_files(split_dir / name) if not is_image(f.name))


def labelled_files(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, class index) of every image in a split's class folders, in the order a run reads them: by class, then path."""
    found = _class_folders(split_dir)
    return [(path, label) for label, name in enumerate(classes) for path in found.get(name, [])]


def stratified_split(labels: np.ndarray, fraction: float, seed: int, fold: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``fraction`` of each class (at least one image) as validation, chosen with ``seed``.

    ``fold`` k takes the k-th disjoint block of that size from the same seeded order: fold 0 is the usual split,
    and folds 0, 1, 2, ... never share a validation image (see ``max_folds``).
    """
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = min(len(members) - 1, max(1, round(len(members) * fraction)))
        start = fold * n_val
        if start + n_val > len(members) - 1 and fold:
            raise UserError(f"validation fold {fold} does not fit: class {int(label)} has {len(members)} images, "
                            f"{n_val} per fold; at most {max_folds(labels, fraction)} disjoint folds of {fraction:g}")
        val_idx.append(members[start:start + n_val])
        train_idx.append(np.concatenate([members[:start], members[start + n_val:]]))
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def max_folds(labels: np.ndarray, fraction: float) -> int:
    """How many disjoint validation folds of ``fraction`` fit (each class keeps a training image)."""
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    return int(min((c - 1) // min(c - 1, max(1, round(c * fraction))) for c in counts))


def kfold_split(labels: np.ndarray, folds: int, seed: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of stratified ``folds``-fold cross-validation: each class, in a ``seed``ed order, is
    cut into ``folds`` near-equal parts; part ``fold`` validates and the others train. Over the folds every
    image validates exactly once (see ``max_cv_folds``)."""
    most = max_cv_folds(labels)
    if not 2 <= folds <= most:
        raise UserError(f"{folds} cross-validation folds do not fit: each fold needs an image of every class and the "
                        f"smallest class has {most}; ask for 2 to {most}")
    if not 0 <= fold < folds:
        raise UserError(f"validation fold {fold} does not exist in {folds}-fold cross-validation: use 0 to {folds - 1}")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in np.unique(labels):
        parts = np.array_split(rng.permutation(np.flatnonzero(labels == label)), folds)
        val_idx.append(parts[fold])
        train_idx.extend(part for k, part in enumerate(parts) if k != fold)
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def max_cv_folds(labels: np.ndarray) -> int:
    """The most cross-validation folds that give every fold an image of each class: the smallest class's size."""
    counts = np.bincount(labels)
    return int(counts[counts > 0].min())


def split_indices(labels: np.ndarray, fraction: float, seed: int, fold: int = 0, cv_folds: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of validation fold ``fold``: of ``cv_folds``-fold cross-validation when ``cv_folds``
    >= 2, else of the disjoint held-out blocks of ``fraction``."""
    return kfold_split(labels, cv_folds, seed, fold) if cv_folds else stratified_split(labels, fraction, seed, fold)


def split_fold(data: PreparedData, fraction: float, seed: int, fold: int, cv_folds: int = 0) -> PreparedData:
    """A prepared data set whose ``train`` holds every training image, split for validation fold ``fold``
    (``split_indices``)."""
    train_idx, val_idx = split_indices(data.train.labels, fraction, seed, fold, cv_folds)
    return PreparedData(data.classes, data.stored_size, data.train.subset(train_idx), data.train.subset(val_idx),
                        data.test, data.skipped, data.root, data.entries, data.decode_s)


def prepare_data(
    data_dir: str | Path | None,
    image_size: int,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    with_test: bool = False,
    log=None,
    val_fold: int = 0,
    min_per_class: int | None = None,
    cv_folds: int = 0,
    cache: bool = True,
    progress=None,
) -> PreparedData:
    """Find, check, decode (once: ``cache`` keeps it for every later run, ``trainable.decoded``) and split the data.
    ``val_fraction=0`` keeps all of train for training; ``val_fold`` picks another disjoint validation split of the same
    size (0: the usual one), or with ``cv_folds`` >= 2 the part of stratified ``cv_folds``-fold cross-validation that
    validates; ``min_per_class`` raises the readable images each class needs (default: 2 with a validation split, else
    1). ``progress(done, total)``: called as files are decoded (not for a split the cache holds)."""
    from .decoded import decode_split
    from .fingerprint import split_fingerprint

    root, classes = check_layout(data_dir if data_dir is not None else fetch_hotdog(), need_test=with_test)
    size = stored_size(image_size)
    skipped: list[str] = []
    modes: Counter = Counter()
    decoded = {}
    for split in ["train", "test"] if with_test else ["train"]:
        files = labelled_files(root / split, classes)
        found = decode_split(files, size, split_fingerprint(root, split) if cache else None, classes, progress)
        if found.note and log is not None:
            log(found.note)
        skipped += [f"{path}: {why}" for path, why in found.skipped]
        modes.update(found.modes)
        decoded[split] = found
    train_all = Split(decoded["train"].images, decoded["train"].labels)
    for label, name in enumerate(classes):
        count = int((train_all.labels == label).sum())
        if count < (min_per_class or (2 if val_fraction > 0 else 1)):
            broken = [s for s in skipped if s.startswith(f"{root / 'train' / name}{os.sep}")]
            raise UserError(
                f"class {name!r} has {count} readable image(s) in {root / 'train' / name}: at least 2 are needed "
                "(one for training, one for validation); add images"
                + (f" ({len(broken)} file(s) there could not be decoded, e.g. {broken[0]})" if broken else "")
            )
    test = Split(decoded["test"].images, decoded["test"].labels) if with_test else None
    if test is not None and len(test) == 0:
        raise UserError(f"{root / 'test'} holds no readable images: add test images")
    if log is not None:
        ignored = [p for split in (["train", "test"] if with_test else ["train"]) for p in _not_images(root / split, classes)]
        if ignored:
            log(f"ignored {len(ignored)} file(s) without an image suffix, e.g. {ignored[0]}")
        if skipped:
            log(f"skipped {len(skipped)} unreadable file(s), e.g. {skipped[0]}")
        if modes:
            counts = ", ".join(f"{mode} x{n}" for mode, n in sorted(modes.items()))
            log(f"converted {sum(modes.values())} image(s) to 8-bit RGB from other modes ({counts}): transparency on white, 16-bit scaled to 8-bit")
    if cv_folds or val_fraction > 0:
        train_idx, val_idx = split_indices(train_all.labels, val_fraction, split_seed, val_fold, cv_folds)
        train, val = train_all.subset(train_idx), train_all.subset(val_idx)
    else:
        train, val = train_all, None
    return PreparedData(classes, size, train, val, test, skipped, str(root.resolve()),
                        entries={split: found.entry for split, found in decoded.items()},
                        decode_s=sum(found.seconds for found in decoded.values()))
