"""From one study to the next: ``--warm-start`` (observations on the same data, a transfer start otherwise), the
studies compared (``study.compare``), and the cost-aware answer (the front, the cheapest configuration within noise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from study.core.decision import decide
from study.findings.reading import read_study
from study.stages.warm_start import plan, seed_study, source_study
from study.core.folder import StudyFolder, storage_url
from study.core.settings import StudySettings
from study.core.space import BASELINE, DEFAULT_SPACE, baseline_params
from trainable import UserError

from test_analyze_rerun import make_fake_study

ROOT = Path(__file__).resolve().parents[1]


def finished(folder: StudyFolder, fingerprint: dict | None = None) -> StudySettings:
    """A fake study made finished, with a data fingerprint (what --warm-start reads)."""
    settings = folder.read_settings()
    settings.runs = [{"outcome": "finished", "timings": {"wall_s": 10.0}}]
    settings.data_fingerprint = fingerprint or {"train": {"a": {"files": 10, "digest": "x"}, "b": {"files": 10, "digest": "y"}}}
    settings.summary = {}
    folder.write_settings(settings)
    return settings


def new_study(a: StudySettings, tmp_path: Path, space: dict | None = None, **base) -> StudySettings:
    """B's settings as study.run makes them, before its first trial."""
    space = space or DEFAULT_SPACE
    baseline, note = baseline_params(space)
    return StudySettings.from_dict(dict(name="B", base={**a.base, **base}, space=space, samples=4, seed=0,
                                      experiment_path=str(tmp_path / "B" / "ray"), baseline=baseline, baseline_note=note,
                                      data_fingerprint=a.data_fingerprint))


def test_on_the_same_data_a_study_begins_from_the_others_observations_and_its_winner(tmp_path, tiny_image_folder):
    a_folder = make_fake_study(tmp_path, tiny_image_folder, n=10)
    a = finished(a_folder)
    b = new_study(a, tmp_path)
    warm = plan(read_study(a_folder), b)
    trials = pd.read_parquet(a_folder.trials)
    rank1 = int(trials[~trials["baseline"]].iloc[0]["optuna_trial"])  # no confirmation stage: A's rank 1 (never the book's recipe)
    # A's book's recipe and its winner run again as B's own trials 0 and 1: B's study holds each configuration once
    assert warm.kind == "observations" and warm.observations == 8 and not warm.left_out and warm.run_again == sorted([0, rank1])
    assert [f["source_trial"] for f in warm.first] == [rank1]
    b_folder = StudyFolder(tmp_path / "B")
    b_folder.path.mkdir()
    study = seed_study(storage_url(b_folder.optuna_db), read_study(a_folder), b, warm)
    stored = study.get_trials(deepcopy=False)
    assert [t.state for t in stored[:2]] == [TrialState.WAITING, TrialState.WAITING]  # the book's recipe, then A's winner
    assert stored[0].params == {} and stored[1].system_attrs.get("fixed_params") == warm.first[0]["params"]
    carried = stored[2:]
    assert len(carried) == 8 and all(t.user_attrs["warm_start"] == "fake" for t in carried)
    assert {t.user_attrs["source_trial"] for t in carried}.isdisjoint(warm.run_again)
    statuses = dict(zip(trials["optuna_trial"], trials["status"]))
    expected = {"completed": TrialState.COMPLETE, "stopped early": TrialState.PRUNED, "diverged": TrialState.PRUNED,
                "errored": TrialState.FAIL}
    assert all(t.state == expected[statuses[t.user_attrs["source_trial"]]] for t in carried)
    assert any(t.constraints for t in carried)  # the diverged one stays infeasible
    # B's own state holds none of A's trials: no row, none counted as finished; B's first asks are the book's recipe, A's winner
    from study.stages.reconcile import prepare

    b_folder.write_settings(b)
    state = prepare(b_folder, b, list(b.space), decisions_of=lambda tables: {})
    assert state.finished == 0 and not state.tables.trials and not state.unfinished
    from study.core.space import to_distributions

    asked = [study.ask(to_distributions(DEFAULT_SPACE)) for _ in range(2)]
    assert asked[0].params == {k: BASELINE[k] for k in DEFAULT_SPACE} and asked[1].params == warm.first[0]["params"]


