"""A Ray Tune searcher on Optuna's ask/tell API that tells Optuna the truth about every trial.

Ray's own ``OptunaSearch`` creates its study with a no-op pruner and tells every finished trial COMPLETE,
so TPE takes a trial ASHA cut after one epoch as a final result. Here each epoch is an intermediate value,
and a trial ends as:

- COMPLETE with its best validation accuracy, when it ran every epoch;
- PRUNED at its last epoch, when ASHA stopped it (TPE ranks pruned trials by how far they got, then by
  their last value);
- PRUNED and *infeasible* (``Trial.set_constraint("diverged", 1)``), when its loss diverged. TPE ranks
  infeasible trials after every feasible one, complete or pruned, so a recipe that blows up never looks
  better than one that trained, however late it blew up. (Told as PRUNED alone it would rank by its step
  and beat every trial ASHA stopped earlier; a COMPLETE value of 0 would rank above every pruned trial.)
- FAIL, when it raised: TPE ignores it.

The study lives in an Optuna storage beside the results, the only state this searcher has: a driver run
that resumes the study opens it again, and hands out first the samples an earlier run left unfinished,
with their own Optuna trial numbers and parameters.
"""

from __future__ import annotations

import math

import optuna
from ray.tune.search import Searcher

from study.core.optuna_store import Unfinished, handle, open_study, tell_finished
from study.core.space import to_distributions
from study.core.vocabulary import COMPLETED, DIVERGED, ERRORED, METRIC, MODE, STOPPED_EARLY, TIMED_OUT, clock_key
from study.driver import faults


