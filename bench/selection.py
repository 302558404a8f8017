"""How much the confirmation stage buys: a Monte Carlo of whole studies with known true accuracies.

``simulate`` draws a population of configurations with known true accuracies and learning curves, runs a
study on them as Ray runs one (asynchronous ASHA on noisy validation accuracies), runs the confirmation
stage on its top configurations, and scores each way of choosing by its regret (how far below the truly best
configuration its pick lands) and by the coverage of its printed interval for the winner's gain.
``python -m bench --selection [--selection-repeats N] [--json FILE]`` runs it at the defaults and prints a table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from study.core.decision import CONFIRM_FOLDS, CONFIRM_TOP, residual_variance, t975
from study.driver.rungs import asha_rungs
from study.core.values import fmt


def nan_percentile_rows(values: np.ndarray, q: float) -> np.ndarray:
    """``np.nanpercentile(row, q)`` for every row of a 2-D array (linear method), NaN for an all-NaN row.

    Vectorised (numpy's own handles NaN rows one at a time); the same arithmetic as numpy's, so ties and
    exact cutoffs compare as Ray's ASHA compares them.
    """
    s = np.sort(values, axis=1)  # NaN last
    m = (~np.isnan(values)).sum(axis=1)
    quantile = np.true_divide(q, 100)
    virtual = (m - 1) * quantile  # numpy's "linear" method
    prev = np.floor(virtual)
    gamma = virtual - prev
    top = virtual >= m - 1  # numpy takes the largest value there
    prev = np.where(top, m - 1, prev).astype(int)
    nxt = np.where(top, m - 1, prev + 1).astype(int)
    prev, nxt = np.maximum(prev, 0), np.maximum(nxt, 0)
    rows = np.arange(len(values))
    a, b = s[rows, prev], s[rows, nxt]
    diff = b - a
    out = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    return np.where(m > 0, out, np.nan)


def run_asha(values: np.ndarray, concurrent: int = 2, grace: int = 1, reduction_factor: float = 3) -> np.ndarray:
    """Epochs each trial trains under asynchronous ASHA: ``values[repeat, trial, epoch-1]`` -> epochs_run.

    As Ray Tune runs it with one bracket (``ASHAScheduler(time_attr="epoch", max_t=E, grace_period,
    reduction_factor)``, the study's scheduler): rungs at grace * rf^k below max_t; a trial's first result at
    or past a rung is compared with the (1 - 1/rf) percentile (numpy nanpercentile) of the values recorded at
    that rung *before* it, is stopped when below it, and is then recorded; the first trial at a rung always
    continues; a trial reaching max_t stops. Trials start in order (0, 1, ...) as ``concurrent`` workers free
    up; every epoch of every trial takes one time unit, so results arrive in ticks, and within a tick they
    are processed in trial order. A NaN value counts as 0 (the study's ResumableASHA does the same).

    With equal epoch times every rung sees the trials in their start order whatever the number of workers,
    so ``concurrent`` changes when things happen, not which trials ASHA stops (asynchrony matters in a real
    study through unequal epoch times, and through TPE proposing later configurations from earlier results).
    """
    values = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    repeats, n, max_t = values.shape
    rungs = [m for m in asha_rungs(grace, max_t, reduction_factor)]
    q = (1 - 1 / reduction_factor) * 100
    recorded = np.full((repeats, len(rungs), n), np.nan)
    epochs_run = np.zeros((repeats, n), dtype=int)
    workers = max(1, min(concurrent, n))
    slot = np.tile(np.arange(workers), (repeats, 1))  # the trial in each worker, -1 idle
    upcoming = np.full(repeats, workers)
    rows = np.arange(repeats)
    while (slot >= 0).any():
        for w in range(workers):  # every running trial trains one epoch
            busy = slot[:, w] >= 0
            epochs_run[rows[busy], slot[busy, w]] += 1
        order = np.argsort(np.where(slot >= 0, slot, n + 1), axis=1, kind="stable")
        for k in range(workers):
            w = order[:, k]
            trial = slot[rows, w]
            busy = trial >= 0
            t = np.where(busy, trial, 0)
            epoch = epochs_run[rows, t]
            value = values[rows, t, np.maximum(epoch - 1, 0)]
            stop = busy & (epoch >= max_t)
            handled = stop | ~busy
            for r, milestone in enumerate(rungs):  # highest first, as Ray walks them
                hit = ~handled & (epoch >= milestone) & np.isnan(recorded[rows, r, t])
                if hit.any():
                    sub = rows[hit]
                    cutoff = nan_percentile_rows(recorded[sub, r, :], q)
                    stop[sub] |= value[hit] < cutoff  # NaN cutoff (empty rung): continue
                    recorded[sub, r, t[hit]] = value[hit]
                    handled |= hit
            done = rows[stop]
            slot[done, w[done]] = np.where(upcoming[done] < n, upcoming[done], -1)
            upcoming[done] += 1
    return epochs_run


def study_ranking(best_val: np.ndarray, epochs_run: np.ndarray) -> np.ndarray:
    """Trial indices per repeat in the study's order: best_val_acc desc, then epochs run desc, then trial."""
    repeats, n = best_val.shape
    index = np.broadcast_to(np.arange(n), (repeats, n))
    keyed = np.where(np.isnan(best_val), -np.inf, best_val)
    return np.lexsort((index, -epochs_run, -keyed), axis=1)


def _noisy(rng: np.random.Generator, mean: np.ndarray, val_images: int | None) -> np.ndarray:
    """A measured accuracy: binomial on ``val_images`` images around ``mean`` (exact when val_images is 0/None)."""
    p = np.clip(mean, 0.0, 1.0)
    if not val_images:
        return p
    return rng.binomial(int(val_images), p) / val_images


def _curve(epochs: int, tau: np.ndarray) -> np.ndarray:
    """g(e) = (1 - exp(-e/tau)) / (1 - exp(-E/tau)), e = 1..E: 0 at e = 0, 1 at the last epoch."""
    e = np.arange(1, epochs + 1)
    tau = tau[..., None]
    return (1 - np.exp(-e / tau)) / (1 - np.exp(-epochs / tau))


@dataclass(frozen=True)
class Scenario:
    """What ``simulate`` models; the defaults are the from-scratch regime (3-5 epochs, 64-128 px, chance 0.5).

    The population: configuration 0 is the book's recipe (a study runs it first); a share ``bad_fraction`` of the
    others learns nothing (true accuracy = chance: a learning rate far off), the rest draw a true accuracy from
    Normal(truth_mean, truth_sd), clipped to [chance, 1]. Configurations are independent draws (TPE's drift
    towards good ones is left out). Each run follows a learning curve chance + (true - chance) g(e),
    g(e) = (1 - exp(-e/tau)) / (1 - exp(-E/tau)), which reaches the true accuracy at the last epoch, tau
    log-uniform in ``tau_range`` (so ASHA's first rung can misjudge a slow starter); a run adds its seed
    effect, Normal(0, seed_sd), and each epoch's measured value is binomial on the validation images.
    """

    # --- the population ---
    n_configs: int = 32
    chance: float = 0.5  # what a network that learned nothing scores
    bad_fraction: float = 0.2  # the share that learns nothing
    truth_mean: float = 0.55  # the others' true accuracy ~ Normal(truth_mean, truth_sd)
    truth_sd: float = 0.02
    baseline_acc: float | None = 0.55  # the book's recipe's true accuracy (None: drawn like the others)
    truth: Sequence[float] | None = None  # one true accuracy per configuration instead of the draw, the same in every repeat
    tau_range: tuple[float, float] = (0.5, 2.0)  # learning-curve time constants in epochs: at epoch 1, 43% to 86% of the way
    cost_sd: float = 0.4  # seconds per epoch ~ log-normal(0, cost_sd), independent of accuracy (only the one-SE pick uses it)
    # --- the noise ---
    val_images: int | None = 200  # the study's validation split: each epoch's value is binomial on it (0/None: exact)
    seed_sd: float = 0.015  # a study run's seed effect, for the whole run
    confirm_seed_sd: float | None = None  # a confirmation run's (None: seed_sd): it trains on other images
    split_sd: float = 0.0  # a fold's effect, shared by every run on it (it cancels in comparisons on shared folds)
    stuck_exact: bool = True  # a configuration at chance scores exactly chance (it predicts one class of a stratified split)
    # --- the study: asynchronous ASHA as Ray runs it (run_asha) ---
    epochs: int = 5
    concurrent: int = 2
    grace: int = 1
    reduction_factor: float = 3
    # --- the confirmation stage: the top_k by the study's ranking, plus the book's recipe, on `folds` folds ---
    top_k: int = CONFIRM_TOP
    folds: int = CONFIRM_FOLDS
    scheme: str = "kfold"  # kfold: cross-validation of split_images (the study's); holdout: folds like the study's split
    split_images: int = 2000  # the train split the folds are cut from
    fold_val_images: int | None = None  # holdout: validation images per fold (None: val_images)
    reuse_study_fold: bool = False  # holdout: fold 0 is the study's split; a trial that ran every epoch brings its value
    fold_score: str = "last"  # a fold's score: its last epoch's value (the study's), or its best epoch's ("best")
    finalists: int | None = None  # a race: after fold 0 only the best `finalists` (and the book's recipe) run the rest
    fold_seeds: bool = True  # every fold its own seed (the stage's); False: one seed effect for all of a configuration's folds
    confirm_val_last_only: bool = True  # a confirmation run validates after its last epoch only, as the stage's runs do
    eval_cost: float = 1 / 3  # a validation image's cost in training images (a forward pass: one of a step's three)
    # --- the Monte Carlo ---
    repeats: int = 10000
    seed: int = 0

    def fold_images(self) -> tuple[int, int | None]:
        """(validation images per fold, the binomial's n for a fold's values), or ValueError for a scenario that
        cannot run."""
        if self.n_configs < 1 or self.top_k < 1 or self.folds < 1 or self.epochs < 1 or self.repeats < 1 or self.concurrent < 1:
            raise ValueError("simulate: n_configs, top_k, folds, epochs, repeats and concurrent must be 1 or more")
        if self.finalists is not None and self.finalists < 1:
            raise ValueError(f"simulate: finalists {self.finalists} must be 1 or more (None: no race)")
        if self.scheme not in ("kfold", "holdout"):
            raise ValueError(f"simulate: scheme {self.scheme!r} must be 'kfold' or 'holdout'")
        if self.fold_score not in ("last", "best"):
            raise ValueError(f"simulate: fold_score {self.fold_score!r} must be 'last' or 'best'")
        if self.truth is not None and len(self.truth) != self.n_configs:
            raise ValueError(f"simulate: truth has {len(self.truth)} values for {self.n_configs} configurations")
        if self.scheme == "kfold":
            if self.reuse_study_fold or self.fold_val_images is not None or self.folds < 2:
                raise ValueError("simulate: k-fold confirmation has 2 or more folds of split_images / folds validation images "
                                 "and reuses no study split")
            images = self.split_images // self.folds
            return images, images if self.val_images else 0  # val_images 0/None: exact measurements everywhere
        images = self.val_images if self.fold_val_images is None else self.fold_val_images
        if self.reuse_study_fold and images != self.val_images:
            raise ValueError(f"simulate: folds of {images} validation images cannot reuse the study's split of {self.val_images}: "
                             "pass reuse_study_fold=False")
        return images, images


@dataclass
class Population:
    """Per repeat and configuration (R, n): the true accuracies and what shapes each one's runs."""
    true: np.ndarray
    stuck: np.ndarray  # learns nothing: scores exactly chance (with stuck_exact)
    tau: np.ndarray  # its learning curve's time constant
    cost: np.ndarray  # its seconds per epoch, relative
    split: np.ndarray  # (R, folds): each fold's effect


@dataclass
class StudyRun:
    """The simulated study: every epoch's measured value (R, n, E), the epochs ASHA let each trial run, the best
    value among those, and the study's ranking (trial indices, best first)."""
    values: np.ndarray
    epochs_run: np.ndarray
    best_val: np.ndarray
    ranking: np.ndarray


@dataclass
class StageRun:
    """The confirmation stage: candidates c (R, C) (the top K, then the book's recipe unless among them; ``valid``
    False for the slot it left empty), each candidate's fold scores (R, C, F), which ran every fold (``final``), which
    fold-0 scores are the study's own (``reused``), the winner's column and the picks."""
    c: np.ndarray
    valid: np.ndarray
    final: np.ndarray
    reused: np.ndarray
    scores: np.ndarray
    win_col: np.ndarray
    confirmed: np.ndarray
    one_se: np.ndarray


def draw_population(s: Scenario, rng: np.random.Generator) -> Population:
    R, n = s.repeats, s.n_configs
    if s.truth is not None:
        true = np.broadcast_to(np.asarray(s.truth, dtype=float), (R, n)).copy()
    else:
        good = rng.normal(s.truth_mean, s.truth_sd, (R, n))
        bad = rng.random((R, n)) < s.bad_fraction
        true = np.clip(np.where(bad, s.chance, good), s.chance, 1.0)
        if s.baseline_acc is not None:
            true[:, 0] = s.baseline_acc
    stuck = (true <= s.chance) if s.stuck_exact else np.zeros((R, n), dtype=bool)
    lo, hi = np.log(s.tau_range[0]), np.log(s.tau_range[1])
    tau = np.exp(rng.uniform(lo, hi, (R, n))) if hi > lo else np.full((R, n), float(s.tau_range[0]))
    cost = np.exp(rng.normal(0.0, s.cost_sd, (R, n))) if s.cost_sd > 0 else np.ones((R, n))
    split = rng.normal(0.0, s.split_sd, (R, s.folds)) if s.split_sd > 0 else np.zeros((R, s.folds))
    return Population(true, stuck, tau, cost, split)


def run_study(s: Scenario, pop: Population, rng: np.random.Generator) -> StudyRun:
    """Every epoch of every trial measured on the study's split (all E drawn; ASHA decides how many are trained),
    then ASHA and the study's ranking (best_val_acc = the best trained epoch's value)."""
    mean = (s.chance + (pop.true - s.chance)[..., None] * _curve(s.epochs, pop.tau)
            + rng.normal(0.0, s.seed_sd, (s.repeats, s.n_configs, 1)) + pop.split[:, :1, None])
    values = np.where(pop.stuck[..., None], s.chance, _noisy(rng, mean, s.val_images))
    epochs_run = run_asha(values, concurrent=s.concurrent, grace=s.grace, reduction_factor=s.reduction_factor)
    trained = np.arange(1, s.epochs + 1) <= epochs_run[..., None]
    best_val = np.where(trained, values, -np.inf).max(axis=2)
    return StudyRun(values, epochs_run, best_val, study_ranking(best_val, epochs_run))


def run_stage(s: Scenario, pop: Population, study: StudyRun, rng: np.random.Generator) -> StageRun:
    """The confirmation stage on the study's top ``top_k`` and the book's recipe: fresh runs on every fold (a seed
    effect per run, or per configuration without ``fold_seeds``), each fold scored by its last (or best) epoch;
    the winner is the best mean over the folds (ties to the cheaper), the one-SE pick the cheapest within one se
    of it (the se pooled from the configuration x fold table, as ``study.core.decision.decide`` does)."""
    R, E, F = s.repeats, s.epochs, s.folds
    rows = np.arange(R)
    _, fold_val = s.fold_images()
    top = study.ranking[:, :min(s.top_k, s.n_configs)]
    cand = np.concatenate([top, np.where((top == 0).any(axis=1), -1, 0)[:, None]], axis=1)
    valid = cand >= 0
    c = np.where(valid, cand, 0)
    C = cand.shape[1]
    at = (rows[:, None], c)
    seed_sd = s.seed_sd if s.confirm_seed_sd is None else s.confirm_seed_sd
    seed_effect = rng.normal(0.0, seed_sd, (R, C, F if s.fold_seeds else 1, 1))
    curve = _curve(E, pop.tau[at])  # (R, C, E)
    mean = s.chance + (pop.true[at] - s.chance)[..., None, None] * curve[:, :, None, :] + seed_effect + pop.split[:, None, :, None]
    runs = np.where(pop.stuck[at][..., None, None], s.chance, _noisy(rng, mean, fold_val))  # (R, C, F, E)
    scores = runs[..., -1] if s.fold_score == "last" else runs.max(axis=3)
    reused = valid & (study.epochs_run[at] >= E) if s.reuse_study_fold else np.zeros_like(valid)
    study_score = study.values[rows[:, None], c, -1] if s.fold_score == "last" else study.best_val[at]
    scores[:, :, 0] = np.where(reused, study_score, scores[:, :, 0])
    final = valid  # the candidates that run every fold: all of them, unless they race
    if s.finalists is not None and F > 1:
        base_c = valid & (c == 0)
        first = np.where(valid & ~base_c, scores[:, :, 0], -np.inf)
        order = np.lexsort((np.broadcast_to(np.arange(C), (R, C)), -first), axis=1)  # ties to the study's order
        place = np.empty_like(order)
        place[rows[:, None], order] = np.arange(C)
        final = valid & (base_c | (place < s.finalists))
    fold_mean = scores.mean(axis=2)
    fold_se = scores.std(axis=2, ddof=1) / math.sqrt(F) if F > 1 else np.zeros((R, C))
    if F > 1:  # with 3+ configurations on the same folds, the se pooled from the configuration x fold table
        s2, _ = residual_variance(scores, final)
        fold_se = np.where((final.sum(axis=1) >= 3)[:, None], np.sqrt(s2 / F)[:, None], fold_se)
    cost = pop.cost[at]
    win_col = np.lexsort((np.broadcast_to(np.arange(C), (R, C)), cost, -np.where(final, fold_mean, -np.inf)), axis=1)[:, 0]
    bar = fold_mean[rows, win_col] - fold_se[rows, win_col]
    inside = final & (fold_mean >= bar[:, None] - 1e-12)
    one_se_col = np.argmin(np.where(inside, cost, np.inf), axis=1)
    return StageRun(c, valid, final, reused, scores, win_col, c[rows, win_col], c[rows, one_se_col])


def score(s: Scenario, pop: Population, study: StudyRun, stage: StageRun) -> dict:
    """Each way of choosing scored against the truth: regret (the best true accuracy among the configurations minus
    the pick's, averaged over repeats, with its standard error), what the stage costs, and how its interval for
    the winner's gain holds up (``gain_intervals``).

    extra_compute_fraction = confirmation epochs / study epochs, an epoch costing its training images plus
    ``eval_cost`` per validation image; a confirmation run that validates after its last epoch only pays for one
    validation. goal_met: the confirmed pick's regret at most half the single validation's, for at most 0.35 extra
    compute. Diagnostics: p_best_* (how often a pick is the true best), p_best_in_candidates / _finalists,
    p_best_completed (ASHA let the true best run every epoch), regret_candidates_floor (the regret of a perfect
    judge of the same candidates: no top-K/folds setting goes below it).
    """
    R, n, E = s.repeats, s.n_configs, s.epochs
    rows = np.arange(R)
    fold_images, _ = s.fold_images()
    true, single, c = pop.true, study.ranking[:, 0], stage.c

    def epoch_units(validating: int | None) -> float:  # trains on the images not validating, validates the rest
        return s.split_images - (validating or 0) + s.eval_cost * (validating or 0)

    fold_epoch = epoch_units(fold_images) - (1 - 1 / E) * s.eval_cost * fold_images * s.confirm_val_last_only
    runs = stage.valid.sum(axis=1) + stage.final.sum(axis=1) * (s.folds - 1) - stage.reused.sum(axis=1)
    confirm_epochs = runs * E * (fold_epoch / epoch_units(s.val_images))
    study_epochs = study.epochs_run.sum(axis=1)
    best_true = true.max(axis=1)
    regret = {name: best_true - true[rows, pick] for name, pick in
              (("single", single), ("confirmed", stage.confirmed), ("one_se", stage.one_se))}
    is_best = true == best_true[:, None]

    def mean_se(x: np.ndarray) -> tuple[float, float]:
        return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0

    out: dict = {}
    for name in ("single", "confirmed", "one_se"):
        out[f"regret_{name}"], out[f"regret_{name}_se"] = mean_se(regret[name])
    out["regret_reduction"], out["regret_reduction_se"] = mean_se(regret["single"] - regret["confirmed"])  # paired
    out["regret_ratio"] = out["regret_confirmed"] / out["regret_single"] if out["regret_single"] > 0 else math.nan
    out["extra_compute_fraction"], out["extra_compute_fraction_se"] = mean_se(confirm_epochs / study_epochs)
    out["study_epochs"] = float(study_epochs.mean())
    out["confirm_epochs"] = float(confirm_epochs.mean())
    out["total_epochs"] = out["study_epochs"] + out["confirm_epochs"]
    out["full_study_epochs"] = n * E
    out["p_best_single"] = float(is_best[rows, single].mean())
    out["p_best_confirmed"] = float(is_best[rows, stage.confirmed].mean())
    out["p_best_in_candidates"] = float((is_best[rows[:, None], c] & stage.valid).any(axis=1).mean())
    out["p_best_in_finalists"] = float((is_best[rows[:, None], c] & stage.final).any(axis=1).mean())
    out["p_best_completed"] = float((is_best & (study.epochs_run >= E)).any(axis=1).mean())
    true_c = true[rows[:, None], c]
    out["regret_candidates_floor"] = float((best_true - np.where(stage.valid, true_c, -np.inf).max(axis=1)).mean())
    out["single_val"] = float(study.best_val[rows, single].mean())  # the study's optimistic best validation
    out["single_true"] = float(true[rows, single].mean())
    out["confirmed_true"] = float(true[rows, stage.confirmed].mean())
    out["best_true"] = float(best_true.mean())
    out.update(gain_intervals(stage.scores, stage.final, c, stage.win_col, true))
    out["goal_met"] = bool(out["regret_confirmed"] <= out["regret_single"] / 2 and out["extra_compute_fraction"] <= 0.35)
    return out


Drawn = tuple[Scenario, Population, StudyRun, StageRun]


def draw(**options) -> Drawn:
    """The scenario (``Scenario``'s fields as keywords), checked, and what its seed draws: the population, the study,
    the confirmation stage (all repeats vectorised). Nothing downstream changes them: one draw can be scored many ways."""
    scenario = Scenario(**options)
    scenario.fold_images()  # a scenario that cannot run: ValueError before anything is drawn
    rng = np.random.default_rng(scenario.seed)
    population = draw_population(scenario, rng)
    study = run_study(scenario, population, rng)
    stage = run_stage(scenario, population, study, rng)
    return scenario, population, study, stage


def simulate(drawn: Drawn | None = None, **options) -> dict:
    """A Monte Carlo of studies and their confirmation stage with known true accuracies (``Scenario``'s fields as
    keywords, all repeats vectorised): draw the population, run the study, run the confirmation stage, score them
    (``drawn``: a ``draw`` already made, scored instead). Returns ``score``'s figures and the scenario as ``inputs``."""
    scenario, population, study, stage = drawn if drawn is not None else draw(**options)
    _, fold_val = scenario.fold_images()
    inputs = {**asdict(scenario), "truth": None if scenario.truth is None else [float(x) for x in scenario.truth],
              "tau_range": list(scenario.tau_range), "fold_val_images": fold_val}
    return {**score(scenario, population, study, stage), "inputs": inputs}



@dataclass
class RawGain:
    """Per simulated study: the stage's raw estimate of the winner's gain over the book's recipe, its 95% interval, and the
    noise it came from (the pooled residual variance ``s2`` with ``df`` degrees of freedom where ``pooled``)."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    crit: np.ndarray
    se: np.ndarray
    s2: np.ndarray
    df: np.ndarray
    pooled: np.ndarray


def raw_gain(scores: np.ndarray, final: np.ndarray, win_col: np.ndarray, base_col: np.ndarray) -> RawGain:
    """The gain as ``decide`` prints it: the mean difference over the folds +- t se, se pooled from the configuration x
    fold table with 3 or more configurations, else from the pair's own differences."""
    R, C, F = scores.shape
    diffs = scores[np.arange(R), win_col] - scores[np.arange(R), base_col]  # (R, F)
    s2, df_pooled = residual_variance(scores, final)
    pooled = final.sum(axis=1) >= 3
    se = np.where(pooled, np.sqrt(2 * s2 / F), diffs.std(axis=1, ddof=1) / math.sqrt(F))
    df = np.where(pooled, df_pooled, F - 1)
    crit = np.array([t975(float(d)) for d in df])
    estimate = diffs.mean(axis=1)
    return RawGain(estimate, estimate - crit * se, estimate + crit * se, crit, se, s2, df_pooled, pooled)


def gain_intervals(scores: np.ndarray, final: np.ndarray, c: np.ndarray, win_col: np.ndarray, true: np.ndarray) -> dict:
    """How the stage's 95% interval for the winner's gain over the book's recipe (configuration 0) holds up.

    Per simulated study where the winner is not the book's recipe and both ran every fold: the interval as
    ``decide`` prints it (the mean difference over the folds +- t se, se pooled from the configuration x fold
    table with 3 or more configurations, else from the pair's own differences), against the true gain
    true[winner] - true[book]. The winner is the best of several means, so its lead is biased upward (the
    winner's curse): the coverage says whether the interval is wide enough to hold the truth anyway.
    Returns gain_coverage (share of those studies whose interval holds the true gain), gain_ci_width (mean
    width), gain_beyond_noise (share whose interval excludes 0), gain_studies (share of studies with an
    interval), gain_true and gain_estimate (means over those studies).
    """
    R, C, F = scores.shape
    rows = np.arange(R)
    base_col = np.argmax(final & (c == 0), axis=1)
    has_base = (final & (c == 0)).any(axis=1)
    use = has_base & (c[rows, win_col] != 0) & (F > 1)
    nan = dict(gain_coverage=math.nan, gain_ci_width=math.nan, gain_beyond_noise=math.nan, gain_studies=0.0,
               gain_true=math.nan, gain_estimate=math.nan)
    if not use.any():
        return nan
    raw = raw_gain(scores, final, win_col, base_col)
    estimate, low, high = raw.estimate, raw.low, raw.high
    truth = true[rows, c[rows, win_col]] - true[:, 0]
    covered = (low <= truth) & (truth <= high)
    return dict(gain_coverage=float(covered[use].mean()), gain_ci_width=float((high - low)[use].mean()),
                gain_beyond_noise=float(((low > 0) | (high < 0))[use].mean()), gain_studies=float(use.mean()),
                gain_true=float(truth[use].mean()), gain_estimate=float(estimate[use].mean()))


# --- reporting --------------------------------------------------------------------------------------------
def print_selection(result: dict, console) -> None:
    """A rich table of one ``simulate`` result: regrets, compute, and whether the design goal is met."""
    from rich.table import Table

    i = result.get("inputs", {})
    title = (f"choosing a configuration: {i.get('n_configs')} configs x {i.get('epochs')} epochs, ASHA (grace "
             f"{i.get('grace')}, rf {i.get('reduction_factor')}, {i.get('concurrent')} at once), {i.get('repeats')} "
             f"simulated studies; confirmation: top {i.get('top_k')} + the book's recipe, "
             + (f"{i.get('folds')}-fold cross-validation of {i.get('split_images')} images" if i.get("scheme") == "kfold"
                else f"{i.get('folds')} held-out folds of {i.get('fold_val_images')}"
                     f"{' (the study split reused)' if i.get('reuse_study_fold') else ''}"))
    table = Table(title=title, title_justify="left")
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    table.add_column("+- se", justify="right")
    table.add_column("P(true best)", justify="right")
    table.add_row("regret, single validation (study rank 1)", f"{result['regret_single']:.4f}",
                  f"{result['regret_single_se']:.4f}", f"{result['p_best_single']:.2f}")
    table.add_row("regret, confirmation (best mean over folds)", f"{result['regret_confirmed']:.4f}",
                  f"{result['regret_confirmed_se']:.4f}", f"{result['p_best_confirmed']:.2f}")
    table.add_row("regret, one-SE pick (cheapest within one se)", f"{result['regret_one_se']:.4f}",
                  f"{result['regret_one_se_se']:.4f}", "")
    table.add_row("regret ratio confirmed / single", fmt(result["regret_ratio"], ".2f"), "", "")
    table.add_row("extra compute (confirmation / study epochs)", f"{result['extra_compute_fraction']:.3f}",
                  f"{result['extra_compute_fraction_se']:.3f}", "")
    table.add_row("epochs: study (of a full study) / confirmation",
                  f"{result['study_epochs']:.1f} ({result['full_study_epochs']}) / {result['confirm_epochs']:.1f}", "", "")
    table.add_row("true best among the confirmation's candidates", "", "", f"{result['p_best_in_candidates']:.2f}")
    table.add_row("regret, a perfect judge of the same candidates (the floor)", f"{result['regret_candidates_floor']:.4f}", "", "")
    table.add_row("95% interval of the gain over the book's recipe: holds the true gain",
                  fmt(result["gain_coverage"], ".3f"), "", "")
    table.add_row("  its mean width / share that excludes 0 / share of studies with one",
                  f"{fmt(result['gain_ci_width'], '.3f')} / {fmt(result['gain_beyond_noise'], '.2f')} / {fmt(result['gain_studies'], '.2f')}", "", "")
    table.add_row("study's best validation / its true accuracy / true best",
                  f"{result['single_val']:.3f} / {result['single_true']:.3f} / {result['best_true']:.3f}", "", "")
    console.print(table)
    verdict = "met" if result["goal_met"] else "not met"
    console.print(f"goal (regret_confirmed <= regret_single / 2, extra compute <= 0.35): {verdict}", markup=False)


def run_selection(repeats: int = 10000, seed: int = 0, json_path: str | None = None, drawn: Drawn | None = None) -> dict:
    """``simulate`` at its defaults (``drawn``: their ``draw``, already made); the result also written as JSON to
    ``json_path`` when given."""
    result = simulate(drawn, repeats=repeats, seed=seed)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, default=_jsonable)
            fh.write("\n")
    return result


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
