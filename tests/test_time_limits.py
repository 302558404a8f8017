"""Time limits: a trial that really blocks is stopped (its process ends, its slot comes back), recorded as
timed_out, and the study goes on; a study keeps to its time budget and confirms what finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest

from study.driver.clock import STALL_FACTOR, STALL_SLACK_S, ClockState, deadline_passed
from study.core.folder import storage_url
from tests.test_study import ROOT, make_images, study_args


def test_the_limits_read_as_documented():
    auto = ClockState(trial_timeout=None, budget_end=None)
    assert auto.limits()["stall_s"] is None  # no median epoch yet: no stall limit
    auto.set_median_epoch(10.0)
    assert auto.limits()["stall_s"] == STALL_FACTOR * 10.0 + STALL_SLACK_S
    now = 1000.0
    assert deadline_passed(auto.limits(), started=now - 500, last_progress=now - 100, now=now) is None
    assert "no epoch finished for 161 s" in deadline_passed(auto.limits(), now - 500, now - 161, now)
    fixed = ClockState(trial_timeout=30.0, budget_end=None).limits()
    assert fixed["stall_s"] is None and "--trial-timeout 30 s" in deadline_passed(fixed, now - 31, now - 1, now)
    off = ClockState(trial_timeout=0, budget_end=None)
    off.set_median_epoch(1.0)
    assert deadline_passed(off.limits(), now - 1e6, now - 1e6, now) is None
    budget = ClockState(trial_timeout=0, budget_end=now - 1).limits()
    assert "--time-budget" in deadline_passed(budget, now - 5, now - 1, now)
    marks = ClockState(None, None)
    marks.mark("trial 3", "first")
    marks.mark("trial 3", "second")
    assert marks.timed_out("trial 3") == "first" and marks.timed_out("trial 4") is None


@pytest.mark.slow
def test_a_trial_that_blocks_is_stopped_recorded_as_timed_out_and_the_study_goes_on(tmp_path):
    data = make_images(tmp_path / "data", per_class=8)
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    limit = 20
    # trial 1 blocks for good after its first epoch, in a read no one answers; one trial at a time, so trial 2
    # runs only once trial 1's slot has come back; --grace-epochs 2: ASHA stops no trial after epoch 1
    argv = study_args(data, tmp_path / "r", "hang", 3, 2, "--trial-timeout", str(limit), "--max-concurrent", "1", "--grace-epochs", "2")
    env = {**os.environ, "HOTDOG_TUNE_HANG": f"trial 1:1:{fifo}"}
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pid_file = Path(f"{fifo}.pid")
    deadline = time.time() + 300
    while not pid_file.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert pid_file.exists(), "trial 1 never reached its blocking read"
    blocked_at, pid = time.time(), int(pid_file.read_text())
    while psutil.pid_exists(pid) and time.time() < blocked_at + limit + 60:
        time.sleep(0.2)
    ended_after = time.time() - blocked_at
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert not psutil.pid_exists(pid), "the blocked trial's process still runs"
    assert ended_after <= limit + 5, f"the blocked process ended {ended_after:.0f}s after it blocked (limit {limit}s)"
    trials = pd.read_parquet(tmp_path / "r" / "hang" / "trials.parquet").set_index("optuna_trial")
    assert trials.loc[1, "status"] == "timed_out" and f"--trial-timeout {limit} s" in trials.loc[1, "error"], trials.loc[1].to_dict()
    assert trials.loc[[0, 2], "status"].eq("completed").all()  # the others ran, trial 2 on the slot trial 1 gave back
    assert trials.loc[1, "rank"] == 3  # no usable result: ranked last
    frozen = optuna.load_study(study_name="hang", storage=storage_url(tmp_path / "r" / "hang" / "optuna.db")).trials[1]
    assert frozen.state == optuna.trial.TrialState.FAIL and frozen.user_attrs["status"] == "timed_out"  # never a result
    assert "trial 1: timed_out after 1 epoch(s)" in out and "1 timed_out" in out, out
    assert "Traceback" not in out + err  # Ray's traceback of the process the study ended is in logs/ray.log
    assert "ActorDiedError" in (tmp_path / "r" / "hang" / "logs" / "ray.log").read_text()
    settings = json.loads((tmp_path / "r" / "hang" / "study.json").read_text())
    assert settings["trial_timeout"] == limit and settings["summary"]["status_counts"]["timed_out"] == 1

    # on resume the limit is kept, and the timed-out trial is not run again unless asked
    resumed = subprocess.run([sys.executable, "-m", "study.run", "--resume", "--name", "hang", "--results-dir", str(tmp_path / "r")],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "every trial of the study has finished" in resumed.stdout, resumed.stdout + resumed.stderr
    assert json.loads((tmp_path / "r" / "hang" / "study.json").read_text())["trial_timeout"] == limit
    again = subprocess.run([sys.executable, "-m", "study.run", "--resume", "--name", "hang", "--results-dir", str(tmp_path / "r"),
                            "--retry-timed-out"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "--retry-timed-out: trial(s) 1 run again as new trial(s)" in again.stdout, again.stdout + again.stderr
    trials = pd.read_parquet(tmp_path / "r" / "hang" / "trials.parquet").set_index("optuna_trial")
    assert len(trials) == 4 and trials.loc[3, "status"] == "completed" and trials.loc[3, "lr"] == trials.loc[1, "lr"]


@pytest.mark.slow
def test_a_study_keeps_to_its_time_budget_and_confirms_what_finished(tmp_path):
    data = make_images(tmp_path / "data", per_class=8)
    budget = 45
    samples = 500  # far more than fit in the budget however fast the machine: the budget, not the count, ends it
    argv = study_args(data, tmp_path / "r", "b", samples, 2, "--time-budget", str(budget), "--max-concurrent", "1",
                      "--confirm-top", "2", "--confirm-folds", "2", confirm=True)
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "study.run", *argv], cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.time() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    folder = tmp_path / "r" / "b"
    trials = pd.read_parquet(folder / "trials.parquet")
    assert 3 <= len(trials) < samples
    assert f"the time budget (--time-budget {budget} s) ended the search after {len(trials)} of {samples} trial(s)" in out.stdout, out.stdout
    confirm = pd.read_parquet(folder / "confirm.parquet")
    finished = set(trials.loc[trials["status"].isin(["completed", "stopped early"]), "optuna_trial"])
    assert set(confirm["optuna_trial"]) <= finished and (confirm["status"] == "completed").all()
    settings = json.loads((folder / "study.json").read_text())
    assert settings["summary"]["time_budget_reached"] and settings["runs"][-1]["outcome"] == "finished"
    started = settings["runs"][-1]["timings"]
    # the search kept to the budget: the trials ended by its end, less what the confirmation stage needed
    assert started["setup_s"] + started["fit_s"] <= budget + 15, started
    assert wall <= budget + started["confirm_s"] + 40, (wall, started)
