"""The study folder, in one place: its file names, its settings file (``study.json``: ``study.core.settings``), its
lock, the helpers that write its files atomically, and the one way to open a study folder a user names
(``open_study``, ``find_study``) and to say how to continue it (``resume_command``).

It imports nothing of Ray or Optuna, so ``study.analyze`` and ``study.rerun`` load it without either.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from trainable import UserError
from trainable.files import temps_beside, write_atomic

from study.core.settings import StudySettings
from study.core.values import isnan

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
        write_text_atomic(self.settings_file, json.dumps(settings.to_dict(), indent=2))

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


def open_study(path: str | Path, option: str = "", wanted: str = "a study folder written by python -m study.run") -> StudyFolder:
    """The study folder a user named (``path``: the folder, or its study.json), or one line that says what is wrong with
    it: ``option`` names where it was given (``--warm-start``; "" for a positional argument), ``wanted`` what it should
    be."""
    given = Path(path).expanduser()
    where = f"{option} {path}" if option else str(path)
    folder = given.parent if given.name == STUDY_FILE and given.is_file() else given
    if not folder.exists():
        raise UserError(f"{where}: no such folder: pass {wanted}, e.g. results/<name>")
    if not folder.is_dir():
        raise UserError(f"{where} is a file: pass {wanted}, e.g. results/<name>")
    if not (folder / STUDY_FILE).is_file():
        raise UserError(f"{where}: {folder} holds no study (no {STUDY_FILE}): pass {wanted}, e.g. results/<name>")
    return StudyFolder(folder)


def find_study(path: str | None, results_dir: str = "results", log=print) -> StudyFolder:
    """The study folder ``path``, or the newest study under ``results_dir`` (or under ``path``, when
    ``path`` is a folder of studies)."""
    if path is None:
        return StudyFolder(newest_study(Path(results_dir).expanduser()))
    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / STUDY_FILE).is_file() and any(folder.glob(f"*/{STUDY_FILE}")):
        chosen = newest_study(folder)
        log(f"{folder} holds several studies: using the newest, {chosen.name}")
        return StudyFolder(chosen)
    return open_study(folder)
