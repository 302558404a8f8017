"""The study's tables: ``trials.parquet`` (one ranked row per sample), ``epochs.parquet`` (one row per sample per
epoch) and ``confirm.parquet`` (one row per confirmation run), so an interrupted study keeps all it finished.

A sample is an Optuna trial: its number (``optuna_trial``) is the key. ``trial_id`` is the Ray Tune trial
that ran it last; a trial resumed by a later driver run is a new Ray trial of the same sample, so its epoch
rows carry the id of the Ray trial that trained each epoch.

While trials run, every change is appended to ``tables.journal`` (a line of JSON per changed row: the driver's
work per result does not grow with the study), and the parquet files are rewritten whole (atomically) every
couple of seconds, at most a tenth of the time, and at the end of every stage; a rewrite empties the journal.
Whoever reads the tables (a resume, ``study.analyze``) reads the parquet files and then the journal's newer rows
(``read_tables``), so a driver killed at any moment loses nothing it had recorded.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pandas as pd

from study.core.folder import EPOCHS_FILE, JOURNAL_FILE, TRIALS_FILE, StudyFolder, set_aside, write_parquet_atomic
from study.core.settings import StudySettings
from study.core.values import isnan
from study.core.vocabulary import (COMPLETED, DIVERGED, ERRORED, FAILED, PARAM_TYPES, RUN_ENDED, RUNNING, STOPPED_EARLY,
                                   TIMED_OUT)

# --- where a trial's time went (docs/results.md): per epoch, and per trial for its start ---------------------
EPOCH_PHASES = ["train_s", "val_s", "checkpoint_s", "report_s"]
EPOCH_DEVICE = ["device_mb"]  # the GPU memory the trial's process held (max reserved by then; empty on the CPU)
START_PHASES = ["import_s", "data_wait_s", "restore_s", "build_s", "weights_s", "to_device_s", "first_step_s"]  # summed over its runs
# Each table's columns, in order, with their types: the one list of them (docs/results.md describes each).
EPOCH_TYPES = {"trial_id": "str", "optuna_trial": "int64", "epoch": "int64", "train_loss": "float64", "train_acc": "float64",
               "val_loss": "float64", "val_acc": "float64", "seconds": "float64", "images_per_s": "float64", "diverged": "bool",
               "resumed_from_epoch": "int64", "ended_at": "float64", "node_id": "str", "node_ip": "str", "hostname": "str",
               **{c: "float64" for c in EPOCH_PHASES + EPOCH_DEVICE}}
EPOCH_COLUMNS = list(EPOCH_TYPES)
TRIAL_HEAD_TYPES = {"rank": "int64", "trial_id": "str", "optuna_trial": "int64", "baseline": "bool"}  # then the searched hyperparameters
TRIAL_TAIL_TYPES = {"best_val_acc": "float64", "best_epoch": "Int64", "last_val_acc": "float64", "epochs_run": "int64", "status": "str",
                    "error": "str", "seconds": "float64", "images_per_s": "float64", "seed": "int64", "threads": "int64",
                    "trial_dir": "str", "node_id": "str", "node_ip": "str", "hostname": "str", "slot_s": "float64",
                    "started_at": "float64", "ended_at": "float64", **{c: "float64" for c in START_PHASES}, "worker_pid": "Int64",
                    "warm_runs": "Int64",
                    "confirm_mean": "float64", "confirm_sd": "float64", "confirm_folds": "int64", "recommended": "str"}  # the confirmation's
TRIAL_HEAD, TRIAL_TAIL = list(TRIAL_HEAD_TYPES), list(TRIAL_TAIL_TYPES)
TRIAL_TYPES = {**TRIAL_HEAD_TYPES, **TRIAL_TAIL_TYPES}
SNAPSHOT_EVERY_S = 2.0  # the parquet files are at most this old while trials run (the journal holds the rest)
SNAPSHOT_SHARE = 0.1  # and rewriting them takes at most this share of the driver's time


def _plain(value):
    """A table value as JSON can hold it (numpy and pandas scalars to Python's)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return None if isnan(value) else value


def _or_inf(value) -> float:
    return math.inf if isnan(value) else float(value)


class StudyTables:
    """In-memory trial and epoch records of one study, and their parquet files."""

    def __init__(self, folder: Path, params: list[str], max_epochs: int, seed: int, load: bool = True):
        self.folder = Path(folder)
        self.params = params
        self.max_epochs = max_epochs
        self.seed = seed
        self.trials: dict[int, dict] = {}  # optuna_trial -> row
        self.epochs: dict[tuple[int, int], dict] = {}  # (optuna_trial, epoch) -> row
        self._changes: list[dict] = []  # journal entries not yet appended
        self._snapshot_at = time.monotonic()
        self._snapshot_cost = 0.0
        self._torn = False
        if load:
            self.load()

    @property
    def trials_path(self) -> Path:
        return self.folder / TRIALS_FILE

    @property
    def epochs_path(self) -> Path:
        return self.folder / EPOCHS_FILE

    @property
    def journal_path(self) -> Path:
        return self.folder / JOURNAL_FILE

    def load(self, tolerate_damage: bool = False) -> dict[str, str]:
        """Start from what an earlier driver run wrote (the parquet files, then the journal's newer rows). A file that
        cannot be read raises, or with ``tolerate_damage`` is left out and returned (file name -> why) for the caller to repair."""
        damaged = {}
        for path in (self.trials_path, self.epochs_path):
            if not path.exists():
                continue
            try:
                frame = pd.read_parquet(path)
            except Exception as exc:  # truncated, zeroed, not parquet at all
                if not tolerate_damage:
                    raise
                damaged[path.name] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                continue
            for row in frame.to_dict("records"):
                if path == self.trials_path:
                    row.pop("rank", None)
                    self.trials[int(row["optuna_trial"])] = row
                else:
                    self.epochs[(int(row["optuna_trial"]), int(row["epoch"]))] = row
        self._replay_journal()
        self._changes.clear()  # what the journal said is on disk already
        return damaged

    # --- the journal ---------------------------------------------------------------------------------------
    def _replay_journal(self) -> None:
        try:
            text = self.journal_path.read_text()
        except OSError:
            return
        self._torn = bool(text) and not text.endswith("\n")  # a driver killed mid-line: the next append starts a new line
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the last line of a driver killed while it wrote: the row before it stands
            if "trial" in entry:
                self.trials[int(entry["trial"]["optuna_trial"])] = entry["trial"]
            elif "epoch" in entry:
                row = entry["epoch"]
                self.epochs[(int(row["optuna_trial"]), int(row["epoch"]))] = row
            elif "drop_epoch" in entry:
                self.epochs.pop(tuple(entry["drop_epoch"]), None)
            elif "forget" in entry:
                self.forget(int(entry["forget"]))

    def _changed_trial(self, number: int) -> None:
        self._changes.append({"trial": number})

    def _changed_epoch(self, key: tuple[int, int]) -> None:
        self._changes.append({"epoch": key})

    def record(self) -> None:
        """Append the rows changed since the last call to the journal (the driver's work per result), and rewrite the
        parquet files when they are due (``SNAPSHOT_EVERY_S``, ``SNAPSHOT_SHARE``)."""
        if self._changes:
            lines = []
            for change in self._changes:
                if "trial" in change and change["trial"] in self.trials:
                    lines.append({"trial": {k: _plain(v) for k, v in self.trials[change["trial"]].items()}})
                elif "epoch" in change:
                    key = change["epoch"]
                    lines.append({"epoch": {k: _plain(v) for k, v in self.epochs[key].items()}} if key in self.epochs
                                 else {"drop_epoch": list(key)})
                elif "forget" in change:
                    lines.append(change)
            self._changes.clear()
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.journal_path, "a") as journal:
                journal.write(("\n" if self._torn else "") + "".join(json.dumps(line) + "\n" for line in lines))
                self._torn = False
                journal.flush()
        since = time.monotonic() - self._snapshot_at
        if since >= max(SNAPSHOT_EVERY_S, self._snapshot_cost / SNAPSHOT_SHARE):
            self.write()

    def history(self) -> list[tuple[int, int, float]]:
        """(sample, epoch, val_acc) in the order the results arrived, a diverged epoch as 0: what ASHA saw."""
        rows = sorted(self.epochs.values(), key=lambda r: (_or_inf(r.get("ended_at")), r["optuna_trial"], r["epoch"]))
        out = []
        for row in rows:
            value = 0.0 if row.get("diverged") else row.get("val_acc")
            if not isnan(value):
                out.append((int(row["optuna_trial"]), int(row["epoch"]), float(value)))
        return out

    def rows_of(self, number: int) -> list[dict]:
        return sorted((r for (n, _), r in self.epochs.items() if n == number), key=lambda r: r["epoch"])

    def on_start(self, number: int, trial_id: str, config: dict, trial_dir: str | None = None, threads: int | None = None) -> None:
        row = self.trials.setdefault(number, {"optuna_trial": number, "status": RUNNING, "error": None})
        row.update(trial_id=trial_id, baseline=bool(config.get("baseline", False)), seed=self.seed, status=RUNNING, error=None)
        for name in self.params:
            row[name] = config.get(name)
        if trial_dir is not None and isnan(row.get("trial_dir")):
            row["trial_dir"] = trial_dir  # a resumed sample keeps its earlier folder until it checkpoints in the new one
        if threads is not None:
            row["threads"] = threads
        self.summarise(number)
        self._changed_trial(number)

    def on_result(self, number: int, trial_id: str, config: dict, result: dict, trial_dir: str | None = None) -> str | None:
        """Record an epoch; returns the sample's previous checkpoint folder when this result moved it elsewhere."""
        if number not in self.trials:
            self.on_start(number, trial_id, config)
        previous = None
        trial = self.trials[number]
        if trial_dir is not None and not result.get("replayed") and trial.get("trial_dir") != trial_dir:
            previous = None if isnan(trial.get("trial_dir")) else trial["trial_dir"]
            trial["trial_dir"] = trial_dir  # its newest checkpoint is there now
        epoch = int(result["epoch"])
        row = {k: result.get(k) for k in EPOCH_COLUMNS}
        row.update(trial_id=trial_id, optuna_trial=number, epoch=epoch, diverged=bool(result.get("diverged")),
                   resumed_from_epoch=int(result.get("resumed_from_epoch") or 0), report_s=math.nan)
        earlier = self.epochs.get((number, epoch))
        if earlier is not None and not isnan(earlier.get("ended_at")):
            row["ended_at"] = earlier["ended_at"]  # an epoch trained again after a restart: it arrived when it first did (ASHA's order)
        self.epochs[(number, epoch)] = row
        self._changed_epoch((number, epoch))
        for later in [key for key in self.epochs if key[0] == number and key[1] > epoch]:
            del self.epochs[later]  # a run restarted from an earlier epoch replaces what it trains again
            self._changed_epoch(later)
        before = self.epochs.get((number, epoch - 1))
        if before is not None and not isnan(result.get("report_s_before")):
            before["report_s"] = float(result["report_s_before"])  # how long the last report kept the run waiting
            self._changed_epoch((number, epoch - 1))
        trial = self.trials[number]
        trial.update(trial_id=trial_id, node_id=result.get("node_id"), node_ip=result.get("node_ip"), hostname=result.get("hostname"))
        if result.get("threads") is not None:
            trial["threads"] = int(result["threads"])
        if result.get("worker_pid") is not None:
            trial["worker_pid"] = int(result["worker_pid"])
        if result.get("warm_runs") is not None:
            trial["warm_runs"] = int(result["warm_runs"])
        for phase in START_PHASES:  # a run's first report: its start (summed over the runs a trial took)
            if not isnan(result.get(phase)):
                trial[phase] = (0.0 if isnan(trial.get(phase)) else float(trial[phase])) + float(result[phase])
        self.summarise(number)
        self._changed_trial(number)
        return previous

    def held_slot(self, number: int, started: float, ended: float) -> None:
        """The trial held its slot from ``started`` to ``ended`` (Unix times, as the driver saw its start and end)."""
        trial = self.trials[number]
        trial["slot_s"] = (0.0 if isnan(trial.get("slot_s")) else float(trial["slot_s"])) + float(ended - started)
        trial["started_at"], trial["ended_at"] = float(started), float(ended)
        self._changed_trial(number)

    def on_end(self, number: int, trial_id: str, config: dict, error: str | None = None, timed_out: bool = False) -> str:
        if number not in self.trials:
            self.on_start(number, trial_id, config)
        trial = self.trials[number]
        self.summarise(number)
        if error is not None:
            trial["status"], trial["error"] = TIMED_OUT if timed_out else ERRORED, error
        elif any(r.get("diverged") for r in self.rows_of(number)):
            trial["status"] = DIVERGED
        else:
            trial["status"] = COMPLETED if trial.get("epochs_run", 0) >= self.max_epochs else STOPPED_EARLY
        self._changed_trial(number)
        return trial["status"]

    def forget(self, number: int) -> None:
        """Drop a sample's rows (it will be run again from its start)."""
        self.trials.pop(number, None)
        for key in [key for key in self.epochs if key[0] == number]:
            del self.epochs[key]
        self._changes.append({"forget": number})

    def summarise(self, number: int) -> None:
        rows = self.rows_of(number)
        trial = self.trials[number]
        valid = [r for r in rows if not r.get("diverged") and not isnan(r.get("val_acc"))]
        best = max(valid, key=lambda r: r["val_acc"], default=None)
        trial["best_val_acc"] = best["val_acc"] if best else math.nan
        trial["best_epoch"] = best["epoch"] if best else None
        trial["last_val_acc"] = valid[-1]["val_acc"] if valid else math.nan
        trial["epochs_run"] = rows[-1]["epoch"] if rows else 0
        trial["seconds"] = float(sum(r.get("seconds") or 0 for r in rows if not isnan(r.get("seconds"))))
        speeds = [r["images_per_s"] for r in rows if not isnan(r.get("images_per_s")) and r.get("images_per_s")]
        trial["images_per_s"] = float(sum(speeds) / len(speeds)) if speeds else math.nan
        if any(r.get("diverged") for r in rows) and trial.get("status") == RUNNING:
            trial["status"] = DIVERGED

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials.values():
            out[t["status"]] = out.get(t["status"], 0) + 1
        return out

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        columns = [*TRIAL_HEAD, *self.params, *TRIAL_TAIL]
        trials = pd.DataFrame(list(self.trials.values()), columns=[c for c in columns if c != "rank"]).reindex(columns=columns)
        # Diverged and errored trials rank last whatever they reached before: their recipe is not one to rerun.
        failed = trials["status"].isin(FAILED)
        trials = trials.assign(_failed=failed).sort_values(
            ["_failed", "best_val_acc", "epochs_run", "optuna_trial"], ascending=[True, False, False, True], na_position="last"
        ).drop(columns="_failed")
        trials["rank"] = range(1, len(trials) + 1)
        trials["threads"] = trials["threads"].fillna(0)
        trials["confirm_folds"] = trials["confirm_folds"].fillna(0)
        trials["seed"] = trials["seed"].fillna(self.seed)
        trials["baseline"] = trials["baseline"].fillna(False)
        types = {**TRIAL_TYPES, **{p: PARAM_TYPES.get(p, "float64") for p in self.params}}
        trials = trials.astype(types)
        epochs = pd.DataFrame(list(self.epochs.values()), columns=EPOCH_COLUMNS)
        epochs["resumed_from_epoch"] = epochs["resumed_from_epoch"].fillna(0)
        epochs = epochs.sort_values(["optuna_trial", "epoch"]).astype(EPOCH_TYPES)
        return trials.reset_index(drop=True), epochs.reset_index(drop=True)

    def write(self) -> None:
        """Rewrite both parquet files whole (atomically each), then empty the journal they now hold."""
        started = time.monotonic()
        trials, epochs = self.frames()
        self.folder.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(epochs, self.epochs_path)
        write_parquet_atomic(trials, self.trials_path)
        self._changes.clear()
        if self.journal_path.exists():
            os.truncate(self.journal_path, 0)  # a kill before this line leaves rows the files hold: replayed, they change nothing
        self._torn = False
        self._snapshot_at = time.monotonic()
        self._snapshot_cost = self._snapshot_at - started


def read_tables(folder: StudyFolder, settings: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's trials (ranked) and epochs as the driver last recorded them: the parquet files and the journal's
    newer rows. The one reader of a study's tables (``study.findings.reading.read_study`` and the resume use it)."""
    journal = folder.path / JOURNAL_FILE
    if not (journal.exists() and journal.stat().st_size):
        return pd.read_parquet(folder.trials), pd.read_parquet(folder.epochs)
    return StudyTables(folder.path, list(settings.space), int(settings.base["epochs"]), settings.seed).frames()


# --- confirm.parquet ---------------------------------------------------------------------------------------
CONFIRM_TYPES = {"optuna_trial": "int64", "baseline": "bool", "fold": "int64", "cv_folds": "int64", "seed": "int64", "status": "str",
                 "val_acc": "float64", "val_loss": "float64", "epochs": "int64", "seconds": "float64", "images_per_s": "float64",
                 "trial_id": "str", "trial_dir": "str", "error": "str", "worker_pid": "Int64", "warm_runs": "Int64"}


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
        return [r for (n, _), r in sorted(self.rows.items()) if n == number and r["status"] in RUN_ENDED]
