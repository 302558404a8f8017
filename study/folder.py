"""The study folder, in one place: its file names, its settings (``study.json``), its lock, and the helpers
that write its files atomically.

It imports nothing of Ray or Optuna, so ``study.analyze`` and ``study.rerun`` load it without either.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from trainable import UserError
from trainable.files import temps_beside, write_atomic

from study.values import GPUS_PER_TRIAL, isnan

# --- file names ----------------------------------------------------------------------------------------
STUDY_FILE = "study.json"
TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
JOURNAL_FILE = "tables.journal"  # the tables' changes since their files were last rewritten (study.results)
OPTUNA_FILE = "optuna.db"
CONFIRM_FILE = "confirm.parquet"
RERUN_FILE = "rerun.parquet"
RERUN_DIR = "rerun"
REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
LOGS_DIR = "logs"
LOCK_FILE = ".lock"
RERUN_LOCK_FILE = ".rerun.lock"  # held while a rerun merges its rows into rerun.parquet
DRIVER_FILE = ".driver.json"  # who holds the lock: pid, host, since
DRIVER_WRITES = (STUDY_FILE, TRIALS_FILE, EPOCHS_FILE, JOURNAL_FILE, CONFIRM_FILE, DRIVER_FILE)  # written by the lock's holder only


def drop_checkpoints(trial_dir) -> None:
    """Delete the Tune checkpoints in a trial's local folder: a run that finished, or that checkpointed anew
    elsewhere, never resumes from them (45 MB each for ResNet18). None, NaN or a remote URI: nothing to do."""
    if isnan(trial_dir) or not trial_dir or "://" in str(trial_dir):
        return
    import shutil

    for folder in Path(trial_dir).glob("checkpoint_*"):
        shutil.rmtree(folder, ignore_errors=True)


def set_aside(path: Path, why: str = "damaged") -> Path:
    """Rename a file beside itself (``NAME.<why>-<time>``, never over an earlier one), for whoever wants to look at it."""
    stem = f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}"
    aside, n = path.with_name(stem), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{stem}-{n}")
    path.rename(aside)
    return aside


def storage_url(path: str | Path) -> str:
    """The SQLAlchemy URL of an Optuna SQLite file."""
    return f"sqlite:///{Path(path).resolve()}"


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_parquet_atomic(frame, path: Path) -> None:
    write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


@dataclass
class StudySettings:
    """``study.json``: a study's settings, in two parts.

    What the user asked for: set once from ``StudyOptions`` when the study is created (``StudyOptions.new_settings``),
    and changed only by ``StudyOptions.merge_into`` on ``--resume`` (the run options it may change, ``--samples``
    that grows) and by ``--retry-timed-out`` (more samples). What the study resolved and recorded: written by the
    driver (``study.run``, the confirmation stage, the data check), never by the user's options.
    """

    # --- what the user asked for ------------------------------------------------------------------------------
    name: str
    base: dict  # TrainConfig fields shared by all trials (data, weights, epochs, image size, ...)
    space: dict
    samples: int
    seed: int
    experiment_path: str  # where Ray Tune keeps the trials' folders and checkpoints; each driver run is run-<k> in it
    gpus_requested: float = GPUS_PER_TRIAL  # --gpus-per-trial as asked for
    cpus_requested: float | None = None  # --cpus-per-trial as asked for (None: the default for the machine)
    max_concurrent: int | None = None
    grace_epochs: int = 1
    reduction_factor: float = 3.0
    fresh_actors: bool = False
    address: str | None = None
    storage: str | None = None
    trackers: dict = field(default_factory=dict)  # {"tensorboard": bool, "mlflow": uri}
    confirm: dict = field(default_factory=dict)  # {"top": K, "folds": F} or {} when off (the stage adds "candidates")
    baseline: dict | None = None  # the book's recipe as searched (None: it lies outside the space)
    baseline_note: str = ""  # why there is no baseline
    trial_timeout: float | None = None  # --trial-timeout: seconds per trial; None: the automatic stall limit; 0: none
    time_budget: float | None = None  # --time-budget: seconds of the study's wall time, all driver runs together
    test_split: bool = True  # False: started with --no-test-split (study.rerun cannot measure test accuracy)
    # --- what the study resolved and recorded (the driver writes these) ----------------------------------------
    created: str = ""
    gpus_granted: float = 0.0  # the GPU share each trial got (0 where the cluster had no GPU): resolved at each start
    cpus_granted: float = 1.0  # the CPUs each trial got
    val_images: int | None = None  # validation images each trial scores on (the same split for all)
    data_fingerprint: dict = field(default_factory=dict)  # trainable.fingerprint of the data as the study started (or last accepted)
    weights_fingerprint: dict | None = None  # of a weights file given by path
    data_changes: list = field(default_factory=list)  # changes gone on with (--accept-data-change): when, by whom, what
    warm_start: dict = field(default_factory=dict)  # --warm-start: the study it began from and what it carried (study.driver.warmstart)
    runs: list = field(default_factory=list)  # one entry per driver run: its timings and outcome
    summary: dict = field(default_factory=dict)  # filled in when the study ends

    def training_images(self) -> int | None:
        """Every training image (its validation split included): what the confirmation stage judges each configuration on."""
        for run in reversed(self.runs):
            if run.get("train_images") is not None and run.get("val_images") is not None:
                return int(run["train_images"]) + int(run["val_images"])
        return None

    @classmethod
    def from_dict(cls, values: dict) -> "StudySettings":
        known = {f.name for f in fields(cls)}
        renamed = {"gpus_per_trial": "gpus_granted", "cpus_per_trial": "cpus_granted"}  # a study.json from before the names said which
        values = {renamed.get(k, k): v for k, v in values.items()}
        return cls(**{k: v for k, v in values.items() if k in known})


class StudyFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()

    trials = property(lambda self: self.path / TRIALS_FILE)
    epochs = property(lambda self: self.path / EPOCHS_FILE)
    optuna_db = property(lambda self: self.path / OPTUNA_FILE)
    confirm = property(lambda self: self.path / CONFIRM_FILE)
    rerun = property(lambda self: self.path / RERUN_FILE)
    settings_file = property(lambda self: self.path / STUDY_FILE)
    logs = property(lambda self: self.path / LOGS_DIR)

    def exists(self) -> bool:
        return self.settings_file.is_file()

    def read_settings(self) -> StudySettings:
        if not self.exists():
            raise UserError(f"{self.path} holds no study (no {STUDY_FILE}): pass a folder written by python -m study.run, e.g. results/<name>")
        try:
            return StudySettings.from_dict(json.loads(self.settings_file.read_text()))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{self.settings_file} is damaged ({exc}): the study's settings cannot be recovered from it; "
                            "start the study again under a new --name") from None

    def write_settings(self, settings: StudySettings) -> None:
        write_text_atomic(self.settings_file, json.dumps(asdict(settings), indent=2))

    def lock(self):
        """Hold the study for this driver: a second ``study.run`` on it gets one line, not a shared folder.

        A ``filelock`` on ``.lock`` (released by the OS when the holder dies, even by SIGKILL).
        """
        from filelock import FileLock, Timeout

        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise UserError(f"study {self.path.name!r} in {self.path.parent} is in use by another python -m study.run{self._holder()}: "
                            "wait for it to end, or choose another --name") from None
        write_text_atomic(self.path / DRIVER_FILE, json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        for name in DRIVER_WRITES:  # what a driver killed mid-write left; only a driver writes these, and we hold it
            for tmp in temps_beside(self.path / name):
                tmp.unlink(missing_ok=True)
        return lock

    def in_use(self) -> str | None:
        """Whether a driver holds the study now (its lock taken), without writing anything to the folder: `` (pid N on
        HOST, since ...)`` or ``""`` when it does, None when nobody does."""
        import fcntl

        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDONLY)
        except OSError:
            return None  # never locked
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # filelock's own lock (flock) on Unix; a read-only descriptor may take it
        except OSError:
            return self._holder(wait_s=0.0)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _holder(self, wait_s: float = 2.0) -> str:
        """The lock holder for the refusal, ``" (pid N on HOST, since ...)"``, or ``""`` where it cannot be told.

        The holder writes ``.driver.json`` just after it takes the lock, and an earlier driver's file may still be
        there: wait a moment for one that names a live process (on this host; another host's cannot be checked).
        """
        import psutil

        end = time.monotonic() + wait_s
        while True:
            try:
                info = json.loads((self.path / DRIVER_FILE).read_text())
                if info["host"] != socket.gethostname() or psutil.pid_exists(int(info["pid"])):
                    return f" (pid {info['pid']} on {info['host']}, since {info['since']})"
            except (OSError, ValueError, KeyError, TypeError):
                pass
            if time.monotonic() > end:
                return ""
            time.sleep(0.05)


def resume_command(folder: StudyFolder) -> str:
    """The command line that continues a stopped study."""
    import shlex

    return shlex.join(["python", "-m", "study.run", "--resume", "--name", folder.path.name, "--results-dir", str(folder.path.parent)])


def newest_study(results_dir: Path) -> Path:
    candidates = sorted((p.parent for p in Path(results_dir).glob(f"*/{STUDY_FILE}")), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"no study in {results_dir}: run python -m study.run first, or pass a study folder")
    return candidates[-1]


def find_study(path: str | None, results_dir: str = "results", log=print) -> StudyFolder:
    """The study folder ``path``, or the newest study under ``results_dir`` (or under ``path``, when
    ``path`` is a folder of studies)."""
    if path is None:
        return StudyFolder(newest_study(Path(results_dir).expanduser()))
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"{folder} does not exist: pass a study folder written by python -m study.run, e.g. results/<name>")
    if not folder.is_dir():
        raise UserError(f"{folder} is a file: pass a study folder written by python -m study.run, e.g. results/<name>")
    if not (folder / STUDY_FILE).is_file() and any(folder.glob(f"*/{STUDY_FILE}")):
        chosen = newest_study(folder)
        log(f"{folder} holds several studies: using the newest, {chosen.name}")
        folder = chosen
    return StudyFolder(folder)
