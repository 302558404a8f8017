"""What a user reads is exact, and nothing is silently wrong: the intervals' floor and bounds, a study stopped or
killed before any result, hidden folders, a space outside the trainable's bounds, a weights folder, and who may
write which half of study.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import trainable.tv_compat  # noqa: F401  (first: the torchvision-on-CPU import fix)

import pytest
from PIL import Image

from study import analyze as analyze_mod
from study import rerun as rerun_mod
from study.core.decision import BOUNDS_NOTHING, binomial_se, paired, paired_by_seed
from study.core.folder import StudyFolder
from study.core.settings import StudySettings
from study.core.tables import StudyTables
from study.core.space import BASELINE, DEFAULT_SPACE
from study.stages.summary import print_summary
from trainable import TrainConfig, prepare_data
from trainable.fingerprint import data_fingerprint

from test_analyze_rerun import exit_code_and_stderr, make_images

REPO = Path(__file__).resolve().parents[1]


# --- intervals: never narrower than the images allow, never past what accuracies can be ------------------
def test_an_accuracys_error_is_never_zero():
    assert binomial_se(1.0, 2) > 0.1  # a perfect score on 2 images says little
    assert binomial_se(0.5, 400) == pytest.approx(math.sqrt(0.25 / 404), rel=1e-9)
    assert binomial_se(0.9, 10_000) < binomial_se(0.9, 100)


def test_two_equal_seed_differences_keep_the_test_splits_own_error():
    # the case: two seeds whose differences are equal printed "sd 0.000, 95% CI +0.065 to +0.065 (|t| inf)"
    p = paired_by_seed({0: 0.94, 1: 0.95}, {0: 0.875, 1: 0.885}, images=400)
    assert p.sd < 1e-12 and p.images_se == pytest.approx(binomial_se((0.945 + 0.88) / 2, 400))
    assert p.se == pytest.approx(p.images_se) and math.isfinite(p.t)
    assert p.ci_high - p.ci_low == pytest.approx(2 * 1.96 * p.images_se, rel=1e-4)  # the images' error alone, df unbounded
    assert "inf" not in p.describe("seed") and "95% CI +0.0" in p.describe("seed")


def test_seeds_add_their_spread_to_the_images_error_with_welch_satterthwaite_df():
    p = paired_by_seed({0: 0.90, 1: 0.94, 2: 0.92}, {0: 0.85, 1: 0.86, 2: 0.88}, images=400)
    runs_se = p.sd / math.sqrt(3)
    assert p.se == pytest.approx(math.hypot(runs_se, p.images_se))
    assert p.df == pytest.approx(p.se**4 / (runs_se**4 / 2))
    assert 2 < p.df < math.inf


def test_folds_use_the_images_error_as_a_floor_not_an_addition():
    p = paired([0.05, 0.05, 0.05], images_se=0.02)  # folds on different images already vary with them
    assert p.se == pytest.approx(0.02) and p.df == 2
    q = paired([0.0, 0.2, 0.1], images_se=0.02)
    assert q.se == pytest.approx(q.sd / math.sqrt(3))


def test_an_interval_that_bounds_nothing_says_so_and_stays_within_plus_minus_one():
    # the 5-class case: "+0.064 over 2 paired seeds (sd 0.330, 95% CI -2.901 to +3.029)"
    p = paired([0.3, -0.167])
    assert -1.0 <= p.ci_low and p.ci_high <= 1.0
    assert not p.bounded and p.t_crit * p.se >= BOUNDS_NOTHING
    text = p.describe("seed")
    assert "2 seeds bound nothing here" in text and "more seeds would narrow it" in text
    assert "-2.9" not in text and "beyond noise" not in text and "within noise" not in text


# --- a study stopped, or killed, before any trial had a result ---------------------------------------------
def _killed_study(tmp_path: Path, data_dir: Path) -> StudyFolder:
    """What a SIGKILL leaves while the study's only trial trained its first epoch: the trial started, no result."""
    folder = StudyFolder(tmp_path / "killed")
    folder.path.mkdir()
    base = TrainConfig(data_dir=str(data_dir), weights="none", epochs=2, image_size=32, batch_size=8, val_fraction=0.25)
    settings = StudySettings.from_dict(dict(name="killed", base=base.to_dict(), space=DEFAULT_SPACE, samples=1, seed=0,
                             experiment_path=str(folder.path / "ray"), created="2026-01-01T00:00:00",
                             runs=[{"started": "2026-01-01T00:00:01", "resumed": False}]))  # no outcome: killed
    folder.write_settings(settings)
    tables = StudyTables(folder.path, list(DEFAULT_SPACE), 2, seed=0)
    tables.on_start(0, "t0000", {**{k: BASELINE[k] for k in DEFAULT_SPACE}, "optuna_trial": 0, "baseline": True})
    tables.write()
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("images"), n_train=8, n_test=4)


