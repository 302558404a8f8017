"""The study end to end: real Ray Tune, real Optuna, real parquet, on tiny generated images."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from study.driver.resources import share_resources
from study.driver.searcher import AskTellOptunaSearch
from study.core.optuna_store import sampler_seed
from study.core.folder import StudyFolder, storage_url
from study.run import main as study_main
from study.core.space import BASELINE, DEFAULT_SPACE, baseline_params

ROOT = Path(__file__).resolve().parents[1]
TRIAL_COLUMNS = [
    "rank", "trial_id", "optuna_trial", "baseline", "lr", "head_lr_mult", "weight_decay", "freeze_depth", "augment",
    "best_val_acc", "best_epoch", "last_val_acc", "epochs_run", "status", "error", "seconds", "images_per_s", "seed",
    "threads", "trial_dir", "node_id", "node_ip", "hostname", "slot_s", "started_at", "ended_at", "import_s", "data_wait_s",
    "restore_s", "build_s", "weights_s", "to_device_s", "first_step_s", "worker_pid", "warm_runs",
    "confirm_mean", "confirm_sd", "confirm_folds", "recommended",
]
EPOCH_COLUMNS = [
    "trial_id", "optuna_trial", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_s",
    "diverged", "resumed_from_epoch", "ended_at", "node_id", "node_ip", "hostname", "train_s", "val_s", "checkpoint_s", "report_s",
    "device_mb",
]
# parquet types as docs/results.md lists them (nullable columns may hold nulls; the others never do)
TRIAL_TYPES = {"rank": "int64", "trial_id": "large_string", "optuna_trial": "int64", "baseline": "bool", "lr": "double",
               "head_lr_mult": "double", "weight_decay": "double", "freeze_depth": "int64", "augment": "large_string",
               "best_val_acc": "double", "best_epoch": "int64", "last_val_acc": "double", "epochs_run": "int64",
               "status": "large_string", "error": "large_string", "seconds": "double", "images_per_s": "double", "seed": "int64",
               "threads": "int64", "trial_dir": "large_string", "node_id": "large_string", "node_ip": "large_string",
               "hostname": "large_string", **{c: "double" for c in ("slot_s", "started_at", "ended_at", "import_s", "data_wait_s",
               "restore_s", "build_s", "weights_s", "to_device_s", "first_step_s")}, "worker_pid": "int64", "warm_runs": "int64",
               "confirm_mean": "double", "confirm_sd": "double", "confirm_folds": "int64", "recommended": "large_string"}
EPOCH_TYPES = {"trial_id": "large_string", "optuna_trial": "int64", "epoch": "int64", "train_loss": "double", "train_acc": "double",
               "val_loss": "double", "val_acc": "double", "seconds": "double", "images_per_s": "double", "diverged": "bool",
               "resumed_from_epoch": "int64", "ended_at": "double", "node_id": "large_string", "node_ip": "large_string",
               "hostname": "large_string", "train_s": "double", "val_s": "double", "checkpoint_s": "double", "report_s": "double",
               "device_mb": "double"}


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


def study_args(data: Path, results: Path, name: str, samples: int, epochs: int, *extra: str, confirm: bool = False) -> list[str]:
    """A tiny study's command line (without the confirmation stage unless asked for: most tests are about the trials)."""
    return ["--samples", str(samples), "--data-dir", str(data), "--weights", "none", "--epochs", str(epochs),
            "--image-size", "32", "--batch-size", "8", "--results-dir", str(results), "--name", name,
            *([] if confirm else ["--no-confirm"]), *extra]


