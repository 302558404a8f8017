"""study.decision (the confirmation stage's decision) and bench.selection (the Monte Carlo of a study (fast: no training, no Ray run)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bench import selection as sel
from bench.selection import nan_percentile_rows, run_asha, simulate
from study.core.decision import decide, t975
from study.driver.rungs import asha_rungs


def frame(runs: dict, cost: dict) -> pd.DataFrame:
    """``runs[config] = [val_acc per fold 0, 1, ...]`` -> decide's rows."""
    return pd.DataFrame([dict(config=c, fold=f, val_acc=v, seconds_per_epoch=cost[c])
                         for c, values in runs.items() for f, v in enumerate(values)])


# A: the winner; B: the book's recipe; C: cheaper, inside one SE of A; D: cheapest, outside one SE of A.
RUNS = {"A": [0.80, 0.84, 0.82], "B": [0.72, 0.70, 0.73], "C": [0.83, 0.79, 0.81], "D": [0.80, 0.80, 0.80]}


def anova_residual_variance(runs: dict) -> float:
    """s2 of a two-way table by the sums-of-squares identity (total - configurations - folds), not by residuals."""
    y = np.array(list(runs.values()))
    grand, (c, f) = y.mean(), y.shape
    total = ((y - grand) ** 2).sum()
    rows, cols = f * ((y.mean(1) - grand) ** 2).sum(), c * ((y.mean(0) - grand) ** 2).sum()
    return (total - rows - cols) / ((c - 1) * (f - 1))


COST = {"A": 10.0, "B": 3.0, "C": 5.0, "D": 1.0}


# --- decide -------------------------------------------------------------------------------------------------
def test_decide_planted_winner_paired_difference_and_table():
    d = decide(frame(RUNS, COST), baseline="B")
    assert d.winner == "A"
    # four configurations on the same three folds: the error is pooled, 6 df (t_{0.975, 6} = 2.447)
    s2 = anova_residual_variance(RUNS)  # 0.000325
    assert d.pooled == (pytest.approx(s2), 6) and s2 == pytest.approx(0.000325)
    a = d.row("A")
    assert a["folds"] == 3 and a["mean"] == pytest.approx(0.82) and a["sd"] == pytest.approx(0.02)  # sd: its own
    assert a["se"] == pytest.approx(math.sqrt(s2 / 3))
    assert (a["ci_low"], a["ci_high"]) == (pytest.approx(0.82 - 2.447 * math.sqrt(s2 / 3)), pytest.approx(0.82 + 2.447 * math.sqrt(s2 / 3)))
    wide = decide(frame({"X": [0.6, 0.5], "Y": [0.52, 0.53]}, {"X": 1.0, "Y": 1.0})).row("X")  # 2 configs: own sd, t 12.7
    assert (wide["ci_low"], wide["ci_high"]) == (0.0, 1.0)  # 0.55 +- 0.635, clipped to where an accuracy can lie
    # A - B per fold: 0.08, 0.14, 0.09 -> mean 0.10333; se of a difference sqrt(2 s2 / 3) = 0.01472: t 7.02 > 2.447
    p = d.versus_baseline
    assert p.n == 3 and p.folds == [0, 1, 2] and p.pooled and p.df == 6
    assert p.mean == pytest.approx(0.103333, abs=1e-6)
    assert p.sd == pytest.approx(np.std([0.08, 0.14, 0.09], ddof=1))
    assert p.t == pytest.approx(0.103333 / math.sqrt(2 * s2 / 3), rel=1e-4)
    assert p.t_crit == 2.447 and p.beyond_noise
    assert list(d.table["config"]) == ["A", "C", "D", "B"]  # best mean first
    lines = d.lines()
    assert len(lines) == 3
    assert "trial A" in lines[0] and "0.820" in lines[0]
    assert "+0.103" in lines[1] and "beyond noise" in lines[1] and "pooled over 4 configurations (6 df)" in lines[1]
    assert "se 0.015 " in lines[1]
    assert "trial C" in lines[2]


