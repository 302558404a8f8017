"""The confirmation stage's decision rule: which configuration the study names, and how sure it is.

The confirmation stage cross-validates the top K configurations by validation accuracy, plus the book's recipe,
on F stratified folds of the whole train split (each with its own seed), with the same epochs.

- ``decide(rows, baseline)``: from one row per configuration and fold: each configuration's mean, sd, se and
  t-interval; the winner (the best mean); a paired t-test of the winner against the book's recipe over their
  shared folds; and the cheaper configuration the one-standard-error rule would take.
- ``paired`` / ``paired_by_seed``: a mean paired difference with its t-interval (folds, or rerun seeds).

numpy and pandas only; a small t table of its own (no scipy).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from study.core.values import fmt
from study.core.vocabulary import COMPLETED, FAILED_RUN_SCORE

# The confirmation stage's defaults (study.run): top 5 and the book's recipe, 2-fold cross-validated, cost what top 3
# on three held-out 200-image folds cost, for a quarter less regret (bench.selection; docs/selection.md).
CONFIRM_TOP, CONFIRM_FOLDS = 5, 2

# --- Student's t ------------------------------------------------------------------------------------------
# Two-sided 95% critical values t_{0.975, df}, df 1..30 (the standard table, 3 decimals).
T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
    21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}
Z975 = 1.959963984540054


def t975(df: float) -> float:
    """The two-sided 95% critical value of Student's t with ``df`` degrees of freedom (NaN for df < 1).

    df 1..30 from the table; above 30 the Cornish-Fisher expansion around the normal quantile (4 terms: it
    gives 2.0423 at df 30 against the exact 2.0423, and tends to 1.960).
    """
    if df == math.inf:
        return Z975
    if df is None or not math.isfinite(df) or df < 1:
        return math.nan
    if int(df) == df and int(df) in T975:
        return T975[int(df)]
    if df < 30:  # fractional df below 30: interpolate in 1/df between the neighbours
        lo, hi = math.floor(df), math.ceil(df)
        w = (1 / df - 1 / hi) / (1 / lo - 1 / hi)
        return w * T975[lo] + (1 - w) * T975[hi]
    z = Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def binomial_se(accuracy: float, images: int) -> float:
    """The standard error of an accuracy measured on ``images`` images: the binomial one with Agresti and Coull's two
    successes and two failures added (sqrt(q(1-q)/(n+4)), q = (pn+2)/(n+4)), which is never 0, even for an accuracy
    of 1.0 on a handful of images. No interval of this module is narrower than the images it rests on allow."""
    q = (accuracy * images + 2) / (images + 4)
    return math.sqrt(q * (1 - q) / (images + 4))


CHEAPER = 0.9  # "cheaper" than the winner: at most this share of its cost (two runs' clocks differ by a few percent)
BOUNDS_NOTHING = 0.5  # a 95% half-width this wide or wider spans most of what an accuracy (or a difference) can be


# --- the decision from confirmation runs -----------------------------------------------------------------
@dataclass
class Paired:
    """Winner minus baseline over their shared folds (a t-test, 95% two-sided): paired on their own per-fold
    differences, or with the error pooled over every configuration on the same folds where there is one."""

    mean: float
    sd: float  # sd of the per-fold differences (ddof 1; NaN with one fold)
    n: int  # shared folds
    t: float  # mean / se; NaN with fewer than 2 folds
    t_crit: float  # t_{0.975, df}
    ci_low: float
    ci_high: float
    beyond_noise: bool  # |t| > t_crit: the difference is unlikely under "no difference" (needs n >= 2)
    folds: list = field(default_factory=list)
    df: int = 0  # n - 1 paired; (configurations - 1) x (folds - 1) pooled
    pooled: bool = False
    se: float = math.nan  # sd / sqrt(n) paired, sqrt(2 * pooled variance / n) pooled (with the images' own error: ``paired``)
    images_se: float = 0.0  # the sampling error of the images the runs were judged on, included in se (``paired``)

    @property
    def bounded(self) -> bool:
        """Whether the interval says something: narrower than most of the -1 to +1 a difference of accuracies can be."""
        return self.n >= 2 and self.t_crit * self.se < BOUNDS_NOTHING

    def describe(self, unit: str = "fold") -> str:
        """``+0.038 over 3 paired seeds (sd 0.014, 95% CI +0.003 to +0.073): beyond noise (|t| 4.70 > 4.303)``."""
        if self.n < 2:
            return f"{self.mean:+.3f} over {self.n} {unit}: no interval (one {unit})"
        how = f"se {self.se:.3f} pooled, {self.df} df" if self.pooled else f"sd {self.sd:.3f}"
        if self.images_se:
            how += f", the images' own {self.images_se:.3f}"
        if not self.bounded:
            return (f"{self.mean:+.3f} over {self.n} paired {unit}s ({how}): {self.n} {unit}s bound nothing here (a 95% interval "
                    f"would span {self.ci_low:+.3f} to {self.ci_high:+.3f}); more {unit}s would narrow it")
        verdict = (f"beyond noise (|t| {abs(self.t):.2f} > {self.t_crit:.3f})" if self.beyond_noise
                   else f"within noise (|t| {abs(self.t):.2f} <= {self.t_crit:.3f})")
        return f"{self.mean:+.3f} over {self.n} paired {unit}s ({how}, 95% CI {self.ci_low:+.3f} to {self.ci_high:+.3f}): {verdict}"


@dataclass
class Decision:
    table: pd.DataFrame  # config, folds, failed, mean, sd, se, half (of the 95% interval), ci_low, ci_high, seconds_per_epoch
    #                      (best mean first)
    winner: Hashable
    versus_baseline: Paired | None
    one_se_pick: Hashable
    baseline: Hashable | None = None
    notes: list[str] = field(default_factory=list)
    pooled: tuple[float, int] | None = None  # (residual variance, df) of the configuration x fold table, where used
    versus_winner: dict = field(default_factory=dict)  # config -> Paired (config minus the winner over their shared folds)
    front: list = field(default_factory=list)  # configurations no other beats on both mean accuracy and cost
    cheapest: Hashable | None = None  # the cheapest configuration the paired test cannot tell from the winner (the winner itself: none cheaper)
    corrected: "Corrected | None" = None  # the winner's gain and accuracy corrected for the choice (None: no gain to correct)

    def within_noise(self, config: Hashable) -> bool:
        """Whether the paired test cannot tell ``config`` from the winner (the winner itself: yes)."""
        if config == self.winner:
            return True
        versus = self.versus_winner.get(config)
        return versus is not None and versus.n >= 2 and not versus.beyond_noise

    def cheapest_line(self, cost: dict | None = None, unit: str = "s/epoch") -> str:
        """``cheapest within noise of the winner: trial 4, ...``; ``cost``: config -> what to show as its cost."""
        cost = cost or dict(zip(self.table["config"], self.table["seconds_per_epoch"]))
        w = cost.get(self.winner)
        if self.cheapest is None or self.cheapest == self.winner:
            return ("cheapest within noise of the winner: the winner itself (no configuration the paired test cannot tell from it "
                    f"costs {1 - CHEAPER:.0%} less)")
        versus = self.versus_winner[self.cheapest]
        return (f"cheapest within noise of the winner: trial {self.cheapest}, {versus.mean:+.3f} (95% CI {versus.ci_low:+.3f} to "
                f"{versus.ci_high:+.3f}), {fmt(cost.get(self.cheapest), '.3g')} {unit} against the winner's {fmt(w, '.3g')}")

    def row(self, config: Hashable) -> pd.Series:
        return self.table.loc[self.table["config"].map(lambda c: c == config)].iloc[0]

    def lines(self) -> list[str]:
        """Three lines for a summary: the winner, the winner against the book's recipe, the one-SE pick."""
        w = self.row(self.winner)
        failed = f", {int(w['failed'])} failed run(s) counted as 0" if w["failed"] else ""
        if w["folds"] < 2:
            ci = " (one fold: no interval)"
        elif not w["half"] < BOUNDS_NOTHING:
            ci = (f" (sd {w['sd']:.3f}; {int(w['folds'])} folds bound nothing here: a 95% interval would span {w['ci_low']:.3f} "
                  f"to {w['ci_high']:.3f}; more folds would narrow it)")
        else:
            ci = f" (95% CI {w['ci_low']:.3f} to {w['ci_high']:.3f}, sd {w['sd']:.3f})"
        first = f"winner: trial {self.winner}, mean val acc {w['mean']:.3f} over {int(w['folds'])} fold(s){ci}{failed}"
        if self.baseline is None:
            second = "vs the book's recipe: none in the confirmation (no baseline given)"
        elif self.winner == self.baseline:
            second = f"vs the book's recipe: the winner is the book's recipe (trial {self.baseline})"
        elif self.versus_baseline is None:
            second = f"vs the book's recipe (trial {self.baseline}): no comparison ({'; '.join(self.notes[-1:]) or 'no shared fold'})"
        else:
            p = self.versus_baseline
            if p.n < 2:
                verdict = "one shared fold: no test"
            elif not p.bounded:
                verdict = f"{p.n} folds bound nothing here (more folds would narrow it)"
            else:
                verdict = (f"beyond noise (|t| {abs(p.t):.2f} > {p.t_crit:.3f})" if p.beyond_noise
                           else f"within noise (|t| {abs(p.t):.2f} <= {p.t_crit:.3f})")
            how = (f"se {p.se:.3f} with the error pooled over {len(self.table)} configurations ({p.df} df)"
                   if p.pooled else f"paired sd {p.sd:.3f}")
            spread = f", {how}, 95% CI {p.ci_low:+.3f} to {p.ci_high:+.3f}" if p.n > 1 else ""
            second = (f"vs the book's recipe (trial {self.baseline}): {p.mean:+.3f} over {p.n} shared fold(s)"
                      f"{spread}: {verdict}" + (f"; {self.corrected.describe()}" if self.corrected is not None else ""))
        pick = self.row(self.one_se_pick)
        se = f"one SE, {w['se']:.3f}," if pd.notna(w["se"]) else "one SE (none: one fold)"
        if self.one_se_pick == self.winner:
            third = f"one-SE pick: the winner itself (no cheaper configuration within {se} of its mean)"
        else:
            third = (f"one-SE pick: trial {self.one_se_pick}, mean {pick['mean']:.3f} (within {se} of the winner's "
                     f"{w['mean']:.3f}), {fmt(pick['seconds_per_epoch'], '.3g')} s/epoch against the winner's "
                     f"{fmt(w['seconds_per_epoch'], '.3g')}")
        return [first, second, third]