def run_study(argv: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.run", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def optuna_trials(folder: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage_url(folder / "optuna.db")).trials


def optuna_states(folder: Path, name: str) -> dict[int, optuna.trial.TrialState]:
    return {t.number: t.state for t in optuna_trials(folder, name)}


def assert_exact(folder: Path, name: str, samples: int) -> pd.DataFrame:
    """Each sample exactly once in trials.parquet and optuna.db, none running, no configuration twice."""
    trials = pd.read_parquet(folder / "trials.parquet")
    stored = optuna_trials(folder, name)
    assert len(trials) == samples and trials["optuna_trial"].is_unique, trials[["optuna_trial", "status"]]
    assert sorted(trials["optuna_trial"]) == list(range(samples))
    assert len(stored) == samples and all(t.state.is_finished() for t in stored), [(t.number, t.state) for t in stored]
    assert "running" not in set(trials["status"])
    configs = [tuple(sorted(t.params.items())) for t in stored]
    assert len(set(configs)) == len(configs), "a configuration was proposed twice"
    for t in stored:  # the two stores agree
        row = trials[trials["optuna_trial"] == t.number].iloc[0]
        expected = {"completed": "COMPLETE", "stopped early": "PRUNED", "diverged": "PRUNED", "errored": "FAIL"}[row["status"]]
        assert t.state.name == expected, (t.number, t.state, row["status"])
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert not epochs.duplicated(["optuna_trial", "epoch"]).any()
    for _, row in trials.iterrows():  # every epoch a trial ran is in epochs.parquet, once
        mine = epochs[epochs["optuna_trial"] == row["optuna_trial"]]
        assert list(mine["epoch"]) == list(range(1, row["epochs_run"] + 1)), (row["optuna_trial"], list(mine["epoch"]))
    return trials


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    data = make_images(tmp / "data")
    assert study_main(study_args(data, tmp / "results", "tiny", 5, 2, "--reduction-factor", "2")) == 0
    return tmp / "results" / "tiny"


@pytest.mark.slow
def test_study_writes_ranked_tables_with_the_documented_schema(finished_study):
    trials = pd.read_parquet(finished_study / "trials.parquet")
    epochs = pd.read_parquet(finished_study / "epochs.parquet")
    assert list(trials.columns) == TRIAL_COLUMNS
    assert list(epochs.columns) == EPOCH_COLUMNS
    assert {f.name: str(f.type) for f in pq.read_schema(finished_study / "trials.parquet")} == TRIAL_TYPES
    assert {f.name: str(f.type) for f in pq.read_schema(finished_study / "epochs.parquet")} == EPOCH_TYPES
    assert len(trials) == 5 and trials["trial_id"].is_unique
    assert list(trials["rank"]) == [1, 2, 3, 4, 5]
    accs = trials["best_val_acc"].to_numpy()
    assert np.all(np.diff(accs) <= 0), "trials must be ranked by best validation accuracy"
    assert set(trials["status"]) <= {"completed", "stopped early"}
    for _, row in trials.iterrows():
        mine = epochs[epochs["optuna_trial"] == row["optuna_trial"]]
        assert len(mine) == row["epochs_run"] and list(mine["epoch"]) == list(range(1, row["epochs_run"] + 1))
        assert row["best_val_acc"] == pytest.approx(mine["val_acc"].max())
        assert row["best_epoch"] == int(mine.loc[mine["val_acc"].idxmax(), "epoch"])
        assert row["status"] == ("completed" if row["epochs_run"] == 2 else "stopped early")
        assert row["threads"] == 1 and Path(row["trial_dir"]).is_dir()
    baseline = trials[trials["baseline"]]
    assert len(baseline) == 1 and baseline.iloc[0]["optuna_trial"] == 0
    for name in DEFAULT_SPACE:
        assert baseline.iloc[0][name] == pytest.approx(BASELINE[name]) if name != "augment" else baseline.iloc[0][name] == "d2l"
    assert trials["node_id"].notna().all() and (trials["images_per_s"] > 0).all()
    assert trials["error"].isna().all()  # a string column of nulls, not parquet's null type
    # where each trial's time went (docs/results.md): its hold on its slot covers its epochs; the phases were timed
    assert (trials["slot_s"] >= trials["seconds"]).all() and (trials["ended_at"] > trials["started_at"]).all()
    assert trials[["import_s", "data_wait_s", "build_s", "first_step_s"]].notna().all().all()
    assert (epochs["train_s"] + epochs["val_s"] <= epochs["seconds"] + 1e-6).all() and (epochs["train_s"] > 0).all()
    assert epochs["checkpoint_s"].notna().all()
    # a worker process's first trial imported the training code; later ones on it found it imported and reset the model
    first, later = trials[trials["warm_runs"] == 0], trials[trials["warm_runs"] > 0]
    assert len(later) and first["worker_pid"].nunique() == len(first) and set(later["worker_pid"]) <= set(first["worker_pid"])
    assert later["import_s"].max() < first["import_s"].min()
    assert not (finished_study / "tables.journal").exists() or (finished_study / "tables.journal").stat().st_size == 0
    # no checkpoint after a trial's last epoch: with 2 epochs, none at all, and none left behind
    assert not list(finished_study.glob("ray/run-*/*/checkpoint_*"))


@pytest.mark.slow
def test_optuna_study_is_stored_and_agrees_with_the_table(finished_study):
    assert_exact(finished_study, "tiny", 5)
    settings = json.loads((finished_study / "study.json").read_text())
    timings = settings["runs"][0]["timings"]  # each driver run's phases, for python -m bench --scaling
    assert {"decode_s", "ray_start_s", "setup_s", "fit_s", "wall_s"} <= set(timings) and settings["runs"][0]["outcome"] == "finished"


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


def test_tpe_sees_a_diverged_trial_as_worse_than_one_asha_stopped_after_epoch_1(tmp_path):
    """The searcher's tells, then TPE itself: with room for one trial in its "good" group, TPE must pick the
    trial ASHA stopped after 1 epoch (val 0.2) over one that trained 3 epochs (0.9, 0.9) before diverging."""
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}}
    searcher = AskTellOptunaSearch(space, storage_url(tmp_path / "o.db"), "s", max_epochs=5, seed=0)
    searcher._study = optuna.create_study(study_name="s", storage=storage_url(tmp_path / "o.db"), direction="maximize",
                                          sampler=optuna.samplers.RandomSampler(seed=0))
    for trial_id in ("stopped", "diverged"):
        searcher.suggest(trial_id)
    searcher.on_trial_result("stopped", {"epoch": 1, "val_acc": 0.2})
    searcher.on_trial_complete("stopped", {"epoch": 1, "val_acc": 0.2})
    for epoch in (1, 2):
        searcher.on_trial_result("diverged", {"epoch": epoch, "val_acc": 0.9})
    searcher.on_trial_result("diverged", {"epoch": 3, "val_acc": math.nan, "diverged": True})
    searcher.on_trial_complete("diverged", {"epoch": 3, "val_acc": math.nan, "diverged": True})
    study = searcher.study
    stopped, diverged = study.trials
    assert stopped.state == diverged.state == optuna.trial.TrialState.PRUNED
    assert diverged.user_attrs["status"] == "diverged" and diverged.constraints == {"diverged": 1.0}
    from optuna.samplers._tpe.sampler import _split_trials  # TPE's own split (Optuna 5.0)

    below, above = _split_trials(study, study.trials, n_below=1)
    assert [t.number for t in below] == [stopped.number] and [t.number for t in above] == [diverged.number]
    # and what TPE then proposes lies near the stopped trial's lr, far from the one that blew up
    stopped_lr, diverged_lr = math.log10(stopped.params["lr"]), math.log10(diverged.params["lr"])
    fresh = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=0))  # its default gamma puts 1 of 2 trials in the good group
    for trial in study.trials:
        fresh.add_trial(trial)
    proposals = []
    for _ in range(20):
        trial = fresh.ask(stopped.distributions)
        proposals.append(math.log10(trial.params["lr"]))
        fresh.tell(trial, state=optuna.trial.TrialState.FAIL)  # TPE ignores failed trials: each proposal sees the same two
    assert abs(np.median(proposals) - stopped_lr) < abs(np.median(proposals) - diverged_lr), (stopped_lr, diverged_lr, proposals)


