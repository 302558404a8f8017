"""The study's Optuna study (``optuna.db``): opened, told how each trial ended, and given finished trials it did not
run itself (a rebuild from the tables, another study's trials carried by ``--warm-start``), each the one way.

How a status becomes an Optuna state is the vocabulary's (``study.core.vocabulary.optuna_state``); this module
applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna

from study.core.vocabulary import constraints_of, optuna_state

N_STARTUP_TRIALS = 5
WARM_START_ATTR = "warm_start"  # the user attribute of a trial carried from another study as an observation


@dataclass
class Unfinished:
    """A sample an earlier driver run started but did not finish: run it again, from its checkpoint if any."""

    number: int
    params: dict
    baseline: bool = False
    trial_dir: str | None = None


def sampler_seed(seed: int, trials_so_far: int) -> int:
    """The sampler's seed for a driver run that finds ``trials_so_far`` trials in the study.

    A resumed study must not replay the random start-up draws of the run before it: the seed moves on with
    the study (and is still the same for the same study at the same point).
    """
    return int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])


def open_study(storage: str, name: str, seed: int, baseline: dict | None) -> optuna.Study:
    """The study's Optuna study, created where it does not exist yet (the book's recipe enqueued as trial 0)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = len(optuna.load_study(study_name=name, storage=storage).trials) if _exists(storage, name) else 0
    sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, existing), n_startup_trials=N_STARTUP_TRIALS)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler, load_if_exists=True)
    if baseline and not study.trials:
        study.enqueue_trial(dict(baseline), user_attrs={"baseline": True})  # the book's recipe is trial 0
    return study


def _exists(storage: str, name: str) -> bool:
    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage=storage))


def handle(study: optuna.Study, number: int) -> optuna.Trial:
    """A Trial for a RUNNING trial asked by this or an earlier process (to report and set attributes on).

    Optuna 5.0 has no public way to get a ``Trial`` for a trial number: ``FrozenTrial._trial_id`` is the
    storage id its constructor needs (``study.tell`` takes a number, ``Trial.report`` needs a Trial).
    """
    frozen = study.get_trials(deepcopy=False)[number]
    return optuna.Trial(study, frozen._trial_id)


def tell_finished(study: optuna.Study, trial: optuna.Trial, status: str, best: float | None, error: str | None = None) -> None:
    """Tell Optuna how a running trial ended (``status`` as in trials.parquet)."""
    if constraints := constraints_of(status):
        for key, value in constraints.items():
            trial.set_constraint(key, value)  # infeasible: TPE ranks it after every trial that trained
    trial.set_user_attr("status", status)
    if error:
        trial.set_user_attr("error", error)
    state = _state(status, best)
    study.tell(trial.number, best if state == optuna.trial.TrialState.COMPLETE else None, state=state)


def _state(status: str, best: float | None):
    """The Optuna ``TrialState`` a finished trial is told as: a completed one without a finite value as FAIL (nothing TPE
    could use)."""
    state = optuna_state(status)
    if state == optuna.trial.TrialState.COMPLETE and (best is None or not math.isfinite(best)):
        return optuna.trial.TrialState.FAIL
    return state


def add_finished(study: optuna.Study, params: dict, distributions: dict, status: str, values: dict[int, float],
                 user_attrs: dict) -> None:
    """A finished trial the study did not run here (``values``: its validation accuracy per epoch), told as a trial
    that ran here would have been (``tell_finished``)."""
    value = max(values.values()) if optuna_state(status) == optuna.trial.TrialState.COMPLETE and values else None
    state = _state(status, value)
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=distributions, state=state, value=value, intermediate_values=values,
        user_attrs={"status": status, **user_attrs}, constraints=constraints_of(status)))


def is_observation(trial) -> bool:
    """An Optuna trial of B's study that is one of A's, carried as an observation (not one of B's own trials)."""
    return WARM_START_ATTR in trial.user_attrs

