"""Which hyperparameters mattered: Optuna's importance on the stored study, each share with a bootstrap
interval and a permutation test against chance, and a top-vs-rest check per hyperparameter that makes no
assumption about the importance model."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trainable import UserError

from study.core.folder import storage_url
from study.core.values import fmt, plain
from study.findings.ranges import top_count
from study.findings.reading import StudyData


MIN_COMPLETE = 5  # fewer COMPLETE trials than this: importances from all trials (pruned ones by their last value)


MIN_TRIALS = 3  # fewer usable trials than this: no importances at all


@dataclass
class Importance:
    values: dict[str, float] | None  # param -> share (sums to 1), most important first; None: not computable
    method: str  # how they were computed (for the report)
    note: str = ""  # caveats, shown beside them
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # param -> 90% bootstrap interval of its share
    chance: float | None = None  # the raw importance shuffled accuracies reach 95% of the time (see importance_uncertainty)

    def describe(self, param: str) -> str:
        """``0.41 (0.22-0.58)``: the share and its interval."""
        if not self.values:
            return "-"
        low, high = self.intervals.get(param, (math.nan, math.nan))
        interval = f" ({low:.2f}-{high:.2f})" if math.isfinite(low) else ""
        return f"{self.values[param]:.2f}{interval}"


RESAMPLES = 100  # bootstrap and permutation rounds: ~0.5 s for a 32-trial study


def importance_uncertainty(trials: list, params: list[str], evaluator, resamples: int = RESAMPLES, seed: int = 0
                           ) -> tuple[dict[str, tuple[float, float]], float, float]:
    """How far to trust importances computed on a handful of trials, by resampling those trials.

    - Each share's 90% interval: the trials drawn again with replacement, ``resamples`` times, the importances
      computed again each time (a bootstrap), the 5th and 95th percentiles of each share.
    - Chance: the validation accuracies shuffled across the trials (which keeps their number and spread but
      cuts every link to the hyperparameters), ``resamples`` times; the 95th percentile of the summed raw
      (unnormalised) importances found then, against the summed raw importances of the real trials. At or below
      it the importances cannot be told from what noise alone produces: that permutation test, not a fixed
      count of trials, is where the warning starts. (Raw, because shares always sum to 1: under noise one of
      them is often large by itself.) On a generated study with two real effects among five
      hyperparameters, PED-ANOVA clears it from 20 trials on and not at 8 or 14; on pure noise it warns at every
      count tried (8-40); tests/test_analyze_rerun.py checks both.

    - Each share's estimate: the median over the same resamples. On a few dozen trials Optuna's one estimate
      on all of them can lie outside the resamples' interval (a bootstrap of PED-ANOVA is biased: a resample
      repeats trials); the median is never outside it.

    Returns (intervals, chance, observed, medians): chance and observed are raw importances.
    """
    import numpy as np
    import optuna

    rng = np.random.default_rng(seed)
    n = len(trials)
    values = [t.value for t in trials]

    def shares(chosen: list, normalize: bool = True) -> list[float] | None:
        if len({t.value for t in chosen}) < 2:
            return None
        study = optuna.create_study(direction="maximize")
        study.add_trials(chosen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = optuna.importance.get_param_importances(study, evaluator=evaluator, params=params, normalize=normalize)
        return [float(got.get(p, 0.0)) for p in params]

    boot = [s for s in (shares([trials[i] for i in rng.integers(0, n, n)]) for _ in range(resamples)) if s is not None]
    medians = {p: float(np.median([b[i] for b in boot])) for i, p in enumerate(params)} if boot else {}
    null = []
    for _ in range(resamples):
        shuffled = rng.permutation(values)
        null_trials = [optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=float(v))
                       for t, v in zip(trials, shuffled)]
        if (s := shares(null_trials, normalize=False)) is not None:
            null.append(sum(s))
    intervals = {}
    if boot:
        table = np.array(boot)
        for i, p in enumerate(params):
            intervals[p] = (float(np.percentile(table[:, i], 5)), float(np.percentile(table[:, i], 95)))
    chance = float(np.percentile(null, 95)) if null else math.nan
    observed = shares(trials, normalize=False)
    return intervals, chance, sum(observed) if observed else math.nan, medians


def _evaluator(name: str, n_trials: int):
    import optuna

    if name == "fanova":
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise UserError("--importance fanova needs scikit-learn: pip install scikit-learn, or use --importance ped-anova") from None
        return optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA", None
    # PED-ANOVA: how differently each parameter is distributed among the top trials than among all. Its
    # default top 10% is a single trial in a small study: use the top quarter, and at least 2 trials.
    quantile = min(0.5, max(0.25, 2 / max(n_trials, 1)))
    return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile), f"PED-ANOVA (top {quantile:.0%} vs all)", quantile


def _stored_trials(data: StudyData):
    """The Optuna trials of the study's storage, or None when it cannot be opened."""
    import optuna

    if not data.folder.optuna_db.is_file():
        return None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=data.settings.name, storage=storage_url(data.folder.optuna_db))
        return [t for t in study.get_trials(deepcopy=False) if "warm_start" not in t.user_attrs]  # the study's own, not --warm-start's
    except Exception:  # a damaged or foreign database: fall back on the table
        return None


