"""A small Python API for notebooks: a study's tables as DataFrames, its settings, its best configuration, a rerun.

    from study import load_study
    study = load_study("results/<name>")   # or load_study() for the newest study under results/
    study.trials                            # trials.parquet, ranked
    study.best()                            # the confirmed winner (else rank 1) as a TrainConfig
    study.rerun(seeds=3)                    # what python -m study.rerun does; returns its rows
    module, transform = study.model()       # the model it shipped: module(transform("photo.jpg")[None]) -> probabilities
    study.predict(["photos/"])              # python -m study.predict: one row per photo

Nothing here starts Ray, except ``rerun(parallel=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from trainable import TrainConfig

from study.core.folder import StudyFolder, find_study
from study.core.settings import StudySettings


@dataclass
class Study:
    folder: StudyFolder

    @property
    def name(self) -> str:
        return self.folder.path.name

    @property
    def settings(self) -> StudySettings:
        return self.folder.read_settings()

    @property
    def trials(self) -> pd.DataFrame:
        """One row per trial, ranked by validation accuracy (docs/results.md lists its columns)."""
        return pd.read_parquet(self.folder.trials)

    @property
    def epochs(self) -> pd.DataFrame:
        """One row per trial per epoch."""
        return pd.read_parquet(self.folder.epochs)

    @property
    def confirm(self) -> pd.DataFrame | None:
        """The confirmation stage's runs, or None where it did not run."""
        return pd.read_parquet(self.folder.confirm) if self.folder.confirm.exists() else None

    @property
    def reruns(self) -> pd.DataFrame | None:
        return pd.read_parquet(self.folder.rerun) if self.folder.rerun.exists() else None

    def config(self, rank: int | None = None) -> TrainConfig:
        """A trial as it ran in the study (rank None: the confirmed winner, else rank 1): ``trainable.train(cfg)``
        trains it again with the same numbers."""
        from study.findings.retrain import choose

        return choose(self.folder, rank, None).trial

    def best(self) -> TrainConfig:
        return self.config(None)

    def analysis(self, importance: str = "ped-anova"):
        """What ``python -m study.analyze`` prints, as objects (importance, best ranges, confirmation)."""
        from study.findings.analysis import analyze

        return analyze(self.folder, importance)

    def rerun(self, seeds: int = 3, rank: int | None = None, epochs: int | None = None, parallel: bool = False,
              threads: int | None = None, baseline: bool = True) -> pd.DataFrame:
        """Retrain a configuration on train + validation with each seed and test it once, and the book's recipe on the
        same seeds unless ``baseline=False``: ``python -m study.rerun``. Rows of both (``baseline`` tells them apart)."""
        from study.findings.retrain import choose, choose_baseline, retrain

        chosen = choose(self.folder, rank, epochs, threads=threads)
        book = choose_baseline(self.folder, chosen, epochs, threads=threads)[0] if baseline else None
        command = f"load_study({str(self.folder.path)!r}).rerun(seeds={seeds}, rank={rank}, epochs={epochs})"
        return pd.DataFrame(retrain(self.folder, chosen, seeds, parallel, book, command=command))

    def model(self, seed: int | None = None) -> "Model":
        """The model ``study.rerun`` shipped: ``module`` takes a uint8 batch at the stored size and gives each class's
        probability (the ensemble of its seeds, or ``seed``'s), ``transform`` makes that batch's rows of photos (a path or
        a PIL image, decoded as evaluation decodes them)."""
        from study.findings.model import open_model

        return Model(open_model(self.folder.path, "load_study(...).model():"), seed)

    def predict(self, paths, seed: int | None = None) -> pd.DataFrame:
        """``python -m study.predict`` on ``paths`` (a path or a list of them): one row per photo."""
        from study.findings.model import open_model
        from study.findings.prediction import predict

        paths = [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]
        return predict(open_model(self.folder.path, "load_study(...).predict():"), paths, seed, log=lambda line: None, progress=False).rows


class Model:
    """A study's shipped model in a notebook: ``module(transform(photo)[None])`` is the photo's class probabilities."""

    def __init__(self, folder, seed: int | None = None):
        self.folder = folder
        self.classes = folder.classes
        self.module = folder.shipped(seed).eval().requires_grad_(False)

    def transform(self, photo):
        """A photo (a path, or a PIL image) as the module's input row: uint8 3 x S x S, decoded as evaluation decodes it."""
        import torch
        from PIL import Image

        from trainable.data import decode_image, image_array

        size = self.folder.stored_size
        array = image_array(photo.copy(), size) if isinstance(photo, Image.Image) else decode_image(Path(photo), size)
        return torch.from_numpy(array.copy())

    def __iter__(self):  # module, transform = study.model()
        return iter((self.module, self.transform))


def load_study(path: str | Path | None = None, results_dir: str | Path = "results") -> Study:
    """The study in ``path`` (a study folder), or the newest under ``results_dir``."""
    folder = find_study(None if path is None else str(path), str(results_dir), log=lambda message: None)
    folder.read_settings()  # a folder that is no study fails here, in one line
    return Study(folder)
