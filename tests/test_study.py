"""The study end to end: real Ray Tune, real Optuna, real parquet, on tiny generated images."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import psutil
import pytest
from PIL import Image

from study.run import main as study_main
from study.run import plan_resources
from study.searcher import AskTellOptunaSearch, storage_url
from study.space import BASELINE, DEFAULT_SPACE

ROOT = Path(__file__).resolve().parents[1]
TRIAL_COLUMNS = [
    "rank", "trial_id", "optuna_trial", "baseline", "lr", "head_lr_mult", "weight_decay", "freeze_depth", "augment",
    "best_val_acc", "best_epoch", "last_val_acc", "epochs_run", "status", "error", "seconds", "images_per_s", "seed",
    "node_id", "node_ip", "hostname",
]
EPOCH_COLUMNS = [
    "trial_id", "optuna_trial", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_s",
    "diverged", "resumed_from_epoch", "node_id", "node_ip", "hostname",
]


def make_images(root: Path, per_class: int = 12, size=(40, 48)) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 4)):
        for name, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 50, (*size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def study_args(data: Path, results: Path, name: str, samples: int, epochs: int, *extra: str) -> list[str]:
    return ["--samples", str(samples), "--data-dir", str(data), "--weights", "none", "--epochs", str(epochs),
            "--image-size", "32", "--batch-size", "8", "--results-dir", str(results), "--name", name, *extra]


def optuna_states(folder: Path, name: str) -> dict[int, optuna.trial.TrialState]:
    study = optuna.load_study(study_name=name, storage=storage_url(folder / "optuna.db"))
    return {t.number: t.state for t in study.trials}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    data = make_images(tmp / "data")
    code = None
    try:
        study_main(study_args(data, tmp / "results", "tiny", 5, 2, "--reduction-factor", "2"))
    except SystemExit as exc:  # pragma: no cover - main returns normally
        code = exc.code
    assert code is None
    return tmp / "results" / "tiny"


@pytest.mark.slow
def test_study_writes_ranked_tables_with_the_documented_schema(finished_study):
    trials = pd.read_parquet(finished_study / "trials.parquet")
    epochs = pd.read_parquet(finished_study / "epochs.parquet")
    assert list(trials.columns) == TRIAL_COLUMNS
    assert list(epochs.columns) == EPOCH_COLUMNS
    assert len(trials) == 5 and trials["trial_id"].is_unique
    assert list(trials["rank"]) == [1, 2, 3, 4, 5]
    accs = trials["best_val_acc"].to_numpy()
    assert np.all(np.diff(accs) <= 0), "trials must be ranked by best validation accuracy"
    assert set(trials["status"]) <= {"completed", "stopped early"}
    # every trial's summary agrees with its epoch rows
    for _, row in trials.iterrows():
        mine = epochs[epochs["trial_id"] == row["trial_id"]]
        assert len(mine) == row["epochs_run"] and list(mine["epoch"]) == list(range(1, row["epochs_run"] + 1))
        assert row["best_val_acc"] == pytest.approx(mine["val_acc"].max())
        assert row["best_epoch"] == int(mine.loc[mine["val_acc"].idxmax(), "epoch"])
        assert row["status"] == ("completed" if row["epochs_run"] == 2 else "stopped early")
    baseline = trials[trials["baseline"]]
    assert len(baseline) == 1 and baseline.iloc[0]["optuna_trial"] == 0
    for name in DEFAULT_SPACE:
        assert baseline.iloc[0][name] == pytest.approx(BASELINE[name]) if name != "augment" else baseline.iloc[0][name] == "d2l"
    assert trials["node_id"].notna().all() and (trials["images_per_s"] > 0).all()


@pytest.mark.slow
def test_optuna_study_is_stored_and_agrees_with_the_table(finished_study):
    trials = pd.read_parquet(finished_study / "trials.parquet")
    states = optuna_states(finished_study, "tiny")
    assert len(states) == 5
    expected = {"completed": optuna.trial.TrialState.COMPLETE, "stopped early": optuna.trial.TrialState.PRUNED}
    for _, row in trials.iterrows():
        assert states[int(row["optuna_trial"])] == expected[row["status"]]


def test_early_stopped_trials_are_told_to_optuna_as_pruned(tmp_path):
    searcher = AskTellOptunaSearch(DEFAULT_SPACE, storage_url(tmp_path / "o.db"), "s", max_epochs=3, seed=0, baseline=BASELINE_PARAMS)
    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    assert first["baseline"] and first["lr"] == pytest.approx(BASELINE["lr"]) and not second["baseline"]
    for epoch, acc in enumerate([0.6, 0.7, 0.8], start=1):
        searcher.on_trial_result("t1", {"epoch": epoch, "val_acc": acc})
    searcher.on_trial_complete("t1", {"epoch": 3, "val_acc": 0.8})
    searcher.on_trial_result("t2", {"epoch": 1, "val_acc": 0.4})
    searcher.on_trial_complete("t2", {"epoch": 1, "val_acc": 0.4})  # ASHA stopped it after one epoch
    trials = optuna.load_study(study_name="s", storage=storage_url(tmp_path / "o.db")).trials
    assert trials[0].state == optuna.trial.TrialState.COMPLETE and trials[0].value == pytest.approx(0.8)
    assert trials[1].state == optuna.trial.TrialState.PRUNED and trials[1].intermediate_values == {1: 0.4}


BASELINE_PARAMS = {k: BASELINE[k] for k in DEFAULT_SPACE}


def _args(gpus: float, cpus: float | None = None) -> argparse.Namespace:
    return argparse.Namespace(gpus_per_trial=gpus, cpus_per_trial=cpus)


def test_gpus_asked_for_on_a_machine_without_one_fall_back_to_cpu_slots():
    resources, slots, message = plan_resources(_args(0.25), {"CPU": 4.0})
    assert resources == {"cpu": 1.0, "gpu": 0.0} and slots == 4
    assert "no GPU" in message


def test_fractional_gpus_share_a_gpu_and_split_the_cpus():
    resources, slots, message = plan_resources(_args(0.25), {"CPU": 16.0, "GPU": 1.0})
    assert resources == {"cpu": 4.0, "gpu": 0.25} and slots == 4 and message is None


@pytest.mark.slow
def test_gpu_fallback_message_in_a_real_study(tmp_path):
    data = make_images(tmp_path / "data", per_class=6)
    out = subprocess.run([sys.executable, "-m", "study.run", *study_args(data, tmp_path / "r", "g", 1, 1, "--gpus-per-trial", "1")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "no GPU in the Ray cluster: running trials on CPU slots" in out.stdout
    assert len(pd.read_parquet(tmp_path / "r" / "g" / "trials.parquet")) == 1


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        try:
            if predicate():
                return True
        except (OSError, ValueError):
            pass  # a table being replaced right now
        time.sleep(0.5)
    return False


def interrupted_then_resumed(tmp_path: Path, sig: int, descendants: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Start a 4-trial study, send it ``sig`` partway, resume it. ``descendants`` collects the driver's child
    processes (Ray's) seen until the signal, as psutil.Process objects by pid."""
    data = make_images(tmp_path / "data", per_class=24)
    results = tmp_path / "r"
    args = ["--samples", "4", "--data-dir", str(data), "--weights", "none", "--epochs", "3", "--image-size", "48",
            "--batch-size", "4", "--results-dir", str(results), "--name", "s", "--grace-epochs", "3"]  # no early stopping
    folder = results / "s"
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def partway() -> bool:  # one trial finished and another one has a checkpointed epoch
        if descendants is not None:
            descendants.update({p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)})
        trials = pd.read_parquet(folder / "trials.parquet")
        running = trials[trials["status"] == "running"]
        return (trials["status"] != "running").sum() >= 1 and (running["epochs_run"] >= 1).any()

    reached = _wait_for(partway, 400, proc)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert reached, "the study ended before it could be interrupted"
    if descendants is not None:  # what the interrupted driver left behind, before a new driver starts
        _, alive = psutil.wait_procs(list(descendants.values()), timeout=30)
        descendants.clear()
        descendants.update({p.pid: p for p in alive})
    before = pd.read_parquet(folder / "trials.parquet")
    resumed = subprocess.run([sys.executable, "-m", "study.run", "--resume", "--name", "s", "--results-dir", str(results)],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return before, pd.read_parquet(folder / "trials.parquet"), folder


@pytest.mark.slow
def test_a_study_interrupted_and_resumed_ends_with_every_trial_once(tmp_path):
    before, after, folder = interrupted_then_resumed(tmp_path, signal.SIGINT)
    assert len(after) == 4 and after["trial_id"].is_unique and after["optuna_trial"].is_unique
    assert (after["status"] == "completed").all()
    finished_before = before[before["status"] != "running"]
    for _, row in finished_before.iterrows():  # finished trials are kept as they were, not rerun
        again = after[after["trial_id"] == row["trial_id"]].iloc[0]
        assert again["best_val_acc"] == row["best_val_acc"] and again["seconds"] == pytest.approx(row["seconds"])
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    states = optuna_states(folder, "s")
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) == 4


