"""What a study found, computed from its folder alone (no Ray, no training): its tables and settings, how much
each hyperparameter matters (Optuna's importance on the stored study) and the range where the best trials lie.

``study.analyze`` prints it, ``study.report`` draws it.
"""

from __future__ import annotations

import json
import math
import shlex
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trainable import UserError

from study.values import FAILED, fmt, fmt_acc, plain
from study.folder import RERUN_FILE, StudyFolder, StudySettings, storage_url

MIN_COMPLETE = 5  # fewer COMPLETE trials than this: importances from all trials (pruned ones by their last value)
MIN_TRIALS = 3  # fewer usable trials than this: no importances at all


# --- reading a study ---------------------------------------------------------------------------------
@dataclass
class StudyData:
    folder: StudyFolder
    settings: StudySettings
    trials: pd.DataFrame  # ranked, as study.run wrote it
    epochs: pd.DataFrame
    params: list[str]  # the searched hyperparameters, in the space's order

    def is_log(self, param: str) -> bool:
        return bool(self.settings.space.get(param, {}).get("log", False))

    def is_categorical(self, param: str) -> bool:
        return self.settings.space.get(param, {}).get("type") == "categorical"

    def choices(self, param: str) -> list:
        return list(self.settings.space.get(param, {}).get("choices", []))

    def bounds(self, param: str) -> tuple[float, float] | None:
        spec = self.settings.space.get(param, {})
        return (float(spec["low"]), float(spec["high"])) if "low" in spec and "high" in spec else None

    @property
    def scored(self) -> pd.DataFrame:
        """Trials with a validation accuracy (errored trials and those diverged in epoch 1 have none)."""
        return self.trials[self.trials["best_val_acc"].notna()]

    @property
    def rerun(self) -> pd.DataFrame | None:
        path = self.folder.path / RERUN_FILE
        return pd.read_parquet(path) if path.is_file() else None

    @property
    def confirm(self) -> pd.DataFrame | None:
        path = self.folder.confirm
        return pd.read_parquet(path) if path.is_file() else None


@dataclass
class Confirmation:
    """The confirmation stage as far as it got: per candidate its folds, mean, sd and 95% interval; the decision once complete."""

    table: pd.DataFrame  # optuna_trial, folds, mean, sd, ci_low, ci_high, seconds_per_epoch, recommended (best mean first)
    folds: int  # the stage's folds per configuration
    lines: list[str]  # the decision (winner, vs the book's recipe, one-SE pick), or what is missing


def confirmation(data: StudyData) -> Confirmation | None:
    """The confirmation stage's runs summarised (``study.decision.decide`` on the finished ones)."""
    from study.decision import decide

    runs = data.confirm
    settings = data.settings.confirm or {}
    if runs is None or runs.empty:
        return None
    done = runs[runs["status"].isin(["completed", *FAILED])]
    if done.empty:
        return None
    frame = pd.DataFrame({"config": done["optuna_trial"].astype(int), "fold": done["fold"],
                          "val_acc": done["val_acc"].where(done["status"] == "completed"),
                          "seconds_per_epoch": done["seconds"] / done["epochs"].where(done["epochs"] > 0)})
    baseline = baseline_number(data)
    result = decide(frame, baseline if baseline in set(frame["config"]) else None)
    folds = int(settings.get("folds") or frame.groupby("config").size().max())
    table = result.table.rename(columns={"config": "optuna_trial"})
    recommended = dict(zip(data.trials["optuna_trial"], data.trials.get("recommended", pd.Series(dtype=str))))
    table["recommended"] = [plain(recommended.get(n)) or "" for n in table["optuna_trial"]]
    complete = len(done) == runs["optuna_trial"].nunique() * folds and (table["folds"] == folds).all()
    lines = result.lines() if complete else [f"confirmation stage unfinished: {len(done)} of {runs['optuna_trial'].nunique() * folds} "
                                              "run(s) in; python -m study.run --resume finishes it"]
    return Confirmation(table, folds, lines)


def winner_row(data: StudyData) -> tuple[pd.Series | None, str]:
    """The study's answer and what it is: the confirmed winner where the confirmation stage named one, else the
    single-validation best (rank 1); (None, "") when no trial has a validation accuracy."""
    if "recommended" in data.trials:
        named = data.trials[data.trials["recommended"].fillna("").str.contains("winner")]
        if len(named):
            return named.iloc[0], "confirmed winner"
    usable = data.scored[~data.scored["status"].isin(FAILED)]
    return (usable.iloc[0], "best (rank 1)") if len(usable) else (None, "")