def test_the_warm_start_quotes_the_winners_gain_corrected_for_the_choice(tmp_path, tiny_image_folder):
    a_folder = make_fake_study(tmp_path, tiny_image_folder, n=10)
    a = finished(a_folder)
    trials = pd.read_parquet(a_folder.trials)
    winner = int(trials[~trials["baseline"]].iloc[0]["optuna_trial"])
    a.summary = {"confirmation": {"winner": winner, "gain": {"mean": 0.064, "ci": [0.016, 0.111], "df": 5, "beyond_noise": True,
                                                            "corrected": {"mean": 0.031, "ci": [-0.012, 0.07]}}}}
    a_folder.write_settings(a)
    lines = plan(read_study(a_folder), new_study(a, tmp_path)).lines()
    assert lines[1] == (f"first after the book's recipe: its trial {winner} (its winner: +0.031 over the book's recipe there, "
                        "corrected for the choice, 95% CI -0.012 to +0.070)"), lines  # not the raw +0.064
    a.summary = {}  # no confirmation stage: nothing to quote
    a_folder.write_settings(a)
    assert plan(read_study(a_folder), new_study(a, tmp_path)).lines()[1] == f"first after the book's recipe: its trial {winner}"


def test_a_narrower_space_leaves_out_what_it_could_not_propose(tmp_path, tiny_image_folder):
    a_folder = make_fake_study(tmp_path, tiny_image_folder, n=10)
    a = finished(a_folder)
    narrow = {**DEFAULT_SPACE, "freeze_depth": {"type": "int", "low": 0, "high": 2}}
    warm = plan(read_study(a_folder), new_study(a, tmp_path, narrow))
    trials = pd.read_parquet(a_folder.trials)
    outside = set(trials.loc[trials["freeze_depth"] > 2, "optuna_trial"])
    assert outside and set(warm.left_out) == outside and warm.observations == 10 - len(outside) - len(warm.run_again)
    assert "left out" in warm.lines()[0]


def test_a_second_run_of_the_winners_configuration_is_said_as_the_winner_not_the_books_recipe(tmp_path, tiny_image_folder):
    a_folder = make_fake_study(tmp_path, tiny_image_folder, n=10)
    a = finished(a_folder)
    trials = pd.read_parquet(a_folder.trials)
    winner, twin = (int(n) for n in trials[~trials["baseline"]]["optuna_trial"].iloc[:2])
    for name in DEFAULT_SPACE:  # A ran its winner's configuration twice
        trials.loc[trials["optuna_trial"] == twin, name] = trials.loc[trials["optuna_trial"] == winner, name].iloc[0]
    trials.to_parquet(a_folder.trials)
    a.summary = {"confirmation": {"winner": winner}}
    a_folder.write_settings(a)
    warm = plan(read_study(a_folder), new_study(a, tmp_path))
    assert sorted(warm.run_again) == sorted([0, winner, twin]) and "roles" not in warm.as_dict()  # study.json as before
    said = {0: "the book's recipe", winner: "its winner", twin: "its winner"}  # the twin was said as the book's recipe
    again = ", ".join(f"trial {n} ({said[n]})" for n in sorted(said))
    assert f"; its {again} run again here instead, as this study's own" in warm.lines()[0], warm.lines()


def test_other_settings_make_a_transfer_start_without_observations(tmp_path, tiny_image_folder):
    a_folder = make_fake_study(tmp_path, tiny_image_folder, n=10)
    a = finished(a_folder)
    b = new_study(a, tmp_path, image_size=64)
    warm = plan(read_study(a_folder), b)
    assert warm.kind == "transfer" and warm.observations == 0 and warm.differences == ["image size 32 there, 64 here"]
    assert len(warm.first) == 3 and 0 not in [f["source_trial"] for f in warm.first]  # A's best three, never the book's recipe
    b_folder = StudyFolder(tmp_path / "B")
    b_folder.path.mkdir()
    stored = seed_study(storage_url(b_folder.optuna_db), read_study(a_folder), b, warm).get_trials(deepcopy=False)
    assert len(stored) == 4 and all(t.state == TrialState.WAITING for t in stored)
    other_data = new_study(a, tmp_path)
    other_data.data_fingerprint = {"train": {"a": {"files": 11, "digest": "z"}}}
    assert plan(read_study(a_folder), other_data).kind == "transfer"


