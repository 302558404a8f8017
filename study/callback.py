"""The Tune callback that keeps the study's parquet tables and console in step with the trials."""

from __future__ import annotations

from pathlib import Path

from ray import tune

from .progress import Progress
from .results import StudyTables


def error_message(trial) -> str:
    """The last line of the trial's traceback: the exception itself."""
    text = trial.get_error() if hasattr(trial, "get_error") else None
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else "the trial failed (no error text was recorded)"


class StudyCallback(tune.Callback):
    """Pickled by Ray with the Tuner; its tables are rebuilt from the parquet files after a restore."""

    def __init__(self, folder: Path, params: list[str], max_epochs: int, seed: int, samples: int):
        self.folder, self.params, self.max_epochs, self.seed, self.samples = Path(folder), params, max_epochs, seed, samples
        self._tables: StudyTables | None = None
        self._progress: Progress | None = None

    def __getstate__(self):
        return {**self.__dict__, "_tables": None, "_progress": None}

    @property
    def tables(self) -> StudyTables:
        if self._tables is None:
            self._tables = StudyTables(self.folder, self.params, self.max_epochs, self.seed)
        return self._tables

    @property
    def progress(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(self.samples)
        return self._progress

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tables.on_start(trial.trial_id, trial.config)
        self.tables.write()
        self.progress.update(self.tables.trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" not in result:
            return
        self.tables.on_result(trial.trial_id, trial.config, result)
        self.tables.write()
        self.progress.update(self.tables.trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, error_message(trial))

    def _end(self, trial, error: str | None) -> None:
        self.tables.on_end(trial.trial_id, trial.config, error)
        self.tables.write()
        self.progress.finished(self.tables.trials, self.tables.trials[trial.trial_id], self.params)

    def on_experiment_end(self, trials, **info):
        self.tables.write()
        self.progress.stop()
