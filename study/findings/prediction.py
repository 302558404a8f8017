"""A shipped model on photos: ``python -m study.predict`` and ``load_study(...).predict(paths)``.

Each PATH is a photo, a folder (searched recursively, hidden files and folders left out), or a labelled folder: one
whose class subfolders are the model's classes (a split such as ``data/test``), or a data folder in the
train/test layout, whose ``test/`` is then predicted. Where a folder gives the true class, the rows carry it and the
accuracy is said, per class too (the confusion matrix, the balanced accuracy). A labelled split is read in the order
its evaluation read it, so the model's test accuracy comes out to the image.

By default the seeds' class probabilities are averaged (the ensemble ``study.rerun`` measured); ``seed`` takes one.
A file that cannot be decoded is listed with the reason and left out; nothing else stops the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainable import UserError

from study.findings.ensemble import per_class_text
from study.findings.model import ModelFolder

PROGRESS_FROM = 200  # files: a bar below this is noise


@dataclass
class Source:
    """Where the photos of one PATH are: their files, and each one's true class (index into the model's classes) or None."""

    given: str
    files: list[Path]
    labels: list[int | None]
    how: str  # "a photo", "a folder", "the labelled folder ...", "the test split of ..."
    split: Path | None = None  # a labelled split's folder: decoded through the cache, as a run decodes it


def sources(model: ModelFolder, paths: list[str]) -> list[Source]:
    from trainable.data import is_image, labelled_files
    from trainable.predict import find_images

    found = []
    classes = model.classes
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise UserError(f"{given}: no such file or folder: pass photos, or folders of them")
        if path.is_file():
            if not is_image(path.name):
                raise UserError(f"{given} is not an image file (its suffix): pass photos (.jpg, .png, ...), or folders of them")
            found.append(Source(given, [path], [None], "a photo"))
            continue
        split = path / "test" if (path / "train").is_dir() and (path / "test").is_dir() else path
        subfolders = sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
        labelled = bool(subfolders) and set(subfolders) <= set(classes)
        if split is not path and not labelled:
            raise UserError(f"{given} is a data folder whose test/ classes ({', '.join(subfolders)}) are not the model's "
                            f"({', '.join(classes)}): its accuracies would answer another question; pass its photos' folder")
        if labelled:
            pairs = labelled_files(split, classes)
            how = f"the test split of {given}" if split is not path else f"the labelled folder {given}"
            found.append(Source(given, [p for p, _ in pairs], [label for _, label in pairs], how, split))
        else:
            files = find_images(path)
            found.append(Source(given, files, [None] * len(files), "a folder"))
    if not any(s.files for s in found):
        raise UserError(f"no image file in {', '.join(paths)}: pass photos, or folders of them (.jpg, .png, ...)")
    return found


@dataclass
class Prediction:
    """One row per photo (``rows``), the files left out and why, and what the seeds were."""

    model: ModelFolder
    rows: pd.DataFrame  # path, predicted, prob_<class>..., true, correct
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    seed: int | None = None

    def labelled(self) -> pd.DataFrame:
        return self.rows[self.rows["true"].notna()]

    def lines(self) -> list[str]:
        """What was predicted with what, and how well where the true classes are known."""
        from trainable.predict import balanced_accuracy, confusion

        used = (f"seed {self.seed}'s model" if self.seed is not None else
                f"the ensemble of {len(self.model.seeds)} seeds (their class probabilities averaged; --seed N for one)"
                if len(self.model.seeds) > 1 else f"seed {self.model.seeds[0]}'s model")
        out = [f"{len(self.rows)} photo(s) predicted with {used}: {self.model.describe()}"]
        if self.skipped:
            out.append(f"{len(self.skipped)} file(s) left out: " + "; ".join(f"{p} ({why})" for p, why in self.skipped[:5])
                       + (" ..." if len(self.skipped) > 5 else ""))
        known = self.labelled()
        if len(known):
            classes = self.model.classes
            index = {c: i for i, c in enumerate(classes)}
            counts = confusion(known["true"].map(index).to_numpy(), known["predicted"].map(index).to_numpy(), len(classes))
            out.append(f"accuracy {known['correct'].mean():.3f} on {len(known)} labelled photo(s); per class {per_class_text(counts, classes)}; "
                       f"balanced {balanced_accuracy(counts):.3f}")
            out += confusion_lines(counts, classes)
        return out


def confusion_lines(counts: np.ndarray, classes: list[str]) -> list[str]:
    """The confusion matrix as text: a row per true class, a column per predicted one."""
    width = max(len(c) for c in classes) + 2
    head = "true \\ predicted".ljust(width + 4) + "".join(c.rjust(width) for c in classes)
    return [head] + [f"  {c}".ljust(width + 4) + "".join(str(n).rjust(width) for n in row) for c, row in zip(classes, counts)]


def predict(model: ModelFolder, paths: list[str], seed: int | None = None, device: str | None = None, log=print,
            progress: bool = True, cache: bool = True) -> Prediction:
    """The model's class probabilities for every photo of ``paths`` (``seed``: one seed's model, else the ensemble).

    The photos go through in chunks (decoded, then every seed's model on them), so memory does not grow with the folder;
    a chunk is a whole number of evaluation batches, so every batch holds what one pass over all would. A labelled split
    is decoded as a run decodes it, through the decoded-image cache (``trainable.decoded``; not with ``cache=False``): the
    study's test split, decoded by its rerun, is not decoded again."""
    from trainable.decoded import decode_split
    from trainable.fingerprint import split_fingerprint
    from trainable.loop import eval_batch_size
    from trainable.predict import decode_files, probabilities

    found = sources(model, paths)
    total = sum(len(s.files) for s in found)
    for s in found:
        if s.how != "a photo":
            log(f"{s.given}: {s.how}, {len(s.files)} image file(s)")
    modules = model.modules(seed)
    cfg = model.config
    chunk = CHUNK_BATCHES * eval_batch_size(cfg)  # eval_logits' batch: a chunk is whole batches of it
    classes = model.classes
    paths_out, true, parts, skipped = [], [], [], []
    with _bar(total, progress and total >= PROGRESS_FROM) as advance:
        for source in found:
            if source.split is not None:  # labelled: decoded (or read from the cache) as a run reads it, then in chunks of rows
                files = list(zip(source.files, source.labels))
                decoded = decode_split(files, model.stored_size, split_fingerprint(source.split.parent, source.split.name) if cache else None,
                                       classes)
                if decoded.note:
                    log(decoded.note)
                skipped += [(Path(path), why) for path, why in decoded.skipped]
                left_out = {path for path, _ in decoded.skipped}
                kept = [f for f in source.files if str(f) not in left_out]
                for start in range(0, len(decoded.labels), chunk):
                    parts.append(probabilities(modules, np.asarray(decoded.images[start:start + chunk]), cfg, device))
                    advance(min(chunk, len(decoded.labels) - start))
                paths_out += kept
                true += [classes[int(label)] for label in decoded.labels]
                continue
            for start in range(0, len(source.files), chunk):
                batch = decode_files(source.files[start:start + chunk], model.stored_size)
                skipped += batch.skipped
                if len(batch.paths):
                    parts.append(probabilities(modules, batch.images, cfg, device))
                    paths_out += batch.paths
                    true += [None] * len(batch.paths)
                advance(min(chunk, len(source.files) - start))
    if not paths_out:
        raise UserError(f"none of the {total} file(s) could be decoded (e.g. {skipped[0][0]}: {skipped[0][1]})")
    probs = np.concatenate(parts)
    predicted = [classes[i] for i in probs.argmax(1)]
    rows = pd.DataFrame({"path": pd.array([str(p) for p in paths_out], dtype="string"), "predicted": pd.array(predicted, dtype="string"),
                         **{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)},
                         "true": pd.array(true, dtype="string"),
                         "correct": pd.array([None if t is None else t == p for t, p in zip(true, predicted)], dtype="boolean")})
    return Prediction(model, rows, skipped, seed)


CHUNK_BATCHES = 8


class _bar:
    """A rich progress bar (rate, ETA) over ``total`` photos where ``shown``; a no-op otherwise."""

    def __init__(self, total: int, shown: bool):
        self.total, self.shown, self._progress = total, shown, None

    def __enter__(self):
        if not self.shown:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                  TimeRemainingColumn(), transient=True)
        self._progress.start()
        task = self._progress.add_task("predict", total=self.total, rate="")

        def advance(n: int) -> None:
            speed = self._progress.tasks[0].speed
            self._progress.update(task, advance=n, rate=f"{speed:.0f} photos/s" if speed else "")

        return advance

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False
