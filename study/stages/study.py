"""The study as a function of what the user asked for, apart from any command line (as ``trainable.train(cfg)`` is
for one run): ``new_study(request, results_dir)`` and ``resume_study(name, results_dir)``, each returning an
``Outcome``. ``python -m study.run`` only parses its options into a ``StudyRequest`` and prints.

One driver run reads top to bottom (``_run``):

1. the data check: the fingerprints recorded (a new study) or checked (a resume: ``study.core.datacheck``);
2. the warm start (a new study begun from another: ``study.stages.warm_start``);
3. the images decoded once, in the background while the rest starts;
4. the study's state reconciled (``study.stages.reconcile``): what is finished, what continues;
5. Ray started (``study.driver.session``), each trial's resources, the disk checked;
6. the trials and then the confirmation stage, in one Tune run (``study.driver.tuner.fit``, with
   ``study.stages.trials`` and ``study.stages.confirmation`` recording their runs);
7. the summary (``study.stages.summary``), and the driver run's record in ``study.json``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainable import UserError

from study.core.folder import StudyFolder, resume_command, storage_url
from study.core.settings import StudyRequest, StudySettings, resume
from study.core.vocabulary import RUNNING, usable

if TYPE_CHECKING:
    from study.findings.reading import StudyData

FINISHED, STOPPED, NO_RESULT = "finished", "stopped", "no result"


@dataclass
class Outcome:
    """How a driver run ended: ``finished`` (every trial and the confirmation stage done, a usable trial among them),
    ``stopped`` (``why``: Ctrl-C, SIGTERM, a full disk, a crash of Ray; ``resume_command`` continues it) or
    ``no result`` (finished, but every trial diverged or failed)."""

    folder: StudyFolder
    status: str
    why: str | None = None


def check_request(request: StudyRequest) -> None:
    """What a new study is asked for, checked before its folder is made: every bound, a val split to compare trials on,
    the data folder's layout (a test split unless --no-test-split), a weights file that fits ResNet18."""
    request.check()
    base = request.train_config.validate()
    if base.val_fraction <= 0:
        raise UserError("--val-fraction must be above 0 for a study: trials are compared on the validation split")
    if base.data_dir is not None:
        from trainable.data import check_layout

        check_layout(base.data_dir, need_test=request.test_split, no_test="pass --no-test-split")
    from trainable.config import weights_file

    if weights_file(base.weights) is not None:
        from trainable.model import build_model

        build_model(base.weights, 2)  # a bad weights file fails now, not in every trial


def new_study(request: StudyRequest, results_dir: str | Path = "results", warm_start: str | None = None, log=print) -> Outcome:
    """Create study ``request.name`` under ``results_dir`` and run it (``warm_start``: a finished study's folder to begin
    from). A study of that name already there is refused: ``resume_study`` continues it."""
    from trainable.cli import check_output_folder

    results_dir = Path(results_dir).expanduser().resolve()
    check_request(request)
    source = None
    if warm_start:  # checked before anything is written: a study to begin from, finished, not running
        from study.stages.warm_start import source_study

        source = source_study(warm_start)  # read once: the warm start begins from it
    folder = StudyFolder(results_dir / request.name)
    taken = UserError(f"a study named {request.name!r} already exists in {results_dir}: pass --resume to continue it, or choose another --name")
    if folder.exists():
        raise taken
    if request.storage and "://" not in request.storage:
        check_output_folder(request.storage, "--storage", holds="results", kind="folder")  # before any study folder is made
    created = not folder.path.exists()
    check_output_folder(folder.path, "--results-dir", holds="results", kind="folder")
    lock = folder.lock()
    try:
        if folder.exists():  # another driver created it between our check and our lock
            raise taken
        experiment = f"{request.storage.rstrip('/')}/{request.name}" if request.storage else str(folder.path / "ray")
        settings = StudySettings.create(request, experiment)
        try:
            return _run(folder, settings, resumed=False, warm_start=source, log=log)
        except BaseException as exc:
            if created and not folder.exists():  # it failed before its study.json: leave no half-made study behind
                shutil.rmtree(folder.path, ignore_errors=True)
            if isinstance(exc, KeyboardInterrupt):
                return _interrupted(folder, log)
            raise
    finally:
        lock.release()


