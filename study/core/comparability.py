"""Are two studies comparable, and how do they differ: one answer, for the three places that ask.

Every setting a study fixes for all its trials is listed once in ``FIXED``, with what a difference in it means:

- ``data``: other images (by their fingerprint where both studies have one, else by folder);
- ``weights``: another starting point (a named one, or a file by its fingerprint);
- ``recipe``: what every trial trains with (image size, epochs, precision, and each hyperparameter neither study
  searches);
- ``split``: which images validate (``val_fraction``, ``split_seed``);
- ``numbers``: what changes a seeded run's numbers but not the question (the seed, the device, the augmentation path);
- ``search``: how the study searches (its space, ASHA's grace and reduction factor);
- ``place``: where it keeps its checkpoints, and whether it keeps a test split.

The three askers:

- ``--resume`` (``study.core.settings.resume``) refuses any difference at all: a resumed study is the same study;
- ``--warm-start`` (``study.stages.warm_start``) carries A's trials as observations only where A and B differ in
  nothing that changes what a validation accuracy means (``changes_the_problem``), else makes a transfer start;
- ``study.compare`` (``study.findings.comparison``) pairs winners only on the same data, and names every difference of
  data, weights and recipe beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainable.config import HYPERPARAMETERS, weights_file

if TYPE_CHECKING:  # for the annotations only: the settings ask this module whether a resume changes the study
    from study.core.settings import StudyRequest, StudySettings

# Each TrainConfig field a study fixes for every trial (its ``base``), and what a difference in it means.
FIXED_BASE = {"data_dir": "data", "weights": "weights", "image_size": "recipe", "epochs": "recipe", "precision": "recipe",
              **{p: "recipe" for p in HYPERPARAMETERS}, "val_fraction": "split", "split_seed": "split", "seed": "numbers",
              "device": "numbers", "augment_path": "numbers"}
# And each study setting beside them.
FIXED_STUDY = {"space": "search", "grace_epochs": "search", "reduction_factor": "search", "storage": "place",
               "test_split": "place"}
PROBLEM = ("data", "weights", "recipe", "split")  # what a validation accuracy means: observations carry only where none differs
_FLAGS = {"test_split": "--no-test-split", "space": "--space"}


@dataclass(frozen=True)
class Difference:
    setting: str  # a TrainConfig field or a study setting
    kind: str  # data, weights, recipe, split, numbers, search, place
    there: object  # A's value (the stored study's, for a resume)
    here: object  # B's value
    changed_in_place: bool = False  # data only: the same folder, other images (changed since A ran)

    @property
    def changes_the_problem(self) -> bool:
        return self.kind in PROBLEM

    def flag(self) -> str:
        return _FLAGS.get(self.setting, "--" + self.setting.replace("_", "-"))

    def text(self) -> str:
        """``image size 32 there, 64 here``; ``other data``; ``its data changed since``; ``other weights``."""
        if self.kind == "data":
            return "its data changed since" if self.changed_in_place else f"other data ({_data_name(self.here)} here)"
        if self.kind == "weights" and self.there == self.here:
            return "other weights (the file's contents differ)"
        return f"{self.setting.replace('_', ' ')} {_show(self.there)} there, {_show(self.here)} here"


def _data_name(data_dir) -> str:
    return data_dir or "the book's hotdog set"


def _show(value) -> str:
    if isinstance(value, dict):
        return "another space" if value else "none"
    return repr(value) if isinstance(value, str) else str(value)


def request_differences(a: StudyRequest, b: StudyRequest) -> list[Difference]:
    """Every fixed setting two requests differ in, by value (paths by where they lead)."""
    found = [Difference(name, kind, a.base.get(name), b.base.get(name)) for name, kind in FIXED_BASE.items()
             if not _same_value(a.base.get(name), b.base.get(name))]
    found += [Difference(name, kind, getattr(a, name), getattr(b, name)) for name, kind in FIXED_STUDY.items()
              if not _same_value(getattr(a, name), getattr(b, name))]
    return found


def differences(a: StudySettings, b: StudySettings) -> list[Difference]:
    """How study B differs from study A in what its trials mean: its data by fingerprint, its weights by fingerprint
    where both are files, every other fixed setting by value; a hyperparameter either study searches is compared
    trial by trial (``study.stages.warm_start``), not here."""
    searched = set(a.space) | set(b.space)
    found = []
    for d in request_differences(a.asked, b.asked):
        if d.setting in ("data_dir", "weights") or d.setting in searched or d.kind in ("search", "place"):
            continue  # the data and weights by their contents below; searched hyperparameters trial by trial
        found.append(d)
    if a.data_fingerprint and b.data_fingerprint:
        if a.data_fingerprint != b.data_fingerprint:
            in_place = _same_value(a.base.get("data_dir"), b.base.get("data_dir"))
            found.insert(0, Difference("data_dir", "data", a.base.get("data_dir"), b.base.get("data_dir"), in_place))
    elif not _same_value(a.base.get("data_dir"), b.base.get("data_dir")):
        found.insert(0, Difference("data_dir", "data", a.base.get("data_dir"), b.base.get("data_dir")))
    wa, wb = a.base.get("weights"), b.base.get("weights")
    files = weights_file(wa) is not None and weights_file(wb) is not None
    if (files and a.weights_fingerprint and b.weights_fingerprint and a.weights_fingerprint != b.weights_fingerprint) or (
            not (files and a.weights_fingerprint and b.weights_fingerprint) and not _same_value(wa, wb)):
        where = 1 if found and found[0].kind == "data" else 0
        found.insert(where, Difference("weights", "weights", wa, wb))
    return found


def _same_value(a, b) -> bool:
    """Equal, or two paths that lead to the same place."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and ("/" in a or "/" in b):
        try:
            return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
        except (OSError, ValueError):
            return False
    return False
