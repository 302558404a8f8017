"""The confirmation stage of a real (tiny) study: its runs, its decision, and a kill in the middle of it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from study.core.folder import StudyFolder
from tests.test_study import assert_exact, make_images, run_study, study_args

pytestmark = pytest.mark.slow
CONFIRM_TYPES = {"optuna_trial": "int64", "baseline": "bool", "fold": "int64", "cv_folds": "int64", "seed": "int64", "status": "large_string",
                 "val_acc": "double", "val_loss": "double", "epochs": "int64", "seconds": "double", "images_per_s": "double",
                 "trial_id": "large_string", "trial_dir": "large_string", "error": "large_string", "worker_pid": "int64",
                 "warm_runs": "int64"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("images") / "data", per_class=10)


def check_confirmation(folder: Path, top: int, folds: int) -> pd.DataFrame:
    confirm = pd.read_parquet(folder / "confirm.parquet")
    assert {f.name: str(f.type) for f in pq.read_schema(folder / "confirm.parquet")} == CONFIRM_TYPES
    trials = pd.read_parquet(folder / "trials.parquet")
    usable = trials[trials["status"].isin(["completed", "stopped early"])]
    expected = list(usable["optuna_trial"].head(top))
    baseline = int(trials.loc[trials["baseline"], "optuna_trial"].iloc[0])
    expected += [] if baseline in expected else [baseline]  # the book's recipe always; fewer rows where it is in the top K
    assert sorted(confirm["optuna_trial"].unique()) == sorted(expected)
    assert len(confirm) == len(expected) * folds and not confirm.duplicated(["optuna_trial", "fold"]).any()
    assert (confirm["status"] == "completed").all() and confirm["val_acc"].between(0, 1).all()
    assert (confirm["cv_folds"] == folds).all() and sorted(confirm["fold"].unique()) == list(range(folds))
    # each fold its own seed (the seed noise is in the spread between folds), the same for every configuration on it
    study_seed = json.loads((folder / "study.json").read_text())["seed"]
    assert (confirm["seed"] == study_seed + confirm["fold"]).all()
    for number in expected:  # every fold is a fresh run of cross-validation, none the study's own trial
        trial = trials[trials["optuna_trial"] == number].iloc[0]
        mine = confirm[confirm["optuna_trial"] == number]
        assert trial["trial_id"] not in set(mine["trial_id"])
        assert trial["confirm_folds"] == folds and trial["confirm_mean"] == pytest.approx(mine["val_acc"].mean())
        assert trial["confirm_sd"] == pytest.approx(mine["val_acc"].std(ddof=1))
    assert (confirm["epochs"] == trials["epochs_run"].max()).all()
    winners = trials[trials["recommended"].fillna("").str.contains("winner")]
    assert len(winners) == 1 and winners.iloc[0]["optuna_trial"] in expected
    best_mean = trials.loc[trials["optuna_trial"].isin(expected), "confirm_mean"].max()
    assert winners.iloc[0]["confirm_mean"] == best_mean
    assert trials["recommended"].fillna("").str.contains("one-SE pick").sum() == 1
    assert trials.loc[~trials["optuna_trial"].isin(expected), "confirm_folds"].eq(0).all()
    return confirm


def test_a_study_confirms_its_top_trials_and_the_baseline(images, tmp_path):
    results = tmp_path / "r"
    out = run_study(study_args(images, results, "c", 4, 2, "--confirm-top", "2", "--confirm-folds", "3", confirm=True))
    assert out.returncode == 0, out.stdout + out.stderr
    folder = results / "c"
    confirm = check_confirmation(folder, top=2, folds=3)
    # the stage ran in the trials' own Tune run: on the worker processes the trials had warmed, none started for it
    trials = pd.read_parquet(folder / "trials.parquet")
    assert (confirm["warm_runs"] >= 1).all() and set(confirm["worker_pid"]) <= set(trials["worker_pid"])
    assert not list((folder / "ray").glob("confirm-*"))  # no Tune run of its own
    for start in ("answer: winner: trial ", "vs the book's recipe", "one-SE pick: "):
        assert sum(line.startswith(start) for line in out.stdout.splitlines()) == 1, out.stdout
    settings = json.loads((folder / "study.json").read_text())
    assert settings["confirm"]["top"] == 2 and settings["summary"]["confirmation"]["folds"] == 3
    gain = settings["summary"]["confirmation"]["gain"]
    if gain is not None and len(settings["summary"]["confirmation"]["candidates"]) == 2:  # one candidate beside the recipe: no choice
        assert gain["corrected"] is None and "corrected for choosing" not in out.stdout
    elif gain is not None:  # the winner is not the book's recipe: its gain, raw and corrected for the choice
        low, high = gain["corrected"]["ci"]
        assert low <= gain["corrected"]["mean"] <= high and "corrected for choosing the best of " in out.stdout, out.stdout
        corrected = settings["summary"]["confirmation"]["winner_corrected"]
        assert corrected["ci"][0] <= corrected["mean"] <= corrected["ci"][1]

    # analyze shows the confirmation table with its intervals; rerun picks the confirmed winner by default
    winner = pd.read_parquet(folder / "trials.parquet").query("recommended.str.contains('winner', na=False)").iloc[0]
    analyzed = run_module("study.analyze", [str(folder), "--no-report"])
    assert "confirmation stage" in analyzed and "95% CI" in analyzed and "cheapest within noise of the winner" in analyzed, analyzed
    printed = run_module("study.rerun", [str(folder), "--print-command"])
    assert f"--lr {float(winner['lr'])!r}" in printed
    from study.core.folder import StudyFolder as Folder
    from study.findings.retrain import choose

    chosen = choose(Folder(folder), None, None)
    assert chosen.row["optuna_trial"] == winner["optuna_trial"] and chosen.why.startswith("the confirmed winner")
    assert choose(Folder(folder), 1, None).why.startswith("--rank 1")


def run_module(module: str, argv: list[str]) -> str:
    import subprocess
    import sys

    from tests.test_study import ROOT

    done = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_kill_during_confirmation_loses_and_doubles_nothing(images, tmp_path):
    results = tmp_path / "r"
    argv = study_args(images, results, "k", 3, 2, "--confirm-top", "2", "--confirm-folds", "3", "--max-concurrent", "1", confirm=True)
    killed = run_study(argv, env={"HOTDOG_TUNE_FAULT": "confirm_ended:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    folder = results / "k"
    before = pd.read_parquet(folder / "confirm.parquet")
    done_before = before[before["status"] == "completed"]
    assert len(done_before) >= 1
    assert StudyFolder(folder).read_settings().runs[0]["timings"]["fit_s"] > 0  # the study's training time is kept
    resumed = run_study(["--resume", "--name", "k", "--results-dir", str(results)])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_exact(folder, "k", 3)
    after = check_confirmation(folder, top=2, folds=3)
    for _, row in done_before.iterrows():  # a run finished before the kill is kept as it was, not run again
        again = after[(after["optuna_trial"] == row["optuna_trial"]) & (after["fold"] == row["fold"])].iloc[0]
        assert again["trial_id"] == row["trial_id"] and again["val_acc"] == row["val_acc"]
    assert StudyFolder(folder).read_settings().runs[-1]["outcome"] == "finished"


def test_sigterm_during_confirmation_says_it_stopped_and_how_to_resume(images, tmp_path):
    """Ray's own SIGTERM handler (installed by ray.init) must not replace the study's: a preempted job in the
    confirmation stage ends like one in the trials, with its line, the resume hint and an outcome in study.json."""
    results = tmp_path / "r"
    argv = study_args(images, results, "t", 2, 1, "--confirm-top", "1", "--confirm-folds", "3", "--max-concurrent", "1", confirm=True)
    stopped = run_study(argv, env={"HOTDOG_TUNE_FAULT": "confirm_ended:1:term"})
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert "the study stopped with its confirmation stage unfinished: stopped by SIGTERM; continue it with:" in stopped.stdout
    assert "the confirmation stage above judges them" not in stopped.stdout  # it judged nothing: it stopped
    assert "answer:" not in stopped.stdout
    assert StudyFolder(results / "t").read_settings().runs[-1]["outcome"] == "stopped"
    resumed = run_study(["--resume", "--name", "t", "--results-dir", str(results)])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    check_confirmation(results / "t", top=1, folds=3)


def test_runs_on_other_folds_are_set_aside_not_mixed(tmp_path):
    from study.core.tables import ConfirmTable

    folder = StudyFolder(tmp_path / "s")
    folder.path.mkdir()
    row = {"optuna_trial": 0, "baseline": True, "fold": 1, "cv_folds": 3, "seed": 1, "status": "completed", "val_acc": 0.6, "val_loss": 0.7,
           "epochs": 2, "seconds": 1.0, "images_per_s": 9.0, "trial_id": "a", "trial_dir": None, "error": None}
    pd.DataFrame([row]).to_parquet(folder.confirm)
    assert set(ConfirmTable(folder, 3).rows) == {(0, 1)}  # the same folds: kept
    table = ConfirmTable(folder, 2)  # 2-fold cross-validation splits the images otherwise: a 3-fold run measures something else
    assert table.rows == {} and not folder.confirm.exists() and "other folds than 2-fold" in table.note
    assert len(list(folder.path.glob("confirm.parquet.*"))) == 1
    pd.DataFrame([{k: v for k, v in row.items() if k != "cv_folds"}]).to_parquet(folder.confirm)  # an older version's held-out folds
    assert ConfirmTable(folder, 3).rows == {} and len(list(folder.path.glob("confirm.parquet.*"))) == 2
    # an older version's runs, every fold with the study's seed: their spread leaves out the seed noise
    pd.DataFrame([{k: v for k, v in row.items() if k != "seed"}]).to_parquet(folder.confirm)
    table = ConfirmTable(folder, 3)
    assert table.rows == {} and "one seed" in table.note and len(list(folder.path.glob("confirm.parquet.one-seed-*"))) == 1


def test_a_confirmation_run_validates_after_its_last_epoch_only():
    from study.core.vocabulary import is_confirmation, run_config
    from study.driver.adapter import trial_config
    from study.stages.confirmation import Job

    config = Job(3, 1, {"lr": 0.01, "freeze_depth": 2}, baseline=False, seed=8).tune_config(folds=2)
    assert is_confirmation(config)
    cfg = trial_config({"epochs": 4, "weights": "none", "seed": 7}, run_config(config), threads=1, gpus=[])
    assert (cfg.val_fold, cfg.cv_folds, cfg.val_last_only, cfg.lr, cfg.freeze_depth) == (1, 2, True, 0.01, 2)
    assert cfg.seed == 8  # the fold's seed, not the study's


def test_drop_checkpoints_empties_a_local_trial_folder_only(tmp_path):
    from study.core.folder import drop_checkpoints

    trial = tmp_path / "trial"
    for name in ("checkpoint_000001", "checkpoint_000002"):
        (trial / name).mkdir(parents=True)
        (trial / name / "state.pt").write_bytes(b"x")
    (trial / "params.json").write_text("{}")
    drop_checkpoints(str(trial))
    assert sorted(p.name for p in trial.iterdir()) == ["params.json"]  # the trial's other files stay
    for nothing in (None, float("nan"), "", "s3://bucket/trial", str(tmp_path / "gone")):
        drop_checkpoints(nothing)  # no folder, or a remote one: nothing to do, no error


def test_on_real_photos_the_seeds_the_rerun_beside_the_book_and_its_paired_line(asset, tmp_path):
    import subprocess
    import sys

    from tests.test_study import ROOT

    photos = asset("hotdog_mini")  # 32 + 32 real photos to train on, 16 + 16 to test
    results = tmp_path / "r"
    argv = ["--samples", "3", "--data-dir", str(photos), "--weights", "none", "--epochs", "1", "--image-size", "32",
            "--batch-size", "16", "--results-dir", str(results), "--name", "mini", "--confirm-top", "2", "--seed", "4"]
    out = run_study(argv)
    assert out.returncode == 0, out.stdout + out.stderr
    confirm = pd.read_parquet(results / "mini" / "confirm.parquet")
    assert (confirm["seed"] == 4 + confirm["fold"]).all() and confirm.groupby("fold")["seed"].nunique().eq(1).all()
    done = subprocess.run([sys.executable, "-m", "study.rerun", str(results / "mini"), "--seeds", "2", "--epochs", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rerun = pd.read_parquet(results / "mini" / "rerun.parquet")
    trials = pd.read_parquet(results / "mini" / "trials.parquet")
    winner = int(trials.loc[trials["recommended"].fillna("").str.contains("winner"), "optuna_trial"].iloc[0])
    book = int(trials.loc[trials["baseline"], "optuna_trial"].iloc[0])
    if winner == book:
        assert set(rerun["optuna_trial"]) == {book} and "no baseline beside it" in done.stdout
        return
    assert sorted(rerun.loc[rerun["optuna_trial"] == winner, "seed"]) == sorted(rerun.loc[rerun["optuna_trial"] == book, "seed"]) == [4, 5]
    assert f"trial {winner} vs the book's recipe on the test split: " in done.stdout and "over 2 paired seeds" in done.stdout
