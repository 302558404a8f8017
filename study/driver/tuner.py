"""One driver run's trials on Ray Tune: the Optuna searcher, the resumable ASHA scheduler and the study's
callbacks put together in a ``tune.Tuner``, and its ``fit`` run with SIGTERM handled as Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from dataclasses import dataclass

from trainable import TrainConfig

from study.driver.trackers import check_trackers, tracker_callbacks
from study.folder import StudyFolder, StudySettings, write_text_atomic


def confirm_study_epochs(settings: StudySettings) -> float:
    """The confirmation stage's work in study epochs: a cross-validation run trains on (F-1)/F of the images, a trial
    on 1 - val_fraction of them."""
    if not settings.confirm:
        return 0.0
    base, folds = settings.base, settings.confirm["folds"]
    return (settings.confirm["top"] + 1) * folds * base["epochs"] * (folds - 1) / folds / (1 - base["val_fraction"])


def confirm_runs(settings: StudySettings) -> int:
    """The confirmation stage's runs: its candidates (the top K and the book's recipe) on each fold."""
    return (settings.confirm["top"] + 1) * settings.confirm["folds"] if settings.confirm else 0


def study_clock(settings: StudySettings, run: dict, concurrent: int, run_started: float):
    """The study's DriverClock (study.driver.clock) for this driver run, or None where no limit applies (--trial-timeout 0
    and no --time-budget)."""
    if settings.trial_timeout == 0 and not settings.time_budget:
        return None
    from study.driver.clock import DriverClock

    spent = sum(r.get("timings", {}).get("wall_s", 0.0) for r in settings.runs if r is not run)
    return DriverClock(f"hotdog-tune-clock-{os.getpid()}-{len(settings.runs)}", settings.trial_timeout, settings.time_budget,
                       spent, int(settings.base["epochs"]), confirm_study_epochs(settings), concurrent, run_started)


def sigterm_as_interrupt(interrupted: list[str]):
    """SIGTERM (preemption: Slurm, Kubernetes) handled as Ctrl-C while a Tune run goes, its reason noted in
    ``interrupted``; returns the handler it replaced (``signal.signal(signal.SIGTERM, previous)`` puts it back)."""

    def on_sigterm(signum, frame):
        interrupted.append("stopped by SIGTERM")
        signal.raise_signal(signal.SIGINT)

    return signal.signal(signal.SIGTERM, on_sigterm)


@dataclass
class Fitted:
    """What one driver run's Tune run did: its trials' stage, and the confirmation stage where it began there."""

    trials_s: float  # seconds from the start of the Tune run to the confirmation stage's start (or its end)
    confirm_s: float | None  # seconds of the confirmation stage, where it began in this Tune run
    stopped: str | None  # why the study stopped early, or None


def trial_dirname(trial) -> str:
    return f"confirm_{trial.trial_id}" if "job" in trial.config else f"trial_{trial.trial_id}"  # a confirmation run, or a trial


def fit(folder: StudyFolder, settings: StudySettings, data, state, scheduler, resources: dict, slots: int, concurrent: int,
        clock=None, stage=None, trials_done=None, optuna_study=None) -> Fitted:
    """Run the trials still to run (``settings.samples`` less those ``state`` counts finished) as this driver run's
    Tune experiment, ``run-<k>`` for the k-th entry of ``settings.runs``, and then, where ``stage`` (a
    ``study.driver.confirm.ConfirmStage``) is given and every trial finished, the confirmation stage's runs in the
    same Tune run: they land on the worker processes the trials warmed. ``trials_done(seconds)`` records the trials'
    stage's time so far: every few seconds while trials run, and as the stage ends. ``optuna_study``: the study's Optuna study, opened already (else the searcher opens it)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from study.driver.adapter import disk_full, run_trial
    from study.driver.callback import StudyCallback
    from study.driver.progress import Progress
    from study.driver.searcher import AskTellOptunaSearch, StagedSearcher
    from study.folder import storage_url

    params = list(settings.space)
    base = TrainConfig.from_dict(settings.base)
    tables = state.tables
    searcher = AskTellOptunaSearch(settings.space, storage_url(folder.optuna_db), settings.name, max_epochs=base.epochs,
                                   seed=settings.seed, baseline=settings.baseline, unfinished=state.unfinished, clock=clock,
                                   study=optuna_study)
    progress = Progress(settings.samples, base.epochs, concurrent, settings.grace_epochs, settings.reduction_factor,
                        confirm_study_epochs(settings), confirm_runs(settings))
    callback = StudyCallback(folder.path, tables, settings.samples, params, storage=settings.storage, progress=progress, clock=clock)
    check_trackers(bool(settings.trackers.get("tensorboard")), settings.trackers.get("mlflow"))
    interrupted: list[str] = []
    to_run = settings.samples - state.finished
    search, extra_samples = searcher, 0
    if stage is not None:
        def may_confirm() -> bool:  # every trial ended, none by a full disk or an interruption: the stage can judge
            done = len(tables.trials) >= settings.samples or bool(clock and clock.budget_reached)
            return done and not callback.disk_full and not interrupted and not tables.counts().get("running")

        def begin_confirmation() -> list[dict]:
            if trials_done is not None:
                trials_done(time.perf_counter() - start)
            if clock is not None and clock.budget_reached:
                progress.note(f"the time budget (--time-budget {settings.time_budget:g} s) ended the search after "
                              f"{len(tables.trials)} of {settings.samples} trial(s); the confirmation stage runs on those that finished")
            configs = stage.begin(slots)
            callback.confirmation = stage.callback.callback if stage.callback else None
            return configs

        search = StagedSearcher(searcher, to_run, may_confirm, begin_confirmation)
        extra_samples = confirm_runs(settings)
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, base=settings.base, clock=clock.name if clock else None),
                                    resources)
    # One configuration waits, proposed, for the next free slot: Optuna's proposal (tens of ms, more as the study grows)
    # is then made while trials train, not between one trial and the next.
    at_once = max(1, min(settings.max_concurrent or slots, slots)) + 1
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(num_samples=to_run + extra_samples, search_alg=ConcurrencyLimiter(search, at_once),
                                    scheduler=scheduler, reuse_actors=not settings.fresh_actors, trial_dirname_creator=trial_dirname),
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
    start = time.perf_counter()
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
    began = stage.began_at if stage is not None else None
    trials_s = (began if began is not None else end) - start
    stopped = f"{callback.disk_full}; free space there first" if callback.disk_full else interrupted[0] if interrupted else None
    return Fitted(trials_s, None if began is None else end - began, stopped)
