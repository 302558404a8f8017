"""The confirmation stage: the study's top configurations, and the book's recipe, cross-validated.

One validation split of a few hundred images is a noisy judge: its top trial is partly luck. Once every
sample has finished, the top K configurations by validation accuracy plus the book's recipe each run
stratified F-fold cross-validation of the whole train split (``trainable.data.kfold_split``: every training
image validates once, so each configuration is judged on all of them, not on the study's few hundred),
with the study's epochs, image size and per-trial resources, as Ray trials. Fold k trains with seed
``fold_seed(study seed, k)`` for every configuration: a run's seed effect (head initialisation, batch order,
augmentation draws) is as large as the differences between good configurations, so the folds of one
configuration must not share it (the spread between folds would then hold no seed noise and the intervals
would be too narrow), while every configuration on one fold does (the comparisons stay paired). Each run lands in
``confirm.parquet`` as it ends (atomically); a run a killed driver left unfinished continues from its newest
intact checkpoint on ``--resume``, as a study's trial does. The decision (``study.decision.decide``): the
best mean over folds is the winner; beside it the paired difference to the book's recipe and the
one-standard-error pick. ``trials.parquet`` gets each candidate's ``confirm_mean``, ``confirm_sd``,
``confirm_folds`` and, once every run is in, ``recommended``.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from study.driver import faults
from study.driver.warmstart import carried_trial
from study.folder import StudyFolder, StudySettings, drop_checkpoints, set_aside, write_parquet_atomic
from study.results import StudyTables
from study.values import isnan, typed

CONFIRM_TYPES = {"optuna_trial": "int64", "baseline": "bool", "fold": "int64", "cv_folds": "int64", "seed": "int64", "status": "str",
                 "val_acc": "float64", "val_loss": "float64", "epochs": "int64", "seconds": "float64", "images_per_s": "float64",
                 "trial_id": "str", "trial_dir": "str", "error": "str", "worker_pid": "Int64", "warm_runs": "Int64"}
DONE = ("completed", "diverged", "errored", "timed_out")


def fold_seed(study_seed: int, fold: int) -> int:
    """The training seed of every confirmation run on ``fold``: its own per fold, shared by the configurations."""
    return int(study_seed) + int(fold)


@dataclass
class Job:
    number: int  # the configuration: its Optuna trial number in the study
    fold: int
    params: dict
    baseline: bool
    seed: int = 0  # fold_seed(study seed, fold)
    resume_dir: str | None = None

    def tune_config(self, folds: int) -> dict:
        """The run's Tune config: its hyperparameters, its fold and seed, and a validation after the last epoch only (its score)."""
        return {**self.params, "optuna_trial": self.number, "baseline": self.baseline, "val_fold": self.fold, "cv_folds": folds,
                "seed": self.seed, "val_last_only": True, "resume_dir": self.resume_dir}


class ConfirmTable:
    """``confirm.parquet``: one row per (configuration, fold), written after every change."""

    def __init__(self, folder: StudyFolder, folds: int):
        self.path = folder.confirm
        self.rows: dict[tuple[int, int], dict] = {}
        self.note = ""
        if self.path.exists():
            try:
                frame = pd.read_parquet(self.path)
            except Exception as exc:  # damaged: its runs are run again (they are deterministic)
                aside = set_aside(self.path)
                self.note = (f"confirm.parquet was damaged ({str(exc).splitlines()[0][:120]}): its runs are run again "
                             f"(the damaged file is kept as {aside.name})")
                return
            if "cv_folds" not in frame or not frame["cv_folds"].eq(folds).all():
                # other folds split the images otherwise: those runs measure something else
                aside = set_aside(self.path, "other-folds")
                self.note = (f"confirm.parquet holds runs on other folds than {folds}-fold cross-validation: they are set "
                             f"aside as {aside.name} and the stage runs again")
                return
            if "seed" not in frame:
                # an older version trained every fold with the study's seed: its intervals leave out the seed noise
                aside = set_aside(self.path, "one-seed")
                self.note = (f"confirm.parquet holds runs that trained every fold with one seed (an older design whose intervals "
                             f"leave out the seed noise): they are set aside as {aside.name} and the stage runs again")
                return
            for row in frame.to_dict("records"):
                self.rows[(int(row["optuna_trial"]), int(row["fold"]))] = row

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(list(self.rows.values()), columns=list(CONFIRM_TYPES))
        return frame.sort_values(["optuna_trial", "fold"]).astype(CONFIRM_TYPES).reset_index(drop=True)

    def write(self) -> None:
        write_parquet_atomic(self.frame(), self.path)

    def finished(self, number: int) -> list[dict]:
        return [r for (n, _), r in sorted(self.rows.items()) if n == number and r["status"] in DONE]


