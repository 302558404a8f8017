"""The study's tables: ``trials.parquet`` (one ranked row per trial) and ``epochs.parquet`` (one row per
trial per epoch), rewritten atomically after every result so an interrupted study keeps all it finished."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

EPOCH_COLUMNS = [
    "trial_id", "optuna_trial", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
    "images_per_s", "diverged", "resumed_from_epoch", "node_id", "node_ip", "hostname",
]
STATUSES = ("completed", "stopped early", "diverged", "errored", "running")


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)  # readers see the old table or the new one, never half of one


def read_table(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


class StudyTables:
    """In-memory trial and epoch records of one study, and their parquet files."""

    def __init__(self, folder: Path, params: list[str], max_epochs: int, seed: int):
        self.folder = Path(folder)
        self.params = params
        self.max_epochs = max_epochs
        self.seed = seed
        self.trials: dict[str, dict] = {}
        self.epochs: dict[tuple[str, int], dict] = {}
        self._load()

    @property
    def trials_path(self) -> Path:
        return self.folder / "trials.parquet"

    @property
    def epochs_path(self) -> Path:
        return self.folder / "epochs.parquet"

    def _load(self) -> None:
        """On resume: start from what the interrupted run wrote."""
        epochs, trials = read_table(self.epochs_path), read_table(self.trials_path)
        if epochs is not None:
            for row in epochs.to_dict("records"):
                self.epochs[(row["trial_id"], int(row["epoch"]))] = row
        if trials is not None:
            for row in trials.to_dict("records"):
                row.pop("rank", None)
                self.trials[row["trial_id"]] = row

    def history(self) -> dict[str, dict[int, float]]:
        """val_acc by trial and epoch (for rebuilding ASHA's rungs)."""
        out: dict[str, dict[int, float]] = {}
        for (trial_id, epoch), row in self.epochs.items():
            if not row.get("diverged") and not _isnan(row.get("val_acc")):
                out.setdefault(trial_id, {})[epoch] = float(row["val_acc"])
        return out

    def on_start(self, trial_id: str, config: dict) -> None:
        row = self.trials.setdefault(trial_id, {"trial_id": trial_id, "status": "running", "error": None})
        row["optuna_trial"] = config.get("optuna_trial")
        row["baseline"] = bool(config.get("baseline", False))
        for name in self.params:
            row[name] = config.get(name)
        row["seed"] = self.seed

    def on_result(self, trial_id: str, config: dict, result: dict) -> None:
        if trial_id not in self.trials:
            self.on_start(trial_id, config)
        epoch = int(result["epoch"])
        row = {k: result.get(k) for k in EPOCH_COLUMNS}
        row.update(trial_id=trial_id, optuna_trial=config.get("optuna_trial"), epoch=epoch, diverged=bool(result.get("diverged")))
        self.epochs[(trial_id, epoch)] = row
        trial = self.trials[trial_id]
        trial.update(node_id=result.get("node_id"), node_ip=result.get("node_ip"), hostname=result.get("hostname"))
        if result.get("diverged"):
            trial["status"] = "diverged"
        self._summarise(trial_id)

    def on_end(self, trial_id: str, config: dict, error: str | None = None) -> str:
        if trial_id not in self.trials:
            self.on_start(trial_id, config)
        trial = self.trials[trial_id]
        self._summarise(trial_id)
        if error is not None:
            trial["status"], trial["error"] = "errored", error
        elif trial["status"] != "diverged":
            trial["status"] = "completed" if trial.get("epochs_run", 0) >= self.max_epochs else "stopped early"
        return trial["status"]

    def _summarise(self, trial_id: str) -> None:
        rows = sorted((r for (t, _), r in self.epochs.items() if t == trial_id), key=lambda r: r["epoch"])
        trial = self.trials[trial_id]
        valid = [r for r in rows if not r["diverged"] and not _isnan(r["val_acc"])]
        best = max(valid, key=lambda r: r["val_acc"], default=None)
        trial["best_val_acc"] = best["val_acc"] if best else math.nan
        trial["best_epoch"] = best["epoch"] if best else None
        trial["last_val_acc"] = valid[-1]["val_acc"] if valid else math.nan
        trial["epochs_run"] = rows[-1]["epoch"] if rows else 0
        trial["seconds"] = float(sum(r["seconds"] or 0 for r in rows))
        speeds = [r["images_per_s"] for r in rows if r["images_per_s"]]
        trial["images_per_s"] = float(sum(speeds) / len(speeds)) if speeds else math.nan

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        columns = ["rank", "trial_id", "optuna_trial", "baseline", *self.params, "best_val_acc", "best_epoch",
                   "last_val_acc", "epochs_run", "status", "error", "seconds", "images_per_s", "seed",
                   "node_id", "node_ip", "hostname"]
        trials = pd.DataFrame(list(self.trials.values())).reindex(columns=columns)
        # Diverged and errored trials rank last whatever they reached before: their recipe is not one to rerun.
        failed = trials["status"].isin(["diverged", "errored"])
        trials = trials.assign(_failed=failed).sort_values(
            ["_failed", "best_val_acc", "epochs_run", "optuna_trial"], ascending=[True, False, False, True], na_position="last"
        ).drop(columns="_failed")
        trials["rank"] = range(1, len(trials) + 1)
        trials = trials.astype({"best_epoch": "Int64", "optuna_trial": "Int64", "epochs_run": "Int64", "rank": "int64"})
        epochs = pd.DataFrame(list(self.epochs.values())).reindex(columns=EPOCH_COLUMNS)
        epochs = epochs.sort_values(["trial_id", "epoch"]).astype({"epoch": "int64", "optuna_trial": "Int64"})
        return trials.reset_index(drop=True), epochs.reset_index(drop=True)

    def write(self) -> None:
        trials, epochs = self.frames()
        self.folder.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(epochs, self.epochs_path)
        write_parquet_atomic(trials, self.trials_path)


def _isnan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