def test_a_fold_that_is_hard_for_everyone_is_no_noise_between_configurations():
    # B trails A by exactly 0.02 on every fold while the folds differ by 0.2: the pooled error sees no noise;
    # a configuration's own spread (0.1) would call the same lead noise
    runs = {"A": [0.62, 0.82, 0.72], "B": [0.60, 0.80, 0.70], "C": [0.50, 0.70, 0.60]}
    d = decide(frame(runs, {"A": 1.0, "B": 1.0, "C": 1.0}), baseline="B")
    assert d.pooled[0] == pytest.approx(0.0, abs=1e-12) and d.versus_baseline.beyond_noise
    assert d.row("A")["sd"] == pytest.approx(0.1)


def test_decide_difference_within_noise():
    # A - B per fold: 0.05, 0.01, 0.03: mean 0.03, sd 0.02, t = 0.03 / (0.02 / sqrt 3) = 2.598: past the normal's
    # 1.96 but not past t_{0.975, 2} = 4.303, so within noise with 3 folds
    runs = {"A": [0.85, 0.81, 0.83], "B": [0.80, 0.80, 0.80]}
    d = decide(frame(runs, {"A": 1.0, "B": 1.0}), baseline="B")
    p = d.versus_baseline
    assert p.mean == pytest.approx(0.03) and p.sd == pytest.approx(0.02)
    assert p.t == pytest.approx(2.598, abs=1e-3)
    assert not p.beyond_noise and "within noise" in d.lines()[1]


def test_one_se_pick_takes_a_cheaper_config_inside_one_se_and_not_one_outside():
    d = decide(frame(RUNS, COST), baseline="B")
    # the bar: A's mean 0.82 - the pooled se sqrt(0.000325 / 3) = 0.01041 -> 0.80959; C (0.81, 5 s) is inside,
    # D (0.80, 1 s) is not
    assert d.one_se_pick == "C"
    # make D's mean 0.81 as well: now D is inside and cheapest
    runs = {**RUNS, "D": [0.81, 0.81, 0.81]}
    assert decide(frame(runs, COST), baseline="B").one_se_pick == "D"
    # nothing cheaper inside: the winner itself
    assert decide(frame(RUNS, {**COST, "C": 20.0}), baseline="B").one_se_pick == "A"


def test_nan_counts_as_zero_and_is_said():
    runs = {**RUNS, "E": [0.95, 0.95, math.nan]}  # 0.95 would win; with the NaN as 0 its mean is 0.633
    d = decide(frame(runs, {**COST, "E": 2.0}), baseline="B")
    e = d.row("E")
    assert e["mean"] == pytest.approx(0.95 * 2 / 3) and e["failed"] == 1
    assert d.winner == "A"
    assert any("config E" in n and "counted as 0" in n for n in d.notes)
    # a failed run of the winner shows in its line
    d2 = decide(frame({"A": [0.9, 0.9, math.nan], "B": [0.5, 0.5, 0.5]}, {"A": 1.0, "B": 1.0}), baseline="B")
    assert d2.winner == "A" and "1 failed run(s) counted as 0" in d2.lines()[0]
    assert d2.versus_baseline.mean == pytest.approx((0.4 + 0.4 - 0.5) / 3)


def test_no_baseline_and_winner_is_baseline():
    d = decide(frame(RUNS, COST), baseline=None)
    assert d.versus_baseline is None and d.winner == "A"
    assert "no baseline" in d.lines()[1]
    d = decide(frame(RUNS, COST), baseline="A")
    assert d.winner == "A" and d.versus_baseline is None
    assert "is the book's recipe" in d.lines()[1]
    # a baseline without runs: no comparison, said so
    d = decide(frame(RUNS, COST), baseline="Z")
    assert d.versus_baseline is None and any("config Z" in n for n in d.notes)


