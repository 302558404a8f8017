"""Shared command-line plumbing: TrainConfig options and the one-line error exit."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .config import AUGMENT_PATHS, AUGMENT_POLICIES, STAGES, TrainConfig
from .errors import UserError


def add_data_options(parser: argparse.ArgumentParser, folds: bool = True) -> None:
    """The data options; ``folds=False`` leaves out --val-fold and --cv-folds (a study chooses its own folds)."""
    d = TrainConfig()
    parser.add_argument("--data-dir", help="folder with train/<class>/ and test/<class>/ (default: download the book's hotdog.zip)")
    parser.add_argument("--weights", default=d.weights, help="imagenet, none (from scratch) or PATH to a resnet18 state dict (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=d.image_size, help="training crop in px (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="images per SGD step (default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of train held out for validation (default: %(default)s)")
    parser.add_argument("--split-seed", type=int, default=d.split_seed,
                        help="which images form the validation split (stratified; default: %(default)s, the same split whatever --seed)")
    if folds:
        add_fold_options(parser)
    parser.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "bf16"],
                        help="auto: bf16 autocast where the hardware has it natively (default: %(default)s)")
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--augment-path", default=d.augment_path, choices=AUGMENT_PATHS,
                        help="per-image: torchvision on the CPU, image by image; batched: whole batches on the device; "
                             "auto: batched on a GPU, per-image on a CPU (default: %(default)s)")


def add_fold_options(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--val-fold", type=int, default=d.val_fold,
                        help="another disjoint validation split of the same size: 0 the usual one, 1, 2, ... the others; "
                             "with --cv-folds, the part that validates (default: %(default)s)")
    parser.add_argument("--cv-folds", type=int, default=d.cv_folds,
                        help="stratified F-fold cross-validation instead of --val-fraction: train on F-1 parts, validate on "
                             "part --val-fold; the confirmation stage's runs (default: %(default)s, a held-out split)")
    parser.add_argument("--val-last-only", action="store_true",
                        help="validate after the last epoch only (the confirmation stage's runs: they are scored by it)")


def add_hyperparameter_options(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--lr", type=float, default=d.lr, help="backbone lr, mean-loss convention (default: %(default)s, the book's 5e-5 on a summed loss)")
    parser.add_argument("--head-lr-mult", type=float, default=d.head_lr_mult, help="head lr = lr x this (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay (default: %(default)s, the book's 1e-3 on a summed loss)")
    parser.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (default: %(default)s, as the book)")
    parser.add_argument("--freeze-depth", type=int, default=d.freeze_depth, help=f"frozen leading stages of {', '.join(STAGES)}; {len(STAGES)} = head only (default: %(default)s)")
    parser.add_argument("--augment", default=d.augment, choices=AUGMENT_POLICIES,
                        help="augmentation policy; d2l = the book's RandomResizedCrop + flip (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="model init, batch order and augmentation (default: %(default)s)")


def check_output_folder(folder: str | Path, option: str, holds: str = "", kind: str = "path") -> None:
    """Fail before any work, not after it, when ``folder`` cannot be created or written.

    ``holds`` names what goes there ("results") and ``kind`` what ``option`` should be given, for the error.
    """
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A probe of its own: two drivers started at once on one folder must not delete each other's.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        what = f"{holds} to" if holds else "to"
        raise UserError(f"cannot write {what} {folder} ({exc.strerror or exc}): pass {option} a writable {kind}") from None


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run ``main``; a UserError becomes one ``error:`` line and exit 2, Ctrl-C exit 130."""
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
