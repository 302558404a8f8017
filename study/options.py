"""The options of ``python -m study.run`` as one dataclass: parsed once (``StudyOptions.parse``), their bounds checked
by the request they make (``study.core.settings.StudyRequest.check``), and turned into that request: a new study's
(``request``), or a resumed study's with the options given again (``ask_anew``; what may change is
``study.core.settings.resume``'s to say). The command line's only job: no rule of the study lives here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from trainable import TrainConfig
from trainable.cli import add_data_options
from trainable.config import weights_file

from study.core.decision import CONFIRM_FOLDS, CONFIRM_TOP
from study.core.settings import GPUS_PER_TRIAL, StudyRequest, thaw
from study.driver.clock import STALL_RULE

_BOOK = TrainConfig()
# The options that set a TrainConfig field of every trial (the request's ``base``).
BASE_OPTIONS = ("data_dir", "weights", "epochs", "image_size", "batch_size", "val_fraction", "split_seed", "precision", "device",
                "augment_path", "momentum", "seed")
# The options that set a field of the request of their own, and which.
REQUEST_FIELDS = {"samples": "samples", "seed": "seed", "gpus_per_trial": "gpus_requested", "cpus_per_trial": "cpus_requested",
                  "max_concurrent": "max_concurrent", "fresh_actors": "fresh_actors", "address": "address", "storage": "storage",
                  "trial_timeout": "trial_timeout", "time_budget": "time_budget", "grace_epochs": "grace_epochs",
                  "reduction_factor": "reduction_factor", "space": "space", "no_test_split": "test_split", "no_cache": "cache"}

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
    space: str | None = None  # a JSON search space (None: study.core.space.DEFAULT_SPACE)
    show_space: bool = False
    warm_start: str | None = None  # a finished study's folder: this new study begins from it (study.stages.warm_start)
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
    no_cache: bool = False  # decode in memory, not through the decoded-image cache (trainable.decoded)
    given: frozenset = field(default_factory=frozenset)  # the options spelled out on the command line (their dests)

    @classmethod
    def parse(cls, argv: list[str]) -> "StudyOptions":
        parser = build_parser()
        options = cls(**vars(parser.parse_args(argv)), given=frozenset(given_options(parser, argv)))
        if not options.show_space:  # every bound, in one line, before anything starts (the stage's too where it is off)
            options.request(options.name or "study").replace(confirm={"top": options.confirm_top, "folds": options.confirm_folds}).check()
        return options

    def request(self, name: str) -> StudyRequest:
        """What these options ask of a new study named ``name`` (paths made absolute; the space read from its file)."""
        from study.core.space import load_space

        base = _BOOK.replace(**{dest: getattr(self, dest) for dest in BASE_OPTIONS})
        base = base.replace(data_dir=_absolute(base.data_dir),
                            weights=base.weights if weights_file(base.weights) is None else _absolute(base.weights))
        return StudyRequest(
            name=name, base=base.to_dict(), space=load_space(self.space), samples=self.samples, seed=self.seed,
            gpus_requested=self.gpus_per_trial, cpus_requested=self.cpus_per_trial, max_concurrent=self.max_concurrent,
            grace_epochs=self.grace_epochs, reduction_factor=float(self.reduction_factor), fresh_actors=self.fresh_actors,
            address=self.address, storage=self.storage if self.storage and "://" in self.storage else _absolute(self.storage),
            trackers={"tensorboard": self.tensorboard, "mlflow": self.mlflow},
            confirm={} if self.no_confirm else {"top": self.confirm_top, "folds": self.confirm_folds},
            trial_timeout=self.trial_timeout, time_budget=self.time_budget, test_split=not self.no_test_split,
            cache=not self.no_cache)

    def ask_anew(self, asked: StudyRequest) -> StudyRequest:
        """--resume: the stored request with the options given again (the rest as the study was asked)."""
        fresh = self.request(asked.name)
        changes = {field: getattr(fresh, field) for dest, field in REQUEST_FIELDS.items() if dest in self.given}
        changes["base"] = {**thaw(asked.base), **{dest: fresh.base[dest] for dest in BASE_OPTIONS if dest in self.given}}
        if self.given & {"tensorboard", "mlflow"}:
            changes["trackers"] = {**thaw(asked.trackers), **({"tensorboard": True} if self.tensorboard else {}),
                                   **({"mlflow": self.mlflow} if "mlflow" in self.given else {})}
        if self.given & {"confirm_top", "confirm_folds", "no_confirm"}:
            changes["confirm"] = {} if self.no_confirm else {
                "top": self.confirm_top if "confirm_top" in self.given else asked.confirm.get("top", CONFIRM_TOP),
                "folds": self.confirm_folds if "confirm_folds" in self.given else asked.confirm.get("folds", CONFIRM_FOLDS)}
        return asked.replace(**changes)


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


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
                             f"goes on); default: stop one that goes {STALL_RULE}; 0: no limit")
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
    parser.add_argument("--no-cache", action="store_true",
                        help="decode the images in memory for this run only; by default they are decoded once and kept for every "
                             "later study, rerun, comparison and prediction on the same folder (python -m trainable.decoded --list)")
    parser.add_argument("--address", help="an existing Ray cluster (e.g. auto or HOST:6379); default: start Ray on this machine")
    parser.add_argument("--storage", help="where Ray keeps the trials' checkpoints (a folder every node sees, or s3://...); default: <study>/ray")
    return parser


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``dest`` of every option spelled out on the command line (``--x v`` or ``--x=v``)."""
    spelled = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    # argparse keeps its options only in ``_actions`` (no public accessor; the attribute has been there since 3.2)
    return {action.dest for action in parser._actions if spelled & set(action.option_strings)}
