"""``python -m study.predict MODEL PATH... [--out FILE] [--seed N]``: a study's model on photos.

MODEL is a study folder (its model, which ``python -m study.rerun`` writes) or a model folder. Each PATH is a photo, a
folder (searched recursively, hidden files and folders left out), or a labelled folder: one whose subfolders are the
model's classes (``data/test``), or a data folder in the train/test layout, whose test split is then predicted. One
row per photo: its path, the predicted class, each class's probability, and the true class where a labelled folder
gives it (then the accuracy, per class too, and the confusion matrix). By default the seeds' probabilities are
averaged (the ensemble ``study.rerun`` measured); ``--seed N`` takes one seed's model. The preprocessing is the
evaluation's, exactly: on the study's test split the predictions are the rerun's, image for image. Without ``--out``
the rows are printed as a table; ``--out`` writes them as ``.parquet`` or ``.csv`` (by its suffix). A file that
cannot be decoded is listed with the reason and left out.

Exit codes: 0 predicted; 2 bad input (one ``error:`` line: no model, no image, an output that cannot be written);
130 interrupted (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainable import UserError
from trainable.cli import run_main

SUFFIXES = (".parquet", ".csv")
SHOWN = 40  # rows printed without --out; the rest counted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="a study folder (after python -m study.rerun) or its model folder")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="photos, folders of photos, or labelled folders (class subfolders)")
    parser.add_argument("--out", help="write the rows to this .parquet or .csv file (default: print them)")
    parser.add_argument("--seed", type=int, default=None, help="one seed's model (default: every seed's, their probabilities averaged)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the GPU where there is one)")
    parser.add_argument("--no-cache", action="store_true",
                        help="decode a labelled split in memory (by default through the decoded-image cache: the study's test "
                             "split, decoded by its rerun, is not decoded again)")
    return parser


def check_out(out: str | None) -> Path | None:
    """--out, checked before any photo is decoded: its suffix says the format, its folder must take a file."""
    if out is None:
        return None
    path = Path(out).expanduser()
    if path.is_dir():
        raise UserError(f"--out {out} is a folder: name a .parquet or .csv file")
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--out {out}: name a .parquet or .csv file (the suffix says which)")
    from trainable.cli import check_output_folder

    check_output_folder(path.parent if str(path.parent) else Path("."), "--out", holds="the predictions", kind="file in a writable folder")
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = check_out(args.out)
    from study.findings.model import open_model
    from study.findings.prediction import predict

    model = open_model(args.model)
    prediction = predict(model, args.paths, args.seed, args.device or "auto", log=print, cache=not args.no_cache)
    if out is not None:
        from trainable.files import write_atomic

        rows = prediction.rows
        write_atomic(out, lambda tmp: rows.to_parquet(tmp, index=False) if out.suffix.lower() == ".parquet" else rows.to_csv(tmp, index=False))
    else:
        show(prediction)
    for line in prediction.lines():
        print(line)
    if out is not None:
        print(f"rows: {out}")
    return 0


def show(prediction) -> None:
    """The rows as a table (the first ``SHOWN``)."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    rows = prediction.rows
    classes = prediction.model.classes
    labelled = bool(rows["true"].notna().any())
    table = Table(title=f"{len(rows)} photo(s)", title_justify="left")
    for column in ["path", "predicted", *[f"p({c})" for c in classes], *(["true"] if labelled else [])]:
        table.add_column(column, justify="right" if column.startswith("p(") else "left")
    for record in rows.head(SHOWN).to_dict("records"):
        cells = [str(record["path"]), str(record["predicted"]), *[f"{record[f'prob_{c}']:.3f}" for c in classes]]
        if labelled:
            cells.append("" if pd.isna(record["true"]) else str(record["true"]))
        table.add_row(*cells)
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    console.print(table)
    if len(rows) > SHOWN:
        console.print(f"... and {len(rows) - SHOWN} more (--out FILE writes every row)", markup=False)


if __name__ == "__main__":
    from study.predict import main as _main  # the importable module, not __main__

    run_main(_main)