def resume_study(name: str, results_dir: str | Path = "results", ask_anew=None, accept_data_change: bool = False,
                 retry_timed_out: bool = False, log=print) -> Outcome:
    """Continue study ``name`` where it stopped. ``ask_anew(asked) -> StudyRequest``: the request with what the user asked
    for again (``study.core.settings.resume`` takes what may change, and refuses the rest)."""
    results_dir = Path(results_dir).expanduser().resolve()
    folder = StudyFolder(results_dir / name)
    if not folder.exists():
        raise UserError(f"no study named {name!r} in {results_dir} to resume: check --name and --results-dir")
    lock = folder.lock()
    try:
        settings = folder.read_settings()
        if ask_anew is not None:
            for line in resume(settings, ask_anew(settings.asked)):
                log(line)
        try:
            return _run(folder, settings, resumed=True, accept_data_change=accept_data_change, retry_timed_out=retry_timed_out, log=log)
        except KeyboardInterrupt:
            return _interrupted(folder, log)
    finally:
        lock.release()


def _run(folder: StudyFolder, settings: StudySettings, resumed: bool, warm_start: StudyData | None = None,
         accept_data_change: bool = False, retry_timed_out: bool = False, log=print) -> Outcome:
    """One driver run of the study: from its data check to its summary."""
    from trainable import TrainConfig, prepare_data
    from trainable.data import max_cv_folds, split_fold

    from study.core import datacheck

    base = TrainConfig.from_dict(dict(settings.base))
    run = {"started": dt.datetime.now().isoformat(timespec="seconds"), "resumed": resumed, "timings": {}}
    timings = run["timings"]
    t0 = time.perf_counter()
    timings["startup_s"] = round(time.time() - _process_start(), 2)  # interpreter, imports, checks: before this function
    log(f"study {settings.name}: {settings.samples} trials, {base.epochs} epoch(s) at {base.image_size}px, weights {base.weights}")
    # 1-2. the data check, and the warm start
    if resumed:
        for change in datacheck.check(settings, accept_data_change, "python -m study.run --resume", "start a new study under another --name"):
            log(f"going on with changed data ({datacheck.ACCEPT_FLAG}): {change}")
    else:
        if settings.baseline_note:
            log(settings.baseline_note)
        datacheck.record(settings)
        if warm_start is not None:  # study A, as new_study read it
            from study.stages.warm_start import begin

            begin(folder, warm_start, settings, log)
    from study.driver.checkpoints import sweep_scratch

    sweep_scratch()  # checkpoint scratch folders that trials killed on this machine left behind
    # 3. Decoded once: every training image (the confirmation stage cross-validates on them), kept for every later run
    # (trainable.decoded) unless --no-cache. PIL decodes with the GIL released, so the decoding runs in the background
    # while the study's state is read and Ray starts.
    from study.driver.progress import decode_progress

    decode_log: list[str] = []
    decoding = Background(lambda: prepare_data(base.data_dir, base.image_size, 0.0, base.split_seed, log=decode_log.append,
                                               min_per_class=2, cache=settings.cache, progress=decode_progress(log)))
    # 4. what is finished, what continues
    from study.driver.asha import ResumableASHA
    from study.stages.reconcile import prepare, retry_timed_out as retry

    scheduler = ResumableASHA(base.epochs, grace_period=settings.grace_epochs, reduction_factor=settings.reduction_factor)
    state = prepare(folder, settings, list(settings.space), decisions_of=lambda tables: scheduler.replay(tables.history()))
    for note in state.notes:
        log(note)
    if settings.samples < state.finished + len(state.unfinished):
        raise UserError(f"--samples {settings.samples} is fewer than the {state.finished + len(state.unfinished)} trial(s) study "
                        f"{settings.name!r} already has: ask for at least that many")
    if resumed and retry_timed_out:
        retry(folder, settings, state, log)
    remaining = settings.samples - state.finished
    if resumed:
        log(f"resuming: {state.finished} trial(s) finished, {len(state.unfinished)} to continue, "
            f"{remaining - len(state.unfinished)} to start")

    import ray

    opening = None  # Optuna's study (a second or so) opens while Ray starts, not while the trials' slots wait for it
    if remaining > 0:
        from study.core.optuna_store import open_study

        opening = Background(lambda: open_study(storage_url(folder.optuna_db), settings.name, settings.seed, settings.baseline))
    # 5. Ray, each trial's share of it, the disk
    from study.driver.session import keep_ray_tracebacks_in, start_ray

    ray_started = time.perf_counter()
    log(start_ray(settings.address))
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))  # ray.init put its own (an exit) in
    keep_ray_tracebacks_in(folder.logs / "ray.log")
    try:
        timings["ray_start_s"] = round(time.perf_counter() - ray_started, 2)
        all_data = decoding.result()
        for line in decode_log:
            log(line)
        data = split_fold(all_data, base.val_fraction, base.split_seed, 0)  # the study's split (views: no copy)
        if settings.confirm and settings.confirm["folds"] > (most := max_cv_folds(all_data.train.labels)):
            raise UserError(f"--confirm-folds {settings.confirm['folds']} is more than the smallest class's {most} training "
                            f"images allow (every fold needs an image of each class): ask for at most {most}")
        timings["decode_s"] = round(decoding.seconds, 2)
        images = len(data.train) + len(data.val)
        how = (f"decoded {images} images once" if all_data.decode_s else
               f"read {images} decoded images from the cache, decoded once by an earlier run")
        log(f"{how} ({len(data.train)} train, {len(data.val)} validation, classes {data.classes}) in {timings['decode_s']:.1f}s, "
            f"while Ray started in {timings['ray_start_s']:.1f}s")
        settings.val_images = len(data.val)
        from study.driver.adapter import SharedData
        from study.driver.resources import (at_once, check_cluster_gpus, check_free_space, checkpoint_bytes,
                                            share_resources)

        local = not (settings.address or os.environ.get("RAY_ADDRESS"))
        shared = SharedData(all_data, local)  # one copy on each machine, read in place by every trial and confirmation run
        log(f"images: {_bytes(all_data.train.base_images.nbytes)} decoded, {shared.how}")
        resources, slots, message = share_resources(settings.gpus_requested, settings.cpus_requested, ray.cluster_resources())
        if message:
            log(message)
        check_cluster_gpus(resources, local=local)
        settings.gpus_granted, settings.cpus_granted = resources["gpu"], resources["cpu"]
        concurrent = at_once(settings, slots, remaining or 1)
        check_free_space(folder, settings.experiment_path, concurrent, checkpoint_bytes(base, settings.space, len(data.classes)))
        run.update(concurrent=concurrent, resources=resources, train_images=len(data.train), val_images=len(data.val))
        settings.runs.append(run)
        folder.write_settings(settings)
        state.tables.write()  # repairs and decisions made above, on disk before any trial runs
        timings["setup_s"] = round(time.perf_counter() - t0, 2)

        # 6. the trials, then the confirmation stage, in one Tune run
        from study.driver.progress import Progress
        from study.driver.tuner import fit, study_clock
        from study.stages.confirmation import ConfirmStage, planned_work
        from study.stages.trials import TrialsRecorder

        confirm_runs, confirm_epochs = planned_work(settings)
        clock = study_clock(settings, run, concurrent, time.time() - (time.perf_counter() - t0), confirm_epochs)
        progress = Progress(settings.samples, base.epochs, concurrent, settings.grace_epochs, settings.reduction_factor,
                            confirm_epochs, confirm_runs)
        stage = ConfirmStage(folder, settings, state.tables, progress, clock) if settings.confirm else None
        every_trial_done = remaining <= 0 and not state.tables.counts().get(RUNNING)
        if every_trial_done:
            log("every trial of the study has finished")
        else:
            log(f"{concurrent} trial(s) at a time, each with {resources['cpu']:g} CPU(s)"
                + (f" and {resources['gpu']:g} GPU" if resources["gpu"] else ""))
        fit_s, stopped, confirmed = 0.0, None, None
        if every_trial_done and stage is not None and not stage.begin(slots):
            confirmed = stage.end(None)  # nothing left to run: the decision from the runs on record
        elif remaining > 0 or stage is not None:
            def trials_done(seconds: float) -> None:  # the trials' time so far, in study.json: a kill must not lose it
                timings["fit_s"] = round(seconds, 2)
                timings["wall_s"] = round(time.perf_counter() - t0, 2)  # finish() writes the whole; a killed run keeps this
                try:
                    folder.write_settings(settings)
                except OSError:
                    pass  # finish() writes it again and says so if it still cannot

            from study.driver.searcher import AskTellOptunaSearch

            searcher = AskTellOptunaSearch(settings.space, storage_url(folder.optuna_db), settings.name, max_epochs=base.epochs,
                                           seed=settings.seed, baseline=settings.baseline, unfinished=state.unfinished, clock=clock,
                                           study=opening.result() if opening else None)
            run["fit_started_at"] = round(time.time(), 3)  # for whoever lines the trials' stage up with other clocks (bench --overhead)
            fitted = fit(folder, settings, shared, searcher, max(0, remaining), scheduler,
                         TrialsRecorder(state.tables, list(settings.space), progress), resources, slots, clock, stage,
                         trials_done if remaining > 0 else None)
            fit_s, stopped = fitted.trials_s if remaining > 0 else 0.0, fitted.stopped
            timings["fit_s"] = round(fit_s, 2)
            if fitted.confirm_s is not None:
                timings["confirm_s"] = round(fitted.confirm_s, 2)
            if stage is not None and stage.began_at is not None:
                confirmed = stage.end(stopped)
                stopped = confirmed.stopped
        budget_reached = bool(clock and clock.budget_reached)
        if budget_reached and stage is None:
            log(f"the time budget (--time-budget {settings.time_budget:g} s) ended the search after {len(state.tables.trials)} of "
                f"{settings.samples} trial(s)")
        # 7. the summary, and this driver run's record
        return _finish(folder, settings, state.tables, run, t0, fit_s, stopped, confirmed, stage is not None, budget_reached, log)
    finally:
        ray.shutdown()


