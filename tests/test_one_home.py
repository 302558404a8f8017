"""Rules that one path followed and another did not, each now in one home (issue: the study in layers): the
confirmation stage's count of runs, what a comparison writes and trains, what a warm start says it carries, a search
space's integer bounds, and the words a stopped or killed study is described with. Fast: fake studies, no Ray."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from study.core.folder import StudyFolder
from study.core.settings import StudySettings
from study.core.space import DEFAULT_SPACE, to_distributions
from study.core.tables import StudyTables
from study.findings.reading import read_study
from study.stages.confirmation import candidates, most_candidates, planned_work
from study.stages.warm_start import plan, source_study
from trainable import UserError

from test_analyze_rerun import exit_code_and_stderr, make_fake_study

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
FINGERPRINT = {"train": {"a": {"files": 10, "digest": "x"}, "b": {"files": 10, "digest": "y"}}}


def finished(folder: StudyFolder, winner: int | None = None) -> StudySettings:
    """A fake study made finished (what --warm-start and study.compare read), its confirmed winner ``winner``."""
    settings = folder.read_settings()
    settings.runs = [{"outcome": "finished", "timings": {"wall_s": 10.0}, "train_images": 15, "val_images": 5}]
    settings.data_fingerprint = dict(FINGERPRINT)
    settings.summary = {"confirmation": {"winner": winner}} if winner is not None else {}
    folder.write_settings(settings)
    if winner is not None:
        trials = pd.read_parquet(folder.trials)
        trials["recommended"] = [("winner" if n == winner else None) for n in trials["optuna_trial"]]
        trials.to_parquet(folder.trials, index=False)
    return settings


def tables_of(tmp_path, accs: list[float]) -> StudyTables:
    """Trials 0.. with these validation accuracies (trial 0 the book's recipe), each completed after one epoch."""
    tables = StudyTables(tmp_path, list(DEFAULT_SPACE), 1, seed=0)
    for number, acc in enumerate(accs):
        config = {"lr": 0.001 * (number + 1), "head_lr_mult": 10.0, "weight_decay": 1e-4, "freeze_depth": 0, "augment": "d2l",
                  "optuna_trial": number, "baseline": number == 0}
        tables.on_start(number, f"t{number}", config)
        tables.on_result(number, f"t{number}", config, {"epoch": 1, "val_acc": acc, "seconds": 1.0, "images_per_s": 9.0})
        tables.on_end(number, f"t{number}", config, None)
    return tables


# --- the confirmation stage counts what it runs ----------------------------------------------------------
@pytest.mark.parametrize("carried, expected", [(3, [1, 3, 0]), (1, [1, 0])])  # the carried winner outside the top 1, then inside
def test_the_stage_never_runs_more_than_it_planned(tmp_path, carried, expected):
    """The seen failure: top 1, the carried winner and the book's recipe are three configurations; the plan (Tune's
    sample count, the ETA, the time budget's reserve) counted two."""
    tables = tables_of(tmp_path, [0.5, 0.9, 0.6, 0.4])
    settings = StudySettings.from_dict({"name": "b", "base": {"epochs": 2, "val_fraction": 0.1}, "space": DEFAULT_SPACE,
                                        "confirm": {"top": 1, "folds": 2}, "baseline": {"lr": 0.0064},
                                        "warm_start": {"first": [{"source_trial": 7, "params": {}}]}})
    chosen = candidates(tables, 1, carried)
    assert chosen == expected
    assert most_candidates(settings) == 3 >= len(chosen)
    runs, epochs = planned_work(settings)
    assert runs == 3 * 2 and epochs == pytest.approx(runs * 2 * (1 / 2) / 0.9)
    alone = StudySettings.from_dict({**settings.to_dict(), "warm_start": {}})
    assert most_candidates(alone) == 2 and most_candidates(StudySettings.from_dict({**settings.to_dict(), "confirm": {}})) == 0


# --- study.compare: checks before it trains, trains only what tells something, shows each answer whole -----
def two_fake_studies(tmp_path, data_dir, same_winner: bool) -> tuple[StudyFolder, StudyFolder]:
    a = make_fake_study(tmp_path, data_dir, n=6, name="A")
    b = make_fake_study(tmp_path, data_dir, n=6, name="B")
    finished(a, winner=1)
    finished(b, winner=1 if same_winner else 2)
    return a, b


def test_compare_refuses_an_output_it_cannot_write_before_it_trains(tmp_path, tiny_image_folder, capsys):
    from study import compare as compare_mod

    a, b = two_fake_studies(tmp_path, tiny_image_folder, same_winner=False)
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    code, err, out = exit_code_and_stderr(capsys, compare_mod.main, [str(a.path), str(b.path), "--out", str(taken)])
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot write the comparison to") and "--out" in err[0], err
    assert "training" not in out and taken.read_text() == "not a folder"


def test_compare_trains_nothing_for_the_same_configuration_and_shows_each_test_result(tmp_path, tiny_image_folder, capsys):
    from study import compare as compare_mod

    a, b = two_fake_studies(tmp_path, tiny_image_folder, same_winner=True)
    rerun = pd.DataFrame([{"rank": 2, "optuna_trial": 1, "baseline": False, "seed": s, "test_acc": 0.7, "epochs": 3, "status": "completed",
                           "comparable_to_book": False, "test_images": 8} for s in (0, 1)])
    rerun.to_parquet(b.rerun, index=False)
    code, err, out = exit_code_and_stderr(capsys, compare_mod.main, [str(a.path), str(b.path), "--out", str(tmp_path / "cmp")])
    assert code == 0, err
    assert "nothing to tell apart" in out and "training" not in out  # decided before anything trains
    assert "on the test split (study.rerun): trial 1 0.700" in out  # B was rerun: its answer says so
    assert not (tmp_path / "cmp" / "compare.parquet").exists()  # no run was used


# --- --warm-start: what it carries and how it says so ------------------------------------------------------
def b_settings(a: StudySettings, tmp_path, samples: int = 4, space: dict | None = None, **base) -> StudySettings:
    return StudySettings.create(a.asked.replace(name="B", samples=samples, space=space or DEFAULT_SPACE, base={**a.base, **base}),
                                str(tmp_path / "B" / "ray"))


def test_a_transfer_start_carries_no_more_than_can_run_first_and_says_so(tmp_path, tiny_image_folder):
    a_folder = make_fake_study(tmp_path, tiny_image_folder, n=10)
    a = finished(a_folder)
    b = b_settings(a, tmp_path, samples=2, image_size=64)  # the book's recipe, then room for one
    warm = plan(read_study(a_folder), b)
    assert warm.kind == "transfer" and len(warm.first) == 1
    assert warm.lines()[1] == f"first after the book's recipe: its trial {warm.first[0]['source_trial']}"
    b.data_fingerprint = dict(FINGERPRINT)
    without = b_settings(a, tmp_path, samples=3, image_size=64, space={**DEFAULT_SPACE, "lr": {"type": "float", "low": 0.01, "high": 0.1}})
    assert without.baseline is None  # the book's lr lies outside: no baseline to run first
    warm = plan(read_study(a_folder), without)
    assert len(warm.first) <= 3 and warm.lines()[1].startswith("first: its trial")


def test_a_warm_start_takes_a_study_by_its_study_json_too(tmp_path, tiny_image_folder):
    a_folder = make_fake_study(tmp_path, tiny_image_folder, n=4)
    finished(a_folder)
    assert source_study(str(a_folder.path / "study.json")).folder.path == a_folder.path
    with pytest.raises(UserError, match="holds no study"):
        source_study(str(tmp_path))


def test_a_warm_start_on_other_momentum_is_a_transfer_start(tmp_path, tiny_image_folder):
    """One rule for "the same problem": a momentum neither study searches changes what an accuracy means (it was left
    out of the warm start's own list)."""
    a_folder = make_fake_study(tmp_path, tiny_image_folder, n=6)
    a = finished(a_folder)
    b = b_settings(a, tmp_path, momentum=0.9)
    b.data_fingerprint = dict(FINGERPRINT)
    warm = plan(read_study(a_folder), b)
    assert warm.kind == "transfer" and warm.differences == ["momentum 0.0 there, 0.9 here"]


# --- a search space's integer bounds ----------------------------------------------------------------------
@pytest.mark.parametrize("low, high", [(0.5, 4), (0, 4.5), ("1", 3), (True, 3)])
def test_an_int_entry_takes_whole_bounds_only(low, high):
    with pytest.raises(UserError, match="freeze_depth.*not a whole number"):
        to_distributions({"freeze_depth": {"type": "int", "low": low, "high": high}})
    assert to_distributions({"freeze_depth": {"type": "int", "low": 1.0, "high": 4}})["freeze_depth"].low == 1


# --- the words of a stopped study ----------------------------------------------------------------------------
def test_analyze_of_a_killed_study_prints_no_library_warning(tmp_path, tiny_image_folder):
    import subprocess
    import sys

    from test_exact_words import _killed_study

    folder = _killed_study(tmp_path, tiny_image_folder)
    done = subprocess.run([sys.executable, "-m", "study.analyze", str(folder.path)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "warn" not in done.stderr, done.stderr  # matplotlib's legend of no curve, seen
    assert "the study stopped unfinished" in done.stdout


def test_the_noise_note_names_the_confirmation_only_where_it_decided():
    from study.findings.analysis import noise_note

    assert "the confirmation stage above judges them" in noise_note(0.6, 0.58, 200, confirmed=True)
    stopped = noise_note(0.6, 0.58, 200, confirmed=False)
    assert "confirmation stage" not in stopped and "python -m study.rerun" in stopped


def test_the_study_json_of_a_warm_start_says_what_ran_first(tmp_path, tiny_image_folder):
    a_folder = make_fake_study(tmp_path, tiny_image_folder, n=6)
    a = finished(a_folder)
    b = b_settings(a, tmp_path)
    b.data_fingerprint = dict(FINGERPRINT)
    recorded = plan(read_study(a_folder), b).as_dict()
    assert json.loads(json.dumps(recorded))["after_baseline"] is True and recorded["kind"] == "observations"
    assert not math.isnan(recorded["observations"])
