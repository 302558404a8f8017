"""A Ray Tune searcher on Optuna's ask/tell API that tells Optuna the truth about early-stopped trials.

Ray's own ``OptunaSearch`` creates its study with a no-op pruner and tells every finished trial
COMPLETE, so TPE takes a trial ASHA cut after one epoch as a final result. Here each epoch is reported as
an intermediate value; a trial that ran all epochs is COMPLETE with its best validation accuracy, one that
ASHA stopped (or that diverged) is PRUNED at its last epoch (TPE uses pruned trials by their last value),
one that crashed is FAIL. The study lives in an Optuna storage beside the results, so optuna-dashboard and
the analysis can open it, and the searcher's own state is plain JSON (nothing unpickled).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from .space import to_distributions

METRIC, MODE = "val_acc", "max"
STATE_FILE = "searcher-state-{}.json"


def storage_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


class AskTellOptunaSearch(Searcher):
    CKPT_FILE_TMPL = STATE_FILE

    def __init__(self, space: dict, storage: str, study_name: str, max_epochs: int, seed: int = 0,
                 baseline: dict | None = None, fixed: dict | None = None):
        super().__init__(metric=METRIC, mode=MODE)
        self._space = space
        self._storage = storage
        self._study_name = study_name
        self._max_epochs = max_epochs
        self._seed = seed
        self._baseline = baseline
        self._fixed = dict(fixed or {})
        self._trial_numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self._best: dict[str, float] = {}  # Ray trial id -> best val_acc so far
        self._last_epoch: dict[str, int] = {}
        self._finished: set[str] = set()
        self._study: optuna.Study | None = None

    # --- the Optuna study, opened lazily (it holds a DB connection and is not pickled) ------------------
    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = optuna.samplers.TPESampler(seed=self._seed, n_startup_trials=5)
            self._study = optuna.create_study(
                study_name=self._study_name, storage=self._storage, direction="maximize",
                sampler=sampler, load_if_exists=True,
            )
            if self._baseline and not self._study.trials:
                self._study.enqueue_trial(self._baseline, user_attrs={"baseline": True})
        return self._study

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_study"] = None
        return state

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is ours; metric and mode are fixed

    def suggest(self, trial_id: str) -> dict | None:
        trial = self.study.ask(to_distributions(self._space))
        self._trial_numbers[trial_id] = trial.number
        trial.set_user_attr("ray_trial_id", trial_id)
        return {**self._fixed, **trial.params, "optuna_trial": trial.number,
                "baseline": bool(trial.user_attrs.get("baseline", False))}

    def _trial(self, trial_id: str) -> optuna.Trial | None:
        number = self._trial_numbers.get(trial_id)
        if number is None:
            return None
        return optuna.Trial(self.study, self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        epoch, value = result.get("epoch"), result.get(METRIC)
        trial = self._trial(trial_id)
        if trial is None or epoch is None or value is None or result.get("diverged") or math.isnan(value):
            return
        if epoch > self._last_epoch.get(trial_id, 0):  # a resumed trial may repeat an epoch: report once
            trial.report(float(value), step=int(epoch))
            self._last_epoch[trial_id] = int(epoch)
        self._best[trial_id] = max(self._best.get(trial_id, -math.inf), float(value))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._trial(trial_id)
        if trial is None or trial_id in self._finished:
            return
        result = result or {}
        if not error and result:
            self.on_trial_result(trial_id, result)  # Ray passes a trial's final result here only
        epochs_run = int(result.get("epoch", 0) or 0)
        storage = self.study._storage
        if storage.get_trial(trial._trial_id).state.is_finished():
            self._finished.add(trial_id)
            return
        if error:
            trial.set_user_attr("status", "errored")
            self.study.tell(trial, state=TrialState.FAIL)
        elif result.get("diverged"):
            trial.set_user_attr("status", "diverged")
            # pruned at the step it diverged, with the worst accuracy: TPE learns to avoid the region
            trial.report(0.0, step=max(epochs_run, self._last_epoch.get(trial_id, 0) + 1))
            self.study.tell(trial, state=TrialState.PRUNED)
        elif epochs_run < self._max_epochs:
            trial.set_user_attr("status", "stopped early")
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr("status", "completed")
            self.study.tell(trial, self._best.get(trial_id, float(result.get(METRIC, 0.0))))
        self._finished.add(trial_id)

    # --- state: JSON beside Ray's experiment state; the study itself lives in its storage --------------
    def save(self, checkpoint_path: str) -> None:
        state = {"trial_numbers": self._trial_numbers, "best": self._best, "last_epoch": self._last_epoch,
                 "finished": sorted(self._finished)}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self._trial_numbers = {k: int(v) for k, v in state["trial_numbers"].items()}
        self._best = {k: float(v) for k, v in state["best"].items()}
        self._last_epoch = {k: int(v) for k, v in state["last_epoch"].items()}
        self._finished = set(state["finished"])
        self.fail_orphans()

    def fail_orphans(self) -> None:
        """Optuna trials asked for but never tracked by Ray (the driver died in between) are marked FAIL."""
        known = set(self._trial_numbers.values())
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known:
                self.study.tell(trial.number, state=TrialState.FAIL)
                logging.getLogger(__name__).info("marked orphan Optuna trial %d as failed", trial.number)
