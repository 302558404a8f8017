"""``python -m study.rerun [results/<study>] [--rank 1] [--seeds 3]``: the final, honest number.

Takes a trial's configuration from ``trials.parquet`` over the study's shared settings (the confirmed winner
where the study ran its confirmation stage, else rank 1; ``--rank N`` picks by the study's ranking), retrains it
with each of ``--seeds`` seeds (the study's seed + 0, 1, ...) on the whole train split (train + validation),
evaluates each model once on the test split, and prints the test accuracy as mean +- sd. The book's recipe
runs beside it on the same seeds (``--no-baseline`` skips it), and the paired difference, seed by seed, is
printed with its 95% t-interval: the answer to "is it better than the book's recipe on unseen images?".
Writes ``rerun.parquet`` beside the study's tables (one row per configuration and seed) and each run's
weights under ``rerun/``; rewrites ``report.html`` where ``study.analyze`` wrote one. The data is decoded
once for all runs.

``--export FILE`` (or ``-`` for stdout) writes that configuration as a JSON file for
``python -m trainable --config FILE`` instead: the trial as it ran in the study (its validation split, epochs,
seed and thread count), so that command reproduces the trial's numbers; ``--print-command`` prints it.
"""

from __future__ import annotations

import argparse
import shlex
import sys


from trainable import UserError
from trainable.cli import run_main

