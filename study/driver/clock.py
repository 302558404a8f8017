"""Time limits: a trial that hangs is stopped, and a study keeps to its time budget.

Ray's stoppers and schedulers act only when a trial reports, so a trial stuck in a read from a network file
system or on a wedged GPU would hold its slot, and the study, forever. Here each trial's own process keeps
the time: a watchdog thread beside the training loop reads the limits from a small named Ray actor (the
``Clock``, no CPU of its own) and, past one, records the trial as timed out there and ends its process
(``os._exit``): whatever the loop is blocked in, the process ends and Ray gets its CPU or GPU back. Ray then
starts the trial again, as for any worker that died; the new attempt finds its mark on the Clock and ends at
once with status ``timed_out``, which the study records (Optuna: FAIL, never a result) before it goes on.

The limits:

- ``--trial-timeout S``: S seconds of wall time for a trial's run (each attempt).
- by default, a stall limit: a trial that goes ``STALL_FACTOR`` times the study's median epoch time, plus
  ``STALL_SLACK_S``, without finishing an epoch, once ``MIN_EPOCHS`` epochs are known. Epochs of different
  configurations differ by up to ~3.5x (freeze depth 0 against 5, the augmentation policy), and a trial's
  first epoch also pays for its process start: ten times the median leaves every honest trial alone and
  still catches a hang in minutes, not hours. ``--trial-timeout 0`` turns the limits off.
- ``--time-budget S``: the study stops proposing trials when a new one would run past S seconds of the
  study's wall time (with the confirmation stage's expected time kept in reserve), the trials still running
  at the budget are stopped (``timed_out``), and the confirmation stage runs on what finished.
"""

from __future__ import annotations

import os
import threading
import time

STALL_FACTOR = 10
STALL_SLACK_S = 60.0
MIN_EPOCHS = 3
STALL_RULE = (f"{STALL_FACTOR}x the study's median epoch time + {STALL_SLACK_S:g} s without finishing an epoch, once "
              f"{MIN_EPOCHS} epochs are known")  # said by --trial-timeout's help
POLL_S = 2.0  # how often a trial's watchdog reads the limits
TIMEOUT_EXIT = 75  # the exit status of a trial's process its watchdog ended


class ClockState:
    """The limits and the marks of timed-out runs (the body of the Ray actor ``Clock``; plain, for tests)."""

    def __init__(self, trial_timeout: float | None, budget_end: float | None):
        self.trial_timeout = trial_timeout  # None: the automatic stall limit; 0: no limit
        self.budget_end = budget_end  # Unix time, or None
        self.median_epoch_s: float | None = None
        self.marks: dict[str, str] = {}

    def limits(self) -> dict:
        stall = None
        if self.trial_timeout is None and self.median_epoch_s is not None:
            stall = STALL_FACTOR * self.median_epoch_s + STALL_SLACK_S
        return {"trial_timeout": self.trial_timeout or None, "stall_s": stall, "budget_end": self.budget_end}

    def set_median_epoch(self, seconds: float) -> None:
        self.median_epoch_s = float(seconds)

    def set_budget_end(self, end: float | None) -> None:
        self.budget_end = end

    def mark(self, key: str, why: str) -> None:
        self.marks.setdefault(key, why)

    def timed_out(self, key: str) -> str | None:
        return self.marks.get(key)


def start_clock(name: str, trial_timeout: float | None, budget_end: float | None):
    """The driver's Clock actor (no CPU: it must never wait for a slot the trials hold)."""
    import ray

    return ray.remote(num_cpus=0)(ClockState).options(name=name, lifetime="non_detached").remote(trial_timeout, budget_end)


def deadline_passed(limits: dict, started: float, last_progress: float, now: float) -> str | None:
    """Why a run is past its limits (or None): ``started`` and ``last_progress`` (its last epoch) as Unix times."""
    if limits.get("trial_timeout") and now - started > limits["trial_timeout"]:
        return f"timed out: ran past --trial-timeout {limits['trial_timeout']:g} s"
    if limits.get("stall_s") and now - last_progress > limits["stall_s"]:
        return (f"timed out: no epoch finished for {now - last_progress:.0f} s, over {STALL_FACTOR}x the study's median epoch "
                f"time + {STALL_SLACK_S:g} s ({limits['stall_s']:.0f} s; --trial-timeout sets a limit of your own)")
    if limits.get("budget_end") and now > limits["budget_end"]:
        return "timed out: stopped at the study's --time-budget"
    return None


