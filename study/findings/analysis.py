"""What a study found, computed from its folder alone (no Ray, no training): the answer (the confirmed winner,
its gain over the book's recipe, its test result), the confirmation stage's table, the top trials, and, from
``study.importance`` and ``study.ranges``, which hyperparameters mattered and where the best trials lie.

``study.analyze`` prints it, ``study.report`` draws it.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from study.core.decision import binomial_se, decide, decision_rows, paired_by_seed
from study.core.folder import StudyFolder
from study.core.values import fmt, fmt_acc, plain
from study.core.vocabulary import RUN_ENDED
from study.findings.importance import Importance, TopCheck, compute_importance, importance_disagreements, top_vs_rest
from study.findings.ranges import BestRange, best_ranges, range_warnings
from study.findings.reading import StudyData, baseline_number, read_study


# --- reading a study ---------------------------------------------------------------------------------


@dataclass
class Confirmation:
    """The confirmation stage as far as it got: per candidate its folds, mean, sd and 95% interval; the decision once complete."""

    table: pd.DataFrame  # optuna_trial, folds, mean, sd, ci_low, ci_high, seconds_per_epoch, seconds_per_run, front,
    #                      within_noise, recommended (best mean first)
    folds: int  # the stage's folds per configuration
    lines: list[str]  # the decision (winner, vs the book's recipe, one-SE pick), or what is missing
    cheapest: str = ""  # the cheapest configuration within noise of the winner, in a line ("" until the stage is complete)


def confirmation(data: StudyData) -> Confirmation | None:
    """The confirmation stage's runs summarised (``study.core.decision.decide`` on the finished ones)."""
    runs = data.confirm
    settings = data.settings.confirm or {}
    if runs is None or runs.empty:
        return None
    done = runs[runs["status"].isin(RUN_ENDED)]
    if done.empty:
        return None
    frame = decision_rows(done)
    baseline = baseline_number(data)
    result = decide(frame, baseline if baseline in set(frame["config"]) else None, data.settings.training_images())
    folds = int(settings.get("folds") or frame.groupby("config").size().max())
    table = result.table.rename(columns={"config": "optuna_trial"})
    per_run = done.groupby("optuna_trial")["seconds"].mean().to_dict()  # a run's training and its validation: the cost
    table["seconds_per_run"] = [per_run.get(n, math.nan) for n in table["optuna_trial"]]
    table["front"] = table["optuna_trial"].isin(result.front)
    table["within_noise"] = [result.within_noise(n) for n in table["optuna_trial"]]
    recommended = dict(zip(data.trials["optuna_trial"], data.trials.get("recommended", pd.Series(dtype=str))))
    table["recommended"] = [plain(recommended.get(n)) or "" for n in table["optuna_trial"]]
    complete = len(done) == runs["optuna_trial"].nunique() * folds and (table["folds"] == folds).all()
    lines = result.lines() if complete else [f"confirmation stage unfinished: {len(done)} of {runs['optuna_trial'].nunique() * folds} "
                                              "run(s) in; python -m study.run --resume finishes it"]
    cheapest = result.cheapest_line(per_run, "s of training a run") if complete else ""
    return Confirmation(table, folds, lines, cheapest)


def noise_note(best_acc: float | None, baseline_acc: float | None, val_images: int | None, confirmed: bool = False) -> str:
    """How far a validation accuracy on ``val_images`` images can move by chance, and whether the lead is inside it.

    The binomial standard error with Agresti and Coull's correction (``study.core.decision.binomial_se``: never +-0, even
    for an accuracy of 1.0 on a handful of images). A lead over the baseline under two standard errors of a difference
    (2 * sqrt(2) * se) is within what a different split or seed could give. ``confirmed``: the confirmation stage
    judged them (its decision is printed).
    """
    if best_acc is None or not val_images:
        return ""
    se = binomial_se(best_acc, val_images)
    text = f"a validation accuracy on {val_images} images is uncertain by about +-{se:.3f} (1 standard error)"
    if baseline_acc is not None and best_acc - baseline_acc < 2 * math.sqrt(2) * se:
        text += (f"; the lead over the book's recipe ({best_acc - baseline_acc:+.3f}) is within chance" +
                 (": the confirmation stage above judges them on every training image" if confirmed else
                  ": compare them on the test split with python -m study.rerun --seeds 3"))
    return text


@dataclass
class RerunResult:
    """One configuration's reruns on the test split (``rerun.parquet``)."""

    optuna_trial: int
    rank: int
    baseline: bool
    accs: dict[int, float]  # seed -> test accuracy (diverged seeds left out)
    epochs: int
    comparable_to_book: bool
    test_images: int | None = None  # the test split's images (None: a rerun.parquet from before it was kept)

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
        images = int(group["test_images"].max()) if "test_images" in group and group["test_images"].notna().any() else None
        out.append(RerunResult(int(number), int(rank), bool(group["baseline"].any()), dict(zip(good["seed"].astype(int), good["test_acc"].astype(float))),
                               int(group["epochs"].max()), "comparable_to_book" in group and bool(group["comparable_to_book"].all()), images))
    return out


