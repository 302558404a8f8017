"""How the study reads and prints a value: missing (None, NaN, pandas' NA), plain (numpy and pandas scalars as
Python's), and formatted for a table cell or a console line (``fmt``, ``fmt_acc``).

It imports nothing of ``study``: every module may import it.
"""

from __future__ import annotations

import math


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