def test_a_resumed_sampler_does_not_replay_its_start_up_draws():
    assert sampler_seed(0, 3) != sampler_seed(0, 0) and sampler_seed(0, 3) == sampler_seed(0, 3)
    assert sampler_seed(1, 0) != sampler_seed(0, 0)


BASELINE_PARAMS = {k: BASELINE[k] for k in DEFAULT_SPACE}


def test_the_baseline_fills_what_the_book_fixes_and_says_what_lies_outside():
    with_batch = {**DEFAULT_SPACE, "batch_size": {"type": "categorical", "choices": [32, 64, 128]}}
    params, note = baseline_params(with_batch)
    assert params == {**BASELINE_PARAMS, "batch_size": 128} and note == ""
    params, note = baseline_params({**DEFAULT_SPACE, "batch_size": {"type": "int", "low": 8, "high": 64}})
    assert params is None and "batch_size 128 outside it" in note and "without a baseline" in note
    params, note = baseline_params({**DEFAULT_SPACE, "lr": {"type": "float", "low": 1e-2, "high": 1e-1, "log": True}})
    assert params is None and "lr 0.0064" in note


def _args(gpus: float, cpus: float | None = None) -> argparse.Namespace:
    return argparse.Namespace(gpus_per_trial=gpus, cpus_per_trial=cpus)


