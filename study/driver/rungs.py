"""ASHA's rungs, as Ray's ASHA places them (one bracket): the study's ETA and the selection simulation both count
on them, so they are computed in one place, without importing Ray."""

from __future__ import annotations

import math


def asha_rungs(grace: float, max_t: int, reduction_factor: float) -> list[float]:
    """The epochs at which ASHA compares trials, highest first, as Ray's ``_Bracket`` computes them: grace *
    reduction_factor**k for every k that keeps it within max_t (the last, at max_t, is where a trial ends anyway)."""
    grace = min(grace, max_t)
    count = int(math.log(max_t / grace) / math.log(reduction_factor) + 1)
    return [grace * reduction_factor**k for k in reversed(range(count))]
