"""The summary stage: what a driver run ends with. The confirmed winner and its gain lead, then the top trials, the
best configuration against the book's recipe, throughput, where the time went, the range warnings and what to run
next; its record (``summary`` in ``study.json``, the confirmation stage's decision in it) is written here alone."""

from __future__ import annotations

import shlex
import sys

import pandas as pd
from rich.console import Console
from rich.table import Table

from study.core.folder import StudyFolder
from study.core.settings import StudySettings
from study.core.values import fmt, isnan, plain
from study.core.vocabulary import HYPERPARAMETERS, RUNNING, usable_rows
from study.findings.analysis import noise_note


def summarize(trials: pd.DataFrame, epochs: pd.DataFrame, wall_s: float, train_images: int | None) -> dict:
    params = [c for c in trials.columns if c in HYPERPARAMETERS]
    usable = trials[usable_rows(trials)]
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


def print_summary(folder: StudyFolder, settings: StudySettings, tables, fit_s: float, confirmation: list[str] | None = None,
                  confirmed: bool = False) -> dict:
    """Print the summary; returns its record. ``confirmation``: the confirmation stage's lines, ``confirmed``: whether
    they hold its decision (every run in), not just what is missing."""
    if not tables.trials:
        print("no trial ran")
        return {}
    trials, epochs = tables.frames()
    train_images = round((settings.val_images or 0) * (1 - settings.base["val_fraction"]) / settings.base["val_fraction"]) or None
    summary = summarize(trials, epochs, fit_s, train_images)
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    answer = (confirmation or [])[:2] if confirmed else []  # the confirmed winner and its gain over the book's recipe lead
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
    from study.core.timing import time_use

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
        if note := noise_note(best["best_val_acc"], base, settings.val_images, confirmed):
            console.print(f"note: {note}", markup=False)
    elif summary["status_counts"].get(RUNNING):  # stopped (Ctrl-C, SIGTERM, a full disk) before any trial had a result
        console.print(f"no trial has a validation accuracy yet: the study stopped while {summary['status_counts']['running']} "
                      "trial(s) ran; none failed", markup=False)
    else:
        console.print("no usable trial: every trial diverged or failed (see the lines above); "
                      "for divergence lower the learning-rate range (--space)", markup=False)
    for line in (confirmation or [])[len(answer):]:
        console.print(line, markup=False)
    from study.findings.ranges import range_warnings
    from study.findings.reading import StudyData

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


def summarise(folder: StudyFolder, settings: StudySettings, tables, fit_s: float, confirmed=None, budget_reached: bool = False) -> None:
    """Print the summary and record it in ``settings.summary``, with the confirmation stage's decision where this driver
    run's stage reached one (``confirmed``: a ``study.stages.confirmation.Confirmed``; None where no stage ran: an
    earlier run's decision stands)."""
    complete = bool(confirmed and confirmed.complete)
    record = print_summary(folder, settings, tables, fit_s, confirmed.lines if confirmed else None, complete)
    decision = settings.summary.get("confirmation") if confirmed is None else confirmed.record
    settings.summary = {**record, **({"confirmation": decision} if decision else {}),
                        **({"time_budget_reached": True} if budget_reached else {})}