def compute_importance(data: StudyData, method: str = "ped-anova") -> Importance:
    """Optuna's importance on the stored study's COMPLETE trials; with too few of those, on all trials,
    pruned ones by their last reported validation accuracy (as TPE sees them)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    from study.core.space import to_distributions

    params = data.params
    if not params:
        return Importance(None, "not computable", "the study searched no hyperparameters")
    distributions = {p: d for p, d in to_distributions(data.settings.space).items() if p in params}
    if len(params) == 1:
        return Importance({params[0]: 1.0}, "single parameter", "only one hyperparameter was searched")

    stored = _stored_trials(data)
    points: list[tuple[dict, float]] = []
    source, caveat = "", ""
    if stored is not None:
        complete = [(t.params, float(t.value)) for t in stored
                    if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value) and set(params) <= set(t.params)]
        pruned = []
        for t in stored:  # stopped by ASHA; a diverged trial (infeasible for TPE too) says nothing of where the good ones lie
            if (t.state == TrialState.PRUNED and t.intermediate_values and set(params) <= set(t.params)
                    and t.user_attrs.get("status") != "diverged" and not any(v > 0 for v in t.constraints.values())):
                last = t.intermediate_values[max(t.intermediate_values)]
                if math.isfinite(last):
                    pruned.append((t.params, float(last)))
        if len(complete) >= MIN_COMPLETE and len({v for _, v in complete}) > 1:
            points, source = complete, f"the {len(complete)} completed trials"
        elif complete or pruned:
            points, source = complete + pruned, f"all {len(complete) + len(pruned)} trials"
            if pruned:
                caveat = (f"only {len(complete)} trial(s) ran every epoch, so the {len(pruned)} stopped early count with their "
                          "last validation accuracy, as TPE sees them (rough: earlier epochs score lower)")
    if not points and stored is None:  # no usable storage: the table's best validation accuracies
        for _, row in data.usable.iterrows():
            values = {p: plain(row[p]) for p in params}
            if all(v is not None for v in values.values()):
                points.append((values, float(row["best_val_acc"])))
        source = f"{len(points)} trials of trials.parquet"
        caveat = "no readable optuna.db: computed from each trial's best validation accuracy in trials.parquet"

    if not points:
        return Importance(None, "not computable", "no trial has a usable validation accuracy yet (every trial diverged, failed, "
                                                  "or is still in its first epoch)")
    if len(points) < MIN_TRIALS:
        return Importance(None, "not computable", f"too few trials with a validation accuracy ({len(points)}; {MIN_TRIALS} needed): run more --samples")
    if len({v for _, v in points}) == 1:
        others = len(data.trials) - len(points)
        return Importance(None, "not computable", f"the {len(points)} trial(s) with a validation accuracy all reached "
                                                  f"{points[0][1]:.3f}" + (f" ({others} other(s) have none yet, or failed)" if others else "")
                                                  + ": nothing tells the hyperparameters apart (more data, epochs or validation images would)")

    study = optuna.create_study(direction="maximize")  # in memory: the trials as Optuna sees them
    for values, value in points:
        fixed = {}
        for p in params:
            v = values[p]
            dist = distributions[p]
            if isinstance(dist, CategoricalDistribution) and v not in dist.choices:
                break  # a value outside today's space (an edited study.json): leave the trial out
            fixed[p] = v
        else:
            try:
                study.add_trial(optuna.trial.create_trial(params=fixed, distributions=distributions, value=value))
            except ValueError:
                pass  # a value outside today's space: leave the trial out
    if len(study.trials) < MIN_TRIALS:
        return Importance(None, "not computable", f"too few trials inside the search space of study.json ({len(study.trials)})")
    evaluator, name, quantile = _evaluator(method, len(study.trials))
    if quantile is not None:  # PED-ANOVA's top set is every trial at least as good as the quantile's
        scores = sorted((t.value for t in study.trials), reverse=True)
        cutoff = scores[math.ceil(quantile * len(scores)) - 1]
        n_top = sum(v >= cutoff for v in scores)
        if n_top > len(scores) / 2:
            return Importance(None, "not computable", f"{n_top} of the {len(scores)} trials tie at the top (validation accuracy "
                                                      f"{cutoff:.3f} or better): too few distinct results to tell the "
                                                      "hyperparameters apart (more epochs, data or validation images would)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=params)
    intervals, chance, top, medians = importance_uncertainty(study.trials, params, evaluator)
    estimate = medians or {p: float(values.get(p, 0.0)) for p in params}
    values = {p: estimate[p] for p in sorted(params, key=lambda p: -estimate[p])}
    if math.isfinite(chance) and top <= chance:
        warning = (f"with {len(study.trials)} trials these importances cannot be told from chance: together ({top:.3g}) they are no "
                   f"larger than what shuffled accuracies give 95% of the time ({chance:.3g}); more trials would tell")
        caveat = f"{warning}. {caveat}" if caveat else warning
    how = f"{name} on {source}" + (f", median of {RESAMPLES} resamples" if medians else "")
    return Importance(values, how, caveat, intervals, chance if math.isfinite(chance) else None)


@dataclass
class TopCheck:
    """The raw evidence for one hyperparameter: do the top trials differ from the others in it? (no model)"""

    param: str
    p_value: float  # a permutation test: how often random "top" sets differ from the others as much
    text: str  # what the top trials hold, against the others

    @property
    def strong(self) -> bool:
        return self.p_value < 0.05


PERMUTATIONS = 2000


def top_vs_rest(data: StudyData, permutations: int = PERMUTATIONS, seed: int = 0) -> dict[str, TopCheck]:
    """For each hyperparameter, whether the top trials (``top_count``) differ from the rest, by a permutation test
    that needs no model of the accuracy: for a categorical one the statistic is the largest excess share of one
    value among the top trials over the rest, for a numeric one the distance between the top trials' mean rank
    and the others' (log values rank as the values do). The p-value is the share of random top sets of the
    same size that differ at least as much. Unlike PED-ANOVA (top against all trials, which TPE drew mostly
    near the best) it compares the top with the trials not among them."""
    usable = data.usable.reset_index(drop=True)
    n, k = len(usable), top_count(len(usable))
    if n < 4 or k >= n:
        return {}
    rng = np.random.default_rng(seed)
    draws = np.argsort(rng.random((permutations, n)), axis=1)[:, :k]  # random top sets
    is_top = np.zeros((permutations, n), dtype=bool)
    np.put_along_axis(is_top, draws, True, axis=1)
    real = np.zeros(n, dtype=bool)
    real[:k] = True  # the table is ranked
    out = {}
    for p in data.params:
        column = usable[p]
        if data.is_categorical(p) or not pd.api.types.is_numeric_dtype(column):
            labels = column.astype(str).to_numpy()
            choices = sorted(set(labels))
            onehot = np.stack([labels == c for c in choices], axis=1).astype(float)  # (n, choices)
            # each value's share among a top set minus among the rest; (sets, choices)
            null = (is_top @ onehot / k - ~is_top @ onehot / (n - k)).max(axis=1)
            observed = real @ onehot / k - ~real @ onehot / (n - k)
            best = int(np.argmax(observed))
            statistic = observed[best]
            text = (f"{choices[best]}: {int(onehot[real, best].sum())} of the top {k}, "
                    f"{int(onehot[~real, best].sum())} of the other {n - k}")
        else:
            ranks = column.rank().to_numpy(dtype=float)
            # the distance between a top set's mean rank and the rest's
            null = np.abs(is_top @ ranks / k - ~is_top @ ranks / (n - k))
            statistic = abs(ranks[real].mean() - ranks[~real].mean())
            text = (f"median {fmt(float(column[real].median()))} in the top {k}, "
                    f"{fmt(float(column[~real].median()))} in the other {n - k}")
        p_value = float((np.sum(null >= statistic - 1e-12) + 1) / (permutations + 1))
        out[p] = TopCheck(p, p_value, text)
    return out


def importance_disagreements(imp: "Importance", checks: dict[str, TopCheck]) -> list[str]:
    """Where the importance and the raw top-vs-rest evidence disagree, one line each (instead of one number).

    The importance "says it matters" when its share is at least a fair share (1 / the hyperparameters); the
    evidence is strong at p < 0.05. Where the importances as a whole cannot be told from chance (their note says
    so already), only the other direction is said: evidence the importance leaves out."""
    if not imp.values or not checks:
        return []
    fair = 1 / len(imp.values)
    lines = []
    for p, share in imp.values.items():
        check = checks.get(p)
        if check is None:
            continue
        if check.strong and share < fair:
            lines.append(f"{p}: importance {imp.describe(p)} says it matters little, yet the top trials differ from the others in it "
                         f"({check.text}; p {check.p_value:.3f} by permutation): the two disagree, so read neither as settled "
                         "(PED-ANOVA compares the top with all trials, which the search drew mostly near the best, and can "
                         "understate what the search already settled)")
        elif share >= fair and check.p_value > 0.2 and "cannot be told from chance" not in imp.note:
            lines.append(f"{p}: importance {imp.describe(p)} says it matters, yet the top trials do not differ from the others in it "
                         f"({check.text}; p {check.p_value:.2f} by permutation): the two disagree, so read neither as settled")
    return lines


def describe_check(check: TopCheck | None) -> str:
    return "-" if check is None else f"{check.text} (p {check.p_value:.3f})"
