"""The study's console output: one line per finished trial, a live status line on a terminal."""

from __future__ import annotations

import sys

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

    def update(self, trials: dict[str, dict]) -> None:
        status = self._live()
        if status is None:
            return
        counts = _counts(trials)
        best = max((t.get("best_val_acc") or 0 for t in trials.values()), default=0)
        status.update(f"{counts.get('running', 0)} running, {len(trials) - counts.get('running', 0)}/{self.samples} done, best val acc {best:.3f}")

    def finished(self, trials: dict[str, dict], trial: dict, params: list[str]) -> None:
        done = sum(1 for t in trials.values() if t["status"] != "running")
        values = "  ".join(f"{p}={_fmt(trial.get(p))}" for p in params)
        tag = " (baseline)" if trial.get("baseline") else ""
        acc = trial.get("best_val_acc")
        acc_text = f"{acc:.3f}" if isinstance(acc, float) and acc == acc else "-"
        line = f"[{done}/{self.samples}] trial {trial.get('optuna_trial')}{tag}: {trial['status']} after {trial.get('epochs_run', 0)} epoch(s), best val acc {acc_text}  {values}"
        if trial.get("error"):
            line += f"\n    error: {trial['error']}"
        self.console.print(line, markup=False)
        sys.stdout.flush()

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _counts(trials: dict[str, dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials.values():
        out[t["status"]] = out.get(t["status"], 0) + 1
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