class Watchdog:
    """In a trial's process: ends it once it is past its limits (after marking it on the Clock). ``stop()`` when
    the run ends: Ray reuses the process for the next trial, which must not be ended on this one's clock."""

    def __init__(self, clock, key: str):
        self.clock, self.key = clock, key
        self.started = self.last_progress = time.time()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watchdog {key}", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def progress(self) -> None:
        self.last_progress = time.time()

    def _run(self) -> None:
        import ray

        while not self._done.wait(POLL_S):
            try:
                limits = ray.get(self.clock.limits.remote(), timeout=30)
            except Exception:  # the driver is gone or busy: keep training, ask again
                continue
            why = deadline_passed(limits, self.started, self.last_progress, time.time())
            if why and not self._done.is_set():
                try:
                    ray.get(self.clock.mark.remote(self.key, why), timeout=30)
                finally:
                    os._exit(TIMEOUT_EXIT)  # whatever the training loop is blocked in: the process ends, its slot comes back


class DriverClock:
    """The driver's side: starts the Clock, feeds it the study's median epoch time, keeps the budget.

    ``budget_s``: the study's --time-budget (None: none), counted from ``run_started`` (Unix time), of which
    ``spent_before`` seconds went to earlier driver runs. The trials' hard end is the budget's end less the confirmation stage's expected time (``confirm_epochs``
    study epochs over ``concurrent`` slots), so the stage still fits; no trial is proposed that would end past it
    (its ``max_epochs`` at the median epoch time).
    """

    def __init__(self, name: str, trial_timeout: float | None, budget_s: float | None, spent_before: float = 0.0,
                 max_epochs: int = 1, confirm_epochs: float = 0.0, concurrent: int = 1, run_started: float | None = None):
        self.name = name
        self.actor = start_clock(name, trial_timeout, None)
        self.budget_s, self.max_epochs = budget_s, max_epochs
        self.confirm_epochs, self.concurrent = confirm_epochs, max(1, concurrent)
        self.started = (run_started or time.time()) - spent_before  # the budget counts from the driver run's start
        self.epoch_seconds: list[float] = []
        self.budget_reached = False  # set once the budget stopped the search
        self._marks: dict[str, str] = {}
        self._push_budget()

    def median_epoch(self) -> float | None:
        if len(self.epoch_seconds) < MIN_EPOCHS:
            return None
        ordered = sorted(self.epoch_seconds)
        return ordered[len(ordered) // 2]

    def on_epoch(self, seconds: float) -> None:
        self.epoch_seconds.append(float(seconds))
        median = self.median_epoch()
        if median is not None:
            self.actor.set_median_epoch.remote(median)
            self._push_budget()

    def trials_end(self) -> float | None:
        """When the trials must have ended (Unix time): the budget's end less the confirmation stage's reserve."""
        if not self.budget_s:
            return None
        reserve = (self.median_epoch() or 0.0) * self.confirm_epochs / self.concurrent
        return self.started + self.budget_s - reserve

    def budget_spent(self) -> bool:
        """No room for another trial before the trials' end (a trial of every epoch at the median epoch time)."""
        end = self.trials_end()
        if end is None:
            return False
        if time.time() + (self.median_epoch() or 0.0) * self.max_epochs > end:
            self.budget_reached = True
        return self.budget_reached

    def timed_out(self, key: str) -> str | None:
        """Why the run named ``key`` on the Clock (``study.core.vocabulary.clock_key``) was timed out by its watchdog, or None."""
        import ray

        if key not in self._marks:
            why = ray.get(self.actor.timed_out.remote(key))
            if not why:
                return None
            self._marks[key] = why
            if "--time-budget" in why:
                self.budget_reached = True
        return self._marks[key]

    def for_confirmation(self) -> None:
        """The confirmation stage runs on what finished: the budget no longer stops its runs (the stall limit does)."""
        import ray

        ray.get(self.actor.set_budget_end.remote(None))

    def _push_budget(self) -> None:
        end = self.trials_end()
        if end is not None:
            self.actor.set_budget_end.remote(end)