def test_diverged_and_errored_trials_rank_after_every_usable_one(tmp_path):
    from study.results import StudyTables

    tables = StudyTables(tmp_path, ["lr"], max_epochs=2, seed=0)
    for trial_id, lr, accs, error in (("ok", 0.01, [0.6, 0.7], None), ("nan", 9.0, [0.9, None], None), ("err", 0.1, [0.95], "boom")):
        tables.on_start(trial_id, {"lr": lr, "optuna_trial": len(tables.trials)})
        for epoch, acc in enumerate(accs, 1):
            tables.on_result(trial_id, {"lr": lr}, {"epoch": epoch, "val_acc": float("nan") if acc is None else acc,
                                                    "diverged": acc is None, "seconds": 1.0, "images_per_s": 10.0})
        tables.on_end(trial_id, {"lr": lr}, error)
    tables.write()
    trials = pd.read_parquet(tmp_path / "trials.parquet").set_index("trial_id")
    assert trials.loc["ok", "rank"] == 1 and trials.loc["ok", "status"] == "completed"
    assert trials.loc["nan", "status"] == "diverged" and trials.loc["err", "status"] == "errored"
    assert set(trials.loc[["nan", "err"], "rank"]) == {2, 3}
    assert trials.loc["nan", "best_val_acc"] == 0.9  # what it reached before diverging is kept, but ranks last