def candidates(tables: StudyTables, top: int, carried: int | None = None) -> list[int]:
    """The top ``top`` usable configurations by the study's ranking, then the configuration a warm start carried
    (``carried``: the study it began from named it the winner, so it is judged again) and the book's recipe, each
    always where the study ran it with a result."""
    trials, _ = tables.frames()
    usable = trials[trials["status"].isin(["completed", "stopped early"]) & trials["best_val_acc"].notna()]
    chosen = [int(n) for n in usable["optuna_trial"].head(top)]
    if carried is not None and carried in set(usable["optuna_trial"]) and carried not in chosen:
        chosen.append(int(carried))
    baseline = trials[trials["baseline"]]
    if len(baseline) and int(baseline.iloc[0]["optuna_trial"]) not in chosen:
        chosen.append(int(baseline.iloc[0]["optuna_trial"]))
    return chosen


def pending_jobs(tables: StudyTables, table: ConfirmTable, numbers: list[int], folds: int, params: list[str], seed: int) -> list[Job]:
    """The runs still to do: every (configuration, fold) without a finished row, from its checkpoint where it has one;
    fold k with seed ``fold_seed(seed, k)``."""
    jobs = []
    for number in numbers:
        trial = tables.trials[number]
        config = {p: typed(p, trial[p]) for p in params}
        for fold in range(folds):
            row = table.rows.get((number, fold))
            if row is not None and row["status"] in DONE:
                continue
            resume = None if row is None or isnan(row.get("trial_dir")) else str(row["trial_dir"])
            jobs.append(Job(number, fold, config, bool(trial.get("baseline")), fold_seed(seed, fold), resume))
    return jobs


def decision(table: ConfirmTable, numbers: list[int], folds: int, baseline: int | None, images: int | None = None):
    """``study.decision.decide`` on the finished runs of ``numbers`` (None until every run is in)."""
    from study.decision import decide

    rows = [r for n in numbers for r in table.finished(n)]
    if len(rows) < len(numbers) * folds:
        return None
    frame = pd.DataFrame({
        "config": [r["optuna_trial"] for r in rows], "fold": [r["fold"] for r in rows],
        "val_acc": [math.nan if r["status"] != "completed" else r["val_acc"] for r in rows],
        "seconds_per_epoch": [r["seconds"] / r["epochs"] if r["epochs"] else math.nan for r in rows]})
    return decide(frame, baseline if baseline in numbers else None, images)


def record(tables: StudyTables, table: ConfirmTable, numbers: list[int], result) -> None:
    """The candidates' confirmation figures (so far) into the trials table."""
    for number, trial in tables.trials.items():
        values = [r["val_acc"] if r["status"] == "completed" else 0.0 for r in table.finished(number)]
        trial["confirm_folds"] = len(values)
        trial["confirm_mean"] = float(sum(values) / len(values)) if values and number in numbers else math.nan
        trial["confirm_sd"] = float(pd.Series(values).std(ddof=1)) if len(values) > 1 and number in numbers else math.nan
        marks = []
        if result is not None and number == result.winner:
            marks.append("winner")
        if result is not None and number == result.one_se_pick:
            marks.append("one-SE pick")
        trial["recommended"] = ", ".join(marks) or None


