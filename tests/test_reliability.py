"""Nothing lost: a driver killed hard, a trial worker killed, a diverging trial."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest

from study.searcher import storage_url
from tests.test_study import ROOT, _wait_for, interrupted_then_resumed, make_images, study_args


@pytest.mark.slow
def test_driver_killed_hard_then_resumed_keeps_every_trial_and_continues_checkpoints(tmp_path):
    left_behind: dict = {}
    before, after, folder = interrupted_then_resumed(tmp_path, signal.SIGKILL, left_behind)
    # the watchdog ended the Ray processes of the killed driver (raylet, GCS, agents, workers)
    assert not left_behind, [p.cmdline() for p in left_behind.values() if p.is_running()]
    assert len(after) == 4 and after["trial_id"].is_unique and (after["status"] == "completed").all()
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    interrupted = before[(before["status"] == "running") & (before["epochs_run"] >= 1)]
    assert len(interrupted) >= 1
    for _, row in interrupted.iterrows():
        later = epochs[(epochs["trial_id"] == row["trial_id"]) & (epochs["epoch"] > row["epochs_run"])]
        assert len(later) >= 1
        # it continued from its last epoch checkpoint, not from epoch 0
        assert later["resumed_from_epoch"].min() >= row["epochs_run"], later
    states = optuna.load_study(study_name="s", storage=storage_url(folder / "optuna.db")).trials
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in states) == 4


def _ray_processes_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@pytest.mark.slow
def test_a_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path):
    data = make_images(tmp_path / "data", per_class=24)
    folder = tmp_path / "r" / "w"
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *study_args(data, tmp_path / "r", "w", 1, 3, "--batch-size", "4")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def first_epoch_done() -> bool:
        return (pd.read_parquet(folder / "epochs.parquet")["epoch"] >= 1).any()

    assert _wait_for(first_epoch_done, 300, proc)
    # Ray retitles a trial's actor process "ray::<trainable>.train()" (e.g. ray::ImplicitFunc.train)
    workers = [p for p in _ray_processes_of(proc.pid) if " ".join(p.cmdline()).startswith("ray::") and ".train" in " ".join(p.cmdline())]
    assert workers, [p.cmdline() for p in _ray_processes_of(proc.pid)]
    for worker in workers:
        worker.kill()
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 1 and trials.iloc[0]["status"] == "completed"
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert list(epochs["epoch"]) == [1, 2, 3]
    assert epochs["resumed_from_epoch"].iloc[-1] >= 1  # the retry started from a checkpoint


@pytest.mark.slow
def test_a_diverging_trial_ends_at_once_as_diverged_and_the_study_goes_on(tmp_path):
    data = make_images(tmp_path / "data", per_class=8)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": {"type": "float", "low": 1e6, "high": 1e7, "log": True}}))
    out = subprocess.run([sys.executable, "-m", "study.run", *study_args(data, tmp_path / "r", "d", 2, 6, "--space", str(space))],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    trials = pd.read_parquet(tmp_path / "r" / "d" / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "diverged").all()
    # stopped in the epoch its loss turned NaN (the first step's loss is finite), not after all six
    assert (trials["epochs_run"] <= 2).all()
    epochs = pd.read_parquet(tmp_path / "r" / "d" / "epochs.parquet")
    assert (epochs.groupby("trial_id")["diverged"].last()).all()
    studies = optuna.load_study(study_name="d", storage=storage_url(tmp_path / "r" / "d" / "optuna.db")).trials
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["status"] == "diverged" for t in studies)
