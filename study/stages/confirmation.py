"""The confirmation stage: the study's top configurations, the configuration a warm start carried, and the book's
recipe, cross-validated.

One validation split of a few hundred images is a noisy judge: its top trial is partly luck. Once every trial has
ended, the candidates (``candidates``: the top K usable configurations by validation accuracy, then the carried
winner and the book's recipe wherever they rank) each run stratified F-fold cross-validation of the whole train
split (``trainable.data.kfold_split``: every training image validates once), with the study's epochs, image size and
per-trial resources. Fold k trains with seed ``fold_seed(study seed, k)`` for every configuration: a run's seed
effect (head initialisation, batch order, augmentation draws) is as large as the differences between good
configurations, so the folds of one configuration must not share it, while every configuration on one fold does
(the comparisons stay paired).

The runs go through the study's own Tune run, after its trials (``study.driver.searcher.StagedSearcher``), on the
worker processes the trials warmed; a resume that finds every trial done runs them the same way. How many there can
be is counted from the same rule that picks them (``most_candidates``), so the ETA, the time budget's reserve and
Tune's sample count never undercount what runs. Each run lands in ``confirm.parquet`` as it ends (atomically); a run a
killed driver left unfinished continues from its newest intact checkpoint on ``--resume``. The decision
(``study.core.decision.decide``): the best mean over folds is the winner; beside it the paired difference to the
book's recipe and the one-standard-error pick. ``trials.parquet`` gets each candidate's ``confirm_mean``,
``confirm_sd``, ``confirm_folds`` and, once every run is in, ``recommended``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pandas as pd

from study.core.decision import decide, decision_rows
from study.core.settings import StudySettings
from study.core.tables import ConfirmTable, StudyTables
from study.core.values import isnan
from study.core.vocabulary import (COMPLETED, DIVERGED, ERRORED, RUN_ENDED, RUNNING, TIMED_OUT, confirmation_config, fold_seed,
                                   run_config, run_score, typed, usable_rows)


def most_candidates(settings: StudySettings) -> int:
    """The most configurations the stage can judge: its top K, the carried winner and the book's recipe (each where
    the study has one); what ``candidates`` picks is never more."""
    if not settings.confirm:
        return 0
    from study.stages.warm_start import carries_a_winner

    return int(settings.confirm["top"]) + int(carries_a_winner(settings)) + int(settings.baseline is not None)


def planned_work(settings: StudySettings, configurations: int | None = None) -> tuple[int, float]:
    """The stage's runs and their work in study epochs (a cross-validation run trains on (F-1)/F of the images, a trial
    on 1 - val_fraction of them), for ``configurations`` (default: ``most_candidates``)."""
    if not settings.confirm:
        return 0, 0.0
    count = most_candidates(settings) if configurations is None else configurations
    base, folds = settings.base, int(settings.confirm["folds"])
    runs = count * folds
    return runs, runs * base["epochs"] * (folds - 1) / folds / (1 - base["val_fraction"])


def candidates(tables: StudyTables, top: int, carried: int | None = None) -> list[int]:
    """The top ``top`` usable configurations by the study's ranking, then the configuration a warm start carried
    (``carried``: the study it began from named it the winner, so it is judged again, where it trained here) and the
    book's recipe (always, where the study ran it)."""
    trials, _ = tables.frames()
    usable = trials[usable_rows(trials)]
    chosen = [int(n) for n in usable["optuna_trial"].head(top)]
    if carried is not None and carried in set(usable["optuna_trial"]) and carried not in chosen:
        chosen.append(int(carried))
    baseline = trials[trials["baseline"]]
    if len(baseline) and int(baseline.iloc[0]["optuna_trial"]) not in chosen:
        chosen.append(int(baseline.iloc[0]["optuna_trial"]))
    return chosen


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
        return confirmation_config({**self.params, "optuna_trial": self.number, "baseline": self.baseline, "val_fold": self.fold,
                                    "cv_folds": folds, "seed": self.seed, "val_last_only": True, "resume_dir": self.resume_dir})


def pending_jobs(tables: StudyTables, table: ConfirmTable, numbers: list[int], folds: int, params: list[str], seed: int) -> list[Job]:
    """The runs still to do: every (configuration, fold) without a finished row, from its checkpoint where it has one."""
    jobs = []
    for number in numbers:
        trial = tables.trials[number]
        config = {p: typed(p, trial[p]) for p in params}
        for fold in range(folds):
            row = table.rows.get((number, fold))
            if row is not None and row["status"] in RUN_ENDED:
                continue
            resume = None if row is None or isnan(row.get("trial_dir")) else str(row["trial_dir"])
            jobs.append(Job(number, fold, config, bool(trial.get("baseline")), fold_seed(seed, fold), resume))
    return jobs