def confirm_dirname(trial) -> str:
    return f"confirm_{trial.trial_id}"


class ConfirmCallback:
    """Keeps confirm.parquet (and the trials table's confirmation columns) in step with the runs."""

    def __init__(self, folder: Path, tables: StudyTables, table: ConfirmTable, numbers: list[int], storage: str | None, progress,
                 clock=None):
        self.callback = _TuneHooks(self, storage)
        self.clock = clock
        self.folder, self.tables, self.table, self.numbers, self.progress = Path(folder), tables, table, numbers, progress
        self.disk_full: str | None = None
        self._epochs: dict[tuple[int, int], dict[int, dict]] = {}  # each run's epoch results
        self._errors: dict[tuple[int, int], dict] = {}

    @staticmethod
    def key(trial) -> tuple[int, int]:
        job = trial.config["job"]
        return int(job["optuna_trial"]), int(job["val_fold"])

    def _row(self, trial) -> dict:
        number, fold = self.key(trial)
        return self.table.rows.setdefault((number, fold), {
            "optuna_trial": number, "baseline": bool(trial.config["job"].get("baseline")), "fold": fold, "cv_folds": int(trial.config["job"]["cv_folds"]),
            "seed": int(trial.config["job"]["seed"]), "status": "running", "val_acc": math.nan, "val_loss": math.nan, "epochs": 0, "seconds": 0.0, "images_per_s": math.nan,
            "trial_id": trial.trial_id, "trial_dir": None, "error": None})

    def on_start(self, trial, where: str | None) -> None:
        row = self._row(trial)
        row.update(status="running", trial_id=trial.trial_id)
        if isnan(row.get("trial_dir")):
            row["trial_dir"] = where  # a resumed run keeps its earlier folder until it checkpoints in the new one
        self._write(trials_too=False)
        faults.at("confirm_started")

    def on_result(self, trial, result: dict, where: str | None) -> None:
        key = self.key(trial)
        if result.get("trial_error") is not None:
            self._errors[key] = result
            if result.get("disk_full"):
                self._stop(f"no space left on the disk holding {where or self.folder} (a checkpoint could not be written)")
            return
        if "epoch" not in result:
            return
        self._epochs.setdefault(key, {})[int(result["epoch"])] = result
        row = self._row(trial)
        for name in ("worker_pid", "warm_runs"):  # which worker process ran it, and how many runs it had trained before
            if result.get(name) is not None:
                row[name] = int(result[name])
        if result.get("checkpoint_epoch") is not None and where and row.get("trial_dir") != where:
            previous, row["trial_dir"] = row.get("trial_dir"), where  # its newest checkpoint is there now
            drop_checkpoints(previous)
        self._summarise(key)
        self._write(trials_too=False)

    def on_end(self, trial, error: str | None) -> None:
        key = self.key(trial)
        failed = self._errors.pop(key, None)
        if error is None and failed is not None and failed.get("disk_full"):
            return  # interrupted by a full disk, not finished: it resumes once space is freed
        number, fold = key
        why = self.clock.timed_out(number, fold) if self.clock is not None else None
        error = why or error or (failed["trial_error"] if failed else None)
        row = self._row(trial)
        self._summarise(key)
        if why:
            row.update(status="timed_out", error=why)
        elif error is not None:
            row.update(status="errored", error=error)
        elif any(r.get("diverged") for r in self._epochs.get(key, {}).values()):
            row["status"] = "diverged"
        else:
            row["status"] = "completed"
        self._write()
        self.progress.note(f"confirmation: trial {number} fold {fold}: {row['status']}"
                           + (f", val acc {row['val_acc']:.3f}" if row["status"] == "completed" else f" ({error})" if error else ""))
        drop_checkpoints(row.get("trial_dir"))  # a finished run never resumes
        from study.driver.callback import trial_location

        drop_checkpoints(trial_location(trial, self.callback.storage))  # nor from this attempt's folder, if it checkpointed there
        faults.at("confirm_ended")

    def _summarise(self, key: tuple[int, int]) -> None:
        history = [self._epochs[key][e] for e in sorted(self._epochs.get(key, {}))]
        if history:
            last = history[-1]
            self.table.rows[key].update(
                val_acc=last.get("val_acc"), val_loss=last.get("val_loss"), epochs=int(last["epoch"]),
                seconds=float(sum(h.get("seconds") or 0 for h in history)),
                images_per_s=float(sum(h.get("images_per_s") or 0 for h in history) / len(history)))

    def _write(self, trials_too: bool = True) -> None:
        """confirm.parquet (a row per run: small) after every event; the trials table's confirmation columns when a
        run ends."""
        from study.driver.adapter import disk_full

        try:
            self.table.write()
            if trials_too:
                record(self.tables, self.table, self.numbers, None)
                self.tables.write()
        except OSError as exc:
            if not disk_full(exc):
                raise
            self._stop(f"no space left on the disk holding {self.folder} (the tables could not be written)")

    def _stop(self, why: str) -> None:
        """Stop the stage as Ctrl-C does (Ray's own handler): it resumes once space is freed."""
        import os
        import signal

        if self.disk_full is None:
            self.disk_full = why
            os.kill(os.getpid(), signal.SIGINT)