REQUIRED = ("config", "fold", "val_acc", "seconds_per_epoch")


def decision_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """``decide``'s rows from confirmation runs that ended (``confirm.parquet``'s columns): a failed run's ``val_acc`` NaN,
    which ``decide`` counts as the vocabulary's ``FAILED_RUN_SCORE``."""
    return pd.DataFrame({"config": runs["optuna_trial"].astype(int), "fold": runs["fold"].astype(int),
                         "val_acc": runs["val_acc"].where(runs["status"] == COMPLETED).astype(float),
                         "seconds_per_epoch": (runs["seconds"] / runs["epochs"].where(runs["epochs"] > 0)).astype(float)})


def decide(rows: pd.DataFrame, baseline: Hashable | None = None, images: int | None = None) -> Decision:
    """The confirmation stage's decision from its runs: one row per (configuration, fold).

    ``rows`` columns: ``config`` (a hashable key, e.g. the Optuna trial number), ``fold`` (int),
    ``val_acc`` (float; NaN for a diverged or failed run, counted as 0, the worst accuracy, and said so in
    ``notes`` and in the winner's line), ``seconds_per_epoch`` (float, the cost; averaged per configuration).
    ``baseline`` is the config key of the book's recipe, or None. ``images``: the images each configuration was
    judged on over all its folds (the whole train split); no se is then smaller than their sampling error
    (``binomial_se``), however alike the folds came out.

    - table: per configuration its folds, failed runs, mean, sd (ddof 1), se and the 95% t-interval
      mean +- t_{0.975, df} se (clipped to [0, 1]); best mean first. Where three or more configurations ran
      the same folds (the stage's design: a randomized block, the fold the block), se = sqrt(s2 / folds) with
      s2 the residual variance of the configuration x fold table once each fold's and each configuration's
      mean is taken out, df = (configurations - 1) x (folds - 1) (``pooled``): one fold that is harder for
      everybody is no noise between configurations, and the error is estimated from every run, not from a
      configuration's own two or three. Otherwise se = sd / sqrt(folds), df = folds - 1.
    - winner: the best mean; ties go to the lower seconds_per_epoch, then to the first configuration in rows.
    - versus_baseline: winner - baseline over the folds both ran (mean, sd of the per-fold differences, n, a
      t-test at 95% two-sided: ``beyond_noise``) with the pooled error (se of a difference sqrt(2 s2 / n))
      where there is one, else paired on its own differences; None without a baseline, when the winner is
      the baseline, or when the two share no fold.
    - one_se_pick: the one-standard-error rule (scikit-learn's refit callable example, mlr3tuning): the
      cheapest configuration (by seconds_per_epoch) whose mean is >= the winner's mean - the winner's se;
      with one fold there is no se and the rule keeps the winner (or an equally good, cheaper tie).
    """
    missing = [c for c in REQUIRED if c not in rows.columns]
    if missing:
        raise ValueError(f"decide: rows lack column(s) {missing}; need {list(REQUIRED)}")
    if len(rows) == 0:
        raise ValueError("decide: no rows (no confirmation run finished)")
    if rows.duplicated(["config", "fold"]).any():
        dup = rows.loc[rows.duplicated(["config", "fold"], keep=False), ["config", "fold"]].drop_duplicates()
        raise ValueError(f"decide: more than one row for (config, fold) {list(map(tuple, dup.to_numpy()))}")
    data = rows[list(REQUIRED)].copy()
    acc = pd.to_numeric(data["val_acc"], errors="coerce").astype(float)
    data["failed"] = acc.isna()
    data["val_acc"] = acc.fillna(FAILED_RUN_SCORE)
    data["seconds_per_epoch"] = pd.to_numeric(data["seconds_per_epoch"], errors="coerce").astype(float)
    notes = []
    for config, group in data.groupby("config", sort=False):
        if group["failed"].any():
            folds = ", ".join(str(f) for f in group.loc[group["failed"], "fold"])
            notes.append(f"config {config}: {int(group['failed'].sum())} failed run(s) (NaN val_acc, fold {folds}) "
                         "counted as 0, the worst accuracy")

    order = {c: i for i, c in enumerate(pd.unique(data["config"]))}
    wide = data.pivot(index="config", columns="fold", values="val_acc")  # configuration x fold
    pooled = pooled_error(wide)
    records = []
    for config, group in data.groupby("config", sort=False):
        values = group["val_acc"].to_numpy(dtype=float)
        n = len(values)
        mean = float(values.mean())
        sd = float(values.std(ddof=1)) if n > 1 else math.nan
        se, df = (math.sqrt(pooled[0] / n), pooled[1]) if pooled else (sd / math.sqrt(n), n - 1)  # NaN, 0 with one fold
        if images and n > 1:
            se = max(se, binomial_se(mean, images))
        half = t975(df) * se
        cost = group["seconds_per_epoch"].mean()  # NaN-skipping
        records.append(dict(config=config, folds=n, failed=int(group["failed"].sum()), mean=mean, sd=sd, se=se, half=half,
                            ci_low=float(np.clip(mean - half, 0, 1)), ci_high=float(np.clip(mean + half, 0, 1)),  # NaN stays NaN
                            seconds_per_epoch=float(cost) if pd.notna(cost) else math.nan, _order=order[config]))
    table = pd.DataFrame(records)
    table["_cost"] = table["seconds_per_epoch"].fillna(math.inf)  # an unknown cost is never the cheaper one
    table = table.sort_values(["mean", "_cost", "_order"], ascending=[False, True, True], kind="mergesort")
    winner = table["config"].iloc[0]  # the column keeps the keys' type (a row would upcast an int to float)

    # one-SE rule: cheapest within one se of the winner (a missing se keeps the bar at the winner's mean)
    w = table.iloc[0]
    bar = w["mean"] - (w["se"] if pd.notna(w["se"]) else 0.0)
    inside = table[table["mean"] >= bar - 1e-12]
    one_se = inside.sort_values(["_cost", "mean", "_order"], ascending=[True, False, True], kind="mergesort")["config"].iloc[0]
    table = table.drop(columns=["_cost", "_order"]).reset_index(drop=True)

    versus = None
    present = baseline is not None and bool((data["config"] == baseline).any())
    if baseline is not None and not present:
        notes.append(f"the book's recipe (config {baseline}) has no confirmation run: no comparison")
    if present and winner != baseline:
        a = data[data["config"] == winner].set_index("fold")["val_acc"]
        b = data[data["config"] == baseline].set_index("fold")["val_acc"]
        shared = sorted(set(a.index) & set(b.index))
        if shared:
            versus = paired(a.loc[shared].to_numpy(float) - b.loc[shared].to_numpy(float), folds=shared, pooled=pooled,
                            images_se=images_se_of(a, b, images))
        else:
            notes.append("the winner and the book's recipe share no fold: no paired comparison")
    by_fold = {c: g.set_index("fold")["val_acc"] for c, g in data.groupby("config", sort=False)}
    versus_winner = {}
    for config, accs in by_fold.items():
        shared = sorted(set(accs.index) & set(by_fold[winner].index))
        if config != winner and shared:
            versus_winner[config] = paired(accs.loc[shared].to_numpy(float) - by_fold[winner].loc[shared].to_numpy(float),
                                           folds=shared, pooled=pooled, images_se=images_se_of(accs, by_fold[winner], images))
    costs = dict(zip(table["config"], table["seconds_per_epoch"].fillna(math.inf)))
    means = dict(zip(table["config"], table["mean"]))
    front = [c for c in table["config"]  # nobody is at least as good on both and better on one
             if not any((means[o] >= means[c] and costs[o] <= costs[c]) and (means[o] > means[c] or costs[o] < costs[c])
                        for o in table["config"] if o != c)]
    decision = Decision(table=table, winner=winner, versus_baseline=versus, one_se_pick=one_se, baseline=baseline, notes=notes,
                        pooled=pooled, versus_winner=versus_winner, front=front)
    # a gain to correct, and a choice that made it: two candidates or more beside the recipe, on the same two folds or more
    # (a pooled error means a full table of 3+ configurations x 2+ folds, so versus then pairs them on every fold)
    if versus is not None and pooled is not None:
        rows_of = list(wide.index)
        decision.corrected = selection_corrected(wide.to_numpy(dtype=float), rows_of.index(winner), rows_of.index(baseline), pooled,
                                                 versus.images_se)
    inside = [c for c in table["config"]
              if c == winner or (decision.within_noise(c) and costs[c] <= CHEAPER * costs[winner])]
    decision.cheapest = min(inside, key=lambda c: (costs[c], -means[c]))
    return decision


