"""The study's vocabulary, in one place: the hyperparameter names, the trial statuses, the metric, the book's
figures, and how values are read (missing, plain, typed) and printed (``fmt``, ``fmt_acc``).

It imports nothing of ``study``, nor Ray or Optuna: every module may import it.
"""

from __future__ import annotations

import math

from trainable.config import HYPERPARAMETERS, TrainConfig

# Each hyperparameter's column type in the study's tables, from its TrainConfig field's type.
PARAM_TYPES = {p: {float: "float64", int: "int64", str: "str"}[type(getattr(TrainConfig(), p))] for p in HYPERPARAMETERS}
GPUS_PER_TRIAL = 0.25  # --gpus-per-trial's default: four trials share a GPU
INT_HYPERPARAMETERS = tuple(p for p, kind in PARAM_TYPES.items() if kind == "int64")
METRIC, MODE = "val_acc", "max"
FINISHED = ("completed", "stopped early", "diverged", "errored", "timed_out")
FAILED = ("diverged", "errored", "timed_out")  # no usable result: ranked last, never rerun by default
# The book's fine-tuned ResNet18 on its hotdog.zip: 5 epochs, 224 px, ImageNet weights (d2l "Fine-Tuning").
BOOK_FIGURE = "the book: 0.940 (0.933 +- 0.012 over its builds)"
BOOK_CLASSES = ["hotdog", "not-hotdog"]
BOOK_TRAIN_IMAGES, BOOK_TEST_IMAGES = 2000, 800


def isnan(value) -> bool:
    """None, NaN, or pandas' NA."""
    if value is None:
        return True
    try:
        return bool(value != value) or (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):  # pandas.NA refuses bool()
        return True


def plain(value):
    """A numpy/pandas scalar as a plain Python value; missing values as None."""
    if value is not None and not isinstance(value, str) and isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def typed(name: str, value):
    """A hyperparameter's value as its trial config holds it: a plain Python value, an int for the integer ones."""
    value = plain(value)
    return int(value) if name in INT_HYPERPARAMETERS and value is not None else value


def fmt(value, spec: str | None = None) -> str:
    """A value for a table cell or a console line; missing (None, NaN, NA) as '-'.

    ``spec`` formats a number as ``format(value, spec)`` does (``".2f"``, ``".3g"``); without it, 3 significant
    digits, whole numbers plain, anything else as ``str``.
    """
    value = plain(value)
    if value is None:
        return "-"
    if spec is not None:
        return format(value, spec)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.3g}"
    return str(value)


def fmt_acc(value) -> str:
    """An accuracy: 3 decimals."""
    return fmt(value if isnan(value) else float(plain(value)), ".3f")