def _tune_callback_base():
    from ray import tune

    return tune.Callback


class _TuneHooks(_tune_callback_base()):
    """Tune's hooks, handed on to a ConfirmCallback; pickled empty (Ray stores the run config)."""

    def __init__(self, outer: ConfirmCallback, storage: str | None):
        self.outer, self.storage = outer, storage

    def __getstate__(self):
        return {}

    def on_trial_start(self, iteration, trials, trial, **info):
        from study.driver.callback import trial_location

        self.outer.on_start(trial, trial_location(trial, self.storage))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from study.driver.callback import trial_location

        self.outer.on_result(trial, result, trial_location(trial, self.storage))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.outer.on_end(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        from study.driver.callback import error_message

        self.outer.on_end(trial, error_message(trial))


class ConfirmStage:
    """The confirmation stage of one driver run: ``begin`` (the candidates and the runs still to do, once every trial
    has ended), the ``callback`` that records its runs as they go, and ``end`` (the decision).

    Its runs go in the trials' own Tune run when this driver run trained trials (``study.driver.tuner``: the runs then
    land on the trials' worker processes, warm), else in a Tune run of their own (``run_stage``: a resume that finds
    every trial done)."""

    def __init__(self, folder: StudyFolder, settings: StudySettings, tables: StudyTables, progress, clock=None):
        self.folder, self.settings, self.tables, self.progress, self.clock = folder, settings, tables, progress, clock
        self.began_at: float | None = None  # time.perf_counter() at begin
        self.callback: ConfirmCallback | None = None
        self.numbers: list[int] = []
        self.table: ConfirmTable | None = None

    @property
    def folds(self) -> int:
        return int(self.settings.confirm["folds"])

    def begin(self, slots: int) -> list[dict]:
        """The Tune configs of the runs still to do (none: nothing to run, or no usable trial to confirm)."""
        import time

        self.began_at = time.perf_counter()
        if self.clock is not None:
            self.clock.for_confirmation()
        settings, tables = self.settings, self.tables
        self.table = ConfirmTable(self.folder, self.folds)
        if self.table.note:
            self.progress.note(self.table.note)
        self.numbers = candidates(tables, settings.confirm["top"], carried_trial(tables.trials, settings.warm_start))
        if not self.numbers:
            return []
        settings.confirm["candidates"] = self.numbers
        jobs = pending_jobs(tables, self.table, self.numbers, self.folds, list(settings.space), settings.base["seed"])
        record(tables, self.table, self.numbers, None)
        self.table.write()
        tables.write()
        if jobs:
            concurrent = max(1, min(settings.max_concurrent or slots, slots, len(jobs)))
            self.progress.note(f"confirmation: {len(self.numbers)} configuration(s) (trials {', '.join(map(str, self.numbers))}) "
                               f"on {self.folds} fold(s): {len(jobs)} run(s) to go, {concurrent} at a time")
            self.callback = ConfirmCallback(self.folder.path, tables, self.table, self.numbers, settings.storage, self.progress,
                                            self.clock)
        return [job.tune_config(self.folds) for job in jobs]

    def end(self, stopped: str | None) -> tuple[str | None, list[str], bool]:
        """The decision; returns (why it stopped early or None, the lines to print, whether every run is in)."""
        if not self.numbers:
            return None, ["confirmation: no usable trial to confirm (every trial diverged or failed)"], True
        if self.callback is not None and self.callback.disk_full:
            stopped = f"{self.callback.disk_full}; free space there first"
        settings, tables, table, numbers, folds = self.settings, self.tables, self.table, self.numbers, self.folds
        baseline = next((n for n in numbers if tables.trials[n].get("baseline")), None)
        result = decision(table, numbers, folds, baseline, settings.training_images())
        record(tables, table, numbers, result)
        table.write()
        tables.write()
        if result is None:
            missing = len(numbers) * folds - sum(len(table.finished(n)) for n in numbers)
            return stopped or "interrupted", [f"confirmation: {missing} run(s) unfinished"], False
        per_run = {n: sum(r["seconds"] for r in table.finished(n)) / max(1, len(table.finished(n))) for n in numbers}
        lines = [*result.lines(), result.cheapest_line(per_run, "s of training a run")]
        w, versus = result.row(result.winner), result.versus_baseline
        settings.summary["confirmation"] = {
            "winner": int(result.winner), "one_se_pick": int(result.one_se_pick), "folds": folds, "candidates": numbers,
            "winner_mean": float(w["mean"]), "winner_ci": [float(w["ci_low"]), float(w["ci_high"])],
            "gain": None if versus is None else {"mean": versus.mean, "ci": [versus.ci_low, versus.ci_high], "df": versus.df,
                                                 "beyond_noise": versus.beyond_noise},
            "lines": lines}
        return stopped, lines, True


def run_stage(folder: StudyFolder, settings: StudySettings, tables: StudyTables, data, resources: dict, slots: int,
              run_index: int, progress, clock=None) -> tuple[str | None, list[str], bool]:
    """What is left of the confirmation stage, in a Tune run of its own (``confirm-<run_index>``); returns (why it
    stopped early or None, the lines to print, whether every run is in)."""
    from ray import tune

    from study.driver.adapter import disk_full, run_trial

    stage = ConfirmStage(folder, settings, tables, progress, clock)
    configs = stage.begin(slots)
    if configs:
        concurrent = max(1, min(settings.max_concurrent or slots, slots, len(configs)))
        trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, base=settings.base,
                                                             clock=clock.name if clock else None), resources)
        tuner = tune.Tuner(
            trainable, param_space={"job": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=not settings.fresh_actors,
                                        trial_dirname_creator=confirm_dirname),
            run_config=tune.RunConfig(name=f"confirm-{run_index}", storage_path=settings.experiment_path, verbose=0,
                                      callbacks=[stage.callback.callback], checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                      failure_config=tune.FailureConfig(max_failures=2)))
        from study.driver.tuner import sigterm_as_interrupt

        interrupted: list[str] = []
        previous = sigterm_as_interrupt(interrupted)
        try:
            tuner.fit()
        except Exception as exc:
            if not disk_full(exc):
                raise
            stage.callback.disk_full = stage.callback.disk_full or "no space left on a disk Ray writes to"
        finally:
            signal.signal(signal.SIGTERM, previous)
        return stage.end(interrupted[0] if interrupted else None)
    return stage.end(None)
