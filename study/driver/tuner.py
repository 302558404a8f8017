"""One driver run's Tune run: the study's trials and then its confirmation stage, through one ``tune.Tuner``.

The Optuna searcher (``study.driver.searcher``), wrapped so that the confirmation stage's runs follow the trials
(``StagedSearcher``), the resumable ASHA scheduler and the study's one callback are put together here, and ``fit``
runs them with SIGTERM handled as Ctrl-C. There is no other way into Tune: a resume that finds every trial done runs
its confirmation stage here too, with no trial to run first.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from dataclasses import dataclass

from study.core.folder import StudyFolder, write_text_atomic
from study.core.settings import StudySettings
from study.core.vocabulary import run_dirname
from study.driver.resources import at_once
from study.driver.trackers import check_trackers, tracker_callbacks


def study_clock(settings: StudySettings, run: dict, concurrent: int, run_started: float, confirm_epochs: float):
    """The study's DriverClock (study.driver.clock) for this driver run, or None where no limit applies (--trial-timeout 0
    and no --time-budget). ``confirm_epochs``: the confirmation stage's planned work in study epochs, kept in reserve."""
    if settings.trial_timeout == 0 and not settings.time_budget:
        return None
    from study.driver.clock import DriverClock

    spent = sum(r.get("timings", {}).get("wall_s", 0.0) for r in settings.runs if r is not run)
    return DriverClock(f"hotdog-tune-clock-{os.getpid()}-{len(settings.runs)}", settings.trial_timeout, settings.time_budget,
                       spent, int(settings.base["epochs"]), confirm_epochs, concurrent, run_started)


def sigterm_as_interrupt(interrupted: list[str]):
    """SIGTERM (preemption: Slurm, Kubernetes) handled as Ctrl-C while a Tune run goes, its reason noted in
    ``interrupted``; returns the handler it replaced (``signal.signal(signal.SIGTERM, previous)`` puts it back)."""

    def on_sigterm(signum, frame):
        interrupted.append("stopped by SIGTERM")
        signal.raise_signal(signal.SIGINT)

    return signal.signal(signal.SIGTERM, on_sigterm)


@dataclass
class Fitted:
    """What one driver run's Tune run did: its trials' stage, and the confirmation stage where it began."""

    trials_s: float  # seconds from the start of the Tune run to the confirmation stage's start (or its end)
    confirm_s: float | None  # seconds of the confirmation stage, where it began in this Tune run
    stopped: str | None  # why the study stopped early, or None


def fit(folder: StudyFolder, settings: StudySettings, data, searcher, to_run: int, scheduler, recorder, resources: dict, slots: int,
        clock=None, stage=None, trials_done=None) -> Fitted:
    """Run ``to_run`` trials (``searcher`` proposes them; ``recorder``, a ``study.stages.trials.TrialsRecorder``, keeps
    their rows) as this driver run's Tune experiment, ``run-<k>`` for the k-th entry of ``settings.runs``, and then,
    where ``stage`` (a ``study.stages.confirmation.ConfirmStage``) is given and every trial ended, the confirmation
    stage's runs in the same Tune run: they land on the worker processes the trials warmed. ``trials_done(seconds)``
    records the trials' stage's time so far: every few seconds while trials run, and as the stage ends."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from study.driver.adapter import disk_full, run_trial
    from study.driver.callback import StudyCallback
    from study.driver.searcher import StagedSearcher

    tables = recorder.tables
    callback = StudyCallback(folder.path, recorder, storage=settings.storage, clock=clock)
    check_trackers(bool(settings.trackers.get("tensorboard")), settings.trackers.get("mlflow"))
    interrupted: list[str] = []
    search, most_runs = searcher, 0
    start = time.perf_counter()
    if stage is not None:
        def may_confirm() -> bool:  # every trial ended, none by a full disk or an interruption: the stage can judge
            done = len(tables.trials) >= settings.samples or bool(clock and clock.budget_reached)
            return done and not callback.disk_full and not interrupted and not tables.counts().get("running")

        def begin_confirmation() -> list[dict]:
            if trials_done is not None:
                trials_done(time.perf_counter() - start)
            if clock is not None and clock.budget_reached:
                recorder.progress.note(f"the time budget (--time-budget {settings.time_budget:g} s) ended the search after "
                                       f"{len(tables.trials)} of {settings.samples} trial(s); the confirmation stage runs on those "
                                       "that finished")
            configs = stage.begin(slots)
            callback.confirmation = stage.recorder
            return configs

        search = StagedSearcher(searcher, to_run, may_confirm, begin_confirmation)
        most_runs = stage.most_runs()  # the rule that picks the candidates counts them: never fewer than it runs
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, base=dict(settings.base),
                                                         clock=clock.name if clock else None), resources)
    # One configuration waits, proposed, for the next free slot: Optuna's proposal (tens of ms, more as the study grows)
    # is then made while trials train, not between one trial and the next. Only where the slots are what Ray's resources
    # fit: under a --max-concurrent below them nothing would keep the waiting one from starting.
    limit = at_once(settings, slots)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(num_samples=to_run + most_runs, search_alg=ConcurrencyLimiter(search, limit + (limit >= slots)),
                                    scheduler=scheduler, reuse_actors=not settings.fresh_actors, trial_dirname_creator=run_dirname),
        run_config=tune.RunConfig(
            name=f"run-{len(settings.runs)}", storage_path=settings.experiment_path, verbose=0,
            callbacks=[callback, *tracker_callbacks(settings.trackers, settings.name)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=2),  # a worker process that died: retried from its checkpoint
        ),
    )
    if trials_done is not None:  # every few seconds while the trials run (not once the confirmation stage began)
        callback.heartbeat = lambda: None if stage is not None and stage.began_at is not None else trials_done(time.perf_counter() - start)

    previous = sigterm_as_interrupt(interrupted)
    try:
        tuner.fit()
    except Exception as exc:  # Ray's own failure: one line here, the whole traceback in the study's log
        log = folder.logs / "driver.log"
        try:
            log.parent.mkdir(exist_ok=True)
            write_text_atomic(log, traceback.format_exc())
        except OSError:
            log = None
        if disk_full(exc):
            callback.disk_full = callback.disk_full or f"no space left on a disk Ray writes to ({str(exc).splitlines()[0][:200]})"
        else:
            interrupted.append(f"Ray failed: {(str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]}"
                               + (f" (traceback in {log})" if log else ""))
    finally:
        signal.signal(signal.SIGTERM, previous)
    end = time.perf_counter()
    callback.stopped(time.time())  # what still ran keeps its hold on its slot; the tables written whole (where Tune's on_experiment_end did not)
    began = stage.began_at if stage is not None else None
    trials_s = (began if began is not None else end) - start
    stopped = f"{callback.disk_full}; free space there first" if callback.disk_full else interrupted[0] if interrupted else None
    return Fitted(trials_s, None if began is None else end - began, stopped)