def _finish(folder: StudyFolder, settings: StudySettings, tables, run: dict, t0: float, fit_s: float, stopped: str | None,
            confirmed, confirming: bool, budget_reached: bool, log) -> Outcome:
    """The summary, the driver run's record in study.json, and how it ended."""
    from study.stages.summary import summarise

    run["timings"]["fit_s"] = round(fit_s, 2)
    run["timings"]["wall_s"] = round(time.perf_counter() - t0, 2)
    counts = tables.counts()
    # samples the time budget left unstarted are not unfinished: the study ended as asked
    unfinished = counts.get(RUNNING, 0) + (0 if budget_reached else max(0, settings.samples - len(tables.trials)))
    total_fit = sum(r.get("timings", {}).get("fit_s", 0.0) for r in settings.runs if r is not run) + fit_s
    summarise(folder, settings, tables, total_fit, confirmed, budget_reached)
    unconfirmed = confirming and not unfinished and (confirmed is None or not confirmed.complete)
    run["outcome"] = FINISHED if not unfinished and not unconfirmed else STOPPED
    try:
        folder.write_settings(settings)
    except OSError as exc:
        log(f"could not update {folder.settings_file} ({exc.strerror or exc})")
    if unfinished or unconfirmed:
        reason = f": {stopped}" if stopped else ""
        what = f"{unfinished} trial(s) unfinished" if unfinished else "its confirmation stage unfinished"
        log(f"the study stopped with {what}{reason}; continue it with:\n  {resume_command(folder)}")
        return Outcome(folder, STOPPED, stopped or "interrupted")
    if not any(usable(t["status"], t.get("best_val_acc")) for t in tables.trials.values()):
        return Outcome(folder, NO_RESULT)  # every trial diverged or failed: nothing to rerun
    return Outcome(folder, FINISHED)


def _interrupted(folder: StudyFolder, log) -> Outcome:
    """Ctrl-C or SIGTERM before the trials started: nothing was lost; say how to go on where there is a study."""
    if folder.exists():
        log(f"interrupted before the trials started; continue the study with:\n  {resume_command(folder)}")
        return Outcome(folder, STOPPED, "interrupted before the trials started")
    raise KeyboardInterrupt


class Background:
    """``fn()`` on a daemon thread (a Ctrl-C or an error elsewhere does not wait for it); ``result()`` waits for its
    value or raises what it raised; ``seconds``: how long it ran."""

    def __init__(self, fn):
        self._value, self._error, self.seconds = None, None, 0.0

        def work():
            started = time.perf_counter()
            try:
                self._value = fn()
            except BaseException as exc:
                self._error = exc
            self.seconds = time.perf_counter() - started

        self._thread = threading.Thread(target=work, name="background", daemon=True)
        self._thread.start()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _bytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _process_start() -> float:
    import psutil

    return psutil.Process().create_time()