def test_gpus_asked_for_on_a_machine_without_one_fall_back_to_cpu_slots():
    resources, slots, message = share_resources(0.25, None, {"CPU": 4.0})
    assert resources == {"cpu": 1.0, "gpu": 0.0} and slots == 4
    assert "no GPU" in message


@pytest.mark.parametrize("classes", [2, 5])
def test_the_checkpoint_size_counted_without_torch_is_a_built_models(classes):
    from study.driver.resources import checkpoint_bytes
    from trainable import TrainConfig
    from trainable.model import build_model

    state = build_model("none", classes).state_dict()
    built = sum(t.numel() * t.element_size() for t in state.values())
    assert checkpoint_bytes(TrainConfig(momentum=0.0), {}, classes) == built
    assert checkpoint_bytes(TrainConfig(momentum=0.9), {}, classes) == 2 * built


def test_fractional_gpus_share_a_gpu_and_split_the_cpus():
    resources, slots, message = share_resources(0.25, None, {"CPU": 16.0, "GPU": 1.0})
    assert resources == {"cpu": 4.0, "gpu": 0.25} and slots == 4 and message is None


@pytest.mark.slow
def test_gpu_fallback_message_in_a_real_study(tmp_path):
    data = make_images(tmp_path / "data", per_class=6)
    out = run_study(study_args(data, tmp_path / "r", "g", 1, 1, "--gpus-per-trial", "1"))
    assert out.returncode == 0, out.stderr
    assert "no GPU in the Ray cluster: running trials on CPU slots" in out.stdout
    assert "Ray: a local instance started for this run (1 node(s), " in out.stdout  # said every time
    assert len(pd.read_parquet(tmp_path / "r" / "g" / "trials.parquet")) == 1


@pytest.mark.slow
def test_the_baseline_is_trial_0_when_batch_size_is_searched(tmp_path):
    data = make_images(tmp_path / "data", per_class=6)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({**DEFAULT_SPACE, "batch_size": {"type": "categorical", "choices": [4, 8, 128]}}))
    out = run_study(study_args(data, tmp_path / "r", "b", 1, 1, "--space", str(space)))
    assert out.returncode == 0, out.stdout + out.stderr
    row = pd.read_parquet(tmp_path / "r" / "b" / "trials.parquet").iloc[0]
    assert row["baseline"] and row["optuna_trial"] == 0 and row["batch_size"] == 128 and row["lr"] == pytest.approx(BASELINE["lr"])


