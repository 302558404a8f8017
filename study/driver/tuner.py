"""One driver run's trials on Ray Tune: the Optuna searcher, the resumable ASHA scheduler and the study's
callbacks put together in a ``tune.Tuner``, and its ``fit`` run with SIGTERM handled as Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import time
import traceback

from trainable import TrainConfig

from study.driver.trackers import check_trackers, tracker_callbacks
from study.folder import StudyFolder, StudySettings, write_text_atomic


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def confirm_study_epochs(settings: StudySettings) -> float:
    """The confirmation stage's work in study epochs: a cross-validation run trains on (F-1)/F of the images, a trial
    on 1 - val_fraction of them."""
    if not settings.confirm:
        return 0.0
    base, folds = settings.base, settings.confirm["folds"]
    return (settings.confirm["top"] + 1) * folds * base["epochs"] * (folds - 1) / folds / (1 - base["val_fraction"])


def study_clock(settings: StudySettings, run: dict, concurrent: int, run_started: float):
    """The study's DriverClock (study.driver.clock) for this driver run, or None where no limit applies (--trial-timeout 0
    and no --time-budget)."""
    if settings.trial_timeout == 0 and not settings.time_budget:
        return None
    from study.driver.clock import DriverClock

    spent = sum(r.get("timings", {}).get("wall_s", 0.0) for r in settings.runs if r is not run)
    return DriverClock(f"hotdog-tune-clock-{os.getpid()}-{len(settings.runs)}", settings.trial_timeout, settings.time_budget,
                       spent, int(settings.base["epochs"]), confirm_study_epochs(settings), concurrent, run_started)


def fit(folder: StudyFolder, settings: StudySettings, data, state, scheduler, resources: dict, concurrent: int,
        clock=None) -> tuple[float, str | None]:
    """Run the trials still to run (``settings.samples`` less those ``state`` counts finished) as this driver run's
    Tune experiment, ``run-<k>`` for the k-th entry of ``settings.runs``; returns (seconds, why the study stopped early
    or None)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from study.driver.adapter import disk_full, run_trial
    from study.driver.callback import StudyCallback
    from study.driver.progress import Progress
    from study.driver.searcher import AskTellOptunaSearch
    from study.folder import storage_url

    params = list(settings.space)
    base = TrainConfig.from_dict(settings.base)
    searcher = AskTellOptunaSearch(settings.space, storage_url(folder.optuna_db), settings.name, max_epochs=base.epochs,
                                   seed=settings.seed, baseline=settings.baseline, unfinished=state.unfinished, clock=clock)
    progress = Progress(settings.samples, base.epochs, concurrent, settings.grace_epochs, settings.reduction_factor,
                        confirm_study_epochs(settings))
    callback = StudyCallback(folder.path, state.tables, settings.samples, params, storage=settings.storage, progress=progress, clock=clock)
    check_trackers(bool(settings.trackers.get("tensorboard")), settings.trackers.get("mlflow"))
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, base=settings.base, clock=clock.name if clock else None),
                                    resources)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(num_samples=settings.samples - state.finished, search_alg=ConcurrencyLimiter(searcher, concurrent), scheduler=scheduler,
                                    reuse_actors=not settings.fresh_actors, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=f"run-{len(settings.runs)}", storage_path=settings.experiment_path, verbose=0,
            callbacks=[callback, *tracker_callbacks(settings.trackers, settings.name)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=2),  # a worker process that died: retried from its checkpoint
        ),
    )
    interrupted: list[str] = []

    def on_sigterm(signum, frame):  # preemption (Slurm, Kubernetes) is handled as Ctrl-C: state kept, resumable
        interrupted.append("stopped by SIGTERM")
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
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
    if callback.disk_full:
        return time.perf_counter() - start, f"{callback.disk_full}; free space there first"
    return time.perf_counter() - start, interrupted[0] if interrupted else None