def test_a_study_to_begin_from_must_be_a_finished_study_nobody_runs(tmp_path, tiny_image_folder):
    with pytest.raises(UserError, match="no such folder"):
        source_study(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no study"):
        source_study(str(tmp_path / "empty"))
    a_folder = make_fake_study(tmp_path, tiny_image_folder, n=4)
    with pytest.raises(UserError, match="is unfinished: finish it first with python -m study.run --resume --name fake"):
        source_study(str(a_folder.path))
    finished(a_folder)
    lock = a_folder.lock()
    try:
        with pytest.raises(UserError, match="is running"):
            source_study(str(a_folder.path))
    finally:
        lock.release()
    before = {p.name: p.stat().st_mtime_ns for p in a_folder.path.iterdir()}
    source_study(str(a_folder.path))  # only read
    assert {p.name: p.stat().st_mtime_ns for p in a_folder.path.iterdir()} == before


def test_the_carried_winner_is_found_by_its_hyperparameters_and_always_confirmed(tmp_path):
    from study.stages.confirmation import candidates
    from study.stages.warm_start import carried_trial
    from study.core.tables import StudyTables

    params = [{"lr": 0.01 * (i + 1), "head_lr_mult": 10.0, "weight_decay": 1e-4, "freeze_depth": i % 3, "augment": "d2l"} for i in range(5)]
    warm = {"first": [{"source_trial": 7, "params": dict(params[3])}]}
    tables = StudyTables(tmp_path, list(DEFAULT_SPACE), 1, seed=0)
    for number, p in enumerate(params):
        config = {**p, "optuna_trial": number, "baseline": number == 0}
        tables.on_start(number, f"t{number}", config)
        tables.on_result(number, f"t{number}", config, {"epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.4,
                                                        "val_acc": 0.9 - 0.1 * number, "seconds": 1.0, "images_per_s": 30.0,
                                                        "diverged": False})
        tables.on_end(number, f"t{number}", config, None)
    assert carried_trial(tables.trials, warm) == 3
    assert carried_trial(tables.trials, {}) is None
    assert candidates(tables, 1) == [0]  # rank 1 is the book's recipe here
    assert candidates(tables, 2, carried=3) == [0, 1, 3]  # the top 2, then the carried winner ranked 4th
    assert candidates(tables, 4, carried=3) == [0, 1, 2, 3]  # already among the top: once


# --- the cost-aware answer -----------------------------------------------------------------------------
def test_the_front_and_the_cheapest_configuration_within_noise_of_the_winner():
    rows = pd.DataFrame({"config": [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4], "fold": [0, 1, 2] * 4,
                         "val_acc": [0.80, 0.82, 0.81, 0.79, 0.82, 0.80, 0.60, 0.62, 0.61, 0.70, 0.69, 0.71],
                         "seconds_per_epoch": [10] * 3 + [3] * 3 + [1] * 3 + [5] * 3})
    d = decide(rows)
    assert d.winner == 1 and d.front == [1, 2, 3]  # 4 is beaten by 2 on both
    assert d.within_noise(2) and not d.within_noise(3) and d.cheapest == 2
    assert d.cheapest_line().startswith("cheapest within noise of the winner: trial 2, -0.007")
    alone = decide(rows[rows["config"].isin([1, 3])])
    assert alone.cheapest == 1 and "the winner itself" in alone.cheapest_line()
    as_costly = rows.assign(seconds_per_epoch=rows["seconds_per_epoch"].where(rows["config"] != 2, 9.5))
    assert decide(as_costly).cheapest == 1  # 5% cheaper is a clock's noise, not a cheaper answer


# --- real studies ---------------------------------------------------------------------------------------
def run(module: str, *argv: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ})


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    from test_study import make_images

    tmp = tmp_path_factory.mktemp("warm")
    data = make_images(tmp / "data")
    results = tmp / "results"
    narrow = tmp / "narrow.json"
    narrow.write_text(json.dumps({**DEFAULT_SPACE, "augment": {"type": "categorical", "choices": ["none", "flip", "d2l"]}}))
    common = ["--data-dir", str(data), "--weights", "none", "--epochs", "1", "--image-size", "32", "--batch-size", "8",
              "--results-dir", str(results), "--confirm-top", "1"]
    a = run("study.run", "--samples", "3", "--name", "A", "--space", str(narrow), *common)
    assert a.returncode == 0, a.stdout + a.stderr
    b = run("study.run", "--samples", "3", "--name", "B", "--warm-start", str(results / "A"), *common)
    assert b.returncode == 0, b.stdout + b.stderr
    return {"data": data, "results": results, "common": common, "a": a, "b": b}


