"""The options of ``python -m study.run`` as one dataclass: parsed once (``StudyOptions.parse``), checked in one
table (``check``), turned into the study's settings (``new_settings``, stored in ``study.json``), and merged into
the stored settings on ``--resume`` (``merge_into``: what may change is taken and said, the rest refused).
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from trainable import TrainConfig, UserError
from trainable.cli import add_data_options
from trainable.data import check_layout

from study.decision import CONFIRM_FOLDS, CONFIRM_TOP
from study.folder import StudySettings
from study.space import baseline_params
from study.values import GPUS_PER_TRIAL, fmt

# Options that decide what a trial computes: fixed for the life of a study (--resume refuses a change).
FIXED_ON_RESUME = ("data_dir", "weights", "epochs", "image_size", "batch_size", "val_fraction", "split_seed", "precision",
                   "device", "augment_path", "momentum", "seed", "space", "grace_epochs", "reduction_factor", "storage", "no_test_split")
# Options that decide only where and how many trials run: kept from study.json unless given again.
RUN_OPTIONS = {"gpus_per_trial": "gpus_requested", "cpus_per_trial": "cpus_requested", "max_concurrent": "max_concurrent",
               "fresh_actors": "fresh_actors", "address": "address", "trial_timeout": "trial_timeout", "time_budget": "time_budget"}
_BOOK = TrainConfig()

HELP = """``python -m study.run``: the hyperparameter study.

Ray Tune runs the trials (fractional GPUs, or CPU slots), Optuna's TPE proposes each configuration (the
book's recipe first, as the baseline), ASHA stops poor trials early. Results land in
``<results-dir>/<name>/``: ``trials.parquet`` (ranked), ``epochs.parquet``, ``optuna.db``, ``study.json``.