@dataclass
class RerunResult:
    """One configuration's reruns on the test split (``rerun.parquet``)."""

    optuna_trial: int
    rank: int
    baseline: bool
    accs: dict[int, float]  # seed -> test accuracy (diverged seeds left out)
    epochs: int
    comparable_to_book: bool

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.accs.values()))) if self.accs else math.nan

    @property
    def sd(self) -> float:
        return float(np.std(list(self.accs.values()), ddof=1)) if len(self.accs) > 1 else math.nan

    def describe(self) -> str:
        spread = f" +- {self.sd:.3f}" if len(self.accs) > 1 else ""
        return f"{self.mean:.3f}{spread} over {len(self.accs)} seed(s)" if self.accs else "no test accuracy (every seed diverged)"


def reruns_on_test(data: StudyData) -> list[RerunResult]:
    """The reruns in ``rerun.parquet``, one per configuration, by rank."""
    rerun = data.rerun
    if rerun is None or rerun.empty:
        return []
    out = []
    for (rank, number), group in rerun.groupby(["rank", "optuna_trial"], sort=True):
        good = group[group["test_acc"].notna()]
        out.append(RerunResult(int(number), int(rank), bool(group["baseline"].any()), dict(zip(good["seed"].astype(int), good["test_acc"].astype(float))),
                           int(group["epochs"].max()), "comparable_to_book" in group and bool(group["comparable_to_book"].all())))
    return out


def versus_book_on_test(runs: list[RerunResult], number: int):
    """``number`` minus the book's recipe on the test split, paired over the seeds both ran (a ``Paired``), or None."""
    from study.decision import paired_by_seed

    mine = next((r for r in runs if r.optuna_trial == number), None)
    book = next((r for r in runs if r.baseline), None)
    if mine is None or book is None or mine is book:
        return None
    return paired_by_seed(mine.accs, book.accs)


def answer_lines(analysis: "Analysis") -> list[str]:
    """What the study found, first: the confirmed winner with its interval and its gain over the book's recipe,
    its test result after a rerun, then the single-validation best for what it is."""
    data = analysis.data
    row, what = winner_row(data)
    if row is None:
        return ["no trial has a validation accuracy: nothing to recommend (see the status of each trial)"]
    number = int(row["optuna_trial"])
    lines = []
    conf = analysis.confirmation
    if what == "confirmed winner" and conf is not None:
        lines += conf.lines[:2]
    else:
        lines.append(f"best: trial {number}, val acc {row['best_val_acc']:.3f} on the study's one validation split "
                     f"(no confirmation stage named a winner)")
    runs = reruns_on_test(data)
    mine = next((r for r in runs if r.optuna_trial == number), None)
    if mine is not None:
        book = next((r for r in runs if r.baseline), None)
        text = f"on the test split (study.rerun): trial {number} {mine.describe()}"
        if book is not None and book is not mine:
            text += f", the book's recipe {book.describe()}"
            versus = versus_book_on_test(runs, number)
            if versus is not None:
                text += f"; difference {versus.describe('seed')}"
        lines.append(text)
    else:
        lines.append(f"test split: not measured yet (python -m study.rerun {shlex.quote(str(data.folder.path))} retrains trial "
                     f"{number} and the book's recipe on the same seeds)")
    best = data.scored.head(1)
    if len(best) and what == "confirmed winner":
        b = best.iloc[0]
        lines.append(f"the study's rank 1 on its one validation split: trial {int(b['optuna_trial'])}, val acc {b['best_val_acc']:.3f} "
                     + ("(the same configuration)" if int(b["optuna_trial"]) == number else "(not the answer: one split of "
                        f"{data.settings.val_images or '?'} images is a noisy judge, which the confirmation stage corrects)"))
    return lines


def baseline_number(data: StudyData) -> int | None:
    """The book's recipe's trial number, where the study ran it."""
    baseline = data.trials.loc[data.trials["baseline"].fillna(False).astype(bool), "optuna_trial"]
    return int(baseline.iloc[0]) if len(baseline) else None


def baseline_acc(data: StudyData) -> float | None:
    """The book's recipe's best validation accuracy, when the study ran it and it scored."""
    baseline = data.trials[data.trials["baseline"].fillna(False).astype(bool)]
    value = baseline.iloc[0]["best_val_acc"] if len(baseline) else None
    return None if value is None or pd.isna(value) else float(value)


