"""The study's one Tune callback: every run of the study's Tune run (a trial, or a confirmation run) reports here, and
its events go to the recorder of its kind (``study.stages.trials.TrialsRecorder``,
``study.stages.confirmation.ConfirmationRecorder``). What every run shares is done here once: its hold on its slot
(from its start to its end as the driver sees them), its failure as one console line with a log file holding the
whole traceback, its time-out (marked on the study's Clock by its watchdog), a full disk (which stops the study
cleanly, as Ctrl-C does, so it can resume once space is freed), and the checkpoints nothing resumes from.

It runs in the driver, and a run waits in its report until the driver has taken the result, so its work per event
is small and does not grow with the study.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ray import tune

from study.core.folder import LOGS_DIR, drop_checkpoints, write_text_atomic
from study.core.vocabulary import clock_key, is_confirmation, run_key
from study.driver import faults
from study.driver.adapter import disk_full

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
    def __init__(self, folder: Path, trials, storage: str | None = None, clock=None):
        self.folder, self.storage = Path(folder), storage
        self.trials = trials  # the trials' recorder
        self.confirmation = None  # the confirmation stage's recorder, once it began in this Tune run
        self.clock = clock  # study.driver.clock.DriverClock: the median epoch time goes to it, timed-out runs come from it
        self.disk_full: str | None = None  # which disk filled up and what could not be written, once one has
        self.heartbeat = None  # set by fit: records the driver run's time so far in study.json (a kill loses at most HEARTBEAT_S)
        self._errors: dict[str, dict] = {}  # Tune trial id -> its trial_error result
        self._started: dict[str, tuple[dict, float]] = {}  # Tune trial id -> (its config, when this driver run saw it start)
        self._stopping = False
        self._stopped = False  # the Tune run's end was handled (on_experiment_end, then fit: once is enough)
        self._beat = time.monotonic()

    def __getstate__(self):  # Ray pickles the run config: the live recorders and the clock stay in this process
        return {**self.__dict__, "trials": None, "confirmation": None, "clock": None, "heartbeat": None}

    def recorder(self, config: dict):
        return self.confirmation if is_confirmation(config) else self.trials

    # --- Tune's hooks ------------------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        recorder = self.recorder(trial.config)
        self._started[trial.trial_id] = (trial.config, time.time())
        recorder.on_start(trial.config, trial.trial_id, trial_location(trial, self.storage))
        self._write(recorder)
        faults.at(recorder.started_fault)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        recorder = self.recorder(trial.config)
        if result.get("trial_error") is not None:
            self._errors[trial.trial_id] = result
            if result.get("disk_full"):
                self._stop_for_disk(trial_location(trial, self.storage) or str(self.folder), "a checkpoint could not be written")
            return
        if "epoch" not in result:
            return
        # the run's checkpoints moved to this Tune trial's folder once a result carries one there
        moved = trial_location(trial, self.storage) if result.get("checkpoint_epoch") is not None else None
        previous = recorder.on_result(trial.config, trial.trial_id, result, moved)
        if self.clock is not None and not is_confirmation(trial.config) and not result.get("replayed") and result.get("seconds"):
            self.clock.on_epoch(float(result["seconds"]))  # the stall limit follows the trials' epochs
        self._write(recorder)
        drop_checkpoints(previous)  # an earlier run's folder of this sample: its checkpoint is superseded
        faults.at("result")

    def on_trial_complete(self, iteration, trials, trial, **info):
        failed = self._errors.pop(trial.trial_id, None)
        if failed is not None and failed.get("disk_full"):
            self._started.pop(trial.trial_id, None)
            return  # not a finished run: it resumes from its last checkpoint once space is freed
        if why := self._timed_out(trial):
            self._end(trial, why, None, timed_out=True)
        elif failed is not None:
            self._end(trial, failed["trial_error"], failed.get("trial_traceback") or failed["trial_error"])
        else:
            self._end(trial, None, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        if why := self._timed_out(trial):
            self._end(trial, why, None, timed_out=True)
            return
        text = ""
        try:
            text = Path(trial.error_file).read_text() if trial.error_file else ""
        except OSError:
            pass
        self._end(trial, error_message(trial), text or error_message(trial))

    def on_experiment_end(self, trials, **info):
        self.stopped(time.time())

    def stopped(self, now: float) -> None:
        """The Tune run ended: runs still going (the study was stopped) keep their hold on their slot so far, and the
        tables are written whole. Once: a second call (fit's, after Tune's on_experiment_end) does nothing, unless the
        first could not write the tables (a full disk), which it tries again."""
        if self._stopped:
            return
        for config, started in self._started.values():
            recorder = self.recorder(config)
            if recorder is not None:
                recorder.on_stop(config, started, now)
        self._started.clear()
        written = True
        for recorder in (self.trials, self.confirmation):
            if recorder is not None:
                written = self._write(recorder, whole=True) and written
        if self.trials is not None:
            self.trials.progress.stop()
        self._stopped = written

    # --- what every run shares ---------------------------------------------------------------------------------
    def _timed_out(self, trial) -> str | None:
        """Why the run's watchdog ended its process (its mark on the Clock), or None."""
        return self.clock.timed_out(clock_key(*run_key(trial.config))) if self.clock is not None else None

    def _end(self, trial, error: str | None, log_text: str | None, timed_out: bool = False) -> None:
        recorder = self.recorder(trial.config)
        log = None
        if log_text:
            log = self.folder / LOGS_DIR / f"{recorder.log_name(trial.config)}.log"
            try:
                log.parent.mkdir(exist_ok=True)
                write_text_atomic(log, f"{recorder.log_name(trial.config)} (Ray trial {trial.trial_id}), config {trial.config}\n\n{log_text}\n")
            except OSError as exc:
                log = None
                if disk_full(exc):
                    self._stop_for_disk(str(self.folder), "a log could not be written")
        _, started = self._started.pop(trial.trial_id, (None, None))
        earlier = recorder.on_end(trial.config, trial.trial_id, error, timed_out, log, started, time.time())
        self._write(recorder, ended=True)
        drop_checkpoints(trial_location(trial, self.storage))  # a finished run never resumes: its checkpoint goes
        drop_checkpoints(earlier)  # nor from an earlier driver run's folder it never checkpointed past
        faults.at(recorder.ended_fault)

    def _write(self, recorder, whole: bool = False, ended: bool = False) -> bool:
        """Record the changes (``whole``: rewrite the files); on a full disk keep them in memory (the files keep their
        last complete version) and stop the study. Whether they were written."""
        if self.heartbeat is not None and time.monotonic() - self._beat >= HEARTBEAT_S:
            self._beat = time.monotonic()
            self.heartbeat()
        try:
            recorder.write(whole=whole, ended=ended)
        except OSError as exc:
            if not disk_full(exc):
                raise
            self._stop_for_disk(str(self.folder), "the tables could not be written")
            return False
        return True

    def _stop_for_disk(self, where: str, what: str) -> None:
        """Stop the study as Ctrl-C does: Ray's own handler ends the runs and keeps their checkpoints."""
        if self.disk_full is None:
            self.disk_full = f"no space left on the disk holding {where} ({what})"
        if not self._stopping:
            self._stopping = True
            os.kill(os.getpid(), signal.SIGINT)