def images_se_of(a: pd.Series, b: pd.Series, images: int | None) -> float:
    """The sampling error of two configurations' mean accuracy on ``images`` images (0: unknown)."""
    return binomial_se((float(a.mean()) + float(b.mean())) / 2, images) if images else 0.0


def pooled_error(wide: pd.DataFrame) -> tuple[float, int] | None:
    """(s2, df): the residual variance of the configuration x fold table ``wide`` of ``val_acc`` once each configuration's
    and each fold's mean is taken out (two-way, no interaction), df = (C - 1)(F - 1); None unless three or more
    configurations all ran the same two or more folds (with two, the paired test on their differences is the
    same test)."""
    if wide.isna().to_numpy().any() or wide.shape[0] < 3 or wide.shape[1] < 2:
        return None
    s2, df = residual_variance(wide.to_numpy(dtype=float))
    return float(s2), int(df)


def residual_variance(values: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(s2, df) of configuration x fold tables ``values[..., C, F]``, over the configurations ``valid[..., C]``
    (default all): the variance left once each configuration's and each fold's mean is taken out,
    df = (configurations - 1)(F - 1) (floored at 1 in s2's divisor; callers need 3+ configurations)."""
    if valid is None:
        valid = np.ones(values.shape[:-1], dtype=bool)
    w = valid[..., None]
    count = valid.sum(axis=-1)
    folds = values.shape[-1]
    row_means = values.mean(axis=-1, keepdims=True)
    fold_means = (values * w).sum(axis=-2, keepdims=True) / count[..., None, None]
    grand = (values * w).sum(axis=(-2, -1)) / (count * folds)
    residual = (values - row_means - fold_means + grand[..., None, None]) * w
    df = (count - 1) * (folds - 1)
    return (residual**2).sum(axis=(-2, -1)) / np.maximum(df, 1), df


def paired(diffs: Sequence[float], folds: list | None = None, pooled: tuple[float, int] | None = None,
           images_se: float = 0.0, same_images: bool = False) -> Paired:
    """A t-test (95% two-sided) on per-run differences: on their own spread, or with ``pooled`` = (s2, df) the
    pooled error of the whole table (se of a difference of two means over n folds: sqrt(2 s2 / n)).

    ``images_se``: the sampling error of the images the runs were judged on (``binomial_se``). Runs judged on the
    ``same_images`` (the seeds of a rerun, all on one test split) do not vary with them at all, so it is added:
    se = sqrt(se_runs^2 + images_se^2), with Welch and Satterthwaite's degrees of freedom (the images' part known, not
    estimated). Runs on different images (cross-validation folds) already vary with them: it is then a floor on se.
    The interval is clipped to the -1 to +1 a difference of accuracies can be."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return Paired(mean, math.nan, n, math.nan, math.nan, math.nan, math.nan, False, list(folds or []))
    sd = float(d.std(ddof=1))
    se = math.sqrt(2 * pooled[0] / n) if pooled else sd / math.sqrt(n)
    df = pooled[1] if pooled else n - 1
    if images_se and same_images:
        total = math.sqrt(se**2 + images_se**2)
        df = math.inf if se == 0 else total**4 / (se**4 / df)
        se = total
    elif images_se:
        se = max(se, images_se)
    crit = t975(df)
    if se > 0:
        t = mean / se
    else:  # identical differences, nothing known of the images: a nonzero mean is as certain as it gets
        t = math.copysign(math.inf, mean) if mean != 0 else 0.0
    return Paired(mean, sd, n, t, crit, max(-1.0, mean - crit * se), min(1.0, mean + crit * se), bool(abs(t) > crit),
                  list(folds or []), df=df, pooled=bool(pooled), se=se, images_se=images_se)


def paired_by_seed(mine: dict, theirs: dict, images: int | None = None) -> Paired | None:
    """``mine`` minus ``theirs`` over the seeds both have (dicts seed -> accuracy), paired seed by seed, every seed
    judged on the same ``images`` test images (whose sampling error the interval then includes); None when they
    share no seed."""
    shared = sorted(set(mine) & set(theirs))
    if not shared:
        return None
    p = (sum(mine[s] for s in shared) + sum(theirs[s] for s in shared)) / (2 * len(shared))
    return paired([mine[s] - theirs[s] for s in shared], folds=shared, images_se=binomial_se(p, images) if images else 0.0,
                  same_images=True)


# --- the winner's curse ------------------------------------------------------------------------------------
CORRECTION_REPLICATES = 1000  # bootstrap replicates of the whole selection (a few milliseconds for a stage's table)


@dataclass
class Corrected:
    """The winner's gain over the book's recipe, and its accuracy, corrected for the stage having named it as the best of
    its candidates (``selection_corrected``): each estimate and its 95% interval."""

    gain: float
    gain_low: float
    gain_high: float
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    candidates: int

    def describe(self) -> str:
        return (f"corrected for choosing the best of {self.candidates}: {self.gain:+.3f} (95% CI {self.gain_low:+.3f} to "
                f"{self.gain_high:+.3f})")

    def as_dict(self) -> dict:
        """The corrected gain as study.json stores it (``summary.confirmation.gain.corrected``)."""
        return {"mean": self.gain, "ci": [self.gain_low, self.gain_high]}

    def accuracy_dict(self) -> dict:
        """The winner's corrected accuracy as study.json stores it (``summary.confirmation.winner_corrected``)."""
        return {"mean": self.accuracy, "ci": [self.accuracy_low, self.accuracy_high]}


def selection_corrected(scores: np.ndarray, winner: int, baseline: int, pooled: tuple[float, int] | None = None,
                        floor: float = 0.0, replicates: int = CORRECTION_REPLICATES, seed: int = 0) -> Corrected:
    """The winner's gain over the baseline and its accuracy, corrected for the choice, from the configuration x fold table
    ``scores[C, F]`` (rows ``winner`` and ``baseline``) by a parametric bootstrap of the whole selection.

    Choosing the best of several noisy means inflates the one chosen (the winner's curse): its estimated gain runs above
    its true one, and an interval computed as if it had been fixed in advance is too high. So the selection is replayed:
    the table is redrawn from what the study knows (each candidate's mean shrunk toward the candidates' mean by the
    noise's share of their spread, empirical Bayes; each fold's effect; the pooled noise ``pooled`` = (s2, df), else the
    pair's own, never below ``floor``, the images' error of a mean), the best is chosen again in each replicate, and the
    error of its estimate against its own drawn-from value is kept. The estimate is the raw one less the errors' mean; the
    interval comes from the errors' 2.5 and 97.5 percentiles, with the noise's own uncertainty drawn in (its variance
    from its scaled chi-square). Measured on simulated studies (``python -m bench --selection``, docs/selection.md) it
    leaves at most a fifth of the raw estimate's bias, and its interval holds the true gain in 92-95% of them; the
    other candidates weighed there did worse."""
    scores = np.asarray(scores, dtype=float)
    C, F = scores.shape
    rng = np.random.default_rng(seed)
    means = scores.mean(axis=1)
    diffs = scores[winner] - scores[baseline]
    s2, df = pooled if pooled else (float(diffs.var(ddof=1)) / 2, F - 1)
    s2 = max(float(s2), F * floor**2, 1e-12)
    df = max(int(df), 1)
    others = np.arange(C) != baseline
    noise = s2 / F
    spread = float(means[others].var(ddof=1)) if others.sum() >= 2 else math.inf
    share = min(1.0, noise / spread) if spread > 0 else 1.0
    truth = means.copy()
    truth[others] = means[others] - share * (means[others] - means[others].mean())
    fold_effect = scores.mean(axis=0) - means.mean()

    def errors(sigma2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        draws = truth[None, :, None] + fold_effect[None, None, :] + rng.normal(size=(replicates, C, F)) * np.sqrt(sigma2)[:, None, None]
        drawn_means = draws.mean(axis=2)
        best = np.argmax(np.where(others[None, :], drawn_means, -np.inf), axis=1)  # the gain is a non-baseline winner's
        rows = np.arange(replicates)
        gain = (draws[rows, best] - draws[rows, baseline]).mean(axis=1) - (truth[best] - truth[baseline])
        return gain, drawn_means[rows, best] - truth[best]

    bias_gain, bias_acc = (e.mean() for e in errors(np.full(replicates, s2)))
    spread_gain, spread_acc = errors(s2 * df / rng.chisquare(df, replicates))
    raw_gain, raw_acc = float(diffs.mean()), float(means[winner])
    g_hi, g_lo = np.percentile(spread_gain, [97.5, 2.5])
    a_hi, a_lo = np.percentile(spread_acc, [97.5, 2.5])
    return Corrected(raw_gain - float(bias_gain), max(-1.0, raw_gain - float(g_hi)), min(1.0, raw_gain - float(g_lo)),
                     raw_acc - float(bias_acc), max(0.0, raw_acc - float(a_hi)), min(1.0, raw_acc - float(a_lo)), C)
