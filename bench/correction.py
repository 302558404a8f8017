"""The winner's curse, measured: estimates of the confirmed winner's gain over the book's recipe corrected for the choice
the confirmation stage made, each scored against the true gain over the simulated studies of ``bench.selection``.

The stage names the best of several noisy means; the raw estimate of its gain (its mean difference to the book's recipe
over the folds) is then biased upward, and its interval is computed as if the winner had been fixed in advance. The
candidates weighed (each on the same configuration x fold table of scores, ``scores[R, C, F]``):

- ``raw``: the mean difference over the folds, its interval as ``study.core.decision`` prints it;
- ``tibshirani``: Tibshirani & Tibshirani (2009): the bias is the mean over folds of each fold's best score minus the
  winner's on that fold; the estimate and its interval shift down by it;
- ``split``: the folds that choose are not the ones that estimate: the winner of fold 0 is judged on the other folds
  (its own winner, not the stage's);
- ``bootstrap``: the whole selection bootstrapped: the table redrawn ``B`` times from its own means and pooled noise,
  the winner picked again in each, and the spread of (its estimated minus its drawn-from gain) taken as the estimate's
  error: the estimate less the errors' mean, the interval from their 2.5 and 97.5 percentiles (the basic bootstrap);
- ``shrinkage``: the candidates' means shrunk toward their mean (empirical Bayes, the noise's share of their spread),
  the winner's shrunk mean less the book's recipe's;
- ``shrunk bootstrap`` (the product's: ``study.core.decision.selection_corrected``): the bootstrap drawn from the shrunk
  means, the interval with the noise's own uncertainty drawn in.
"""

from __future__ import annotations

import math

import numpy as np

from bench.selection import raw_gain

METHODS = ("raw", "tibshirani", "split", "bootstrap", "shrinkage", "shrunk bootstrap")
CHOSEN = "shrunk bootstrap"


