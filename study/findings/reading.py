"""A study read from its folder alone (no Ray, no training): its settings, its trials and epochs, the book's recipe
among them, and its answer's row (the confirmed winner, else rank 1). Every reader of a study (the analysis, the
rerun, the comparison, a warm start) starts from ``read_study``."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from trainable import UserError

from study.core.folder import RERUN_FILE, StudyFolder, resume_command
from study.core.settings import StudySettings
from study.core.tables import read_tables
from study.core.vocabulary import RUNNING, usable_rows


@dataclass
class StudyData:
    folder: StudyFolder
    settings: StudySettings
    trials: pd.DataFrame  # ranked, as study.run wrote it
    epochs: pd.DataFrame
    params: list[str]  # the searched hyperparameters, in the space's order
    running: str | None = None  # who runs the study now (" (pid N on HOST, since ...)", or "") or None: nobody

    def state(self) -> str:
        """Where the study stands, in a line: running, stopped unfinished, or finished ("")."""
        counts = self.trials["status"].value_counts().to_dict()
        done = len(self.trials) - counts.get(RUNNING, 0)
        if self.running is not None:
            return (f"the study is running now{self.running}: {done} of {self.settings.samples} trial(s) finished, "
                    f"{counts.get(RUNNING, 0)} running; nothing below is final")
        if not self.settings.finished():
            return (f"the study stopped unfinished ({done} of {self.settings.samples} trial(s) finished): nothing below is final; "
                    f"continue it with {resume_command(self.folder)}")
        return ""

    def is_log(self, param: str) -> bool:
        return bool(self.settings.space.get(param, {}).get("log", False))

    def is_categorical(self, param: str) -> bool:
        return self.settings.space.get(param, {}).get("type") == "categorical"

    def choices(self, param: str) -> list:
        return list(self.settings.space.get(param, {}).get("choices", []))

    def bounds(self, param: str) -> tuple[float, float] | None:
        spec = self.settings.space.get(param, {})
        return (float(spec["low"]), float(spec["high"])) if "low" in spec and "high" in spec else None

    @property
    def scored(self) -> pd.DataFrame:
        """Trials with a validation accuracy (errored trials and those diverged in epoch 1 have none)."""
        return self.trials[self.trials["best_val_acc"].notna()]

    @property
    def usable(self) -> pd.DataFrame:
        """Trials whose recipe trained and scored (``study.core.vocabulary.usable``), ranked."""
        return self.trials[usable_rows(self.trials)]

    @property
    def rerun(self) -> pd.DataFrame | None:
        path = self.folder.path / RERUN_FILE
        return pd.read_parquet(path) if path.is_file() else None

    @property
    def rerun_classes(self) -> pd.DataFrame | None:
        """The rerun's confusion matrices (``study.findings.ensemble``), or None before a rerun wrote them."""
        from study.findings.ensemble import read_classes

        return read_classes(self.folder)

    @property
    def confirm(self) -> pd.DataFrame | None:
        path = self.folder.confirm
        return pd.read_parquet(path) if path.is_file() else None

    def winner(self) -> tuple[pd.Series | None, str]:
        """The study's answer and what it is: the confirmed winner where the confirmation stage named one, else the
        single-validation best (rank 1); (None, "") when no trial has a validation accuracy."""
        if "recommended" in self.trials:
            named = self.trials[self.trials["recommended"].fillna("").str.contains("winner")]
            if len(named):
                return named.iloc[0], "confirmed winner"
        usable = self.usable
        return (usable.iloc[0], "best (rank 1)") if len(usable) else (None, "")

    def threads_of(self, row) -> int:
        """The torch threads a trial trained with (its numbers depend on them): its own, else the study's per-trial CPUs."""
        threads = row.get("threads")
        return int(threads) if threads and threads == threads else max(1, int(self.settings.cpus_granted or 1))


def baseline_number(data: StudyData) -> int | None:
    """The book's recipe's trial number, where the study ran it."""
    baseline = data.trials.loc[data.trials["baseline"].fillna(False).astype(bool), "optuna_trial"]
    return int(baseline.iloc[0]) if len(baseline) else None


def baseline_acc(data: StudyData) -> float | None:
    """The book's recipe's best validation accuracy, when the study ran it and it scored."""
    baseline = data.trials[data.trials["baseline"].fillna(False).astype(bool)]
    value = baseline.iloc[0]["best_val_acc"] if len(baseline) else None
    return None if value is None or pd.isna(value) else float(value)


def _no_trials_yet(settings: StudySettings, folder: StudyFolder, what: str) -> UserError:
    if folder.in_use() is not None:
        return UserError(f"study {settings.name!r} in {folder.path} has no trials yet ({what}): it is running; wait until its first "
                         "trial has a result")
    return UserError(f"study {settings.name!r} in {folder.path} has no trials yet ({what}) and nothing runs it: "
                     f"continue it with {resume_command(folder)}")


def read_study(folder: StudyFolder) -> StudyData:
    settings = folder.read_settings()
    if not folder.trials.is_file():
        raise _no_trials_yet(settings, folder, "no trials.parquet")
    try:
        if folder.epochs.is_file():  # the files, and what the journal holds beyond them (a driver killed a moment ago)
            trials, epochs = read_tables(folder, settings)
        else:
            trials = pd.read_parquet(folder.trials)
            epochs = pd.DataFrame(columns=["trial_id", "optuna_trial", "epoch", "val_acc", "diverged"])
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the tables of {folder.path} ({str(exc).splitlines()[0]}): "
                        "they were not written by python -m study.run") from None
    if trials.empty:
        raise _no_trials_yet(settings, folder, "no row in trials.parquet")
    params = [p for p in settings.space if p in trials.columns]
    return StudyData(folder, settings, trials.reset_index(drop=True), epochs, params, folder.in_use())