def record(tables: StudyTables, table: ConfirmTable, numbers: list[int], result) -> None:
    """The candidates' confirmation figures (so far) into the trials table."""
    for number, trial in tables.trials.items():
        values = [run_score(r["status"], r["val_acc"]) for r in table.finished(number)]
        mine = values if number in numbers else []
        trial["confirm_folds"] = len(values)
        trial["confirm_mean"] = float(sum(mine) / len(mine)) if mine else math.nan
        trial["confirm_sd"] = float(pd.Series(mine).std(ddof=1)) if len(mine) > 1 else math.nan
        marks = []
        if result is not None and number == result.winner:
            marks.append("winner")
        if result is not None and number == result.one_se_pick:
            marks.append("one-SE pick")
        trial["recommended"] = ", ".join(marks) or None


class ConfirmationRecorder:
    """What a confirmation run's events do to the study: its row in confirm.parquet (after every event) and, when it
    ends, the candidates' figures in the trials table. Tune's events reach it through the study's one callback
    (``study.driver.callback.StudyCallback``), as a trial's reach ``study.stages.trials.TrialsRecorder``."""

    started_fault, ended_fault = "confirm_started", "confirm_ended"

    def __init__(self, tables: StudyTables, table: ConfirmTable, numbers: list[int], progress):
        self.tables, self.table, self.numbers, self.progress = tables, table, numbers, progress
        self._epochs: dict[tuple[int, int], dict[int, dict]] = {}  # each run's epoch results

    @staticmethod
    def key(config: dict) -> tuple[int, int]:
        job = run_config(config)
        return int(job["optuna_trial"]), int(job["val_fold"])

    def log_name(self, config: dict) -> str:
        number, fold = self.key(config)
        return f"confirm-{number}-fold-{fold}"

    def _row(self, config: dict, trial_id: str) -> dict:
        job = run_config(config)
        number, fold = self.key(config)
        return self.table.rows.setdefault((number, fold), {
            "optuna_trial": number, "baseline": bool(job.get("baseline")), "fold": fold, "cv_folds": int(job["cv_folds"]),
            "seed": int(job["seed"]), "status": RUNNING, "val_acc": math.nan, "val_loss": math.nan, "epochs": 0, "seconds": 0.0,
            "images_per_s": math.nan, "trial_id": trial_id, "trial_dir": None, "error": None})

    def on_start(self, config: dict, trial_id: str, where: str | None) -> None:
        row = self._row(config, trial_id)
        row.update(status=RUNNING, trial_id=trial_id)
        if isnan(row.get("trial_dir")):
            row["trial_dir"] = where  # a resumed run keeps its earlier folder until it checkpoints in the new one

    def on_result(self, config: dict, trial_id: str, result: dict, moved: str | None) -> str | None:
        """Record an epoch; returns the run's previous checkpoint folder when this result moved it elsewhere."""
        key = self.key(config)
        self._epochs.setdefault(key, {})[int(result["epoch"])] = result
        row = self._row(config, trial_id)
        for name in ("worker_pid", "warm_runs"):  # which worker process ran it, and how many runs it had trained before
            if result.get(name) is not None:
                row[name] = int(result[name])
        previous = None
        if moved and row.get("trial_dir") != moved:
            previous, row["trial_dir"] = row.get("trial_dir"), moved  # its newest checkpoint is there now
        self._summarise(key)
        return None if isnan(previous) else previous

    def on_end(self, config: dict, trial_id: str, error: str | None, timed_out: bool, log, started: float | None,
               ended: float) -> str | None:
        """The run ended (``error``: why it failed); returns its checkpoint folder, which nothing resumes from now."""
        key = self.key(config)
        row = self._row(config, trial_id)
        self._summarise(key)
        if timed_out:
            row.update(status=TIMED_OUT, error=error)
        elif error is not None:
            row.update(status=ERRORED, error=error)
        elif any(r.get("diverged") for r in self._epochs.get(key, {}).values()):
            row["status"] = DIVERGED
        else:
            row["status"] = COMPLETED
        number, fold = key
        self.progress.note(f"confirmation: trial {number} fold {fold}: {row['status']}"
                           + (f", val acc {row['val_acc']:.3f}" if row["status"] == COMPLETED else f" ({error})" if error else "")
                           + (f" (log: {log})" if log else ""))
        return row.get("trial_dir")

    def on_stop(self, config: dict, started: float, stopped: float) -> None:
        """The study stopped while this run ran: it resumes from its checkpoint, nothing to record."""

    def _summarise(self, key: tuple[int, int]) -> None:
        history = [self._epochs[key][e] for e in sorted(self._epochs.get(key, {}))]
        if history:
            last = history[-1]
            self.table.rows[key].update(
                val_acc=last.get("val_acc"), val_loss=last.get("val_loss"), epochs=int(last["epoch"]),
                seconds=float(sum(h.get("seconds") or 0 for h in history)),
                images_per_s=float(sum(h.get("images_per_s") or 0 for h in history) / len(history)))

    def write(self, whole: bool = False, ended: bool = False) -> None:
        """confirm.parquet (a row per run: small) after every event; the trials table's confirmation columns when a
        run ends, and whole at the end."""
        self.table.write()
        if ended or whole:
            record(self.tables, self.table, self.numbers, None)
            self.tables.write()


