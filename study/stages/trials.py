"""The trials' stage: what a trial's events do to the study's tables and console.

Tune's events reach the ``TrialsRecorder`` through the study's one callback (``study.driver.callback.StudyCallback``),
as a confirmation run's reach ``study.stages.confirmation.ConfirmationRecorder``: every event goes to the tables'
journal at once (``StudyTables.record``), so a driver killed at any moment leaves tables that a resume can reconcile
(``study.stages.reconcile``), and the parquet files follow every couple of seconds.
"""

from __future__ import annotations

import time

from study.core.tables import StudyTables
from study.core.values import isnan
from study.core.vocabulary import run_config


class TrialsRecorder:
    started_fault, ended_fault = "trial_started", "trial_ended"

    def __init__(self, tables: StudyTables, params: list[str], progress):
        self.tables, self.params, self.progress = tables, params, progress
        self._modes_said: set[str] = set()  # where the trials read the images (on the device, streamed): said once each

    @staticmethod
    def number(config: dict) -> int:
        return int(run_config(config)["optuna_trial"])

    def log_name(self, config: dict) -> str:
        return f"trial-{self.number(config)}"

    def on_start(self, config: dict, trial_id: str, where: str | None) -> None:
        self.tables.on_start(self.number(config), trial_id, config, trial_dir=where)
        self.progress.update(self.tables)

    def on_result(self, config: dict, trial_id: str, result: dict, moved: str | None) -> str | None:
        """Record an epoch; returns the trial's previous checkpoint folder when this result moved it elsewhere."""
        number = self.number(config)
        if result.get("replayed") and (number, int(result["epoch"])) in self.tables.epochs:
            return None  # an epoch the table already holds, re-sent by a resumed trial: keep the original row
        if result.get("resume_note"):
            self.progress.note(f"trial {number}: {result['resume_note']}")
        mode = result.get("data_mode")
        if mode and "in place" not in mode and mode not in self._modes_said:  # a trial's first report: on the device, or streamed
            self._modes_said.add(mode)
            self.progress.note(f"trial {number}: {mode}")
        previous = self.tables.on_result(number, trial_id, config, {**result, "ended_at": time.time()}, trial_dir=moved)
        self.progress.update(self.tables)
        return previous

    def on_end(self, config: dict, trial_id: str, error: str | None, timed_out: bool, log, started: float | None,
               ended: float) -> str | None:
        """The trial ended (``error``: why it failed); returns the folder of a checkpoint nothing resumes from now."""
        number = self.number(config)
        self.tables.on_end(number, trial_id, config, error, timed_out=timed_out)
        if started is not None:
            self.tables.held_slot(number, started, ended)
        self.progress.finished(self.tables, number, self.params, log)
        trial_dir = self.tables.trials[number].get("trial_dir")
        return None if isnan(trial_dir) else trial_dir

    def on_stop(self, config: dict, started: float, stopped: float) -> None:
        """The study stopped (Ctrl-C, SIGTERM, a full disk) while this trial ran: its hold on its slot so far counts
        (the time line must not call it an empty slot); it resumes from its checkpoint."""
        self.tables.held_slot(self.number(config), started, stopped)

    def write(self, whole: bool = False, ended: bool = False) -> None:
        self.tables.write() if whole else self.tables.record()