Exit codes: 0 the study finished and at least one trial has a validation accuracy; 1 it stopped before
every trial finished (Ctrl-C, SIGTERM, a full disk, a crash of Ray): the line before says how to resume;
2 bad input, or the study cannot run as asked (one ``error:`` line); 3 it finished but no trial is usable
(every one diverged or failed, so there is nothing to rerun); 130 interrupted before the study existed.
"""  # python -m study.run --help


@dataclass(frozen=True)
class StudyOptions:
    # --- the study ---
    samples: int = 32  # trials; with --resume, more extends the study
    name: str | None = None  # its folder under results_dir (None: <data>-<date>-<time>)
    results_dir: str = "results"
    resume: bool = False
    seed: int = 0  # the TPE sampler's and every trial's training seed
    space: str | None = None  # a JSON search space (None: study.space.DEFAULT_SPACE)
    show_space: bool = False
    warm_start: str | None = None  # a finished study's folder: this new study begins from it (study.driver.warmstart)
    # --- what every trial trains with (TrainConfig fields; fixed on resume) ---
    data_dir: str | None = None  # None: download the book's hotdog.zip
    weights: str = _BOOK.weights
    epochs: int = _BOOK.epochs
    image_size: int = _BOOK.image_size
    batch_size: int = _BOOK.batch_size
    val_fraction: float = _BOOK.val_fraction
    split_seed: int = _BOOK.split_seed
    precision: str = _BOOK.precision
    device: str = _BOOK.device
    augment_path: str = _BOOK.augment_path
    momentum: float = 0.0  # the book's SGD without momentum, unless searched
    # --- where and how many trials run (may change on resume) ---
    gpus_per_trial: float = GPUS_PER_TRIAL  # 4 trials per GPU
    cpus_per_trial: float | None = None  # None: 1 on CPU-only machines, CPUs / trials per GPU machine
    max_concurrent: int | None = None
    fresh_actors: bool = False
    address: str | None = None  # an existing Ray cluster
    storage: str | None = None  # where Ray keeps checkpoints (None: <study>/ray)
    trial_timeout: float | None = None  # None: the automatic stall limit; 0: none
    time_budget: float | None = None
    # --- ASHA and the confirmation stage ---
    grace_epochs: int = 1
    reduction_factor: float = 3
    confirm_top: int = CONFIRM_TOP
    confirm_folds: int = CONFIRM_FOLDS
    no_confirm: bool = False
    # --- trackers, data checks, resume ---
    tensorboard: bool = False
    mlflow: str | None = None
    retry_timed_out: bool = False
    no_test_split: bool = False
    accept_data_change: bool = False
    given: frozenset = field(default_factory=frozenset)  # the options spelled out on the command line (their dests)

    @classmethod
    def parse(cls, argv: list[str]) -> "StudyOptions":
        parser = build_parser()
        options = cls(**vars(parser.parse_args(argv)), given=frozenset(given_options(parser, argv)))
        options.check()
        return options

    def check(self) -> None:
        """Every option's own bounds, in one table: the first one broken is one UserError line."""
        checks = [
            (self.samples >= 1, f"--samples {self.samples} must be 1 or more"),
            (self.gpus_per_trial >= 0, f"--gpus-per-trial {self.gpus_per_trial} must be 0 or more"),
            (self.gpus_per_trial <= 1 or float(self.gpus_per_trial).is_integer(), f"--gpus-per-trial {self.gpus_per_trial}: above 1 it must be a whole number"),
            (self.cpus_per_trial is None or self.cpus_per_trial > 0, f"--cpus-per-trial {self.cpus_per_trial} must be positive"),
            (self.max_concurrent is None or self.max_concurrent >= 1, f"--max-concurrent {self.max_concurrent} must be 1 or more"),
            (self.grace_epochs >= 1, f"--grace-epochs {self.grace_epochs} must be 1 or more"),
            (self.reduction_factor > 1, f"--reduction-factor {self.reduction_factor} must be above 1"),
            (self.confirm_top >= 1, f"--confirm-top {self.confirm_top} must be 1 or more (--no-confirm skips the confirmation stage)"),
            (self.confirm_folds >= 2, f"--confirm-folds {self.confirm_folds} must be 2 or more: cross-validation needs a part to train "
                                      "on and a part to judge (--no-confirm skips the confirmation stage)"),
            (self.trial_timeout is None or self.trial_timeout >= 0, f"--trial-timeout {fmt(self.trial_timeout)} must be 0 (no limit) or more"),
            (self.time_budget is None or self.time_budget > 0, f"--time-budget {fmt(self.time_budget)} must be above 0"),
            (self.name is None or (self.name.strip() and "/" not in self.name and self.name not in (".", "..")), f"--name {self.name!r} must be a plain folder name"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def base_config(self) -> TrainConfig:
        """What every trial trains with, paths made absolute; a wrong --data-dir or weights file fails here."""
        base = TrainConfig(
            data_dir=str(Path(self.data_dir).expanduser().resolve()) if self.data_dir else None,
            weights=self.weights if self.weights in ("imagenet", "none") else str(Path(self.weights).expanduser().resolve()),
            epochs=self.epochs, image_size=self.image_size, batch_size=self.batch_size, val_fraction=self.val_fraction,
            split_seed=self.split_seed, precision=self.precision, device=self.device, augment_path=self.augment_path,
            momentum=self.momentum, seed=self.seed,
        ).validate()
        if base.val_fraction <= 0:
            raise UserError("--val-fraction must be above 0 for a study: trials are compared on the validation split")
        if base.data_dir is not None:  # a wrong --data-dir, test/ included, fails now, before a study folder is created
            check_layout(base.data_dir, need_test=not self.no_test_split, no_test="pass --no-test-split")
        if base.weights not in ("imagenet", "none"):
            from trainable.model import build_model
            build_model(base.weights, 2)  # a bad weights file fails now, not in every trial
        return base

    def storage_path(self) -> str | None:
        """--storage made absolute where it is a local folder (a URI stays as given)."""
        if self.storage and "://" not in self.storage:
            return str(Path(self.storage).expanduser().resolve())
        return self.storage

    def new_settings(self, name: str, base: TrainConfig, space: dict, experiment: str) -> StudySettings:
        """The settings of a new study, as study.json stores them."""
        baseline, baseline_note = baseline_params(space)
        return StudySettings(
            name=name, base=base.to_dict(), space=space, samples=self.samples, seed=self.seed, experiment_path=experiment,
            created=dt.datetime.now().isoformat(timespec="seconds"), gpus_requested=self.gpus_per_trial, cpus_requested=self.cpus_per_trial,
            max_concurrent=self.max_concurrent, grace_epochs=self.grace_epochs, reduction_factor=float(self.reduction_factor),
            fresh_actors=self.fresh_actors, address=self.address, storage=self.storage_path(), baseline=baseline, baseline_note=baseline_note,
            confirm={} if self.no_confirm else {"top": self.confirm_top, "folds": self.confirm_folds},
            trackers={"tensorboard": self.tensorboard, "mlflow": self.mlflow}, test_split=not self.no_test_split,
            trial_timeout=self.trial_timeout, time_budget=self.time_budget)

    def merge_into(self, settings: StudySettings) -> None:
        """--resume runs the study with the options it was started with; only where and how many trials run may
        change (said in one line), and --samples may grow. Anything else given again is refused."""
        base = settings.base
        stored = {**base, "space": settings.space, "grace_epochs": settings.grace_epochs, "reduction_factor": settings.reduction_factor,
                  "storage": settings.storage, "seed": settings.seed, "no_test_split": not settings.test_split}
        for dest in FIXED_ON_RESUME:
            if dest in self.given and getattr(self, dest) != stored.get(dest) and not _same_path(getattr(self, dest), stored.get(dest)):
                flag = "--" + dest.replace("_", "-")
                raise UserError(f"{flag} cannot change when resuming: study {settings.name!r} runs with {stored.get(dest)!r}; "
                                f"leave {flag} out, or start a new study under another --name")
        for dest, key in RUN_OPTIONS.items():
            if dest in self.given and getattr(self, dest) != getattr(settings, key):
                print(f"--{dest.replace('_', '-')} {getattr(self, dest)} from now on (the study was started with {getattr(settings, key)})")
                setattr(settings, key, getattr(self, dest))
        if self.given & {"tensorboard", "mlflow"}:
            trackers = {"tensorboard": self.tensorboard or ("tensorboard" not in self.given and settings.trackers.get("tensorboard", False)),
                        "mlflow": self.mlflow if "mlflow" in self.given else settings.trackers.get("mlflow")}
            print(f"trackers from now on: {trackers}")
            settings.trackers = trackers
        if self.given & {"confirm_top", "confirm_folds", "no_confirm"}:
            confirm = {} if self.no_confirm else {"top": self.confirm_top if "confirm_top" in self.given else settings.confirm.get("top", CONFIRM_TOP),
                                                  "folds": self.confirm_folds if "confirm_folds" in self.given else settings.confirm.get("folds", CONFIRM_FOLDS)}
            if confirm != {k: v for k, v in settings.confirm.items() if k in ("top", "folds")}:
                stage = "off" if not confirm else f"top {confirm['top']}, {confirm['folds']} folds"
                print(f"confirmation stage from now on: {stage}")
                settings.confirm = confirm
        if "samples" in self.given and self.samples != settings.samples:
            print(f"--samples {self.samples}: the study grows from {settings.samples} trial(s)" if self.samples > settings.samples
                  else f"--samples {self.samples}: fewer than the study's {settings.samples}")
            settings.samples = self.samples


def _same_path(a, b) -> bool:
    try:
        return a is not None and b is not None and Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()
    except (OSError, ValueError):
        return False


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m study.run``; every default is ``StudyOptions``'s."""
    d = StudyOptions()
    parser = argparse.ArgumentParser(prog="python -m study.run", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=d.samples, help="number of trials (default: %(default)s; with --resume, more extends the study)")
    parser.add_argument("--name", help="study name: its folder under --results-dir (default: <data>-<date>-<time>)")
    parser.add_argument("--results-dir", default=d.results_dir, help="the folder that holds the study folders (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue the study --name: its stored options, unfinished trials first")
    parser.add_argument("--seed", type=int, default=d.seed, help="seeds the TPE sampler and every trial's training (default: %(default)s)")
    parser.add_argument("--space", help="JSON file with the search space (see --show-space)")
    parser.add_argument("--show-space", action="store_true", help="print the search space as JSON and exit")
    parser.add_argument("--warm-start", metavar="STUDY",
                        help="a finished study's folder (e.g. results/A) this new study begins from: on the same data and settings "
                             "its trials are observations for the searcher, else its best configurations run first; its confirmed "
                             "winner runs right after the book's recipe either way. The study is only read")
    add_data_options(parser, folds=False)  # the study splits on its own: fold 0 for trials, k-fold for the confirmation
    parser.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum for every trial unless searched (default: the book's 0)")
    parser.add_argument("--gpus-per-trial", type=float, default=d.gpus_per_trial, help="GPU share per trial where there are GPUs (default: %(default)s: 4 trials per GPU); 0 trains on CPUs")
    parser.add_argument("--cpus-per-trial", type=float, default=d.cpus_per_trial, help="CPUs (= torch threads) per trial (default: 1 on CPU-only machines; CPUs/trials per GPU machine)")
    parser.add_argument("--max-concurrent", type=int, default=d.max_concurrent, help="most trials at once (default: as many as the resources fit)")
    parser.add_argument("--grace-epochs", type=int, default=d.grace_epochs, help="ASHA: epochs before a trial may be stopped (default: %(default)s)")
    parser.add_argument("--reduction-factor", type=float, default=d.reduction_factor, help="ASHA: keep the best 1/this at each rung (default: %(default)s)")
    parser.add_argument("--confirm-top", type=int, default=d.confirm_top,
                        help="the confirmation stage: the top K configurations by validation accuracy, and the book's recipe, "
                             "cross-validated on --confirm-folds folds before naming a winner (default: %(default)s)")
    parser.add_argument("--confirm-folds", type=int, default=d.confirm_folds,
                        help="stratified cross-validation folds of the whole train split in the confirmation stage: each "
                             "configuration trains F times on (F-1)/F of the images and is judged on all of them (default: %(default)s)")
    parser.add_argument("--no-confirm", action="store_true", help="skip the confirmation stage: the study's best validation accuracy names the winner")
    parser.add_argument("--fresh-actors", action="store_true",
                        help="start a new Ray worker process for every trial (default: a finished trial's process runs the next one, "
                             "which saves each trial the seconds of importing torch and Ray Tune)")
    parser.add_argument("--tensorboard", action="store_true",
                        help='TensorBoard event files per trial (metrics per epoch, hyperparameters) under <study>/ray; needs pip install -e ".[tensorboard]"')
    parser.add_argument("--mlflow", metavar="URI",
                        help='log every trial to MLflow at this tracking URI (e.g. sqlite:///results/mlflow.db); needs pip install -e ".[mlflow]"')
    parser.add_argument("--trial-timeout", type=float, default=d.trial_timeout, metavar="SECONDS",
                        help="stop a trial that runs longer than this (wall time; its process ends, recorded as timed_out, the study "
                             "goes on); default: stop one that goes 10x the study's median epoch time + 60 s without finishing an "
                             "epoch, once 3 epochs are known; 0: no limit")
    parser.add_argument("--time-budget", type=float, default=d.time_budget, metavar="SECONDS",
                        help="the study's wall time: no trial is started that would end past it (the confirmation stage's time kept "
                             "in reserve), trials still running then are stopped (timed_out), and the confirmation stage runs on "
                             "what finished")
    parser.add_argument("--retry-timed-out", action="store_true",
                        help="--resume: run each configuration that timed out again, as a new trial (by default a timed-out trial "
                             "stays as it ended)")
    parser.add_argument("--no-test-split", action="store_true",
                        help="the data folder has no test/ split: the study runs without one, and study.rerun cannot measure test accuracy")
    parser.add_argument("--accept-data-change", action="store_true",
                        help="--resume: go on although the data or the weights file changed since the study started "
                             "(refused otherwise; the change is recorded in study.json)")
    parser.add_argument("--address", help="an existing Ray cluster (e.g. auto or HOST:6379); default: start Ray on this machine")
    parser.add_argument("--storage", help="where Ray keeps the trials' checkpoints (a folder every node sees, or s3://...); default: <study>/ray")
    return parser


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``dest`` of every option spelled out on the command line (``--x v`` or ``--x=v``)."""
    spelled = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    # argparse keeps its options only in ``_actions`` (no public accessor; the attribute has been there since 3.2)
    return {action.dest for action in parser._actions if spelled & set(action.option_strings)}