@pytest.mark.slow
def test_a_warm_started_study_runs_the_other_winner_first_and_holds_its_observations(studies):
    results = studies["results"]
    a = StudyFolder(results / "A").read_settings()
    b = StudyFolder(results / "B").read_settings()
    winner = a.summary["confirmation"]["winner"]
    a_trials = pd.read_parquet(results / "A" / "trials.parquet")
    b_trials = pd.read_parquet(results / "B" / "trials.parquet").sort_values("optuna_trial")
    assert "warm start from study 'A'" in studies["b"].stdout and "observations for the searcher" in studies["b"].stdout
    held_again = len(b.warm_start["run_again"])  # the book's recipe and A's winner are B's own trials 0 and 1
    assert b.warm_start["kind"] == "observations" and b.warm_start["observations"] == 3 - held_again and 1 <= held_again <= 2
    assert len(b_trials) == 3 and list(b_trials["optuna_trial"])[:2] == [0, 1] and b_trials.iloc[0]["baseline"]
    if winner != 0:  # A's confirmed winner is B's first trial after the book's recipe
        mine = a_trials[a_trials["optuna_trial"] == winner].iloc[0]
        assert all(b_trials.iloc[1][p] == pytest.approx(mine[p]) if p != "augment" else b_trials.iloc[1][p] == mine[p] for p in DEFAULT_SPACE)
        assert 1 in b.confirm_candidates  # judged again by B's confirmation stage, whatever its rank in B
    stored = optuna.load_study(study_name="B", storage=storage_url(results / "B" / "optuna.db")).get_trials()
    assert sum("warm_start" in t.user_attrs for t in stored) == 3 - held_again
    configurations = [tuple(sorted(t.params.items())) for t in stored if t.params]
    assert len(configurations) == len(set(configurations))  # no configuration held twice
    analyzed = run("study.analyze", str(results / "B"), "--no-report")
    assert "began from study 'A'" in analyzed.stdout


@pytest.mark.slow
def test_a_transfer_start_on_other_settings_carries_no_observation(studies):
    results = studies["results"]
    common = [a if a != "32" else "40" for a in studies["common"]]  # another image size
    c = run("study.run", "--samples", "2", "--name", "C", "--warm-start", str(results / "A"), "--no-confirm", *common)
    assert c.returncode == 0, c.stdout + c.stderr
    assert "a transfer start (image size 32 there, 40 here)" in c.stdout
    stored = optuna.load_study(study_name="C", storage=storage_url(results / "C" / "optuna.db")).get_trials()
    assert not any("warm_start" in t.user_attrs for t in stored)