def test_ties_go_to_the_cheaper_config_and_paired_uses_shared_folds_only():
    runs = {"A": [0.8, 0.8], "B": [0.7, 0.7, 0.6], "C": [0.8, 0.8]}
    d = decide(frame(runs, {"A": 2.0, "B": 1.0, "C": 1.0}), baseline="B")
    assert d.winner == "C"
    assert d.versus_baseline.n == 2 and d.versus_baseline.mean == pytest.approx(0.1)
    assert d.versus_baseline.sd == 0 and d.versus_baseline.beyond_noise  # no spread at all


def test_one_fold_has_no_interval_and_keeps_the_winner():
    d = decide(frame({"X": [0.6], "Y": [0.5]}, {"X": 2.0, "Y": 1.0}))
    x = d.row("X")
    assert math.isnan(x["se"]) and math.isnan(x["ci_low"]) and math.isnan(x["ci_high"])  # not clipped to 0 and 1
    assert d.one_se_pick == "X" and "one fold: no interval" in d.lines()[0]


def test_decide_rejects_bad_rows():
    with pytest.raises(ValueError, match="lack column"):
        decide(pd.DataFrame({"config": [1], "fold": [0], "val_acc": [0.5]}), baseline=None)
    rows = frame(RUNS, COST)
    with pytest.raises(ValueError, match="more than one row"):
        decide(pd.concat([rows, rows.iloc[:1]]), baseline="B")
    with pytest.raises(ValueError, match="no rows"):
        decide(rows.iloc[:0], baseline="B")


# --- t quantiles and percentiles ----------------------------------------------------------------------------
def test_t_quantiles():
    assert t975(2) == pytest.approx(4.303, abs=5e-4)
    assert t975(10) == pytest.approx(2.228, abs=5e-4)
    assert t975(30) == pytest.approx(2.042, abs=5e-4)
    assert t975(1) == pytest.approx(12.706, abs=5e-4)
    assert t975(31) == pytest.approx(2.0395, abs=5e-4)  # the expansion above the table
    assert t975(120) == pytest.approx(1.9799, abs=5e-4)
    assert t975(10**6) == pytest.approx(1.95996, abs=1e-4)
    assert math.isnan(t975(0))


def test_row_percentile_is_numpys_nanpercentile():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 6, (300, 7)).astype(float) / 5  # ties on purpose
    values[rng.random(values.shape) < 0.4] = np.nan
    values[0] = np.nan  # an empty rung
    ours = nan_percentile_rows(values, (1 - 1 / 3) * 100)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        theirs = np.array([np.nanpercentile(row, (1 - 1 / 3) * 100) for row in values])
    np.testing.assert_array_equal(ours, theirs)


# --- ASHA -----------------------------------------------------------------------------------------------------
def reference_asha(values: np.ndarray, concurrent: int, grace: int, rf: float) -> list[int]:
    """The same schedule (ticks, trials in start order) with Ray's own ASHAScheduler deciding, set up as the
    study's ResumableASHA sets it up (time attribute "epoch", mode max, a NaN counted as 0 by the caller)."""
    pytest.importorskip("ray")
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    n, max_t = values.shape
    scheduler = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=max_t,
                              grace_period=min(grace, max_t), reduction_factor=rf)

    class Trial:
        def __init__(self, i):
            self.trial_id = f"t{i}"

    trials = [Trial(i) for i in range(n)]
    epochs = [0] * n
    running = list(range(min(concurrent, n)))
    for t in running:
        scheduler.on_trial_add(None, trials[t])
    upcoming = len(running)
    while running:
        for t in running:
            epochs[t] += 1
        for t in sorted(running):
            result = {"epoch": epochs[t], "val_acc": float(values[t, epochs[t] - 1])}
            if scheduler.on_trial_result(None, trials[t], result) == TrialScheduler.STOP:
                scheduler.on_trial_complete(None, trials[t], result)
                running.remove(t)
                if upcoming < n:
                    scheduler.on_trial_add(None, trials[upcoming])
                    running.append(upcoming)
                    upcoming += 1
    return epochs


