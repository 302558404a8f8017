"""``python -m study.run``: the study's entry point. ``main`` parses the options (``study.options``), creates or
resumes the study folder under its lock, and ``run_study`` runs one driver run: decode the data once, plan what
is left (``study.driver.state``), start Ray (``study.driver.session``), size the trials (``study.driver.resources``),
run them (``study.driver.tuner``), the confirmation stage (``study.driver.confirm``), then the summary. Its
``--help`` text is ``study.options.HELP``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from trainable import TrainConfig, UserError, prepare_data
from trainable.cli import check_output_folder, run_main
from trainable.data import max_cv_folds, split_fold

from study.driver.resources import check_cluster_gpus, check_free_space, checkpoint_bytes, share_resources
from study.driver.session import keep_ray_tracebacks_in, start_ray
from study.driver.trackers import check_trackers
from study.driver.tuner import fit, study_clock
from study.folder import StudyFolder, StudySettings, resume_command
from study.options import StudyOptions
from study.space import load_space, show_space
from study.values import isnan

EXIT_OK, EXIT_STOPPED, EXIT_BAD_INPUT, EXIT_NO_RESULT = 0, 1, 2, 3


def default_name(data_dir: str | None) -> str:
    stem = Path(data_dir).resolve().name if data_dir else "hotdog"
    return f"{stem}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def _interrupted(folder: StudyFolder) -> int:
    """Ctrl-C or SIGTERM before the trials started: nothing was lost; say how to go on where there is a study."""
    if folder.exists():
        print(f"interrupted before the trials started; continue the study with:\n  {resume_command(folder)}")
        return EXIT_STOPPED
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (a preempted job) is handled as Ctrl-C throughout: Ray's handler during the trials, else an interrupt
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    opts = StudyOptions.parse(list(sys.argv[1:] if argv is None else argv))
    if opts.show_space:
        print(show_space(load_space(opts.space)))
        return EXIT_OK

    check_trackers(opts.tensorboard, opts.mlflow)
    results_dir = Path(opts.results_dir).expanduser().resolve()
    if opts.resume and opts.warm_start:
        raise UserError("--warm-start begins a new study: a resumed study keeps how it began; leave --warm-start out")
    if opts.warm_start:  # checked before anything is written: a study to begin from, finished, not running
        from study.driver.warmstart import source_study

        source_study(opts.warm_start)
    if opts.resume:
        if not opts.name:
            raise UserError("--resume needs --name: the study to continue (a folder under --results-dir)")
        folder = StudyFolder(results_dir / opts.name)
        if not folder.exists():
            raise UserError(f"no study named {opts.name!r} in {results_dir} to resume: check --name and --results-dir")
        lock = folder.lock()
        try:
            settings = folder.read_settings()
            opts.merge_into(settings)
            try:
                return run_study(opts, folder, settings, resumed=True)
            except KeyboardInterrupt:
                return _interrupted(folder)
        finally:
            lock.release()

    space = load_space(opts.space)
    base = opts.base_config()
    name = opts.name or default_name(opts.data_dir)
    folder = StudyFolder(results_dir / name)
    if folder.exists():
        raise UserError(f"a study named {name!r} already exists in {results_dir}: pass --resume to continue it, or choose another --name")
    storage = opts.storage_path()
    if storage and "://" not in storage:
        check_output_folder(storage, "--storage", holds="results", kind="folder")  # before any study folder is made
    created = not folder.path.exists()
    check_output_folder(folder.path, "--results-dir", holds="results", kind="folder")
    lock = folder.lock()
    try:
        if folder.exists():  # another driver created it between our check and our lock
            raise UserError(f"a study named {name!r} already exists in {results_dir}: pass --resume to continue it, or choose another --name")
        experiment = f"{storage.rstrip('/')}/{name}" if storage else str(folder.path / "ray")
        settings = opts.new_settings(name, base, space, experiment)
        try:
            return run_study(opts, folder, settings, resumed=False)
        except KeyboardInterrupt:
            if created and not folder.exists():
                shutil.rmtree(folder.path, ignore_errors=True)
            return _interrupted(folder)
        except BaseException:
            if created and not folder.exists():  # it failed before its study.json: leave no half-made study behind
                shutil.rmtree(folder.path, ignore_errors=True)
            raise
    finally:
        lock.release()


def run_study(opts: StudyOptions, folder: StudyFolder, settings: StudySettings, resumed: bool) -> int:
    base = TrainConfig.from_dict(settings.base)
    run = {"started": dt.datetime.now().isoformat(timespec="seconds"), "resumed": resumed, "timings": {}}
    timings = run["timings"]
    t0 = time.perf_counter()
    timings["startup_s"] = round(time.time() - _process_start(), 2)  # interpreter, imports, checks: before this function
    print(f"study {settings.name}: {settings.samples} trials, {base.epochs} epoch(s) at {base.image_size}px, weights {base.weights}")
    if settings.baseline_note and not resumed:
        print(settings.baseline_note)
    from study import datacheck

    if resumed:  # the data and weights the study started with, or one line that says what changed
        for change in datacheck.check(settings, opts.accept_data_change, "python -m study.run --resume",
                                      "start a new study under another --name"):
            print(f"going on with changed data ({datacheck.ACCEPT_FLAG}): {change}")
    else:
        datacheck.record(settings)
        if opts.warm_start:
            from study.driver.warmstart import plan, seed_study, source_study
            from study.folder import storage_url

            source, source_settings = source_study(opts.warm_start)
            warm = plan(source, source_settings, settings)
            settings.warm_start = warm.as_dict()
            for line in warm.lines():
                print(line)
            seed_study(storage_url(folder.optuna_db), source, source_settings, settings, warm)
    from study.driver.checkpoints import sweep_scratch

    sweep_scratch()  # checkpoint scratch folders that trials killed on this machine left behind
    # Decoded once: every training image (the confirmation stage cross-validates on them). PIL decodes with the GIL
    # released, so the decoding runs in the background while the study's state is read and Ray starts.
    decode_log: list[str] = []
    decoding = Background(lambda: prepare_data(base.data_dir, base.image_size, 0.0, base.split_seed, log=decode_log.append,
                                               min_per_class=2))

    from study.driver.asha import ResumableASHA
    from study.driver.state import prepare, retry_timed_out

    params = list(settings.space)
    scheduler = ResumableASHA(base.epochs, grace_period=settings.grace_epochs, reduction_factor=settings.reduction_factor)
    state = prepare(folder, settings, params, decisions_of=lambda tables: scheduler.replay(tables.history()))
    for note in state.notes:
        print(note)
    if settings.samples < state.finished + len(state.unfinished):
        raise UserError(f"--samples {settings.samples} is fewer than the {state.finished + len(state.unfinished)} trial(s) study "
                        f"{settings.name!r} already has: ask for at least that many")
    if resumed and opts.retry_timed_out:
        retry_timed_out(folder, settings, state)
    remaining = settings.samples - state.finished
    if resumed:
        print(f"resuming: {state.finished} trial(s) finished, {len(state.unfinished)} to continue, "
              f"{remaining - len(state.unfinished)} to start")

    import ray

    opening = None  # Optuna's study (a second or so) opens while Ray starts, not while the trials' slots wait for it
    if remaining > 0:
        from study.driver.searcher import open_study
        from study.folder import storage_url

        opening = Background(lambda: open_study(storage_url(folder.optuna_db), settings.name, settings.seed, settings.baseline))
    ray_started = time.perf_counter()
    print(start_ray(settings.address))
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))  # ray.init put its own (an exit) in
    keep_ray_tracebacks_in(folder.logs / "ray.log")
    try:
        timings["ray_start_s"] = round(time.perf_counter() - ray_started, 2)
        all_data = decoding.result()
        for line in decode_log:
            print(line)
        data = split_fold(all_data, base.val_fraction, base.split_seed, 0)  # the study's split (views: no copy)
        if settings.confirm and settings.confirm["folds"] > (most := max_cv_folds(all_data.train.labels)):
            raise UserError(f"--confirm-folds {settings.confirm['folds']} is more than the smallest class's {most} training "
                            f"images allow (every fold needs an image of each class): ask for at most {most}")
        timings["decode_s"] = round(decoding.seconds, 2)
        print(f"decoded {len(data.train) + len(data.val)} images once ({len(data.train)} train, {len(data.val)} validation, "
              f"classes {data.classes}) in {timings['decode_s']:.1f}s, while Ray started in {timings['ray_start_s']:.1f}s")
        settings.val_images = len(data.val)
        from study.driver.adapter import SharedData

        shared = SharedData(all_data)  # in Ray's object store once: every trial and confirmation run reads it there
        resources, slots, message = share_resources(settings.gpus_requested, settings.cpus_requested, ray.cluster_resources())
        if message:
            print(message)
        check_cluster_gpus(resources, local=not (settings.address or os.environ.get("RAY_ADDRESS")))
        settings.gpus_granted, settings.cpus_granted = resources["gpu"], resources["cpu"]
        concurrent = max(1, min(settings.max_concurrent or slots, slots, remaining or 1))
        check_free_space(folder, settings.experiment_path, concurrent, checkpoint_bytes(base, settings.space, len(data.classes)))
        run.update(concurrent=concurrent, resources=resources, train_images=len(data.train), val_images=len(data.val))
        settings.runs.append(run)
        folder.write_settings(settings)
        state.tables.write()  # repairs and decisions made above, on disk before any trial runs
        timings["setup_s"] = round(time.perf_counter() - t0, 2)
        clock = study_clock(settings, run, concurrent, time.time() - (time.perf_counter() - t0))
        fit_s, stopped = 0.0, None
        lines: list[str] = []
        confirmed = True
        stage = None
        if settings.confirm:
            from study.driver.confirm import ConfirmStage
            from study.driver.progress import Progress

            stage = ConfirmStage(folder, settings, state.tables, Progress(settings.samples), clock)
        if remaining <= 0:
            print("every trial of the study has finished")
        else:
            print(f"{concurrent} trial(s) at a time, each with {resources['cpu']:g} CPU(s)"
                  + (f" and {resources['gpu']:g} GPU" if resources["gpu"] else ""))

            def trials_done(seconds: float) -> None:  # the trials' time so far, in study.json: a kill must not lose it
                timings["fit_s"] = round(seconds, 2)
                timings["wall_s"] = round(time.perf_counter() - t0, 2)  # finish() writes the whole; a killed run keeps this
                try:
                    folder.write_settings(settings)
                except OSError:
                    pass  # finish() writes it again and says so if it still cannot

            run["fit_started_at"] = round(time.time(), 3)  # for whoever lines the trials' stage up with other clocks (python -m bench --overhead)
            fitted = fit(folder, settings, shared, state, scheduler, resources, slots, concurrent, clock, stage, trials_done,
                         opening.result())
            fit_s, stopped = fitted.trials_s, fitted.stopped
            timings["fit_s"] = round(fit_s, 2)
            if fitted.confirm_s is not None:  # the stage ran in the trials' Tune run, on their warm workers
                timings["confirm_s"] = round(fitted.confirm_s, 2)
                stopped, lines, confirmed = stage.end(stopped)
                stage = None
        budget_reached = bool(clock and clock.budget_reached)
        if stage is not None and not stopped and not state.tables.counts().get("running") and (
                len(state.tables.trials) >= settings.samples or budget_reached):
            # a resume that found every trial done: the stage in a Tune run of its own
            from study.driver.confirm import run_stage

            if budget_reached:
                print(f"the time budget (--time-budget {settings.time_budget:g} s) ended the search after "
                      f"{len(state.tables.trials)} of {settings.samples} trial(s); the confirmation stage runs on those that finished")
            start = time.perf_counter()
            stopped, lines, confirmed = run_stage(folder, settings, state.tables, shared, resources, slots, len(settings.runs),
                                                  stage.progress, clock)
            timings["confirm_s"] = round(time.perf_counter() - start, 2)
        elif budget_reached and not settings.confirm:
            print(f"the time budget (--time-budget {settings.time_budget:g} s) ended the search after {len(state.tables.trials)} of "
                  f"{settings.samples} trial(s)")
        return finish(folder, settings, state.tables, run, t0, fit_s, stopped, lines, confirmed, budget_reached)
    finally:
        ray.shutdown()


class Background:
    """``fn()`` on a daemon thread (a Ctrl-C or an error elsewhere does not wait for it); ``result()`` waits for its
    value or raises what it raised; ``seconds``: how long it ran."""

    def __init__(self, fn):
        import threading

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


def _process_start() -> float:
    import psutil

    return psutil.Process().create_time()


def finish(folder: StudyFolder, settings: StudySettings, tables, run: dict, t0: float, fit_s: float, stopped: str | None,
           confirmation: list[str] | None = None, confirmed: bool = True, budget_reached: bool = False) -> int:
    """Summary, the run's record in study.json, and the exit code."""
    from study.summary import print_summary

    run["timings"]["fit_s"] = round(fit_s, 2)
    run["timings"]["wall_s"] = round(time.perf_counter() - t0, 2)
    counts = tables.counts()
    # samples the time budget left unstarted are not unfinished: the study ended as asked
    unfinished = counts.get("running", 0) + (0 if budget_reached else max(0, settings.samples - len(tables.trials)))
    total_fit = sum(r.get("timings", {}).get("fit_s", 0.0) for r in settings.runs if r is not run) + fit_s
    settings.summary = {**print_summary(folder, settings, tables, total_fit, confirmation),
                        **({"confirmation": settings.summary["confirmation"]} if "confirmation" in settings.summary else {}),
                        **({"time_budget_reached": True} if budget_reached else {})}
    unfinished_confirmation = not unfinished and not confirmed
    run["outcome"] = "finished" if not unfinished and not unfinished_confirmation else "stopped"
    try:
        folder.write_settings(settings)
    except OSError as exc:
        print(f"could not update {folder.settings_file} ({exc.strerror or exc})")
    if unfinished or unfinished_confirmation:
        reason = f": {stopped}" if stopped else ""
        what = f"{unfinished} trial(s) unfinished" if unfinished else "its confirmation stage unfinished"
        print(f"the study stopped with {what}{reason}; continue it with:\n  {resume_command(folder)}")
        return EXIT_STOPPED
    if not any(t["status"] in ("completed", "stopped early") and not isnan(t.get("best_val_acc")) for t in tables.trials.values()):
        return EXIT_NO_RESULT  # every trial diverged or failed: nothing to rerun
    return EXIT_OK


if __name__ == "__main__":
    run_main(main)