@pytest.mark.slow
def test_the_studies_compared_side_by_side_and_paired(studies):
    results = studies["results"]
    out = run("study.compare", str(results / "A"), str(results / "B"), "--out", str(results / "cmp"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "A:" in out.stdout and "B:" in out.stdout and out.stdout.count("winner: trial") >= 2
    assert "B's trial" in out.stdout and "vs A's trial" in out.stdout  # the paired line (or: the same configuration)
    page = (results / "cmp" / "compare.html").read_text()
    assert "Which winner is better" in page and "<script src" not in page and "<link" not in page
    if "nothing to tell apart" in out.stdout:  # B confirmed A's winner again: no run tells them apart, none is used
        assert not (results / "cmp" / "compare.parquet").exists() and "training" not in out.stdout
    else:
        runs = pd.read_parquet(results / "cmp" / "compare.parquet")
        assert set(runs["study"]) == {"A", "B"} and set(runs["source"]) <= {"confirm.parquet", "trained"}


@pytest.mark.slow
def test_bad_input_to_warm_start_and_compare_is_one_line(studies, tmp_path):
    results = studies["results"]
    common = studies["common"]
    taken = run("study.run", "--samples", "2", "--name", "B", "--warm-start", str(results / "A"), *common)
    assert taken.returncode == 2 and "already exists" in taken.stderr
    resumed = run("study.run", "--resume", "--name", "B", "--results-dir", str(results), "--warm-start", str(results / "A"))
    assert resumed.returncode == 2 and "--warm-start begins a new study" in resumed.stderr
    missing = run("study.run", "--samples", "2", "--name", "D", "--warm-start", str(tmp_path / "nope"), *common)
    assert missing.returncode == 2 and "no such folder" in missing.stderr and not (results / "D").exists()
    from test_study import make_images

    three = make_images(tmp_path / "three")
    (three / "train" / "green").mkdir()
    (three / "test" / "green").mkdir()
    for split in ("train", "test"):
        for src in list((three / split / "red").iterdir())[:3]:
            (three / split / "green" / src.name).write_bytes(src.read_bytes())
    other = run("study.run", "--samples", "1", "--name", "E", "--data-dir", str(three), "--weights", "none", "--epochs", "1",
                "--image-size", "32", "--batch-size", "8", "--results-dir", str(results), "--no-confirm")
    assert other.returncode == 0, other.stdout + other.stderr
    refused = run("study.compare", str(results / "A"), str(results / "E"))
    assert refused.returncode == 2 and "different classes" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_compare_gives_one_answer_serially_and_in_parallel_and_trains_a_run_once(studies):
    """The seen failure: the serial path trained with every CPU's threads, --parallel (and the confirmation stage) with
    the study's one, and the thread count changes a seeded run (+0.047 against +0.000 for the same two studies)."""
    results = studies["results"]
    c = run("study.run", "--samples", "2", "--name", "S1", "--seed", "1", *studies["common"])  # other seeds: its folds need training
    assert c.returncode == 0, c.stdout + c.stderr
    lines = {}
    for how, extra in (("serial", []), ("parallel", ["--parallel"])):
        out = run("study.compare", str(results / "A"), str(results / "S1"), "--out", str(results / f"cmp-{how}"), "--no-report", *extra)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "training 2 run(s)" in out.stdout, out.stdout
        lines[how] = [line for line in out.stdout.splitlines() if line.startswith("S1's trial")]
    assert lines["serial"] == lines["parallel"] and len(lines["serial"]) == 1
    runs = {how: pd.read_parquet(results / f"cmp-{how}" / "compare.parquet").sort_values(["study", "fold"]) for how in lines}
    assert runs["serial"]["val_acc"].tolist() == runs["parallel"]["val_acc"].tolist()
    again = run("study.compare", str(results / "A"), str(results / "S1"), "--out", str(results / "cmp-serial"), "--no-report")
    assert again.returncode == 0 and "training" not in again.stdout, again.stdout  # trained once, reused after
    import re

    untrained = [re.sub(r" \(\d+ run\(s\) trained for it\)", "", line) for line in lines["serial"]]
    assert [line for line in again.stdout.splitlines() if line.startswith("S1's trial")] == untrained


@pytest.fixture(scope="module")
def sequential_a(tmp_path_factory):
    """Study A, one trial at a time (so every decision, and what B then finds, is the same on every run)."""
    from test_study import make_images

    tmp = tmp_path_factory.mktemp("sequential")
    common = ["--data-dir", str(make_images(tmp / "data", per_class=12)), "--weights", "none", "--epochs", "1", "--image-size", "32",
              "--batch-size", "8", "--results-dir", str(tmp / "r"), "--max-concurrent", "1", "--confirm-top", "1"]
    a = run("study.run", "--samples", "4", "--name", "A", *common)
    assert a.returncode == 0, a.stdout + a.stderr
    return tmp / "r", common


@pytest.mark.slow
@pytest.mark.parametrize("seed, outside", [(5, True), (2, False)])
def test_a_warm_started_study_confirms_its_carried_winner_wherever_it_ranks(sequential_a, seed, outside):
    """The seen failure: with the carried winner outside B's top K the stage had three configurations to confirm and
    Tune room for two: it stopped with "its confirmation stage unfinished", the book's recipe never confirmed."""
    results, common = sequential_a
    b = run("study.run", "--samples", "5", "--name", f"B{seed}", "--seed", str(seed), "--warm-start", str(results / "A"), *common)
    assert b.returncode == 0, b.stdout + b.stderr
    assert "unfinished" not in b.stdout
    folder = StudyFolder(results / f"B{seed}")
    trials = pd.read_parquet(folder.trials)
    carried = 1  # B's first trial after the book's recipe: A's winner
    top = int(trials[trials["status"].isin(["completed", "stopped early"])].iloc[0]["optuna_trial"])
    assert (top != carried) == outside, f"B{seed}'s top trial is {top}: the case this test is for did not arise"
    confirm = pd.read_parquet(folder.confirm)
    for number in (0, carried):  # the book's recipe and the carried winner, each on every fold
        assert sorted(confirm.loc[(confirm["optuna_trial"] == number) & (confirm["status"] == "completed"), "fold"]) == [0, 1]
    settings = folder.read_settings()
    assert sorted(settings.confirm_candidates) == sorted({top, carried, 0}) and settings.summary["confirmation"]["winner"] in {top, carried, 0}