@pytest.mark.parametrize("max_t,grace,rf,concurrent", [(5, 1, 3, 2), (9, 1, 3, 3), (8, 1, 2, 4), (5, 2, 3, 2)])
def test_asha_matches_the_study_scheduler(max_t, grace, rf, concurrent):
    rng = np.random.default_rng(max_t * 10 + grace)
    n, repeats = 20, 12
    values = rng.binomial(40, rng.uniform(0.4, 0.8, (repeats, n, 1)) * np.ones(max_t)) / 40  # ties happen
    values[0, 3, 0] = np.nan  # a diverged first epoch: counts as 0
    ours = run_asha(values, concurrent=concurrent, grace=grace, reduction_factor=rf)
    for r in range(repeats):
        assert list(ours[r]) == reference_asha(np.nan_to_num(values[r], nan=0.0), concurrent, grace, rf), f"repeat {r}"


def test_asha_stops_some_trials_never_before_grace_and_ignores_concurrency_with_equal_epochs():
    rng = np.random.default_rng(0)
    values = rng.uniform(0.4, 0.8, (50, 32, 5))
    for grace in (1, 2):
        run = run_asha(values, concurrent=2, grace=grace, reduction_factor=3)
        assert run.min() >= grace and run.max() == 5
        assert (run.sum(axis=1) < 32 * 5).all()  # every study stopped some trials
        assert (run[:, 0] == 5).all()  # the first trial is first at every rung: never stopped
    # every epoch one time unit: each rung sees trials in start order whatever the workers
    np.testing.assert_array_equal(run_asha(values, concurrent=1), run_asha(values, concurrent=4))
    assert asha_rungs(1, 5, 3) == [3, 1] and asha_rungs(1, 9, 3) == [9, 3, 1]


def test_study_ranking_is_best_val_then_more_epochs_then_trial():
    best = np.array([[0.6, 0.7, 0.7, 0.5, np.nan, 0.7]])
    epochs = np.array([[5, 1, 3, 5, 5, 3]])
    assert list(sel.study_ranking(best, epochs)[0]) == [2, 5, 1, 0, 3, 4]


# --- simulate -------------------------------------------------------------------------------------------------
EXACT = dict(val_images=0, seed_sd=0.0, tau_range=(1.0, 1.0))  # no noise, the same curve shape for all


def test_zero_noise_means_zero_regret():
    r = simulate(repeats=200, seed=1, **EXACT)
    assert r["regret_single"] == 0 and r["regret_confirmed"] == 0 and r["regret_one_se"] == 0
    assert r["p_best_single"] == 1 and r["p_best_completed"] == 1


def test_confirm_seed_sd_is_the_confirmation_runs_own_noise():
    quiet_study = simulate(repeats=300, seed=1, confirm_seed_sd=0.05, **EXACT)  # exact study, noisy confirmation
    assert quiet_study["regret_single"] == 0 < quiet_study["regret_confirmed"]
    assert simulate(repeats=300, seed=1, confirm_seed_sd=0.0, **EXACT)["regret_confirmed"] == 0


def test_the_gain_interval_holds_with_a_seed_per_fold_and_not_with_one_seed():
    # the confirmation's 95% interval for the winner's gain over the book's recipe, against the true gain: with each
    # fold its own seed the spread between folds holds the seed noise; with one seed for every fold it does not
    per_fold = simulate(repeats=3000, seed=3, confirm_seed_sd=0.036)
    one_seed = simulate(repeats=3000, seed=3, confirm_seed_sd=0.036, fold_seeds=False)
    assert per_fold["gain_coverage"] >= 0.90 and 0.8 < per_fold["gain_studies"] <= 1
    assert one_seed["gain_coverage"] < 0.6 and one_seed["gain_ci_width"] < per_fold["gain_ci_width"] / 2
    assert one_seed["gain_beyond_noise"] > per_fold["gain_beyond_noise"]  # the narrow interval claims certainty it lacks
    assert per_fold["gain_estimate"] > per_fold["gain_true"]  # the winner's curse: the chosen one's lead is biased up


