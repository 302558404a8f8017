"""Where a study's time went: how much of its trial slots' time went to training, and what the rest paid for.

A driver run's trials' stage lasts ``fit_s`` on ``concurrent`` slots: ``fit_s x concurrent`` slot-seconds. A trial
holds a slot for ``slot_s`` (from its start to its end as the driver saw them), of which its epochs (training and
validation: ``seconds``) are the work; the rest of its hold is its fixed cost (fetching the data, building the
model, its first step's set-up, checkpoints, waiting for the study in each report), and the first trial of each
worker process also pays for starting it (Python, torch and torchvision imported, a CUDA context). Slot-seconds no
trial held are the study's own gaps: at the start (Ray starting the worker processes), between one trial's end and
the next one's start, and at the end (slots with no trial left while the last ones finish). The parts add up to
the whole (``TimeUse.parts``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from study.core.tables import EPOCH_PHASES, START_PHASES
from study.core.values import isnan
from study.core.vocabulary import RUNNING


@dataclass(frozen=True)
class RunCosts:
    """What one more run costs, from the runs so far (seconds; NaN where nothing tells yet): its fixed cost (its hold on
    its slot less its epochs), its first epoch (which pays for set-up a later one does not) and each later epoch. Runs on
    a worker process that had trained before stand for what comes (a process's first run also pays for its start),
    where there are any. The ETA (``study.driver.progress``) and the time line (``time_use``) both read it."""

    fixed: float
    first_epoch: float
    later_epoch: float


def run_costs(trials: Iterable[dict], epochs: Iterable[dict]) -> RunCosts:
    """``RunCosts`` from a study's trial rows and epoch rows (dicts: the tables in memory, or a frame's records)."""
    trials = [t for t in trials if t.get("status") != RUNNING]
    warm = {t["optuna_trial"] for t in trials if (t.get("warm_runs") or 0) > 0}
    timed = [e for e in epochs if not isnan(e.get("seconds")) and e.get("seconds")]
    if warm and any(e["optuna_trial"] in warm for e in timed):
        timed = [e for e in timed if e["optuna_trial"] in warm]
    firsts = [float(e["seconds"]) for e in timed if e["epoch"] == 1]
    laters = [float(e["seconds"]) for e in timed if e["epoch"] > 1]
    held = [t for t in trials if not isnan(t.get("slot_s"))]
    if warm and any(t["optuna_trial"] in warm for t in held):
        held = [t for t in held if t["optuna_trial"] in warm]
    fixed = [max(0.0, float(t["slot_s"]) - float(t.get("seconds") or 0.0)) for t in held]
    median = lambda values: statistics.median(values) if values else math.nan  # noqa: E731
    return RunCosts(median(fixed), median(firsts), median(laters))


@dataclass
class TimeUse:
    slot_s: float  # the trials' stages' wall time x their slots, over every driver run
    epochs_s: float  # the trials' epochs: training and validation
    held_s: float  # what the trials held their slots for, their epochs included
    first_s: float  # of held_s, less their epochs: the trials that were their worker process's first
    trials: int  # trials that held a slot
    first_trials: int  # of them, a worker process's first
    phases: dict[str, float]  # a trial's start phases (median over trials), each epoch's (median over epochs)
    first_epoch_s: float  # the median first epoch of the trials that were not their worker's first
    later_epoch_s: float  # the median later epoch (NaN where every trial ran one)
    start_s: float = math.nan  # of the slots no trial held: before each slot's first trial (the last driver run only)
    end_s: float = math.nan  # after each slot's last trial

    @property
    def parts(self) -> dict[str, float]:
        """Slot-seconds: the epochs, the fixed costs of trials on workers that had trained before, the worker processes'
        first trials less their epochs, and the slots no trial held (at the start, between trials, at the end; or all
        together as ``idle`` where the split is not known)."""
        parts = {"epochs": self.epochs_s, "fixed": self.held_s - self.epochs_s - self.first_s, "first": self.first_s}
        idle = max(0.0, self.slot_s - self.held_s)
        if math.isnan(self.start_s) or math.isnan(self.end_s):
            return {**parts, "idle": idle}
        return {**parts, "start": self.start_s, "between": max(0.0, idle - self.start_s - self.end_s), "end": self.end_s}

    @property
    def lost_per_trial(self) -> float:
        """Slot-seconds not spent in epochs, per trial."""
        return (self.slot_s - self.epochs_s) / self.trials if self.trials else math.nan

    @property
    def fixed_per_trial(self) -> float:
        """The mean fixed cost of a trial on a worker that had trained before (its hold less its epochs)."""
        later = self.trials - self.first_trials
        return self.parts["fixed"] / later if later else math.nan

    def line(self) -> str:
        """One line for the console: the slot time and its parts (they add up to 100%)."""
        parts = self.parts
        share = {k: 100 * v / self.slot_s for k, v in parts.items()} if self.slot_s > 0 else {k: math.nan for k in parts}
        first = self.first_s / self.first_trials if self.first_trials else math.nan
        idle = (f"slots without a trial {share['idle']:.0f}%" if "idle" in parts else
                f"slots without a trial {share['start']:.0f}% at the start, {share['between']:.0f}% between trials, "
                f"{share['end']:.0f}% at the end")
        return (f"time: {self.slot_s:.0f} slot-seconds for {self.trials} trials: epochs (training, validation) {share['epochs']:.0f}%; "
                f"each trial's fixed cost {share['fixed']:.0f}% ({_s(self.fixed_per_trial)} a trial); the first trial of "
                f"{self.first_trials} worker process(es) {share['first']:.0f}% ({_s(first)} each beyond its epochs, the process's "
                f"start included); {idle}")

    def as_dict(self) -> dict:
        return {"slot_s": round(self.slot_s, 2), "epochs_s": round(self.epochs_s, 2), "held_s": round(self.held_s, 2),
                "trials": self.trials, "first_trials": self.first_trials, "parts_s": {k: round(v, 2) for k, v in self.parts.items()},
                "lost_per_trial_s": _round(self.lost_per_trial), "fixed_per_trial_s": _round(self.fixed_per_trial),
                "phases_median_s": {k: _round(v, 4) for k, v in self.phases.items()},
                "first_epoch_s": _round(self.first_epoch_s, 4), "later_epoch_s": _round(self.later_epoch_s, 4)}


def time_use(trials: pd.DataFrame, epochs: pd.DataFrame, runs: list[dict]) -> TimeUse | None:
    """Where the trials' time went (None for a study whose tables have no slot times: one from before they were kept)."""
    if "slot_s" not in trials or not trials["slot_s"].notna().any():
        return None
    held = trials[trials["slot_s"].notna()]
    seconds = held["seconds"].fillna(0.0)
    first = held["warm_runs"].fillna(0).eq(0) if "warm_runs" in held else pd.Series(False, index=held.index)
    slot_s = sum(float(r.get("timings", {}).get("fit_s") or 0.0) * int(r.get("concurrent") or 1) for r in runs)
    phases = {p: float(held[p].median()) for p in START_PHASES if p in held and held[p].notna().any()}
    phases.update({p: float(epochs[p].median()) for p in EPOCH_PHASES if p in epochs and epochs[p].notna().any()})
    costs = run_costs(held.to_dict("records"), epochs.to_dict("records") if len(epochs) else [])
    start_s, end_s = _edges(held, runs)
    return TimeUse(
        slot_s=slot_s, epochs_s=float(seconds.sum()), held_s=float(held["slot_s"].sum()),
        first_s=float((held.loc[first, "slot_s"] - seconds[first]).sum()), trials=len(held), first_trials=int(first.sum()),
        phases=phases, first_epoch_s=costs.first_epoch, later_epoch_s=costs.later_epoch, start_s=start_s, end_s=end_s)


def _edges(held: pd.DataFrame, runs: list[dict]) -> tuple[float, float]:
    """Slot-seconds before each slot's first trial and after its last one, where one driver run trained every trial
    (NaN otherwise): the first ``concurrent`` starts less the stage's start, the stage's end less the last ends."""
    trained = [r for r in runs if (r.get("timings") or {}).get("fit_s")]
    if len(trained) != 1 or "started_at" not in held or not held["started_at"].notna().all():
        return math.nan, math.nan
    run = trained[0]
    begin, slots = run.get("fit_started_at"), int(run.get("concurrent") or 1)
    if not begin:
        return math.nan, math.nan
    end = float(begin) + float(run["timings"]["fit_s"])
    starts = sorted(held["started_at"])[:slots]
    ends = sorted(held["ended_at"])[-slots:]
    return (float(sum(max(0.0, t - float(begin)) for t in starts)) + (slots - len(starts)) * float(run["timings"]["fit_s"]),
            float(sum(max(0.0, end - t) for t in ends)))


def _s(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def _round(value: float, digits: int = 3) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), digits)
