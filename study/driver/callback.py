"""The Tune callback that keeps the study's parquet tables, logs and console in step with the trials.

It runs in the driver, and a trial waits in its report until the driver has taken the result, so its work per
event is small and does not grow with the study: every event goes to the tables' journal at once
(``StudyTables.record``), so a driver killed at any moment leaves tables that a resume can reconcile, and the
parquet files follow every couple of seconds. It also times each trial's hold on its slot (``slot_s``: from its
start to its end as the driver sees them). A trial's failure becomes one console line with the
exception's last line and the path of a log file holding the whole traceback. A full disk (a trial's
checkpoint, or the tables themselves) stops the study cleanly, as Ctrl-C does, so it can resume once space
is freed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ray import tune

from study.driver import faults
from study.driver.adapter import disk_full
from study.driver.progress import Progress
from study.folder import LOGS_DIR, drop_checkpoints, write_text_atomic
from study.results import StudyTables


HEARTBEAT_S = 5.0  # how often the driver run's time so far is written to study.json while trials run


def error_message(trial) -> str:
    """The last line of a Ray-level error (a worker that died, or a trainable that could not start)."""
    text = trial.get_error() if hasattr(trial, "get_error") else None
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else "the trial failed (no error text was recorded)"


def trial_location(trial, storage: str | None) -> str | None:
    """Where the trial's checkpoints live: its folder, as a path or (cloud storage) a URI."""
    try:
        path = trial.path
    except (RuntimeError, ValueError, AttributeError):
        return None
    if storage and "://" in storage:
        return f"{storage.split('://', 1)[0]}://{path}"
    return path