def versus_book_on_test(runs: list[RerunResult], number: int):
    """``number`` minus the book's recipe on the test split, paired over the seeds both ran (a ``Paired``), or None."""
    mine = next((r for r in runs if r.optuna_trial == number), None)
    book = next((r for r in runs if r.baseline), None)
    if mine is None or book is None or mine is book:
        return None
    return paired_by_seed(mine.accs, book.accs, mine.test_images or book.test_images)


@dataclass
class Answer:
    """What a study found, part by part: each part a line, or None where the study has none."""

    winner: str  # the confirmed winner with its interval, or the single-validation best and why it is that
    gain: str | None = None  # the confirmed winner against the book's recipe
    cheapest: str | None = None  # the cheapest configuration within noise of the winner
    test: str | None = None  # on the test split after study.rerun, or the command that measures it
    single_validation: str | None = None  # the study's rank 1 on its one validation split, beside a confirmed winner

    def lines(self) -> list[str]:
        return [line for line in (self.winner, self.gain, self.cheapest, self.test, self.single_validation) if line]

    def headline(self) -> list[str]:
        """The winner, its gain and its test result: what a comparison of studies shows of each."""
        return [line for line in (self.winner, self.gain, self.test) if line]


def answer(analysis: "Analysis") -> Answer:
    """What the study found, first: the confirmed winner with its interval and its gain over the book's recipe,
    its test result after a rerun, then the single-validation best for what it is."""
    data = analysis.data
    row, what = data.winner()
    if row is None:
        return Answer("no trial has a validation accuracy: nothing to recommend (see the status of each trial)")
    number = int(row["optuna_trial"])
    conf = analysis.confirmation
    if what == "confirmed winner" and conf is not None:
        found = Answer(conf.lines[0], conf.lines[1] if len(conf.lines) > 1 else None, conf.cheapest or None)
    else:
        why = ("no confirmation stage" if not data.settings.confirm else
               "the confirmation stage has not named a winner yet" if data.state() else "the confirmation stage named no winner")
        found = Answer(f"best: trial {number}, val acc {row['best_val_acc']:.3f} on the study's one validation split ({why})")
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
        found.test = text
    else:
        found.test = (f"test split: not measured yet (python -m study.rerun {shlex.quote(str(data.folder.path))} retrains trial "
                      f"{number} and the book's recipe on the same seeds)")
    best = data.scored.head(1)
    if len(best) and what == "confirmed winner":
        b = best.iloc[0]
        found.single_validation = (
            f"the study's rank 1 on its one validation split: trial {int(b['optuna_trial'])}, val acc {b['best_val_acc']:.3f} "
            + ("(the same configuration)" if int(b["optuna_trial"]) == number else "(not the answer: one split of "
               f"{data.settings.val_images or '?'} images is a noisy judge, which the confirmation stage corrects)"))
    return found


def answer_lines(analysis: "Analysis") -> list[str]:
    return answer(analysis).lines()


def describe_warm_start(settings) -> list[str]:
    """What a study began from (``--warm-start``), in a line: nothing for a study that began on its own."""
    warm = settings.warm_start or {}
    if not warm:
        return []
    firsts = ", ".join(f"trial {f['source_trial']}" for f in warm.get("first", [])) or "none"
    if warm.get("kind") == "observations":
        carried = f"{warm.get('observations', 0)} of its trials as observations for the searcher"
        carried += f" ({len(warm.get('left_out', []))} outside this study's space left out)" if warm.get("left_out") else ""
    else:
        carried = f"a transfer start ({'; '.join(warm.get('differences', []))}): no observation"
    return [f"began from study {warm.get('name')!r} ({warm.get('source')}): {carried}; its {firsts} ran first after the book's recipe"]


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


CONFIRM_COLUMNS = ["trial", "folds", "mean val acc", "sd", "95% CI", "s a run", "vs the winner", "front", "recommended"]


def confirmation_rows(conf: Confirmation, baseline: int | None) -> list[list[str]]:
    rows = []
    for _, r in conf.table.iterrows():
        ci = f"{r['ci_low']:.3f} - {r['ci_high']:.3f}" if r["folds"] > 1 else "-"
        tag = " *" if baseline is not None and int(r["optuna_trial"]) == baseline else ""
        winner = int(r["optuna_trial"]) == int(conf.table["optuna_trial"].iloc[0])  # best mean first
        versus = "the winner" if winner else "within noise" if r["within_noise"] else "worse"
        rows.append([f"{int(r['optuna_trial'])}{tag}", str(int(r["folds"])), fmt_acc(r["mean"]), fmt(r["sd"]), ci,
                     fmt(r["seconds_per_run"], ".3g"), versus, "yes" if r["front"] else "", r["recommended"]])
    return rows