def test_the_gain_interval_is_what_decide_prints():
    # one simulated study's interval, recomputed with decide on its own table: the same numbers
    rng = np.random.default_rng(0)
    scores = rng.normal(0.6, 0.02, (1, 4, 2))
    c = np.array([[3, 1, 2, 0]])  # the book's recipe (configuration 0) is the fourth candidate
    final = np.ones((1, 4), dtype=bool)
    win = int(np.argmax(scores.mean(axis=2)[0]))
    if c[0, win] == 0:
        scores[0, 0] += 0.1
        win = 0
    true = np.array([[0.6, 0.61, 0.62, 0.63]])
    got = sel.gain_intervals(scores, final, c, np.array([win]), true)
    rows = pd.DataFrame([{"config": int(c[0, j]), "fold": f, "val_acc": scores[0, j, f], "seconds_per_epoch": 1.0}
                         for j in range(4) for f in range(2)])
    decision = decide(rows, baseline=0)
    assert decision.winner == c[0, win]
    p = decision.versus_baseline
    assert got["gain_estimate"] == pytest.approx(p.mean) and got["gain_ci_width"] == pytest.approx(p.ci_high - p.ci_low)
    assert got["gain_true"] == pytest.approx(true[0, c[0, win]] - true[0, 0])


def test_big_noise_gives_single_validation_regret():
    r = simulate(repeats=400, seed=1, val_images=20, seed_sd=0.05)
    assert r["regret_single"] > 3 * r["regret_single_se"] > 0
    assert r["p_best_single"] < 0.5


def test_confirming_every_config_on_many_folds_beats_single_validation():
    r = simulate(n_configs=12, top_k=12, folds=15, repeats=400, seed=2)
    assert r["p_best_in_candidates"] == 1
    assert r["regret_reduction"] > 3 * r["regret_reduction_se"]
    assert r["regret_confirmed"] < r["regret_single"] / 2


def test_study_epochs_are_fewer_than_a_full_study_and_at_least_grace():
    r = simulate(repeats=300, seed=4)
    assert 32 * 1 <= r["study_epochs"] < 32 * 5
    r2 = simulate(repeats=300, seed=4, grace=2)
    assert 32 * 2 <= r2["study_epochs"] < 32 * 5 and r2["study_epochs"] > r["study_epochs"]


def test_extra_compute_is_the_hand_count():
    # truth 0.6 (the book's recipe), 0.7, 0.55, 0.65; 3 epochs; rungs [3, 1]; one worker, exact values.
    # trial 0: first at rung 1, runs 3 epochs; trial 1 (> trial 0) runs 3; trial 2 is below the 66.7th
    # percentile of [0, 1] at epoch 1: stopped after 1; trial 3 sits above the percentile of [0, 1, 2]
    # (trial 0's value + 1/3 of the gap to trial 1's): runs 3. Study: 3 + 3 + 1 + 3 = 10 epochs.
    tiny = dict(n_configs=4, epochs=3, concurrent=1, repeats=5, truth=[0.6, 0.7, 0.55, 0.65], **EXACT)
    r = simulate(top_k=2, folds=3, scheme="holdout", reuse_study_fold=True, **tiny)
    assert r["study_epochs"] == 10
    # top 2 = trials 1 and 3, plus the book's recipe (trial 0), all completed: 2 new runs x 3 epochs each
    assert r["confirm_epochs"] == 3 * 2 * 3 and r["extra_compute_fraction"] == pytest.approx(1.8)
    r = simulate(top_k=2, folds=3, scheme="holdout", **tiny)
    assert r["confirm_epochs"] == 3 * 3 * 3 and r["extra_compute_fraction"] == pytest.approx(2.7)
    # all four: trial 2 ran 1 epoch, so it needs all 3 folds: 18 + 9
    r = simulate(top_k=4, folds=3, scheme="holdout", reuse_study_fold=True, **tiny)
    assert r["confirm_epochs"] == 27 and r["extra_compute_fraction"] == pytest.approx(2.7)
    assert r["regret_single"] == 0 and r["regret_confirmed"] == 0
    # the book's recipe among the top K: not counted twice
    r = simulate(top_k=3, folds=2, scheme="holdout", reuse_study_fold=True, **tiny)  # trials 1, 3, 0: one new run each
    assert r["confirm_epochs"] == 3 * 1 * 3
    # k-fold: 3 configurations x 3 folds x 3 epochs, each epoch training on 1334 of the 2000 images and, in the
    # last epoch only, validating 666 (a third of a step each), where a study epoch (exact: no validation
    # images here) trains on 2000
    r = simulate(top_k=2, folds=3, **tiny)
    assert r["confirm_epochs"] == pytest.approx(27 * (1334 + 666 / 3 / 3) / 2000)
    r = simulate(top_k=2, folds=3, confirm_val_last_only=False, **tiny)  # validating after every epoch
    assert r["confirm_epochs"] == pytest.approx(27 * (1334 + 666 / 3) / 2000)
    # a race: the top 3 (trials 1, 3 and the book's recipe 0) run fold 0; the best one of fold 0 besides the
    # book's recipe (trial 1) and the recipe run folds 1 and 2: 3 + 2 x 2 runs
    r = simulate(top_k=3, folds=3, finalists=1, **tiny)
    assert r["confirm_epochs"] == pytest.approx(7 * 3 * (1334 + 666 / 9) / 2000)
    assert r["p_best_in_finalists"] == 1 and r["regret_confirmed"] == 0


