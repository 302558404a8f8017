"""``python -m study.compare A B [C ...]``: studies side by side, and which winner is better where they share data.

Prints each study's answer (its confirmed winner, the gain over the book's recipe with its interval, its test
result where it was rerun), the winners' hyperparameters, which hyperparameters mattered, wall time and trials'
seconds, and whether each study's data and weights are the first's. Where a study shares the first study's data,
its winner and the first study's are compared paired on the first study's folds and seeds (runs the confirmation
stages (or an earlier comparison in the same ``--out``) already made are reused; the others are trained: ``--parallel``
as Ray tasks, with the same numbers), with a 95% interval. Writes ``compare.html`` (self-contained) and
``compare.parquet`` (the paired runs) to ``--out``, which is checked before anything trains.
"""

from __future__ import annotations

import argparse
import sys

from trainable import UserError
from trainable.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", metavar="STUDY", help="study folders (results/<name>), two or more; the first sets the data and folds")
    parser.add_argument("--parallel", action="store_true", help="train the missing paired runs as Ray tasks, as many at once as the CPUs allow")
    parser.add_argument("--out", help="where compare.html and compare.parquet go (default: compare-<names> beside the first study)")
    parser.add_argument("--no-report", action="store_true", help="print only; write no compare.html")
    parser.add_argument("--no-cache", action="store_true", help="decode the images of runs to train in memory (by default: the decoded-image cache)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.studies) < 2:
        raise UserError("compare needs two or more studies: python -m study.compare results/A results/B")
    from study.findings.comparison import answers, compare, importance_rows, overview_rows, params_rows, write_html

    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    comparison = compare(args.studies, args.out, parallel=args.parallel, log=lambda line: console.print(line, markup=False),
                         cache=not args.no_cache)

    def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
        shown = Table(title=title, title_justify="left")
        for column in columns:
            shown.add_column(column)
        for row in rows:
            shown.add_row(*row)
        console.print(shown)

    table("the studies", *overview_rows(comparison))
    for name, lines in answers(comparison).items():
        console.print(f"{name}:", markup=False)
        for line in lines:
            console.print(f"  {line}", markup=False)
    table("the winners' hyperparameters", *params_rows(comparison))
    table("how much each hyperparameter mattered (each study's own importance)", *importance_rows(comparison))
    for pair in comparison.pairs:
        console.print(pair.line(), markup=False)
    if comparison.runs is not None:
        console.print(f"paired runs: {comparison.out / 'compare.parquet'}", markup=False)
    if not args.no_report:
        console.print(f"report: {write_html(comparison, comparison.out / 'compare.html')}", markup=False)
    return 0


if __name__ == "__main__":
    run_main(main)