def test_rerun_refuses_a_trial_that_was_killed_before_its_first_result(tmp_path, data_dir, capsys):
    folder = _killed_study(tmp_path, data_dir)
    code, err, out = exit_code_and_stderr(capsys, rerun_mod.main, [str(folder.path), "--seeds", "1"])
    assert code == 2 and len(err) == 1, err
    # nobody runs the study: its trial was running when it stopped, and is not running now
    assert "has no validation accuracy (it was running when the study stopped)" in err[0] and "--resume" in err[0], err
    assert "picked" not in out and not folder.rerun.exists()


def test_analyze_of_a_killed_study_points_to_resume(tmp_path, data_dir, capsys):
    folder = _killed_study(tmp_path, data_dir)
    code = analyze_mod.main([str(folder.path), "--no-report"])
    out = capsys.readouterr().out
    assert code == 0
    assert "the study stopped unfinished (0 of 1 trial(s) finished)" in out and "--resume" in out
    assert "wait until python -m study.run" not in out


def test_the_summary_of_a_study_stopped_while_its_trials_ran_says_so(tmp_path, data_dir, capsys):
    folder = _killed_study(tmp_path, data_dir)
    tables = StudyTables(folder.path, list(DEFAULT_SPACE), 2, seed=0)
    print_summary(folder, folder.read_settings(), tables, fit_s=3.0)
    out = capsys.readouterr().out
    assert "no trial has a validation accuracy yet: the study stopped while 1 trial(s) ran; none failed" in out
    assert "diverged or failed" not in out


# --- the loader and the fingerprint see the same files -----------------------------------------------------
def test_images_in_a_hidden_folder_are_neither_trained_on_nor_fingerprinted(tmp_path):
    root = make_images(tmp_path / "data", n_train=4, n_test=2)
    before = data_fingerprint(root)
    thumbs = root / "train" / "a" / ".thumbs"
    thumbs.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(thumbs / f"{i}.jpg")
    assert data_fingerprint(root) == before
    data = prepare_data(root, image_size=16, val_fraction=0.25)
    assert len(data.train) + len(data.val) == 8  # 4 a, 4 b: none of the 5 thumbnails


# --- one clear line for input the trainable cannot run ----------------------------------------------------
def _study_run(capsys, tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """study.run in this process (its checks come before anything starts): (exit code, stderr's lines)."""
    import signal

    from study import run as run_mod

    before = signal.getsignal(signal.SIGTERM)
    try:
        code, err, _ = exit_code_and_stderr(capsys, run_mod.main, ["--results-dir", str(tmp_path / "results"), "--name", "s", *args])
    finally:
        signal.signal(signal.SIGTERM, before)
    return code, err


@pytest.mark.parametrize("change, words", [
    ({"freeze_depth": {"type": "float", "low": 0.0, "high": 3.0}}, "freeze_depth"),
    ({"freeze_depth": {"type": "int", "low": 0, "high": 9}}, "freeze_depth"),
    ({"momentum": {"type": "float", "low": 0.5, "high": 3.0}}, "momentum"),
    ({"lr": {"type": "float", "low": -1.0, "high": 0.1}}, "lr"),
    ({"batch_size": {"type": "categorical", "choices": [1, 8]}}, "--batch-size 1 must be 2 or more"),
])
def test_a_space_outside_the_trainables_bounds_is_one_line_before_any_trial(capsys, tmp_path, data_dir, change, words):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({**DEFAULT_SPACE, **change}))
    code, err = _study_run(capsys, tmp_path, "--space", str(space), "--data-dir", str(data_dir), "--weights", "none")
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and words in err[0], err
    assert not (tmp_path / "results" / "s").exists()


def test_weights_naming_a_folder_says_it_is_a_folder(capsys, tmp_path, data_dir):
    code, err = _study_run(capsys, tmp_path, "--data-dir", str(data_dir), "--weights", str(tmp_path))
    assert code == 2 and len(err) == 1 and "is a folder, not a file" in err[0] and "does not exist" not in err[0], err


# --- which Ray cluster the study runs on, every time --------------------------------------------------------
def test_a_cluster_named_by_ray_address_is_said_and_checked(capsys, monkeypatch, tmp_path, data_dir):
    """$RAY_ADDRESS is Ray's own way to name a cluster: the study joins it only because it is set, and says so."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # nothing listens on the discard port
    code, err = _study_run(capsys, tmp_path, "--data-dir", str(data_dir), "--weights", "none", "--samples", "1")
    assert code == 2 and len(err) == 1, err
    assert "the Ray cluster at 127.0.0.1:9, from $RAY_ADDRESS" in err[0] and "unset it" in err[0]