class AskTellOptunaSearch(Searcher):
    def __init__(self, space: dict, storage: str, study_name: str, max_epochs: int, seed: int = 0,
                 baseline: dict | None = None, fixed: dict | None = None, unfinished: list[Unfinished] | None = None,
                 clock=None, study: optuna.Study | None = None):
        super().__init__(metric=METRIC, mode=MODE)
        self._space = space
        self._storage = storage
        self._study_name = study_name
        self._max_epochs = max_epochs
        self._seed = seed
        self._baseline = baseline
        self._fixed = dict(fixed or {})
        self._unfinished = list(unfinished or [])
        self._numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self._trials: dict[str, optuna.Trial] = {}
        self._reported: dict[int, set[int]] = {}  # Optuna number -> steps with an intermediate value
        self._diverged: set[int] = set()
        self._study: optuna.Study | None = study  # open_study's, where the caller opened it already
        self._clock = clock  # study.run's DriverClock: says when the time budget leaves no room for another trial

    # --- the Optuna study, opened lazily (it holds a DB connection and is not pickled) ------------------
    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = open_study(self._storage, self._study_name, self._seed, self._baseline)
        return self._study

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_study"] = None
        state["_trials"] = {}
        state["_clock"] = None  # an actor handle and the driver's timers: this process's only
        return state

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is ours; metric and mode are fixed

    # The study's state is optuna.db and the parquet tables; Ray's searcher state file is not used.
    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        pass

    def suggest(self, trial_id: str) -> dict | None:
        if self._clock is not None and self._clock.budget_spent():
            return Searcher.FINISHED  # a new trial would run past the study's --time-budget
        extra = {}
        if self._unfinished:
            item = self._unfinished.pop(0)
            trial, params, baseline = handle(self.study, item.number), item.params, item.baseline
            extra = {"resume_dir": item.trial_dir} if item.trial_dir else {}  # no None in a config: trackers log it
        else:
            trial = self.study.ask(to_distributions(self._space))
            params, baseline = trial.params, bool(trial.user_attrs.get("baseline", False))
        faults.at("asked")
        trial.set_user_attr("ray_trial_id", trial_id)
        self._numbers[trial_id] = trial.number
        self._trials[trial_id] = trial
        self._reported.setdefault(trial.number, set(self._frozen(trial.number).intermediate_values))
        return {**self._fixed, **params, "optuna_trial": trial.number, "baseline": baseline, **extra}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self._trials.get(trial_id)
        if trial is None or result.get("trial_error") is not None:
            return
        epoch, value = result.get("epoch"), result.get(METRIC)
        if epoch is None:
            return
        if result.get("diverged"):
            self._diverged.add(trial.number)
            return
        reported = self._reported.setdefault(trial.number, set())
        if value is not None and not math.isnan(value) and int(epoch) not in reported:  # a resumed trial may repeat an epoch
            trial.report(float(value), step=int(epoch))
            reported.add(int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._trials.get(trial_id)
        if trial is None:
            return
        number = trial.number
        if self._frozen(number).state.is_finished():
            return
        result = result or {}
        if result.get("disk_full"):
            return  # interrupted, not failed: it stays RUNNING and resumes once space is freed
        if not error and result and result.get("trial_error") is None:
            self.on_trial_result(trial_id, result)  # Ray passes a trial's final result here only
        values = self._frozen(number).intermediate_values
        epochs_run = max(values, default=0)
        timed_out = self._clock.timed_out(clock_key(number)) if self._clock is not None else None
        if timed_out:
            status = TIMED_OUT
        elif error or result.get("trial_error") is not None:
            status = ERRORED
        elif number in self._diverged or result.get("diverged"):
            status = DIVERGED
        else:
            epochs_run = max(epochs_run, int(result.get("epoch") or 0))
            status = COMPLETED if epochs_run >= self._max_epochs else STOPPED_EARLY
        best = max(values.values(), default=None)
        tell_finished(self.study, trial, status, best, error=result.get("trial_error") or timed_out)

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return self.study.get_trials(deepcopy=False)[number]


class StagedSearcher(Searcher):
    """The study's trials, then its confirmation stage's runs, from one searcher: one Tune run for both, so the
    confirmation's runs land on the worker processes the trials warmed (torch imported; the model, its starting
    weights and the images on the device: ``trainable.worker_cache``).

    It hands out ``trials`` (``AskTellOptunaSearch``) until ``to_run`` trials were proposed (or the searcher says the
    time budget leaves no room), waits while any still runs (the candidates are the finished trials' best), then, where
    ``may_confirm()``, hands out the configs ``begin_confirmation()`` returns, and then no more."""

    def __init__(self, trials: AskTellOptunaSearch, to_run: int, may_confirm, begin_confirmation):
        super().__init__(metric=METRIC, mode=MODE)
        self.trials, self.to_run = trials, to_run
        self.may_confirm, self.begin_confirmation = may_confirm, begin_confirmation
        self._proposed = 0
        self._running: set[str] = set()  # the trials proposed and not yet ended
        self._jobs: list[dict] | None = None  # the confirmation's configs, once it began

    def __getstate__(self):  # Ray pickles the searcher with the experiment: the driver's live hooks stay here
        return {**self.__dict__, "may_confirm": None, "begin_confirmation": None}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass  # the study's own state (optuna.db, the tables, confirm.parquet) is what resumes it

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        pass

    def suggest(self, trial_id: str) -> dict | None:
        if self._jobs is None:
            if self._proposed < self.to_run:
                config = self.trials.suggest(trial_id)
                if config is Searcher.FINISHED:
                    self.to_run = self._proposed  # the time budget: no more trials, the stage confirms what finished
                elif config is not None:
                    self._proposed += 1
                    self._running.add(trial_id)
                    return config
                else:
                    return None
            if self._running:
                return None  # the last trials still run: the candidates are not known yet
            self._jobs = list(self.begin_confirmation()) if self.may_confirm() else []  # each a confirmation run's config
        return self._jobs.pop(0) if self._jobs else Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._running:
            self.trials.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._running:
            self._running.discard(trial_id)
            self.trials.on_trial_complete(trial_id, result, error)

