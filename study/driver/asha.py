"""ASHA whose rungs survive a restart of the driver.

Each driver run builds a new scheduler; before its first trial, ``replay`` feeds it the study's earlier
results in the order they arrived (a diverged epoch as 0, as the live scheduler counts it), through ASHA's
own bracket code, so the rungs, and the decision each result got, are what they were. A sample that an
earlier run left unfinished comes back as a new Ray trial: ``on_trial_add`` moves its replayed rung
entries to that trial's id, so it is not judged twice at the same rung.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from study.core.vocabulary import METRIC, MODE, is_confirmation

TIME_ATTR = "epoch"  # the loop's own epoch, not Ray's iteration count, which restarts in a resumed trial


@dataclass(frozen=True)
class _Replayed:
    trial_id: str  # the bracket code reads only this


def replay_key(number: int) -> str:
    return f"sample-{number}"


class ResumableASHA(ASHAScheduler):
    """Ray's ASHA with one bracket. Ray has no public API to read or seed a bracket's rungs, so ``replay`` and
    ``on_trial_add`` use ``_brackets`` and ``_Bracket._rungs`` (Ray is pinned in pyproject.toml; tests/test_resume.py's
    study, killed and resumed ten times, must end as the unkilled one, decisions included)."""

    def __init__(self, max_epochs: int, grace_period: int = 1, reduction_factor: float = 3):
        super().__init__(time_attr=TIME_ATTR, metric=METRIC, mode=MODE, max_t=max_epochs,
                         grace_period=min(grace_period, max_epochs), reduction_factor=reduction_factor, stop_last_trials=True)
        self.max_epochs = max_epochs
        self.sign = 1.0 if MODE == "max" else -1.0  # the brackets compare sign * metric, larger is better

    def replay(self, results: list[tuple[int, int, float]]) -> dict[int, str]:
        """Feed earlier results ``(sample, epoch, val_acc)`` in arrival order; return each sample's last decision
        (``TrialScheduler.STOP`` or ``CONTINUE``)."""
        bracket = self._brackets[0]
        decisions: dict[int, str] = {}
        for number, epoch, value in results:
            if epoch >= self.max_epochs:
                decisions[number] = TrialScheduler.STOP  # it ran every epoch
            decisions_now = bracket.on_result(_Replayed(replay_key(number)), epoch, self.sign * value)
            if epoch < self.max_epochs:
                decisions[number] = decisions_now
        return decisions

    # A confirmation run (the stage runs in the trials' Tune run: study.driver.searcher.StagedSearcher) trains every
    # epoch: ASHA neither judges nor records it.
    def on_trial_add(self, tune_controller, trial):
        if is_confirmation(trial.config):
            return
        super().on_trial_add(tune_controller, trial)
        old = replay_key(trial.config.get("optuna_trial"))
        for bracket in self._brackets:
            for _, recorded in bracket._rungs:
                if old in recorded:
                    recorded[trial.trial_id] = recorded.pop(old)

    # A diverged epoch reports NaN accuracy; in the rungs it counts as the worst result, not as a hole
    # (NaN would make ASHA's percentile of an all-NaN rung warn and compare as nothing).
    def on_trial_result(self, tune_controller, trial, result):
        if is_confirmation(trial.config):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, _nan_as_worst(result))

    def on_trial_complete(self, tune_controller, trial, result):
        if is_confirmation(trial.config):
            return
        return super().on_trial_complete(tune_controller, trial, _nan_as_worst(result))

    def on_trial_remove(self, tune_controller, trial):
        if is_confirmation(trial.config):
            return
        return super().on_trial_remove(tune_controller, trial)


def _nan_as_worst(result: dict | None) -> dict | None:
    if result and METRIC in result and isinstance(result[METRIC], float) and math.isnan(result[METRIC]):
        return {**result, METRIC: 0.0}  # accuracy: 0 is the worst
    return result
