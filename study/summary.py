"""The end-of-study summary: top trials, the best configuration against the book's baseline, throughput."""

from __future__ import annotations

import math
import shlex
import sys

import pandas as pd
from rich.console import Console
from rich.table import Table

from study.folder import StudyFolder, StudySettings
from study.values import FAILED, HYPERPARAMETERS, fmt, isnan, plain


def noise_note(best_acc: float | None, baseline_acc: float | None, val_images: int | None, confirmed: bool = False) -> str:
    """How far a validation accuracy on ``val_images`` images can move by chance, and whether the lead is inside it.

    The binomial standard error with Agresti and Coull's two successes and two failures added (sqrt(q(1-q)/(n+4)),
    q = (pn+2)/(n+4)): the plain sqrt(p(1-p)/n) says +-0 for an accuracy of 1.0 on a handful of images, where
    nothing is certain. A lead over the baseline under two standard errors of a difference (2 * sqrt(2) * se) is
    within what a different split or seed could give.
    """
    if best_acc is None or not val_images:
        return ""
    q = (best_acc * val_images + 2) / (val_images + 4)
    se = math.sqrt(q * (1 - q) / (val_images + 4))
    text = f"a validation accuracy on {val_images} images is uncertain by about +-{se:.3f} (1 standard error)"
    if baseline_acc is not None and best_acc - baseline_acc < 2 * math.sqrt(2) * se:
        text += (f"; the lead over the book's recipe ({best_acc - baseline_acc:+.3f}) is within chance" +
                 (": the confirmation stage above judges them on every training image" if confirmed else
                  ": compare them on the test split with python -m study.rerun --seeds 3"))
    return text


def summarize(trials: pd.DataFrame, epochs: pd.DataFrame, wall_s: float, train_images: int | None) -> dict:
    params = [c for c in trials.columns if c in HYPERPARAMETERS]
    usable = trials[trials["best_val_acc"].notna() & ~trials["status"].isin(FAILED)]
    best = usable.iloc[0] if len(usable) else None
    baseline = trials[trials["baseline"].fillna(False).astype(bool)]
    counts = trials["status"].value_counts().to_dict()
    trained_epochs = int((~epochs["diverged"].astype(bool)).sum()) if len(epochs) else 0
    return {
        "wall_s": round(wall_s, 1),
        "trials": int(len(trials)),
        "status_counts": {str(k): int(v) for k, v in counts.items()},
        "epochs_trained": trained_epochs,
        "aggregate_train_images_per_s": round(trained_epochs * train_images / wall_s, 2) if wall_s > 0 and train_images else None,
        "best": None if best is None else {
            "optuna_trial": int(best["optuna_trial"]), "trial_id": best["trial_id"], "best_val_acc": _num(best["best_val_acc"]),
            "params": {p: plain(best[p]) for p in params},
        },
        "baseline_val_acc": _num(baseline.iloc[0]["best_val_acc"]) if len(baseline) else None,
    }


def print_summary(folder: StudyFolder, settings: StudySettings, tables, fit_s: float, confirmation: list[str] | None = None) -> dict:
    if not tables.trials:
        print("no trial ran")
        return {}
    trials, epochs = tables.frames()
    train_images = round((settings.val_images or 0) * (1 - settings.base["val_fraction"]) / settings.base["val_fraction"]) or None
    summary = summarize(trials, epochs, fit_s, train_images)
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    answer = (confirmation or [])[:2]  # the confirmed winner and its gain over the book's recipe lead
    for line in answer:
        console.print(f"answer: {line}" if line.startswith("winner") else line, markup=False)
    table = Table(title=f"study {settings.name}: top trials", title_justify="left")
    params = list(settings.space)
    columns = ["rank", "optuna_trial", *params, "best_val_acc", "best_epoch", "epochs_run", "status"]
    for col in columns:
        table.add_column("trial" if col == "optuna_trial" else col, justify="left" if col in ("augment", "status") else "right")
    for _, row in trials.head(5).iterrows():
        table.add_row(*[_text(row[c]) + (" *" if c == "rank" and row["baseline"] else "") for c in columns])
    console.print(table)
    counts = ", ".join(f"{v} {k}" for k, v in summary["status_counts"].items())
    rate = summary["aggregate_train_images_per_s"]
    runs = f" over {len(settings.runs)} runs" if len(settings.runs) > 1 else ""
    console.print(f"{summary['trials']} trials ({counts}) in {fit_s:.0f}s of training{runs}" + (f"; {rate} training images/s overall" if rate else ""), markup=False)
    from study.timing import time_use

    if (use := time_use(trials, epochs, settings.runs)) is not None:
        console.print(use.line(), markup=False)
        summary["time_use"] = use.as_dict()
    best, base = summary["best"], summary["baseline_val_acc"]
    if settings.baseline is None:
        console.print("no baseline: the book's recipe lies outside the search space, so nothing here compares with it", markup=False)
    if best:
        if base is not None:
            versus = f" vs the book's recipe (baseline, marked *) {base:.3f}"
        else:
            versus = "" if settings.baseline is None else " (the baseline has no validation accuracy)"
        label = "single validation: rank 1" if answer else "best"
        console.print(f"{label}: trial {best['optuna_trial']}, val acc {best['best_val_acc']:.3f}{versus} with {best['params']}", markup=False)
        if note := noise_note(best["best_val_acc"], base, settings.val_images, bool(answer)):
            console.print(f"note: {note}", markup=False)
    elif summary["status_counts"].get("running"):  # stopped (Ctrl-C, SIGTERM, a full disk) before any trial had a result
        console.print(f"no trial has a validation accuracy yet: the study stopped while {summary['status_counts']['running']} "
                      "trial(s) ran; none failed", markup=False)
    else:
        console.print("no usable trial: every trial diverged or failed (see the lines above); "
                      "for divergence lower the learning-rate range (--space)", markup=False)
    for line in (confirmation or [])[len(answer):]:
        console.print(line, markup=False)
    from study.ranges import range_warnings
    from study.study_data import StudyData

    warnings = range_warnings(StudyData(folder, settings, trials, epochs, [p for p in params if p in trials.columns]))
    for line in warnings:
        console.print(f"warning: {line}", markup=False)
    summary["range_warnings"] = warnings
    where = shlex.quote(str(folder.path))
    console.print(f"results: {folder.trials}\nnext: python -m study.analyze {where}   then: python -m study.rerun {where}", markup=False)
    return summary


def _num(value) -> float | None:
    return None if isnan(value) else float(value)


def _text(value) -> str:
    if isnan(value) if not isinstance(value, str) else False:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return fmt(value)
