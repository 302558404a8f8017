"""The study's vocabulary, in one place: every stage, the searcher, the tables, the comparison and the analysis
speak it, and none defines a word of it again.

- **The hyperparameters** a study may search, their column types, the metric.
- **A trial's status**: how it ended, which statuses are finished, failed or usable, and how each maps to Optuna's
  trial states (what TPE learns from it).
- **A confirmation run**: how a Tune config says it is one (not a trial), its folder's name, its key on the clock,
  its fold's seed, and its score when it failed.

It imports only ``study.core.values``, and Optuna only inside the functions that map to its states: every module may
import it.
"""

from __future__ import annotations

from trainable.config import HYPERPARAMETERS, TrainConfig

from study.core.values import isnan, plain

__all__ = ["HYPERPARAMETERS"]  # re-exported: the searchable TrainConfig fields are named in trainable.config

# --- the hyperparameters and the metric -----------------------------------------------------------------
# Each hyperparameter's column type in the study's tables, from its TrainConfig field's type.
PARAM_TYPES = {p: {float: "float64", int: "int64", str: "str"}[type(getattr(TrainConfig(), p))] for p in HYPERPARAMETERS}
INT_HYPERPARAMETERS = tuple(p for p, kind in PARAM_TYPES.items() if kind == "int64")
METRIC, MODE = "val_acc", "max"


def typed(name: str, value):
    """A hyperparameter's value as its trial config holds it: a plain Python value, an int for the integer ones."""
    value = plain(value)
    return int(value) if name in INT_HYPERPARAMETERS and value is not None else value


# The book's fine-tuned ResNet18 on its hotdog.zip: 5 epochs, 224 px, ImageNet weights (d2l "Fine-Tuning").
BOOK_FIGURE = "the book: 0.940 (0.933 +- 0.012 over its builds)"
BOOK_CLASSES = ["hotdog", "not-hotdog"]
BOOK_TRAIN_IMAGES, BOOK_TEST_IMAGES = 2000, 800

# --- a trial's status (trials.parquet's ``status``, optuna.db's ``user_attrs["status"]``) --------------------
RUNNING = "running"
COMPLETED = "completed"  # every epoch ran
STOPPED_EARLY = "stopped early"  # ASHA stopped it at a rung
DIVERGED = "diverged"  # its loss became NaN or infinite
ERRORED = "errored"  # it raised
TIMED_OUT = "timed_out"  # past --trial-timeout, the stall limit or the time budget (study.driver.clock)
FINISHED = (COMPLETED, STOPPED_EARLY, DIVERGED, ERRORED, TIMED_OUT)
FAILED = (DIVERGED, ERRORED, TIMED_OUT)  # no usable result: ranked last, never rerun by default
TRAINED = (COMPLETED, STOPPED_EARLY)  # a recipe that trained: usable where it has a validation accuracy


def usable(status, best_val_acc) -> bool:
    """A trial whose recipe trained and scored: the confirmation stage's candidates, a warm start's winners."""
    return status in TRAINED and not isnan(best_val_acc)


def usable_rows(trials):
    """``usable`` over a trials DataFrame: a boolean mask."""
    return trials["status"].isin(TRAINED) & trials["best_val_acc"].notna()


# How Optuna is told each status (docs/results.md): TPE ranks a PRUNED trial by how far it got, an infeasible one
# (the "diverged" constraint) after every feasible one, and ignores a FAIL.
OPTUNA_STATES = {COMPLETED: "COMPLETE", STOPPED_EARLY: "PRUNED", DIVERGED: "PRUNED", ERRORED: "FAIL", TIMED_OUT: "FAIL"}
INFEASIBLE = {"diverged": 1.0}  # the constraint a diverged trial carries


def optuna_state(status: str):
    """The Optuna ``TrialState`` a finished status is told as (RUNNING for one still running)."""
    from optuna.trial import TrialState

    return TrialState[OPTUNA_STATES.get(status, "RUNNING")]


def constraints_of(status: str) -> dict | None:
    return dict(INFEASIBLE) if status == DIVERGED else None


def status_of(frozen) -> str:
    """A finished Optuna trial's status as the study recorded it (its ``status`` attribute, else from its state)."""
    from optuna.trial import TrialState

    if frozen.state == TrialState.COMPLETE:
        return COMPLETED
    recorded = frozen.user_attrs.get("status")
    if recorded in FINISHED:
        return recorded
    return ERRORED if frozen.state == TrialState.FAIL else STOPPED_EARLY


# --- a confirmation run ----------------------------------------------------------------------------------
# The confirmation stage's runs share the trials' Tune run: a config {"job": {...}} is a confirmation run, any other
# config a trial. Only this module looks inside.
_JOB = "job"
RUN_ENDED = (COMPLETED, DIVERGED, ERRORED, TIMED_OUT)  # how a confirmation run ends (it trains every epoch)
FAILED_RUN_SCORE = 0.0  # a confirmation run that failed counts as the worst accuracy, never as a hole


def confirmation_config(job: dict) -> dict:
    """The Tune config of a confirmation run."""
    return {_JOB: job}


def is_confirmation(config: dict) -> bool:
    return _JOB in config


def run_config(config: dict) -> dict:
    """What the run trains with: a confirmation run's job, or the trial's own config."""
    return dict(config[_JOB]) if _JOB in config else config


def run_dirname(trial) -> str:
    """The Tune trial's folder name: ``confirm_<id>`` for a confirmation run, ``trial_<id>`` for a trial."""
    return f"{'confirm' if is_confirmation(trial.config) else 'trial'}_{trial.trial_id}"


def run_key(config: dict) -> tuple[int, int | None]:
    """(configuration, fold) of a run: a trial's fold is None."""
    run = run_config(config)
    return int(run["optuna_trial"]), (int(run["val_fold"]) if is_confirmation(config) else None)


def clock_key(number: int, fold: int | None = None) -> str:
    """A run's name on the study's Clock (study.driver.clock): a trial, or a configuration on a fold."""
    return f"trial {number}" if fold is None else f"confirm {number} fold {fold}"


def fold_seed(study_seed: int, fold: int) -> int:
    """The training seed of every confirmation run on ``fold``: its own per fold (the spread between folds holds the
    seed noise), shared by the configurations (the comparisons stay paired)."""
    return int(study_seed) + int(fold)


def run_score(status: str, val_acc) -> float:
    """A confirmation run's score: its validation accuracy where it completed, ``FAILED_RUN_SCORE`` where it failed."""
    return float(val_acc) if status == COMPLETED and not isnan(val_acc) else FAILED_RUN_SCORE