@dataclass
class Confirmed:
    """How the stage ended: why it stopped early (or None), the lines to print, whether every run is in, and the
    decision's record for ``study.json`` (None until every run is in)."""

    stopped: str | None
    lines: list[str]
    complete: bool
    record: dict | None = None


class ConfirmStage:
    """The confirmation stage of one driver run: ``begin`` (the candidates and the runs still to do, once every trial
    has ended), its ``recorder`` while its runs go, and ``end`` (the decision)."""

    def __init__(self, folder, settings: StudySettings, tables: StudyTables, progress, clock=None):
        self.folder, self.settings, self.tables, self.progress, self.clock = folder, settings, tables, progress, clock
        self.began_at: float | None = None  # time.perf_counter() at begin
        self.recorder: ConfirmationRecorder | None = None
        self.numbers: list[int] = []
        self.table: ConfirmTable | None = None
        self._configs: list[dict] | None = None

    @property
    def folds(self) -> int:
        return int(self.settings.confirm["folds"])

    def most_runs(self) -> int:
        """The most runs the stage can have (Tune's sample count): counted by the rule that picks them."""
        return planned_work(self.settings)[0]

    def begin(self, slots: int) -> list[dict]:
        """The Tune configs of the runs still to do (none: nothing to run, or no usable trial to confirm). Asked again,
        the same configs: the stage begins once."""
        if self._configs is not None:
            return list(self._configs)
        self._configs = self._begin(slots)
        return list(self._configs)

    def _begin(self, slots: int) -> list[dict]:
        from study.driver.resources import at_once
        from study.stages.warm_start import carried_trial

        self.began_at = time.perf_counter()
        if self.clock is not None:
            self.clock.for_confirmation()
        settings, tables = self.settings, self.tables
        self.table = ConfirmTable(self.folder, self.folds)
        if self.table.note:
            self.progress.note(self.table.note)
        self.numbers = candidates(tables, settings.confirm["top"], carried_trial(tables.trials, settings.warm_start))
        assert len(self.numbers) <= most_candidates(settings), "the stage's plan undercounts its candidates"
        if not self.numbers:
            return []
        settings.confirm_candidates = list(self.numbers)
        jobs = pending_jobs(tables, self.table, self.numbers, self.folds, list(settings.space), settings.base["seed"])
        runs, epochs = planned_work(settings, len(self.numbers))
        self.progress.confirmation_left(len(jobs), epochs * len(jobs) / max(1, runs))  # the ETA from now on: what is left
        record(tables, self.table, self.numbers, None)
        self.table.write()
        tables.write()
        if jobs:
            self.progress.note(f"confirmation: {len(self.numbers)} configuration(s) (trials {', '.join(map(str, self.numbers))}) "
                               f"on {self.folds} fold(s): {len(jobs)} run(s) to go, {at_once(settings, slots, len(jobs))} at a time")
            self.recorder = ConfirmationRecorder(tables, self.table, self.numbers, self.progress)
        return [job.tune_config(self.folds) for job in jobs]

    def end(self, stopped: str | None) -> Confirmed:
        """The decision, where every run is in."""
        if not self.numbers:
            return Confirmed(None, ["confirmation: no usable trial to confirm (every trial diverged or failed)"], True)
        settings, tables, table, numbers, folds = self.settings, self.tables, self.table, self.numbers, self.folds
        baseline = next((n for n in numbers if tables.trials[n].get("baseline")), None)
        done = table.frame()
        done = done[done["optuna_trial"].isin(numbers) & done["status"].isin(RUN_ENDED)]
        result = decide(decision_rows(done), baseline, settings.training_images()) \
            if len(done) == len(numbers) * folds else None
        record(tables, table, numbers, result)
        table.write()
        tables.write()
        if result is None:
            missing = len(numbers) * folds - len(done)
            return Confirmed(stopped or "interrupted", [f"confirmation: {missing} run(s) unfinished"], False)
        per_run = done.groupby("optuna_trial")["seconds"].mean().to_dict()
        lines = [*result.lines(), result.cheapest_line(per_run, "s of training a run")]
        w, versus = result.row(result.winner), result.versus_baseline
        decided = {
            "winner": int(result.winner), "one_se_pick": int(result.one_se_pick), "folds": folds, "candidates": numbers,
            "winner_mean": float(w["mean"]), "winner_ci": [float(w["ci_low"]), float(w["ci_high"])],
            "winner_corrected": None if result.corrected is None else result.corrected.accuracy_dict(),
            "gain": None if versus is None else {"mean": versus.mean, "ci": [versus.ci_low, versus.ci_high], "df": versus.df,
                                                 "beyond_noise": versus.beyond_noise,
                                                 "corrected": None if result.corrected is None else result.corrected.as_dict()},
            "lines": lines}
        return Confirmed(stopped, lines, True, decided)
