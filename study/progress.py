"""The study's console output: one line per finished trial, a live status line on a terminal."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console


class Progress:
    def __init__(self, samples: int):
        self.samples = samples
        self.console = Console(highlight=False, soft_wrap=True)
        self._status = None

    def _live(self):
        if self._status is None and self.console.is_terminal:
            self._status = self.console.status("starting trials...")
            self._status.start()
        return self._status

    def update(self, tables) -> None:
        status = self._live()
        if status is None:
            return
        counts = tables.counts()
        running = counts.get("running", 0)
        best = max((t.get("best_val_acc") or 0 for t in tables.trials.values() if t.get("best_val_acc") == t.get("best_val_acc")), default=0)
        status.update(f"{running} running, {len(tables.trials) - running}/{self.samples} done, best val acc {best:.3f}")

    def note(self, line: str) -> None:
        self.console.print(line, markup=False)
        sys.stdout.flush()

    def finished(self, tables, number: int, params: list[str], log: Path | None = None) -> None:
        trial = tables.trials[number]
        done = sum(1 for t in tables.trials.values() if t["status"] != "running")
        values = "  ".join(f"{p}={_fmt(trial.get(p))}" for p in params)
        tag = " (baseline)" if trial.get("baseline") else ""
        acc = trial.get("best_val_acc")
        acc_text = f"{acc:.3f}" if isinstance(acc, float) and acc == acc else "-"
        line = f"[{done}/{self.samples}] trial {number}{tag}: {trial['status']} after {trial.get('epochs_run', 0)} epoch(s), best val acc {acc_text}  {values}"
        if trial.get("error"):
            line += f"\n    error: {trial['error']}" + (f" (log: {log})" if log else "")
        self.console.print(line, markup=False)
        sys.stdout.flush()

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
