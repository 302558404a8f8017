"""ASHA that rebuilds its rungs after a restore.

Ray does not carry the scheduler's rungs over a hard kill of the driver; without them resumed and new
trials would be judged against empty rungs. On its first trial after being (re)created, this scheduler
replays the per-epoch results table of the study, so the rungs are what they were.
"""

from __future__ import annotations

import math
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler

from .results import StudyTables
from .searcher import METRIC, MODE

TIME_ATTR = "epoch"  # the loop's own epoch, not Ray's iteration count, which restarts after a hard kill


class ResumableASHA(ASHAScheduler):
    def __init__(self, max_epochs: int, study_folder: Path | None = None, grace_period: int = 1, reduction_factor: float = 3):
        super().__init__(time_attr=TIME_ATTR, metric=METRIC, mode=MODE, max_t=max_epochs,
                         grace_period=min(grace_period, max_epochs), reduction_factor=reduction_factor)
        self._study_folder = study_folder
        self._replayed = False

    def replay(self, values: dict[str, dict[int, float]]) -> None:
        """``values[trial_id][epoch] = val_acc`` of earlier results: fill the rungs as they were."""
        for bracket in self._brackets[:1]:
            for milestone, recorded in bracket._rungs:
                for trial_id, by_epoch in values.items():
                    reached = sorted(e for e in by_epoch if e >= milestone)
                    if reached and trial_id not in recorded:  # ASHA records the first result at/past a milestone
                        recorded[trial_id] = self._metric_op * _worst_if_nan(by_epoch[reached[0]])
        self._replayed = True

    def on_trial_add(self, tune_controller, trial):
        if not self._replayed and self._study_folder is not None:
            self.replay(StudyTables(self._study_folder, [], self._max_t, 0).history())
        self._replayed = True
        super().on_trial_add(tune_controller, trial)

    # A diverged epoch reports NaN accuracy; in the rungs it counts as the worst result, not as a hole
    # (NaN would make ASHA's percentile of an all-NaN rung warn and compare as nothing).
    def on_trial_result(self, tune_controller, trial, result):
        return super().on_trial_result(tune_controller, trial, _nan_as_worst(result))

    def on_trial_complete(self, tune_controller, trial, result):
        return super().on_trial_complete(tune_controller, trial, _nan_as_worst(result))

    def __getstate__(self):
        return {**self.__dict__, "_replayed": False}


def _worst_if_nan(value: float) -> float:
    return 0.0 if value is None or math.isnan(value) else value  # accuracy: 0 is the worst


def _nan_as_worst(result: dict | None) -> dict | None:
    if result and METRIC in result and isinstance(result[METRIC], float) and math.isnan(result[METRIC]):
        return {**result, METRIC: _worst_if_nan(result[METRIC])}
    return result