class StudyCallback(tune.Callback):
    def __init__(self, folder: Path, tables: StudyTables, samples: int, params: list[str], storage: str | None = None,
                 progress: Progress | None = None, clock=None):
        self.folder, self.tables, self.samples, self.params, self.storage = Path(folder), tables, samples, params, storage
        self.clock = clock  # study.driver.clock.DriverClock: the median epoch time goes to it, timed-out runs come from it
        self.progress = progress or Progress(samples)
        self.disk_full: str | None = None  # which disk filled up and what could not be written, once one has
        self._errors: dict[int, dict] = {}  # sample -> its trial_error result
        self._started: dict[int, float] = {}  # sample -> when this driver run saw it start (Unix time)
        self._stopping = False
        self.confirmation = None  # the confirmation stage's Tune hooks, once it began in this Tune run (its runs go there)
        self.heartbeat = None  # set by fit: records the driver run's time so far in study.json (a kill loses at most HEARTBEAT_S)
        self._beat = time.monotonic()

    def __getstate__(self):  # Ray pickles the run config: the live tables and console stay in this process
        return {**self.__dict__, "tables": None, "progress": None, "clock": None, "confirmation": None}

    # --- Tune's hooks (a confirmation run's go to the stage's own) ----------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        if "job" in trial.config:
            return self.confirmation.on_trial_start(iteration, trials, trial, **info)
        number = trial.config["optuna_trial"]
        self._started[number] = time.time()
        self.tables.on_start(number, trial.trial_id, trial.config, trial_dir=trial_location(trial, self.storage))
        self._write()
        self.progress.update(self.tables)
        faults.at("trial_started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "job" in trial.config:
            return self.confirmation.on_trial_result(iteration, trials, trial, result, **info)
        number = trial.config["optuna_trial"]
        if result.get("trial_error") is not None:
            self._errors[number] = result
            if result.get("disk_full"):
                self._stop_for_disk(trial_location(trial, self.storage) or str(self.folder), "a trial's checkpoint could not be written")
            return
        if "epoch" not in result:
            return
        if result.get("replayed") and (number, int(result["epoch"])) in self.tables.epochs:
            return  # an epoch the table already holds, re-sent by a resumed trial: keep the original row
        if result.get("resume_note"):
            self.progress.note(f"trial {number}: {result['resume_note']}")
        # the trial's checkpoints moved to this Ray trial's folder once a result carries one there
        moved = trial_location(trial, self.storage) if result.get("checkpoint_epoch") is not None else None
        previous = self.tables.on_result(number, trial.trial_id, trial.config, {**result, "ended_at": time.time()}, trial_dir=moved)
        if self.clock is not None and not result.get("replayed") and result.get("seconds"):
            self.clock.on_epoch(float(result["seconds"]))
        self._write()
        drop_checkpoints(previous)  # an earlier run's folder of this sample: its checkpoint is superseded
        self.progress.update(self.tables)
        faults.at("result")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if "job" in trial.config:
            return self.confirmation.on_trial_complete(iteration, trials, trial, **info)
        number = trial.config["optuna_trial"]
        failed = self._errors.pop(number, None)
        if failed is not None and failed.get("disk_full"):
            return  # not a finished trial: it resumes from its last checkpoint once space is freed
        if why := self._timed_out(trial):
            self._end(trial, why, None, timed_out=True)
        elif failed is not None:
            self._end(trial, failed["trial_error"], failed.get("trial_traceback") or failed["trial_error"])
        else:
            self._end(trial, None, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        if "job" in trial.config:
            return self.confirmation.on_trial_error(iteration, trials, trial, **info)
        text = ""
        try:
            text = Path(trial.error_file).read_text() if trial.error_file else ""
        except OSError:
            pass
        if why := self._timed_out(trial):
            self._end(trial, why, None, timed_out=True)
            return
        self._end(trial, error_message(trial), text or error_message(trial))

    def on_experiment_end(self, trials, **info):
        self._write(whole=True)
        self.progress.stop()

    # --- helpers -----------------------------------------------------------------------------------------
    def _timed_out(self, trial) -> str | None:
        """Why the trial's watchdog ended its process (its mark on the Clock), or None."""
        return self.clock.timed_out(trial.config["optuna_trial"]) if self.clock is not None else None

    def _end(self, trial, error: str | None, log_text: str | None, timed_out: bool = False) -> None:
        number = trial.config["optuna_trial"]
        log = None
        if log_text:
            log = self.folder / LOGS_DIR / f"trial-{number}.log"
            try:
                log.parent.mkdir(exist_ok=True)
                write_text_atomic(log, f"trial {number} (Ray trial {trial.trial_id}), config {trial.config}\n\n{log_text}\n")
            except OSError as exc:
                log = None
                if disk_full(exc):
                    self._stop_for_disk(str(self.folder), "a log could not be written")
        self.tables.on_end(number, trial.trial_id, trial.config, error, timed_out=timed_out)
        if number in self._started:
            self.tables.held_slot(number, self._started.pop(number), time.time())
        self._write()
        self._drop_checkpoints(trial)
        drop_checkpoints(self.tables.trials[number].get("trial_dir"))  # an earlier run's folder it never checkpointed past
        self.progress.finished(self.tables, number, self.params, log)
        faults.at("trial_ended")

    def _write(self, whole: bool = False) -> None:
        """Record the changes (``whole``: rewrite the files); on a full disk keep them in memory (the files keep their
        last complete version)."""
        if self.heartbeat is not None and time.monotonic() - self._beat >= HEARTBEAT_S:
            self._beat = time.monotonic()
            self.heartbeat()
        try:
            self.tables.write() if whole else self.tables.record()
        except OSError as exc:
            if not disk_full(exc):
                raise
            self._stop_for_disk(str(self.folder), "the tables could not be written")

    def _drop_checkpoints(self, trial) -> None:
        """A finished trial never resumes: its checkpoint (45 MB for ResNet18) goes, so a study holds only those of
        the trials running (what the start-up free-space check counts)."""
        drop_checkpoints(trial_location(trial, self.storage))

    def _stop_for_disk(self, where: str, what: str) -> None:
        """Stop the study as Ctrl-C does: Ray's own handler ends the trials and keeps their checkpoints."""
        if self.disk_full is None:
            self.disk_full = f"no space left on the disk holding {where} ({what})"
        if not self._stopping:
            self._stopping = True
            os.kill(os.getpid(), signal.SIGINT)
