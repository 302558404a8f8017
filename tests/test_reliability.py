"""Nothing lost inside one driver run: a trial worker killed, a diverging trial."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pandas as pd
import psutil
import pytest

from study.core.folder import storage_url
from tests.test_study import ROOT, _wait_for, make_images, study_args


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

    def second_epoch_done() -> bool:  # its report carried the first epoch's checkpoint (study.driver.checkpoints)
        from study.core.folder import StudyFolder
        from study.core.tables import read_tables

        study = StudyFolder(folder)
        return study.epochs.is_file() and (read_tables(study, study.read_settings())[1]["epoch"] >= 2).any()

    assert _wait_for(second_epoch_done, 300, proc)
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
    assert out.returncode == 3, out.stdout + out.stderr  # finished, but every trial diverged: nothing usable
    assert "no baseline" in out.stdout  # the book's lr is outside this space
    trials = pd.read_parquet(tmp_path / "r" / "d" / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "diverged").all()
    # stopped in the epoch its loss turned NaN (the first step's loss is finite), not after all six
    assert (trials["epochs_run"] <= 2).all()
    epochs = pd.read_parquet(tmp_path / "r" / "d" / "epochs.parquet")
    assert (epochs.groupby("optuna_trial")["diverged"].last()).all()
    studies = optuna.load_study(study_name="d", storage=storage_url(tmp_path / "r" / "d" / "optuna.db")).trials
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["status"] == "diverged"
               and t.constraints == {"diverged": 1.0} for t in studies)