@pytest.mark.slow
def test_a_raising_trial_runs_once_says_one_line_and_the_study_exits_3(tmp_path):
    data = make_images(tmp_path / "data", per_class=6)
    out = run_study(study_args(data, tmp_path / "r", "e", 2, 2), env={"HOTDOG_TUNE_FAIL": "a bug in the run"})
    text = out.stdout + out.stderr
    assert out.returncode == 3, text  # no trial produced a validation accuracy
    assert "Traceback" not in text and "RayTaskError" not in text
    lines = [line for line in text.splitlines() if "error: RuntimeError: a bug in the run" in line]
    assert len(lines) == 2, text  # one line per failed trial: each ran once
    log = Path(lines[0].split("(log: ")[1].rstrip(")"))
    assert log.is_file() and "Traceback" in log.read_text() and "RuntimeError" in log.read_text()
    trials = pd.read_parquet(tmp_path / "r" / "e" / "trials.parquet")
    assert (trials["status"] == "errored").all() and trials["error"].str.contains("a bug in the run").all()
    assert "no usable trial: every trial diverged or failed" in text
    assert all(t.state == optuna.trial.TrialState.FAIL for t in optuna_trials(tmp_path / "r" / "e", "e"))


@pytest.mark.slow
def test_resume_keeps_the_stored_options_and_the_printed_hint_works(tmp_path):
    data = make_images(tmp_path / "data", per_class=6)
    results = tmp_path / "elsewhere"  # not the default results/: the hint must say where
    out = run_study(study_args(data, results, "h", 3, 1, "--max-concurrent", "1"), env={"HOTDOG_TUNE_FAULT": "trial_ended:1:term"})
    assert out.returncode == 1, out.stdout + out.stderr  # SIGTERM: stopped like Ctrl-C, resumable
    assert "Traceback" not in out.stderr and "study h: top trials" in out.stdout
    hint = out.stdout.strip().splitlines()[-1].strip()
    assert hint.startswith("python -m study.run --resume --name h --results-dir") and str(results) in hint
    resumed = subprocess.run([sys.executable, *shlex.split(hint)[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 trial(s) at a time" in resumed.stdout  # --max-concurrent 1 was kept
    assert_exact(results / "h", "h", 3)
    settings = StudyFolder(results / "h").read_settings()
    assert settings.max_concurrent == 1 and [r["resumed"] for r in settings.runs] == [False, True]
    changed = run_study(["--resume", "--name", "h", "--results-dir", str(results), "--epochs", "5"])
    assert changed.returncode == 2 and changed.stderr.strip().splitlines()[-1].startswith("error: --epochs cannot change when resuming")
    grown = run_study(["--resume", "--name", "h", "--results-dir", str(results), "--samples", "4"])
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert "the study grows from 3" in grown.stdout and "3 trial(s) finished, 0 to continue, 1 to start" in grown.stdout
    assert_exact(results / "h", "h", 4)


def test_diverged_and_errored_trials_rank_after_every_usable_one(tmp_path):
    from study.core.tables import StudyTables

    tables = StudyTables(tmp_path, ["lr"], max_epochs=2, seed=0)
    for number, (trial_id, lr, accs, error) in enumerate((("ok", 0.01, [0.6, 0.7], None), ("nan", 9.0, [0.9, None], None),
                                                           ("err", 0.1, [0.95], "boom"))):
        tables.on_start(number, trial_id, {"lr": lr, "optuna_trial": number})
        for epoch, acc in enumerate(accs, 1):
            tables.on_result(number, trial_id, {"lr": lr}, {"epoch": epoch, "val_acc": float("nan") if acc is None else acc,
                                                            "diverged": acc is None, "seconds": 1.0, "images_per_s": 10.0})
        tables.on_end(number, trial_id, {"lr": lr}, error)
    tables.write()
    trials = pd.read_parquet(tmp_path / "trials.parquet").set_index("trial_id")
    assert trials.loc["ok", "rank"] == 1 and trials.loc["ok", "status"] == "completed"
    assert trials.loc["nan", "status"] == "diverged" and trials.loc["err", "status"] == "errored"
    assert set(trials.loc[["nan", "err"], "rank"]) == {2, 3}
    assert trials.loc["nan", "best_val_acc"] == 0.9  # what it reached before diverging is kept, but ranks last


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


@pytest.mark.slow
def test_the_summary_warns_when_the_best_trials_crowd_a_searched_bound(tmp_path):
    data = make_images(tmp_path / "data", per_class=8)
    # freeze depth 2-3: every top trial sits at one of its two bounds, and neither ends the domain (0-5)
    narrow = tmp_path / "narrow.json"
    narrow.write_text(json.dumps({"freeze_depth": {"type": "int", "low": 2, "high": 3},
                                  "augment": {"type": "categorical", "choices": ["none", "flip"]}}))
    out = run_study(study_args(data, tmp_path / "r", "narrow", 4, 1, "--space", str(narrow)))
    assert out.returncode == 0, out.stdout + out.stderr
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("warning: freeze_depth: ")]
    assert "of the top 3 trials lie at the" in line and "widen it with --space" in line, line
    widened = json.loads(line.split("e.g. ")[1].split(" (python")[0])["freeze_depth"]
    assert widened in ({"type": "int", "low": 1, "high": 3}, {"type": "int", "low": 2, "high": 4})
    summary = json.loads((tmp_path / "r" / "narrow" / "study.json").read_text())["summary"]
    assert summary["range_warnings"] == [line.removeprefix("warning: ")]
    # the whole domain of freeze depth: its ends cannot be widened, so nothing is said
    full = tmp_path / "full.json"
    full.write_text(json.dumps({"freeze_depth": {"type": "int", "low": 0, "high": 5},
                                "augment": {"type": "categorical", "choices": ["none", "flip"]}}))
    out = run_study(study_args(data, tmp_path / "r", "full", 4, 1, "--space", str(full)))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning:" not in out.stdout and "crowd" not in out.stdout


def test_the_ray_log_is_quiet_about_a_full_disk_and_not_about_a_bug(tmp_path, capsys):
    import logging

    from study.driver.session import _QuietFileHandler

    handler = _QuietFileHandler(tmp_path / "ray.log", delay=True)
    record = logging.makeLogRecord({"msg": "sync failed"})
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        handler.handleError(record)
    assert capsys.readouterr().err == ""
    try:
        raise TypeError("not all arguments converted during string formatting")
    except TypeError:
        handler.handleError(record)
    assert "TypeError" in capsys.readouterr().err


@pytest.mark.slow
def test_a_study_stopped_while_trials_run_counts_their_hold_on_their_slots(tmp_path):
    """The seen failure: after Ctrl-C the time line called the running trials' epochs "slots without a trial at the end"."""
    from study.core.folder import StudyFolder
    from study.core.timing import time_use
    from study.findings.reading import read_study

    data = make_images(tmp_path / "data", per_class=8)
    out = run_study(study_args(data, tmp_path / "r", "t", 2, 3, "--max-concurrent", "2"), env={"HOTDOG_TUNE_FAULT": "result:2:term"})
    assert out.returncode == 1, out.stdout + out.stderr
    study = read_study(StudyFolder(tmp_path / "r" / "t"))
    running = study.trials[study.trials["status"] == "running"]
    assert len(running) >= 1 and running["slot_s"].gt(0).all() and running["ended_at"].notna().all(), running
    use = time_use(study.trials, study.epochs, study.settings.runs)
    assert use.held_s >= use.epochs_s > 0 and use.trials == 2
    assert use.parts["end"] < 0.5 * use.slot_s, use.parts  # the trials held their slots to the end: not empty slots