def test_a_race_keeps_the_book_recipe_and_the_best_of_fold_0():
    # exact values: fold 0 ranks the candidates by their truth, so the finalists are the true best of them
    tiny = dict(n_configs=6, epochs=3, concurrent=1, repeats=3, truth=[0.6, 0.7, 0.55, 0.65, 0.62, 0.58], **EXACT)
    full = simulate(top_k=5, folds=2, **tiny)
    raced = simulate(top_k=5, folds=2, finalists=2, **tiny)
    assert raced["regret_confirmed"] == full["regret_confirmed"] == 0 and raced["p_best_in_finalists"] == 1
    # 5 runs of fold 0 (the book's recipe among the top 5), then 2 finalists and the book's recipe on fold 1
    assert raced["confirm_epochs"] == pytest.approx(full["confirm_epochs"] * (5 + 3) / 10)
    assert simulate(top_k=5, folds=2, finalists=5, **tiny)["confirm_epochs"] == full["confirm_epochs"]


def test_same_seed_same_result():
    a, b = simulate(repeats=200, seed=7), simulate(repeats=200, seed=7)
    assert a == b
    assert simulate(repeats=200, seed=8)["regret_single"] != a["regret_single"]


def test_simulate_rejects_bad_input():
    with pytest.raises(ValueError):
        simulate(top_k=0)
    with pytest.raises(ValueError, match="reuse_study_fold=False"):
        simulate(scheme="holdout", reuse_study_fold=True, fold_val_images=667)
    with pytest.raises(ValueError, match="k-fold confirmation"):
        simulate(fold_val_images=667)
    with pytest.raises(ValueError, match="scheme"):
        simulate(scheme="bootstrap")
    with pytest.raises(ValueError, match="fold_score"):
        simulate(fold_score="mean")
    with pytest.raises(ValueError, match="finalists"):
        simulate(finalists=0)


