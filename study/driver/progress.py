"""The study's console output: one line per finished trial, a live status line on a terminal, and an ETA.

The ETA is an estimate, and says so: the work still to do, spread over the trials that run at once. A trial
still to start costs its fixed cost (the median of the finished trials' hold on their slot less their epochs),
a first epoch (the median first epoch: it pays for set-up a later one does not) and its later epochs (the
median later epoch each). The epochs still to train count what ASHA will likely stop: a trial at epoch k goes
on past each rung with the share of trials that did so far (before any did, the share ASHA keeps,
1 / reduction factor, weighted as two trials), so the many trials stopped after a rung or two are not counted
as if they ran every epoch. The confirmation stage's runs, when it is on, are added.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from rich.console import Console

from study.core.timing import run_costs
from study.core.values import fmt
from study.core.vocabulary import COMPLETED, RUNNING, STOPPED_EARLY
from study.driver.rungs import asha_rungs


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(self, samples: int, max_epochs: int = 1, concurrent: int = 1, grace: int = 1, reduction_factor: float = 3,
                 extra_epochs: float = 0.0, extra_runs: int = 0):
        self.samples, self.max_epochs, self.concurrent = samples, max_epochs, max(1, concurrent)
        self.milestones = sorted(r for r in asha_rungs(grace, max_epochs, reduction_factor) if r < max_epochs)  # where ASHA decides
        self.keep = 1 / reduction_factor
        self.extra_epochs = extra_epochs  # the confirmation stage's runs still to do, in epochs (its plan, then what is left)
        self.extra_runs = extra_runs  # and how many runs they are (each with its fixed cost and first epoch)
        self.console = Console(highlight=False, soft_wrap=True)
        self.started = time.monotonic()
        self._status = None

    # --- the estimate --------------------------------------------------------------------------------------
    def _pass_rate(self, tables, milestone: float) -> float:
        """The share of trials that went on past ``milestone`` among those ASHA judged there (a prior of 1/rf)."""
        went_on = judged = 0
        for trial in tables.trials.values():
            run = trial.get("epochs_run") or 0
            if run > milestone:
                went_on += 1
                judged += 1
            elif run >= milestone and trial.get("status") in (STOPPED_EARLY, COMPLETED):
                judged += 1
        return (went_on + 2 * self.keep) / (judged + 2)

    def expected_epochs(self, tables, after: int) -> float:
        """Epochs a trial now at epoch ``after`` will likely still train."""
        rates = {m: self._pass_rate(tables, m) for m in self.milestones}
        total, reach = 0.0, 1.0
        for epoch in range(after + 1, self.max_epochs + 1):
            for m in self.milestones:
                if after < math.ceil(m) == epoch - 1:  # a rung still ahead, decided when the epoch before ended
                    reach *= rates[m]
            total += reach
        return total

    def confirmation_left(self, runs: int, epochs: float) -> None:
        """The confirmation stage began: ``runs`` runs of ``epochs`` study epochs in all are what is left of it."""
        self.extra_runs, self.extra_epochs = runs, epochs

    def eta(self, tables) -> float | None:
        """Seconds left (an estimate), or None before any epoch has been timed."""
        costs = run_costs(tables.trials.values(), tables.epochs.values())
        if math.isnan(costs.first_epoch) and math.isnan(costs.later_epoch):
            return None
        later = costs.later_epoch if not math.isnan(costs.later_epoch) else costs.first_epoch
        first = costs.first_epoch if not math.isnan(costs.first_epoch) else later
        fixed = 0.0 if math.isnan(costs.fixed) else costs.fixed

        def new_run(epochs: float) -> float:  # a run not yet started: its fixed cost, a first epoch, the later ones
            return fixed + first + max(0.0, epochs - 1) * later

        fresh = self.expected_epochs(tables, 0)
        left = self.extra_epochs * later + self.extra_runs * (fixed + first - later)
        started = 0
        for trial in tables.trials.values():
            started += 1
            if trial.get("status") == RUNNING:
                done = int(trial.get("epochs_run") or 0)
                left += new_run(fresh) - fixed if done == 0 else self.expected_epochs(tables, done) * later
        left += max(0, self.samples - started) * new_run(fresh)
        return left / self.concurrent

    def status_text(self, tables) -> str:
        counts = tables.counts()
        running = counts.get(RUNNING, 0)
        done = len(tables.trials) - running
        scored = [t["best_val_acc"] for t in tables.trials.values() if t.get("best_val_acc") == t.get("best_val_acc")
                  and t.get("best_val_acc") is not None]
        best = f", best val acc {max(scored):.3f}" if scored else ""
        eta = self.eta(tables)
        stage = "" if done < self.samples else " for the confirmation stage"
        left = f", ETA ~{duration(eta)}{stage} (an estimate)" if eta else ""
        return f"{done}/{self.samples} done, {running} running{best}, elapsed {duration(time.monotonic() - self.started)}{left}"

    # --- output --------------------------------------------------------------------------------------------
    def _live(self):
        if self._status is None and self.console.is_terminal:
            self._status = self.console.status("starting trials...")
            self._status.start()
        return self._status

    def update(self, tables) -> None:
        status = self._live()
        if status is not None:
            status.update(self.status_text(tables))

    def note(self, line: str) -> None:
        self.console.print(line, markup=False)
        sys.stdout.flush()

    def finished(self, tables, number: int, params: list[str], log: Path | None = None) -> None:
        trial = tables.trials[number]
        done = sum(1 for t in tables.trials.values() if t["status"] != RUNNING)
        values = "  ".join(f"{p}={fmt(trial.get(p))}" for p in params)
        tag = " (baseline)" if trial.get("baseline") else ""
        acc = trial.get("best_val_acc")
        acc_text = f"{acc:.3f}" if isinstance(acc, float) and acc == acc else "-"
        line = f"[{done}/{self.samples}] trial {number}{tag}: {trial['status']} after {trial.get('epochs_run', 0)} epoch(s), best val acc {acc_text}  {values}"
        if trial.get("error"):
            line += f"\n    error: {trial['error']}" + (f" (log: {log})" if log else "")
        if not self.console.is_terminal:  # a log: the progress rides on each finished trial's line
            line += f"\n    progress: {self.status_text(tables)}"
        self.console.print(line, markup=False)
        sys.stdout.flush()

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


DECODE_PROGRESS_FROM = 1000  # files: a smaller folder decodes in a few seconds, and a bar would be noise
DECODE_LINE_EVERY_S = 10.0  # in a log (no terminal): a progress line this often


def decode_progress(log=print):
    """A ``progress(done, total)`` for ``trainable.data.prepare_data``: on a terminal a bar with the rate and an ETA, in a
    log a line every ``DECODE_LINE_EVERY_S``, for folders of ``DECODE_PROGRESS_FROM`` files or more (a split the cache
    holds is not decoded: nothing is shown)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

    state: dict = {}

    def progress(done: int, total: int) -> None:
        if total < DECODE_PROGRESS_FROM:
            return
        now = time.monotonic()
        if state.get("total") != total or done <= 1:  # a new split
            state.update(total=total, started=now, said=now, bar=None)
            if Console().is_terminal:
                state["bar"] = Bar(TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                   TimeRemainingColumn(), transient=True)
                state["bar"].start()
                state["task"] = state["bar"].add_task("decode", total=total, rate="")
        rate = done / max(now - state["started"], 1e-9)
        if state.get("bar") is not None:
            state["bar"].update(state["task"], completed=done, rate=f"{rate:.0f} photos/s")
        elif now - state["said"] >= DECODE_LINE_EVERY_S:
            state["said"] = now
            log(f"decoding: {done:,} of {total:,} photos, {rate:.0f} photos/s, about {duration((total - done) / max(rate, 1e-9))} left")
        if done == total and state.get("bar") is not None:
            state["bar"].stop()
            state["bar"] = None

    return progress