def estimates(scores: np.ndarray, final: np.ndarray, win_col: np.ndarray, base_col: np.ndarray, boot: int = 200,
              rng: np.random.Generator | None = None, use: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per method: (estimate, ci_low, ci_high, which configuration column it estimates) for every study (``use``: the
    studies the product's correction is run on, one at a time; the others get NaN)."""
    R, C, F = scores.shape
    rows = np.arange(R)
    rng = rng or np.random.default_rng(0)
    diffs = scores[rows, win_col] - scores[rows, base_col]  # (R, F)
    found = raw_gain(scores, final, win_col, base_col)
    raw, crit, se, s2, df_pooled, pooled = found.estimate, found.crit, found.se, found.s2, found.df, found.pooled
    out = {"raw": (raw, found.low, found.high, win_col)}
    others = final & (np.arange(C) != base_col[:, None])  # the candidates but the book's recipe
    noise_var = np.where(pooled, s2, diffs.var(axis=1, ddof=1) / 2)  # a score's noise variance

    # Tibshirani & Tibshirani: each fold's best minus the winner's, averaged
    masked = np.where(final[:, :, None], scores, -np.inf)
    bias_tt = (masked.max(axis=1) - scores[rows, win_col]).mean(axis=1)
    out["tibshirani"] = (raw - bias_tt, raw - bias_tt - crit * se, raw - bias_tt + crit * se, win_col)

    # split: fold 0 chooses, the other folds estimate
    chooser = np.argmax(np.where(others, scores[:, :, 0], -np.inf), axis=1)
    rest = scores[rows, chooser, 1:] - scores[rows, base_col, 1:]  # (R, F-1)
    split = rest.mean(axis=1)
    se_split = np.sqrt(2 * s2 / (F - 1))
    se_split = np.where(pooled, se_split, np.nan)
    out["split"] = (split, split - crit * se_split, split + crit * se_split, chooser)

    # the bootstrap of the whole selection: fitted means (each configuration's over the folds, each fold's effect), the
    # pooled noise, the winner picked again
    means = np.where(final, scores.mean(axis=2), np.nan)  # (R, C)
    fold_effect = np.nanmean(np.where(final[:, :, None], scores, np.nan), axis=1) - np.nanmean(means, axis=1)[:, None]
    sd = np.sqrt(noise_var)
    errors = np.empty((R, boot))
    for b in range(boot):
        draw = np.nan_to_num(means)[:, :, None] + fold_effect[:, None, :] + rng.normal(0.0, 1.0, (R, C, F)) * sd[:, None, None]
        star_win = np.argmax(np.where(others, draw.mean(axis=2), -np.inf), axis=1)  # the best but the recipe: a gain over it
        star_gain = (draw[rows, star_win] - draw[rows, base_col]).mean(axis=1)
        fitted_gain = np.nan_to_num(means)[rows, star_win] - np.nan_to_num(means)[rows, base_col]
        errors[:, b] = star_gain - fitted_gain
    bias_boot = errors.mean(axis=1)
    lo_q, hi_q = np.percentile(errors, [97.5, 2.5], axis=1)
    out["bootstrap"] = (raw - bias_boot, raw - lo_q, raw - hi_q, win_col)

    # shrinkage toward the candidates' mean (the book's recipe left as measured: it was not chosen)
    m = np.nanmean(np.where(others, means, np.nan), axis=1)
    spread = np.nanvar(np.where(others, means, np.nan), axis=1, ddof=1)
    noise = noise_var / F
    share = np.clip(noise / np.maximum(spread, 1e-12), 0.0, 1.0)
    shrunk = means[rows, win_col] - share * (means[rows, win_col] - m)
    gain_shrunk = shrunk - means[rows, base_col]
    se_shrunk = np.sqrt((1 - share) * noise + noise)
    out["shrinkage"] = (gain_shrunk, gain_shrunk - crit * se_shrunk, gain_shrunk + crit * se_shrunk, win_col)

    # the product's: study.core.decision.selection_corrected, study by study on its final candidates
    from study.core.decision import selection_corrected

    product = np.full((3, R), np.nan)
    for r in np.flatnonzero(use if use is not None else np.ones(R, dtype=bool)):
        cols = np.flatnonzero(final[r])
        table = scores[r, cols]
        pooled_r = (float(s2[r]), int(df_pooled[r])) if pooled[r] else None
        found = selection_corrected(table, int(np.flatnonzero(cols == win_col[r])[0]), int(np.flatnonzero(cols == base_col[r])[0]),
                                    pooled_r, replicates=boot, seed=int(r))
        product[:, r] = (found.gain, found.gain_low, found.gain_high)
    out["shrunk bootstrap"] = (product[0], product[1], product[2], win_col)
    return out


def score_corrections(scores: np.ndarray, final: np.ndarray, c: np.ndarray, win_col: np.ndarray, true: np.ndarray,
                      boot: int = 200, seed: int = 0) -> dict:
    """Each method's mean error against the true gain of the configuration it estimates, its interval's coverage and
    mean width, over the studies whose winner is not the book's recipe and where both ran every fold."""
    R, C, F = scores.shape
    rows = np.arange(R)
    base_col = np.argmax(final & (c == 0), axis=1)
    use = (final & (c == 0)).any(axis=1) & (c[rows, win_col] != 0) & (F > 1)
    out = {}
    if not use.any():
        return {m: {"error": math.nan, "abs_error": math.nan, "coverage": math.nan, "width": math.nan} for m in METHODS}
    found = estimates(scores, final, win_col, base_col, boot, np.random.default_rng(seed), use)
    for method, (estimate, low, high, col) in found.items():
        truth = true[rows, c[rows, col]] - true[:, 0]
        ok = use & np.isfinite(low) & np.isfinite(high)
        out[method] = {"error": float((estimate - truth)[use].mean()), "abs_error": float(np.abs(estimate - truth)[use].mean()),
                       "coverage": float(((low <= truth) & (truth <= high))[ok].mean()) if ok.any() else math.nan,
                       "width": float((high - low)[ok].mean()) if ok.any() else math.nan,
                       "true_gain": float(truth[use].mean()), "estimate": float(estimate[use].mean())}
    return out


# The regimes docs/selection.md measures the stage in (Scenario's fields changed from its defaults).
PRETRAINED = dict(truth_mean=0.68, truth_sd=0.02, bad_fraction=0.1, baseline_acc=0.655, epochs=3, seed_sd=0.017, confirm_seed_sd=0.0115)
REGIMES = {"from scratch (the model's defaults)": {}, "from scratch, the noise measured for the cross-validation runs": dict(confirm_seed_sd=0.036),
           "pretrained backbone, the noise measured in that regime": PRETRAINED}


def run_corrections(repeats: int = 10000, boot: int = 200, seed: int = 0, drawn=None) -> dict[str, dict]:
    """Every method scored in every regime, ``repeats`` simulated studies each (``bench.selection``'s study and stage;
    ``drawn``: a ``bench.selection.draw`` already made, reused for the regime whose scenario it is)."""
    from bench.selection import Scenario, draw

    out = {}
    for name, changes in REGIMES.items():
        known = drawn is not None and drawn[0] == Scenario(repeats=repeats, seed=seed, **changes)
        _, population, study, stage = drawn if known else draw(repeats=repeats, seed=seed, **changes)
        out[name] = score_corrections(stage.scores, stage.final, stage.c, stage.win_col, population.true, boot=boot, seed=seed)
    return out


def print_corrections(result: dict[str, dict], console) -> None:
    from rich.table import Table

    table = Table(title="the winner's gain over the book's recipe, corrected for the choice: mean error against the true gain, "
                        "95% interval's coverage and width", title_justify="left")
    table.add_column("method")
    for regime in result:
        table.add_column(regime, justify="right")
    for method in METHODS:
        cells = []
        for regime, scores in result.items():
            r = scores[method]
            cells.append(f"{r['error']:+.4f} / {r['coverage']:.3f} / {r['width']:.3f}")
        table.add_row(method + (" (the product's)" if method == CHOSEN else ""), *cells)
    console.print(table)
    ok = all(abs(s[CHOSEN]["error"]) <= abs(s["raw"]["error"]) / 4 and s[CHOSEN]["coverage"] >= 0.90 for s in result.values())
    console.print(f"goal (the correction's mean error at most a quarter of the raw one's, its interval holding the true gain in 90% "
                  f"of studies, in every regime): {'met' if ok else 'not met'}", markup=False)
