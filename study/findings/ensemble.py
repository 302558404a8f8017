"""What a rerun's models are worth on the test split beyond one accuracy: their ensemble (the seeds' class probabilities
averaged, as ``study.predict`` and the exported model use them) and each class on its own (a confusion matrix, each
class's accuracy, the balanced accuracy: folders are often imbalanced).

``rerun_classes.parquet`` holds one row per configuration, model (a seed, or the ensemble) and (true, predicted) class
pair: the confusion matrices, from which every per-class figure follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from study.core.folder import RERUN_LOCK_FILE, StudyFolder, write_parquet_atomic

CLASSES_FILE = "rerun_classes.parquet"
CLASSES_TYPES = {"optuna_trial": "int64", "baseline": "bool", "model": "str", "seed": "Int64", "seeds": "int64", "true_class": "str",
                 "predicted_class": "str", "images": "int64"}


@dataclass
class TestResult:
    """One configuration's models on the test split: each seed's class probabilities, and their ensemble."""

    number: int  # the configuration (its Optuna trial)
    baseline: bool
    classes: list[str]
    labels: np.ndarray  # the test images' true classes
    probabilities: dict[int, np.ndarray]  # seed -> N x classes (the seeds that did not diverge)

    @property
    def ensemble(self) -> np.ndarray:
        return np.mean([self.probabilities[s] for s in sorted(self.probabilities)], axis=0)

    def counts(self, seed: int | None = None) -> np.ndarray:
        """The confusion matrix of one seed's model, or (None) of the ensemble: ``counts[true, predicted]``."""
        from trainable.predict import confusion

        probs = self.ensemble if seed is None else self.probabilities[seed]
        return confusion(self.labels, probs.argmax(1), len(self.classes))

    def correct(self, seed: int | None = None) -> np.ndarray:
        probs = self.ensemble if seed is None else self.probabilities[seed]
        return probs.argmax(1) == self.labels

    def line(self) -> str:
        """``the ensemble of 3 seeds: 0.705 (balanced 0.704); per class hotdog 0.740 (200), not-hotdog 0.670 (200)``."""
        from trainable.predict import balanced_accuracy

        counts = self.counts()
        return (f"the ensemble of {len(self.probabilities)} seed(s): {float(self.correct().mean()):.3f} (balanced "
                f"{balanced_accuracy(counts):.3f}); per class {per_class_text(counts, self.classes)}")

    def rows(self) -> list[dict]:
        out = []
        for seed in [*sorted(self.probabilities), None]:
            counts = self.counts(seed)
            for t, true in enumerate(self.classes):
                for p, predicted in enumerate(self.classes):
                    out.append({"optuna_trial": self.number, "baseline": self.baseline, "model": "ensemble" if seed is None else "seed",
                                "seed": seed, "seeds": len(self.probabilities) if seed is None else 1, "true_class": true,
                                "predicted_class": predicted, "images": int(counts[t, p])})
        return out


def per_class_text(counts: np.ndarray, classes: list[str], escape=None) -> str:
    """``hotdog 0.740 (200), not-hotdog 0.670 (200)``: each class's accuracy and images in a confusion matrix
    (``counts[true, predicted]``), classes with no image left out; ``escape`` (e.g. ``html.escape``) is applied to the
    class names."""
    return ", ".join(f"{escape(c) if escape else c} {counts[i, i] / counts[i].sum():.3f} ({counts[i].sum()})"
                     for i, c in enumerate(classes) if counts[i].sum())


def versus_on_images(mine: TestResult, theirs: TestResult):
    """``mine``'s ensemble minus ``theirs`` on the same test photos, paired photo by photo (each right or wrong): a
    ``study.core.decision.Paired`` whose interval is the photos' own sampling error."""
    from study.core.decision import paired

    if len(mine.labels) != len(theirs.labels) or not mine.probabilities or not theirs.probabilities:
        return None
    return paired(mine.correct().astype(float) - theirs.correct().astype(float))


def write_classes(folder: StudyFolder, results: list[TestResult]) -> None:
    """These configurations' rows of rerun_classes.parquet replace their earlier ones (a lock: reruns of two ranks at
    once keep each other's rows)."""
    from filelock import FileLock

    path = folder.path / CLASSES_FILE
    numbers = {r.number for r in results}
    new = pd.DataFrame([row for r in results for row in r.rows()], columns=list(CLASSES_TYPES))
    with FileLock(str(folder.path / RERUN_LOCK_FILE)):
        if path.is_file():
            old = pd.read_parquet(path)
            old = old[~old["optuna_trial"].isin(numbers)]
            new = pd.concat([old, new], ignore_index=True) if len(old) else new
        write_parquet_atomic(new.astype(CLASSES_TYPES).sort_values(["optuna_trial", "model", "seed", "true_class", "predicted_class"])
                             .reset_index(drop=True), path)


def read_classes(folder: StudyFolder) -> pd.DataFrame | None:
    path = folder.path / CLASSES_FILE
    return pd.read_parquet(path) if path.is_file() else None