def test_run_selection_writes_json_and_prints(tmp_path):
    from rich.console import Console

    path = tmp_path / "selection.json"
    result = sel.run_selection(repeats=100, seed=0, json_path=str(path))
    written = json.loads(path.read_text())
    for key in ("regret_single", "regret_confirmed", "regret_one_se", "extra_compute_fraction", "inputs", "goal_met"):
        assert key in written
    assert written["regret_single"] == pytest.approx(result["regret_single"])
    from study.options import build_parser

    defaults = build_parser().parse_args([])  # the simulation runs at the study's own defaults
    assert written["inputs"]["top_k"] == defaults.confirm_top == 5 and written["inputs"]["folds"] == defaults.confirm_folds == 2
    assert written["inputs"]["scheme"] == "kfold" and defaults.grace_epochs == written["inputs"]["grace"]
    from study.core.vocabulary import run_config
    from study.stages.confirmation import Job  # the stage validates its runs as the simulation costs them

    assert written["inputs"]["confirm_val_last_only"] is run_config(Job(0, 0, {}, False).tune_config(2))["val_last_only"] is True
    assert written["inputs"]["finalists"] is None  # the stage does not race
    assert result["regret_candidates_floor"] <= result["regret_confirmed"]  # no judge of the candidates beats a perfect one
    console = Console(record=True, width=200)
    sel.print_selection(result, console)
    text = console.export_text()
    assert "regret, single validation" in text and "extra compute" in text and "goal" in text and "(the floor)" in text


# --- the winner's curse: the gain corrected for the choice ------------------------------------------------------
def test_corrected_gain_removes_the_winners_curse_on_tables_with_a_known_answer():
    # six candidates of the same true accuracy (0.70) and the book's recipe (0.65) on 2 folds, noise sd 0.02: whichever
    # wins, its true gain is 0.05, while the raw estimate (the best of six noisy means) runs above it
    from study.core.decision import selection_corrected

    rng = np.random.default_rng(1)
    truth, sd, tables = np.array([0.65] + [0.70] * 6), 0.02, 300
    raw, corrected, held = [], [], 0
    for _ in range(tables):
        scores = truth[:, None] + rng.normal(0.0, sd, (7, 2))
        winner = 1 + int(np.argmax(scores[1:].mean(axis=1)))
        found = selection_corrected(scores, winner, 0, (sd**2, 6 * 1), replicates=400, seed=0)
        raw.append(scores[winner].mean() - scores[0].mean())
        corrected.append(found.gain)
        held += found.gain_low <= 0.05 <= found.gain_high
        assert found.gain_low <= found.gain <= found.gain_high and found.candidates == 7
    raw_bias, corrected_bias = np.mean(raw) - 0.05, np.mean(corrected) - 0.05
    assert raw_bias > 0.015  # the curse: E[max of 6 N(0, sd^2/2)] = 1.27 x 0.0141 = 0.018
    assert abs(corrected_bias) < raw_bias / 4
    assert held / tables >= 0.90


def test_a_clear_winner_needs_no_correction():
    from study.core.decision import selection_corrected

    scores = np.array([[0.60, 0.62], [0.90, 0.91], [0.70, 0.71], [0.68, 0.69]])  # trial 1 leads by 0.2, noise 0.005
    found = selection_corrected(scores, 1, 0, pooled=(0.005**2, 3))
    assert found.gain == pytest.approx(0.295, abs=0.002) and found.accuracy == pytest.approx(0.905, abs=0.002)
    assert found.gain_high - found.gain_low < 0.05  # the raw interval's width, 2 x 3.18 x 0.005 = 0.032, about


def test_decide_states_the_corrected_gain_beside_the_raw_one():
    d = decide(frame(RUNS, COST), baseline="B")
    c = d.corrected
    assert c is not None and c.candidates == 4 and c.gain < d.versus_baseline.mean  # three rivals close: some curse
    assert f"corrected for choosing the best of 4: {c.gain:+.3f}" in d.lines()[1]
    assert c.as_dict() == {"mean": c.gain, "ci": [c.gain_low, c.gain_high]}
    assert decide(frame({"A": [0.8], "B": [0.7]}, {"A": 1.0, "B": 1.0}), baseline="B").corrected is None  # one fold: no spread to draw
    one = decide(frame({"A": [0.8, 0.75], "B": [0.7, 0.72]}, {"A": 1.0, "B": 1.0}), baseline="B")  # one candidate: no choice made
    assert one.corrected is None and "corrected" not in one.lines()[1]