def read_study(folder: StudyFolder) -> StudyData:
    settings = folder.read_settings()
    if not folder.trials.is_file():
        raise UserError(f"study {settings.name!r} in {folder.path} has no trials yet (no trials.parquet): "
                        "wait until python -m study.run has started a trial, or resume it with --resume")
    try:
        trials = pd.read_parquet(folder.trials)
        epochs = pd.read_parquet(folder.epochs) if folder.epochs.is_file() else pd.DataFrame(
            columns=["trial_id", "epoch", "val_acc", "diverged"])
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the tables of {folder.path} ({str(exc).splitlines()[0]}): "
                        "they were not written by python -m study.run") from None
    if trials.empty:
        raise UserError(f"study {settings.name!r} in {folder.path} has no trials yet: wait until python -m study.run has started one")
    params = [p for p in settings.space if p in trials.columns]
    return StudyData(folder, settings, trials.reset_index(drop=True), epochs, params)


# --- importance and best ranges ----------------------------------------------------------------------
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
      them is often large by itself.) On this project's fake study with two real effects among five
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
        return study.get_trials(deepcopy=False)
    except Exception:  # a damaged or foreign database: fall back on the table
        return None


def compute_importance(data: StudyData, method: str = "ped-anova") -> Importance:
    """Optuna's importance on the stored study's COMPLETE trials; with too few of those, on all trials,
    pruned ones by their last reported validation accuracy (as TPE sees them)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    from study.space import to_distributions

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
        for _, row in data.scored[~data.scored["status"].isin(FAILED)].iterrows():
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
        return Importance(None, "not computable", f"all {len(points)} trials reached the same validation accuracy ({points[0][1]:.3f}): "
                                        "nothing tells the hyperparameters apart (more data, epochs or validation images would)")

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
class BestRange:
    param: str
    n_top: int
    n_scored: int
    low: float | None = None
    high: float | None = None
    counts: dict = field(default_factory=dict)  # categorical: value -> how many top trials


def top_count(n: int) -> int:
    """How many trials count as "the best": the top quarter, at least 3 (all of them when fewer)."""
    return min(n, max(3, math.ceil(n / 4)))


def best_ranges(data: StudyData) -> dict[str, BestRange]:
    scored = data.scored
    top = scored.head(top_count(len(scored)))
    out = {}
    for p in data.params:
        r = BestRange(p, len(top), len(scored))
        values = top[p].dropna()
        if data.is_categorical(p) or values.dtype == object or pd.api.types.is_string_dtype(values):
            r.counts = {str(k): int(v) for k, v in values.astype(str).value_counts().items()}
        elif len(values):
            r.low, r.high = float(values.min()), float(values.max())
        out[p] = r
    return out


# The furthest a searched bound may be widened: the hyperparameter's own domain (a bound already there says nothing).
WIDEST = {"lr": (0.0, None), "head_lr_mult": (0.0, None), "weight_decay": (0.0, None), "momentum": (0.0, 0.99),
          "freeze_depth": (0, 5), "batch_size": (2, None)}
POSITIVE = ("lr", "head_lr_mult")  # never 0 itself
EDGE = 0.1  # the outer tenth of a range (in log space for a log range) counts as its edge


def range_warnings(data: StudyData) -> list[str]:
    """One line per searched bound that the best trials crowd: the best may lie outside what was searched.

    A bound is crowded when at least half of the top trials (``top_count``, 3 or more), and at least two, lie in
    the outer tenth of the range at that end (for an integer range of up to ten values: at the bound itself); a
    uniform draw puts a tenth there. A bound where the hyperparameter's own domain ends (freeze depth 0 or 5, momentum 0) cannot be
    widened and says nothing.
    """
    usable = data.scored[~data.scored["status"].isin(FAILED)]
    top = usable.head(top_count(len(usable)))
    if len(top) < 3:
        return []
    lines = []
    for p in data.params:
        spec = data.settings.space.get(p, {})
        bounds = data.bounds(p)
        if spec.get("type") not in ("float", "int") or bounds is None or bounds[1] <= bounds[0]:
            continue
        low, high = bounds
        values = pd.to_numeric(top[p], errors="coerce").dropna().to_numpy(dtype=float)
        log = bool(spec.get("log")) and low > 0
        if spec["type"] == "int" and high - low <= 10:
            at = {"low": values <= low, "high": values >= high}
        else:
            u = ((np.log(values) - math.log(low)) / (math.log(high) - math.log(low)) if log else (values - low) / (high - low))
            at = {"low": u <= EDGE, "high": u >= 1 - EDGE}
        for end, inside in at.items():
            count = int(inside.sum())
            bound = low if end == "low" else high
            limit = WIDEST.get(p, (None, None))[0 if end == "low" else 1]
            if count < max(2, math.ceil(len(top) / 2)) or (limit is not None and bound == limit):
                continue
            near = values[inside]
            lines.append(f"{p}: {count} of the top {len(top)} trials lie at the {end} end of its range "
                         f"({fmt(float(near.min()))} to {fmt(float(near.max()))}; the range ends at {fmt(bound)}): the best may lie "
                         f"beyond it; widen it with --space, e.g. {json.dumps({p: widened(p, spec, end)})} "
                         "(python -m study.run --show-space prints the whole space)")
    return lines


def widened(p: str, spec: dict, end: str) -> dict:
    """``spec`` with its ``end`` bound moved out: a decade for a log range, half the range otherwise, within WIDEST."""
    low, high = float(spec["low"]), float(spec["high"])
    limit = WIDEST.get(p, (None, None))[0 if end == "low" else 1]
    if spec.get("log") and low > 0:
        new = high * 10 if end == "high" else low / 10
    else:
        step = max((high - low) / 2, 1 if spec["type"] == "int" else 0)
        new = high + step if end == "high" else low - step
    if limit is not None:
        new = min(new, limit) if end == "high" else max(new, limit)
    if p in POSITIVE and new <= 0:
        new = low / 10
    if spec["type"] == "int":
        new = int(math.ceil(new) if end == "high" else math.floor(new))
    return {**spec, end: new}


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
    usable = data.scored[~data.scored["status"].isin(FAILED)].reset_index(drop=True)
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


def describe_range(r: BestRange) -> str:
    if r.counts:
        return ", ".join(f"{k} ({v})" for k, v in r.counts.items())
    if r.low is None:
        return "-"
    return fmt(r.low) if r.low == r.high else f"{fmt(r.low)} - {fmt(r.high)}"


def describe_space(data: StudyData, p: str) -> str:
    spec = data.settings.space.get(p, {})
    if spec.get("type") == "categorical":
        return ", ".join(str(c) for c in spec.get("choices", []))
    bounds = data.bounds(p)
    if bounds is None:
        return "-"
    return f"{fmt(bounds[0])} - {fmt(bounds[1])}" + (" (log)" if spec.get("log") else "")


# --- tables ------------------------------------------------------------------------------------------
TABLE_TAIL = ["best_val_acc", "best_epoch", "epochs_run", "status"]


def top_table_rows(data: StudyData, n: int) -> tuple[list[str], list[list[str]]]:
    columns = ["rank", *data.params, *TABLE_TAIL]
    rows = []
    for _, row in data.trials.head(n).iterrows():
        cells = []
        for c in columns:
            if c == "rank":
                cells.append(f"{int(row['rank'])}" + (" *" if bool(plain(row.get("baseline")) or False) else ""))
            elif c == "best_val_acc":
                cells.append(fmt_acc(row[c]))
            else:
                cells.append(fmt(row[c]))
        rows.append(cells)
    return columns, rows


# --- the command -------------------------------------------------------------------------------------
@dataclass
class Analysis:
    data: StudyData
    importance: Importance
    ranges: dict[str, BestRange]
    confirmation: Confirmation | None = None
    checks: dict[str, TopCheck] = field(default_factory=dict)  # the top trials against the rest, per hyperparameter
    disagreements: list[str] = field(default_factory=list)  # where the importance and the checks disagree
    range_warnings: list[str] = field(default_factory=list)  # bounds the best trials crowd


def analyze(folder: StudyFolder, importance: str = "ped-anova") -> Analysis:
    data = read_study(folder)
    imp, checks = compute_importance(data, importance), top_vs_rest(data)
    return Analysis(data, imp, best_ranges(data), confirmation(data), checks, importance_disagreements(imp, checks),
                    range_warnings(data))


CONFIRM_COLUMNS = ["trial", "folds", "mean val acc", "sd", "95% CI", "s/epoch", "recommended"]


def confirmation_rows(conf: Confirmation, baseline: int | None) -> list[list[str]]:
    rows = []
    for _, r in conf.table.iterrows():
        ci = f"{r['ci_low']:.3f} - {r['ci_high']:.3f}" if r["folds"] > 1 else "-"
        tag = " *" if baseline is not None and int(r["optuna_trial"]) == baseline else ""
        rows.append([f"{int(r['optuna_trial'])}{tag}", str(int(r["folds"])), fmt_acc(r["mean"]), fmt(r["sd"]), ci,
                     fmt(r["seconds_per_epoch"]), r["recommended"]])
    return rows