from study.core.folder import StudyFolder, find_study
from study.core.settings import StudySettings
from study.core.values import fmt, isnan
from study.core.vocabulary import FAILED
from study.findings.retrain import choose, choose_baseline, command_line, export, retrain


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.rerun", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", help="the study folder (default: the newest study under --results-dir)")
    parser.add_argument("--results-dir", default="results", help="where to look for the newest study (default: %(default)s)")
    parser.add_argument("--rank", type=int, default=None,
                        help="which trial of trials.parquet, 1 = the best by validation accuracy (default: the confirmed winner "
                             "where the study ran its confirmation stage, else rank 1)")
    parser.add_argument("--seeds", type=int, default=3, help="retrain with this many seeds: the study's seed + 0, 1, ... (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per seed (default: the study's epochs)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per seed (default: the trial's own, so the same seed gives the same numbers "
                             "sequentially and with --parallel; another count changes them slightly)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the study's)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="retrain only the trial picked; by default the book's recipe runs beside it on the same seeds and the "
                             "paired difference on the test split is printed")
    parser.add_argument("--parallel", action="store_true", help="run the seeds at once as Ray tasks, each with the trial's threads as CPUs (and the study's GPU share)")
    parser.add_argument("--no-cache", action="store_true",
                        help="decode the images in memory for this run only (by default they come from, or go to, the "
                             "decoded-image cache every command shares: python -m trainable.decoded --list)")
    parser.add_argument("--model-dir", metavar="DIR",
                        help="where the model goes (default: <study>/model): every seed's weights and model.json, for python -m "
                             "study.predict and study.export; a rerun of the same configuration with other seeds extends it")
    parser.add_argument("--accept-data-change", action="store_true",
                        help="retrain although the data or the weights file changed since the study ran (refused otherwise; "
                             "the change is recorded in study.json)")
    parser.add_argument("--export", metavar="FILE",
                        help="write the trial's configuration as it ran in the study (JSON for python -m trainable --config; - for stdout) and exit")
    parser.add_argument("--print-command", action="store_true", help="print the python -m trainable command that reproduces the trial and exit")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    checks = [
        (args.rank is None or args.rank >= 1, f"--rank {args.rank} must be 1 or more (1 = the best trial)"),
        (args.threads is None or args.threads >= 1, f"--threads {args.threads} must be 1 or more"),
        (args.seeds >= 1, f"--seeds {args.seeds} must be 1 or more"),
        (args.epochs is None or args.epochs >= 1, f"--epochs {args.epochs} must be 1 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda m: print(m, file=sys.stderr)) if args.export == "-" else print
    folder = find_study(args.study, args.results_dir, log=log)
    chosen = choose(folder, args.rank, args.epochs, args.device, args.threads)
    if args.export:
        export(chosen, args.export)
        return 0
    if args.print_command:
        print(command_line(chosen.trial))
        return 0
    check_data(folder, chosen.settings, args.accept_data_change)
    cfg = chosen.config
    print(f"study {chosen.settings.name}, {chosen.describe()}")
    print(f"picked: {chosen.why}")
    if chosen.row.get("status") in FAILED:
        print(f"note: this trial {chosen.row.get('status')} in the study; retraining it anyway")
    params = "  ".join(f"{p}={fmt(getattr(cfg, p))}" for p in chosen.settings.space)
    print(f"retraining {params}: {cfg.epochs} epoch(s) at {cfg.image_size}px, weights {cfg.weights}, on train + validation, "
          f"{args.seeds} seed(s), {cfg.threads} thread(s) each")
    baseline = None
    if not args.no_baseline:
        baseline, why_not = choose_baseline(folder, chosen, args.epochs, args.device, args.threads)
        print(f"and the book's recipe (trial {fmt(baseline.row.get('optuna_trial'))}) on the same seeds, to compare on the test split "
              "(--no-baseline skips it)"
              if baseline else f"no baseline beside it: {why_not}")
    if args.model_dir:
        from trainable.cli import check_output_folder

        check_output_folder(args.model_dir, "--model-dir", holds="the model", kind="folder")  # before anything trains
    command = shlex.join(["python", "-m", "study.rerun", *(sys.argv[1:] if argv is None else argv)])
    rows = retrain(folder, chosen, args.seeds, args.parallel, baseline, args.model_dir, command, cache=not args.no_cache)
    refresh_report(folder)
    return 0 if any(not isnan(r["test_acc"]) for r in rows if r["optuna_trial"] == chosen.row.get("optuna_trial")) else 1


def check_data(folder: StudyFolder, settings: StudySettings, accept: bool) -> None:
    """Before retraining: a test split to measure on, and the data and weights the study ran on (or the change
    accepted with --accept-data-change, recorded in study.json)."""
    from study.core import datacheck

    root = datacheck.data_root(settings.base)
    if not (root / "test").is_dir():
        started = " (it was started with --no-test-split)" if not settings.test_split else ""
        raise UserError(f"study {settings.name!r} has no test split to measure test accuracy on: {root} has no test/ folder{started}; "
                        f"add {root / 'test'}/<class>/ folders with the classes of train/ and pass {datacheck.ACCEPT_FLAG}, or export "
                        "the configuration (--export FILE) and train it on another folder with python -m trainable --config FILE "
                        "--data-dir OTHER --val-fraction 0 --test")
    found = datacheck.changes(settings)
    if not found:
        return
    lock = folder.lock()  # study.json is the driver's: none may be running while a rerun records a change in it
    try:
        settings = folder.read_settings()
        for change in datacheck.check(settings, accept, "python -m study.rerun", "start a new study on the data as it is now", found):
            print(f"going on with changed data ({datacheck.ACCEPT_FLAG}): {change}")
        folder.write_settings(settings)
    finally:
        lock.release()


def refresh_report(folder: StudyFolder) -> None:
    """Where study.analyze already wrote report.html, write it again: its last section shows these reruns."""
    from study.core.folder import REPORT_FILE

    if not (folder.path / REPORT_FILE).is_file():
        print(f"python -m study.analyze {shlex.quote(str(folder.path))} writes the report with these results")
        return
    from study.findings.analysis import analyze
    from study.findings.report import write_report

    html, _ = write_report(analyze(folder))
    print(f"report: {html} (rewritten with these results)")


if __name__ == "__main__":
    from study.rerun import main as _main  # the importable module, not __main__ (Ray pickles run_seed by reference)

    run_main(_main)
