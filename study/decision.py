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

from study.values import fmt

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
    se: float = math.nan  # sd / sqrt(n) paired, sqrt(2 * pooled variance / n) pooled


    def describe(self, unit: str = "fold") -> str:
        """``+0.038 over 3 paired seeds (sd 0.014, 95% CI +0.003 to +0.073): beyond noise (|t| 4.70 > 4.303)``."""
        if self.n < 2:
            return f"{self.mean:+.3f} over {self.n} {unit}: no interval (one {unit})"
        how = f"se {self.se:.3f} pooled, {self.df} df" if self.pooled else f"sd {self.sd:.3f}"
        verdict = (f"beyond noise (|t| {abs(self.t):.2f} > {self.t_crit:.3f})" if self.beyond_noise
                   else f"within noise (|t| {abs(self.t):.2f} <= {self.t_crit:.3f})")
        return f"{self.mean:+.3f} over {self.n} paired {unit}s ({how}, 95% CI {self.ci_low:+.3f} to {self.ci_high:+.3f}): {verdict}"


@dataclass
class Decision:
    table: pd.DataFrame  # config, folds, failed, mean, sd, se, ci_low, ci_high, seconds_per_epoch (best mean first)
    winner: Hashable
    versus_baseline: Paired | None
    one_se_pick: Hashable
    baseline: Hashable | None = None
    notes: list[str] = field(default_factory=list)
    pooled: tuple[float, int] | None = None  # (residual variance, df) of the configuration x fold table, where used

    def row(self, config: Hashable) -> pd.Series:
        return self.table.loc[self.table["config"].map(lambda c: c == config)].iloc[0]

    def lines(self) -> list[str]:
        """Three lines for a summary: the winner, the winner against the book's recipe, the one-SE pick."""
        w = self.row(self.winner)
        failed = f", {int(w['failed'])} failed run(s) counted as 0" if w["failed"] else ""
        ci = (f" (95% CI {w['ci_low']:.3f} to {w['ci_high']:.3f}, sd {w['sd']:.3f})" if w["folds"] > 1
              else " (one fold: no interval)")
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
            else:
                verdict = (f"beyond noise (|t| {abs(p.t):.2f} > {p.t_crit:.3f})" if p.beyond_noise
                           else f"within noise (|t| {abs(p.t):.2f} <= {p.t_crit:.3f})")
            how = (f"se {p.se:.3f} with the error pooled over {len(self.table)} configurations ({p.df} df)"
                   if p.pooled else f"paired sd {p.sd:.3f}")
            spread = f", {how}, 95% CI {p.ci_low:+.3f} to {p.ci_high:+.3f}" if p.n > 1 else ""
            second = (f"vs the book's recipe (trial {self.baseline}): {p.mean:+.3f} over {p.n} shared fold(s)"
                      f"{spread}: {verdict}")
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


def decide(rows: pd.DataFrame, baseline: Hashable | None = None) -> Decision:
    """The confirmation stage's decision from its runs: one row per (configuration, fold).

    ``rows`` columns: ``config`` (a hashable key, e.g. the Optuna trial number), ``fold`` (int),
    ``val_acc`` (float; NaN for a diverged or failed run, counted as 0, the worst accuracy, and said so in
    ``notes`` and in the winner's line), ``seconds_per_epoch`` (float, the cost; averaged per configuration).
    ``baseline`` is the config key of the book's recipe, or None.

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
    data["val_acc"] = acc.fillna(0.0)
    data["seconds_per_epoch"] = pd.to_numeric(data["seconds_per_epoch"], errors="coerce").astype(float)
    notes = []
    for config, group in data.groupby("config", sort=False):
        if group["failed"].any():
            folds = ", ".join(str(f) for f in group.loc[group["failed"], "fold"])
            notes.append(f"config {config}: {int(group['failed'].sum())} failed run(s) (NaN val_acc, fold {folds}) "
                         "counted as 0, the worst accuracy")

    order = {c: i for i, c in enumerate(pd.unique(data["config"]))}
    pooled = pooled_error(data)
    records = []
    for config, group in data.groupby("config", sort=False):
        values = group["val_acc"].to_numpy(dtype=float)
        n = len(values)
        mean = float(values.mean())
        sd = float(values.std(ddof=1)) if n > 1 else math.nan
        se, df = (math.sqrt(pooled[0] / n), pooled[1]) if pooled else (sd / math.sqrt(n), n - 1)  # NaN, 0 with one fold
        half = t975(df) * se
        cost = group["seconds_per_epoch"].mean()  # NaN-skipping
        records.append(dict(config=config, folds=n, failed=int(group["failed"].sum()), mean=mean, sd=sd, se=se,
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
            versus = paired(a.loc[shared].to_numpy(float) - b.loc[shared].to_numpy(float), folds=shared, pooled=pooled)
        else:
            notes.append("the winner and the book's recipe share no fold: no paired comparison")
    return Decision(table=table, winner=winner, versus_baseline=versus, one_se_pick=one_se, baseline=baseline, notes=notes,
                    pooled=pooled)


def pooled_error(data: pd.DataFrame) -> tuple[float, int] | None:
    """(s2, df): the residual variance of the configuration x fold table of ``val_acc`` once each configuration's
    and each fold's mean is taken out (two-way, no interaction), df = (C - 1)(F - 1); None unless three or more
    configurations all ran the same two or more folds (with two, the paired test on their differences is the
    same test)."""
    wide = data.pivot(index="config", columns="fold", values="val_acc")
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


def paired(diffs: Sequence[float], folds: list | None = None, pooled: tuple[float, int] | None = None) -> Paired:
    """A t-test (95% two-sided) on per-fold differences: on their own spread, or with ``pooled`` = (s2, df) the
    pooled error of the whole table (se of a difference of two means over n folds: sqrt(2 s2 / n))."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return Paired(mean, math.nan, n, math.nan, math.nan, math.nan, math.nan, False, list(folds or []))
    sd = float(d.std(ddof=1))
    se = math.sqrt(2 * pooled[0] / n) if pooled else sd / math.sqrt(n)
    df = pooled[1] if pooled else n - 1
    crit = t975(df)
    if se > 0:
        t = mean / se
    else:  # identical differences: no spread, a nonzero mean is as certain as it gets
        t = math.copysign(math.inf, mean) if mean != 0 else 0.0
    return Paired(mean, sd, n, t, crit, mean - crit * se, mean + crit * se, bool(abs(t) > crit), list(folds or []),
                  df=df, pooled=bool(pooled), se=se)


def paired_by_seed(mine: dict, theirs: dict) -> Paired | None:
    """``mine`` minus ``theirs`` over the seeds both have (dicts seed -> accuracy), paired seed by seed; None when they
    share no seed."""
    shared = sorted(set(mine) & set(theirs))
    return paired([mine[s] - theirs[s] for s in shared], folds=shared) if shared else None
