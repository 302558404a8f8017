"""``python -m study.analyze [results/<study>]``: what a finished (or running) study found.

Prints the answer first (the confirmed winner, its gain over the book's recipe, its test result after a
rerun), a warning where the best trials crowd a bound of the searched space, the top trials, how much each
hyperparameter matters (Optuna's PED-ANOVA importance on the stored study, checked against the top trials
against the rest) and the range where the best trials lie; writes ``report.html`` into the study folder (one
self-contained file: plotly.js inline, opens from disk with no network) and the same figures as PNG files
under ``figures/``. Reads only the study folder: no Ray, no training.
"""

from __future__ import annotations

import argparse
import sys

from trainable import UserError
from trainable.cli import run_main

from study.core.datacheck import describe_accepted
from study.core.folder import find_study
from study.findings.analysis import (CONFIRM_COLUMNS, Analysis, analyze, answer_lines, confirmation_rows, describe_warm_start,
                                     noise_note, top_table_rows)
from study.findings.importance import describe_check
from study.findings.ranges import describe_range, describe_space
from study.findings.reading import baseline_acc, baseline_number


def print_analysis(analysis: Analysis, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    data, imp = analysis.data, analysis.importance
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    s = data.settings
    counts = ", ".join(f"{v} {k}" for k, v in data.trials["status"].value_counts().items())
    base = s.base
    console.print(f"study {s.name}: {len(data.trials)} trial(s) ({counts}); {base.get('epochs')} epoch(s) at "
                  f"{base.get('image_size')}px, weights {base.get('weights')}, data {base.get('data_dir') or 'the book hotdog set'}",
                  markup=False)

    if state := data.state():  # running, or stopped unfinished: said before anything that is not final
        console.print(f"note: {state}", markup=False)
    for line in answer_lines(analysis):  # the answer first: the confirmed winner, its gain, its test result
        console.print(line, markup=False)
    for line in describe_warm_start(s):
        console.print(line, markup=False)
    for line in describe_accepted(s):
        console.print(f"warning: {line}", markup=False)
    for line in analysis.range_warnings:
        console.print(f"warning: {line}", markup=False)

    columns, rows = top_table_rows(data, top)
    table = Table(title=f"top {len(rows)} trial(s) (* = the book's recipe)", title_justify="left")
    for c in columns:
        table.add_column(c, justify="left" if c in ("status",) or data.is_categorical(c) else "right")
    for cells in rows:
        table.add_row(*cells)
    console.print(table)

    first = next(iter(analysis.ranges.values()), None)
    where = f"top {first.n_top} of {first.n_scored}" if first else "top trials"
    table = Table(title=f"how much each hyperparameter matters: {imp.method}", title_justify="left")
    for c, justify in (("hyperparameter", "left"), ("importance (90% interval)", "left"), (f"{where} lie in", "left"),
                       ("top vs the rest (p)", "left"), ("searched", "left")):
        table.add_column(c, justify=justify)
    order = list(imp.values) if imp.values else data.params
    for p in order:
        share = imp.values.get(p) if imp.values else None
        bar = "-" if share is None else f"{imp.describe(p):17s} " + "#" * round(share * 20)
        table.add_row(p, bar, describe_range(analysis.ranges[p]), describe_check(analysis.checks.get(p)), describe_space(data, p))
    console.print(table)
    if imp.note:
        console.print(f"note: {imp.note}", markup=False)
    for line in analysis.disagreements:
        console.print(f"note: {line}", markup=False)
    if analysis.confirmation is not None:
        conf = analysis.confirmation
        base = baseline_number(data)
        table = Table(title=f"confirmation stage: {len(conf.table)} configuration(s), {conf.folds}-fold cross-validation (* = the book's recipe)",
                      title_justify="left")
        for c in CONFIRM_COLUMNS:
            table.add_column(c, justify="left" if c == "recommended" else "right")
        for cells in confirmation_rows(conf, base):
            table.add_row(*cells)
        console.print(table)
        for line in conf.lines:
            console.print(line, markup=False)
    from study.core.timing import time_use

    if (use := time_use(data.trials, data.epochs, s.runs)) is not None:
        console.print(use.line(), markup=False)
    best = data.scored.head(1)
    if len(best):
        b, baseline = best.iloc[0], baseline_acc(data)
        versus = f" (the book's recipe: {baseline:.3f})" if baseline is not None else ""
        console.print(f"single validation: rank 1, val acc {b['best_val_acc']:.3f}{versus}", markup=False)
        if note := noise_note(float(b["best_val_acc"]), baseline, data.settings.val_images, analysis.confirmation is not None):
            console.print(f"note: {note}", markup=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", help="the study folder (default: the newest study under --results-dir)")
    parser.add_argument("--results-dir", default="results", help="where to look for the newest study (default: %(default)s)")
    parser.add_argument("--top", type=int, default=10, help="trials in the table (default: %(default)s)")
    parser.add_argument("--curves", type=int, default=5, help="top trials whose learning curves are drawn (default: %(default)s)")
    parser.add_argument("--importance", choices=["ped-anova", "fanova"], default="ped-anova",
                        help="Optuna importance evaluator; fanova needs scikit-learn (default: %(default)s)")
    parser.add_argument("--no-report", action="store_true", help="print only; write no report.html or figures")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        raise UserError(f"--top {args.top} must be 1 or more")
    if args.curves < 1:
        raise UserError(f"--curves {args.curves} must be 1 or more")
    if args.importance == "fanova":
        try:
            import sklearn  # noqa: F401  (Optuna's fANOVA evaluator needs it)
        except ImportError:
            raise UserError("--importance fanova needs scikit-learn: pip install scikit-learn, or use --importance ped-anova") from None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = find_study(args.study, args.results_dir)
    analysis = analyze(folder, args.importance)
    print_analysis(analysis, args.top)
    if not args.no_report:
        from study.findings.report import write_report

        html, pngs = write_report(analysis, curves=args.curves, top=args.top)
        print(f"report: {html}")
        print(f"figures: {', '.join(str(p) for p in pngs)}")
    return 0


if __name__ == "__main__":
    from study.analyze import main as _main  # the importable module, not __main__

    run_main(_main)
