"""The end-of-study summary: top trials, the best configuration against the book's baseline, throughput."""

from __future__ import annotations

import math
import sys

import pandas as pd
from rich.console import Console
from rich.table import Table

from .layout import StudyFolder, StudySettings


def noise_note(best_acc: float | None, baseline_acc: float | None, val_images: int | None) -> str:
    """How far a validation accuracy on ``val_images`` images can move by chance, and whether the lead is inside it.

    The binomial standard error sqrt(p(1-p)/n); a lead over the baseline under two standard errors of a
    difference (2 * sqrt(2) * se) is within what a different split or seed could give.
    """
    if best_acc is None or not val_images:
        return ""
    se = math.sqrt(max(best_acc * (1 - best_acc), 0.0) / val_images)
    text = f"a validation accuracy on {val_images} images is uncertain by about +-{se:.3f} (1 standard error)"
    if baseline_acc is not None and best_acc - baseline_acc < 2 * math.sqrt(2) * se:
        text += (f"; the lead over the book's recipe ({best_acc - baseline_acc:+.3f}) is within chance: "
                 "compare them on the test split with python -m study.rerun --seeds 3")
    return text


def summarize(trials: pd.DataFrame, epochs: pd.DataFrame, wall_s: float, train_images: int) -> dict:
    params = [c for c in trials.columns if c in ("lr", "head_lr_mult", "weight_decay", "momentum", "freeze_depth", "augment", "batch_size")]
    best = trials.iloc[0] if len(trials) else None
    baseline = trials[trials["baseline"] == True]  # noqa: E712 (nullable column)
    counts = trials["status"].value_counts().to_dict()
    trained_epochs = int((~epochs["diverged"].astype(bool)).sum()) if len(epochs) else 0
    return {
        "wall_s": round(wall_s, 1),
        "trials": int(len(trials)),
        "status_counts": {str(k): int(v) for k, v in counts.items()},
        "epochs_trained": trained_epochs,
        "aggregate_train_images_per_s": round(trained_epochs * train_images / wall_s, 2) if wall_s > 0 else None,
        "best": None if best is None else {
            "trial_id": best["trial_id"], "best_val_acc": _num(best["best_val_acc"]),
            "params": {p: _plain(best[p]) for p in params},
        },
        "baseline_val_acc": _num(baseline.iloc[0]["best_val_acc"]) if len(baseline) else None,
    }


def print_summary(folder: StudyFolder, settings: StudySettings, wall_s: float, train_images: int) -> dict:
    if not folder.trials.exists():
        print("no trial finished")
        return {}
    trials, epochs = pd.read_parquet(folder.trials), pd.read_parquet(folder.epochs)
    summary = summarize(trials, epochs, wall_s, train_images)
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"study {settings.name}: top trials", title_justify="left")
    params = list(settings.space)
    for col in ["rank", *params, "best_val_acc", "best_epoch", "epochs_run", "status"]:
        table.add_column(col, justify="right" if col != "augment" and col != "status" else "left")
    for _, row in trials.head(5).iterrows():
        table.add_row(*[_text(row[c]) + (" *" if c == "rank" and row["baseline"] else "") for c in ["rank", *params, "best_val_acc", "best_epoch", "epochs_run", "status"]])
    console.print(table)
    counts = ", ".join(f"{v} {k}" for k, v in summary["status_counts"].items())
    best = summary["best"]
    console.print(f"{summary['trials']} trials ({counts}) in {wall_s:.0f}s; {summary['aggregate_train_images_per_s']} training images/s overall", markup=False)
    if best and best["best_val_acc"] is not None:
        base = summary["baseline_val_acc"]
        versus = f" vs the book's recipe (baseline, marked *) {base:.3f}" if base is not None else ""
        console.print(f"best: val acc {best['best_val_acc']:.3f}{versus} with {best['params']}", markup=False)
        if note := noise_note(best["best_val_acc"], base, settings.val_images):
            console.print(f"note: {note}", markup=False)
    elif best:
        console.print("no trial reached a validation accuracy (all diverged or failed): lower the learning-rate range (--space)", markup=False)
    console.print(f"results: {folder.trials}\nnext: python -m study.analyze {folder.path}   then: python -m study.rerun {folder.path}", markup=False)
    return summary


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value) else float(value)


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    return value


def _text(value) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
