"""Opt-in experiment trackers, through Ray Tune's own logger callbacks: TensorBoard and MLflow.

``--tensorboard``: Ray's ``TBXLoggerCallback`` writes each trial's per-epoch metrics, and its
hyperparameters when it ends, as TensorBoard event files in the trial's folder (under ``<study>/ray/run-K/``:
``tensorboard --logdir results/<name>/ray``). ``--mlflow URI``: Ray's ``MLflowLoggerCallback`` logs one MLflow
run per trial (its configuration as parameters, each epoch's metrics) to the experiment named after the study;
``sqlite:///path/mlflow.db`` and ``file:/path/mlruns`` work offline. Each needs its extra:
``pip install -e ".[tensorboard]"`` or ``".[mlflow]"``.
"""

from __future__ import annotations

import importlib.util
import os

from trainable import UserError


def check_trackers(tensorboard: bool, mlflow: str | None) -> None:
    """Fail at once, in one line, where a tracker was asked for and its package is missing."""
    if tensorboard and not _importable("tensorboardX"):
        raise UserError('--tensorboard needs tensorboardX: pip install -e ".[tensorboard]"')
    if mlflow is not None:
        if not _importable("mlflow"):
            raise UserError('--mlflow needs MLflow: pip install -e ".[mlflow]"')
        if "://" not in mlflow and not mlflow.startswith("file:"):
            raise UserError(f"--mlflow {mlflow!r} is not a tracking URI: use e.g. sqlite:///results/mlflow.db, "
                            "file:/abs/path/mlruns or http://host:5000")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (how the tests hide one)
        return False


def tracker_callbacks(trackers: dict, study_name: str) -> list:
    """The Tune callbacks for the trackers stored in study.json (``{"tensorboard": bool, "mlflow": uri}``), for the
    study's trials only (the confirmation's runs share their Tune run: ``study.driver.searcher.StagedSearcher``)."""
    return [_trials_only(callback) for callback in _tracker_callbacks(trackers, study_name)]


def _trials_only(callback):
    """``callback`` as Tune sees it, told of the study's trials and never of a confirmation run."""
    from ray.tune import Callback

    from study.core.vocabulary import is_confirmation

    class TrialsOnly(Callback):
        def __init__(self, inner):
            self.inner = inner

        def setup(self, **info):
            return self.inner.setup(**info)

        def on_trial_start(self, iteration, trials, trial, **info):
            if not is_confirmation(trial.config):
                self.inner.on_trial_start(iteration, trials, trial, **info)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not is_confirmation(trial.config):
                self.inner.on_trial_result(iteration, trials, trial, result, **info)

        def on_trial_complete(self, iteration, trials, trial, **info):
            if not is_confirmation(trial.config):
                self.inner.on_trial_complete(iteration, trials, trial, **info)

        def on_trial_error(self, iteration, trials, trial, **info):
            if not is_confirmation(trial.config):
                self.inner.on_trial_error(iteration, trials, trial, **info)

        def on_trial_restore(self, iteration, trials, trial, **info):
            if not is_confirmation(trial.config):
                self.inner.on_trial_restore(iteration, trials, trial, **info)

        def on_trial_save(self, iteration, trials, trial, **info):
            if not is_confirmation(trial.config):
                self.inner.on_trial_save(iteration, trials, trial, **info)

        def on_experiment_end(self, trials, **info):
            self.inner.on_experiment_end([t for t in trials if not is_confirmation(t.config)], **info)

        def get_state(self):
            return self.inner.get_state()

        def set_state(self, state):
            self.inner.set_state(state)

    return TrialsOnly(callback)


def _tracker_callbacks(trackers: dict, study_name: str) -> list:
    callbacks = []
    if trackers.get("tensorboard"):
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    if trackers.get("mlflow"):
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        import logging

        for name in ("mlflow", "alembic"):  # their INFO lines (database set-up) are not the study's to print
            logging.getLogger(name).setLevel(logging.WARNING)
        uri = trackers["mlflow"]
        if uri.startswith("file:"):  # MLflow 3 keeps its file store for those who ask for it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=study_name, tags={"study": study_name},
                                              save_artifact=False))
    return callbacks
