"""A trial's checkpoints, kept off its training path, and the scratch folders they pass through.

A checkpoint exists to continue a run that was cut off, so it is written only where one can be needed, and while
the run trains on:

- none after a run's last epoch (nothing follows it), nor after a diverged one (the run ends there);
- epoch k's state is taken only once the study has let the run go on past epoch k (``tune.report`` returned), so a
  trial that ASHA stops at k never writes one it would throw away;
- it is copied to the host (a fraction of the write's time), written to a scratch folder by a background thread
  while epoch k+1 trains, and handed to Tune with epoch k+1's report, which copies it into the trial's folder.

A run cut off after the driver recorded epoch k+1 resumes from epoch k (or earlier) and trains the epochs after
it again: each epoch draws from its own seed, so they come out as they did (``trainable.loop``), and the study's
tables, ASHA and Optuna keep what they recorded the first time.

Scratch folders are named ``hotdog-tune-<pid>-*`` in the system's temporary folder: a worker killed while it
writes one leaves it behind, and ``sweep_scratch`` (run by each worker as it starts, and by the driver) removes
those whose process is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

SCRATCH_PREFIX = "hotdog-tune-"


def scratch_dir() -> str:
    """A new scratch folder of this process, for ``sweep_scratch`` to find if the process dies."""
    return tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


def sweep_scratch(root: str | Path | None = None) -> int:
    """Remove the scratch folders of processes that no longer run (in ``root``: the temporary folder); how many."""
    removed = 0
    for folder in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


class Checkpointer:
    """One run's checkpoints: ``take`` before each report (the checkpoint that report carries, if any), ``after_report``
    once the study let the run go on, ``close`` when the run ends however it ends."""

    def __init__(self, last_epoch: int):
        self.last_epoch = last_epoch
        self.pending_s = 0.0  # time spent on the training path since the last report: the snapshot, waiting for a write
        self._thread: threading.Thread | None = None
        self._folder: str | None = None
        self._epoch: int | None = None
        self._error: BaseException | None = None
        self._handed: list[str] = []  # folders a report carried: Tune has copied them, they can go

    def take(self) -> tuple[str | None, int | None]:
        """The folder and epoch of the checkpoint written since the last report (waiting for its write to end)."""
        t0 = time.perf_counter()
        self._join()
        self.pending_s += time.perf_counter() - t0
        folder, epoch = self._folder, self._epoch
        self._folder = self._epoch = None
        if folder is not None:
            self._handed.append(folder)
        return folder, epoch

    def spent(self) -> float:
        """Seconds the checkpoints cost the training path since the last call."""
        spent, self.pending_s = self.pending_s, 0.0
        return spent

    def after_report(self, save, epoch: int, diverged: bool) -> None:
        """The run goes on past ``epoch``: write its state in the background when a later report will carry it."""
        self._drop_handed()
        if diverged or epoch + 1 >= self.last_epoch:  # the next report is the last: it carries none
            return
        t0 = time.perf_counter()
        state = save.snapshot()
        folder = scratch_dir()
        self._folder, self._epoch = folder, epoch
        self._thread = threading.Thread(target=self._write, args=(folder, state), name=f"checkpoint {epoch}", daemon=True)
        self._thread.start()
        self.pending_s += time.perf_counter() - t0

    def close(self) -> None:
        try:
            self._join()
        except BaseException:  # the run is over: a write that failed has nothing left to protect
            pass
        if self._folder is not None:
            self._handed.append(self._folder)
            self._folder = None
        self._drop_handed()

    def _write(self, folder: str, state: dict) -> None:
        from trainable.loop import Checkpoint

        try:
            Checkpoint.write(folder, state)
        except BaseException as exc:  # raised in the training thread by the next take()
            self._error = exc

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _drop_handed(self) -> None:
        for folder in self._handed:
            shutil.rmtree(folder, ignore_errors=True)
        self._handed.clear()
