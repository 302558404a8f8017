"""Where the best trials lie: each hyperparameter's range among the top trials, and a warning (with a widened
``--space`` entry to paste) where they crowd the edge of the searched range."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


from trainable.config import FREEZE_DEPTHS

from study.core.values import fmt
from study.findings.reading import StudyData


@dataclass
class BestRange:
    param: str
    n_top: int
    n_scored: int
    low: float | None = None
    high: float | None = None
    counts: dict = field(default_factory=dict)  # categorical: value -> how many top trials


def top_count(n: int) -> int:
    """How many trials count as "the best": the top quarter, at least 3 (all of them when fewer)."""
    return min(n, max(3, math.ceil(n / 4)))


def best_ranges(data: StudyData) -> dict[str, BestRange]:
    scored = data.scored
    top = scored.head(top_count(len(scored)))
    out = {}
    for p in data.params:
        r = BestRange(p, len(top), len(scored))
        values = top[p].dropna()
        if data.is_categorical(p) or values.dtype == object or pd.api.types.is_string_dtype(values):
            r.counts = {str(k): int(v) for k, v in values.astype(str).value_counts().items()}
        elif len(values):
            r.low, r.high = float(values.min()), float(values.max())
        out[p] = r
    return out


# The furthest a searched bound may be widened: the hyperparameter's own domain (a bound already there says nothing).
WIDEST = {"lr": (0.0, None), "head_lr_mult": (0.0, None), "weight_decay": (0.0, None), "momentum": (0.0, 0.99),  # momentum < 1
          "freeze_depth": (FREEZE_DEPTHS[0], FREEZE_DEPTHS[-1]), "batch_size": (2, None)}  # TrainConfig.validate's bounds


POSITIVE = ("lr", "head_lr_mult")  # never 0 itself


EDGE = 0.1  # the outer tenth of a range (in log space for a log range) counts as its edge


def range_warnings(data: StudyData) -> list[str]:
    """One line per searched bound that the best trials crowd: the best may lie outside what was searched.

    A bound is crowded when at least half of the top trials (``top_count``, 3 or more), and at least two, lie in
    the outer tenth of the range at that end (for an integer range of up to ten values: at the bound itself); a
    uniform draw puts a tenth there. A bound where the hyperparameter's own domain ends (freeze depth 0 or 5, momentum 0) cannot be
    widened and says nothing.
    """
    usable = data.usable
    top = usable.head(top_count(len(usable)))
    if len(top) < 3:
        return []
    lines = []
    for p in data.params:
        spec = data.settings.space.get(p, {})
        bounds = data.bounds(p)
        if spec.get("type") not in ("float", "int") or bounds is None or bounds[1] <= bounds[0]:
            continue
        low, high = bounds
        values = pd.to_numeric(top[p], errors="coerce").dropna().to_numpy(dtype=float)
        log = bool(spec.get("log")) and low > 0
        if spec["type"] == "int" and high - low <= 10:
            at = {"low": values <= low, "high": values >= high}
        else:
            u = ((np.log(values) - math.log(low)) / (math.log(high) - math.log(low)) if log else (values - low) / (high - low))
            at = {"low": u <= EDGE, "high": u >= 1 - EDGE}
        for end, inside in at.items():
            count = int(inside.sum())
            bound = low if end == "low" else high
            limit = WIDEST.get(p, (None, None))[0 if end == "low" else 1]
            if count < max(2, math.ceil(len(top) / 2)) or (limit is not None and bound == limit):
                continue
            near = values[inside]
            lines.append(f"{p}: {count} of the top {len(top)} trials lie at the {end} end of its range "
                         f"({fmt(float(near.min()))} to {fmt(float(near.max()))}; the range ends at {fmt(bound)}): the best may lie "
                         f"beyond it; widen it with --space, e.g. {json.dumps({p: widened(p, spec, end)})} "
                         "(python -m study.run --show-space prints the whole space)")
    return lines


def widened(p: str, spec: dict, end: str) -> dict:
    """``spec`` with its ``end`` bound moved out: a decade for a log range, half the range otherwise, within WIDEST."""
    low, high = float(spec["low"]), float(spec["high"])
    limit = WIDEST.get(p, (None, None))[0 if end == "low" else 1]
    if spec.get("log") and low > 0:
        new = high * 10 if end == "high" else low / 10
    else:
        step = max((high - low) / 2, 1 if spec["type"] == "int" else 0)
        new = high + step if end == "high" else low - step
    if limit is not None:
        new = min(new, limit) if end == "high" else max(new, limit)
    if p in POSITIVE and new <= 0:
        new = low / 10
    if spec["type"] == "int":
        new = int(math.ceil(new) if end == "high" else math.floor(new))
    return {**spec, end: new}


def describe_range(r: BestRange) -> str:
    if r.counts:
        return ", ".join(f"{k} ({v})" for k, v in r.counts.items())
    if r.low is None:
        return "-"
    return fmt(r.low) if r.low == r.high else f"{fmt(r.low)} - {fmt(r.high)}"


def describe_space(data: StudyData, p: str) -> str:
    spec = data.settings.space.get(p, {})
    if spec.get("type") == "categorical":
        return ", ".join(str(c) for c in spec.get("choices", []))
    bounds = data.bounds(p)
    if bounds is None:
        return "-"
    return f"{fmt(bounds[0])} - {fmt(bounds[1])}" + (" (log)" if spec.get("log") else "")
