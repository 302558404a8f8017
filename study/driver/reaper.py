"""A watchdog that ends the local Ray processes a study driver started, once that driver is gone.

Ray's own clean-up runs at interpreter exit; a driver killed hard (SIGKILL, OOM killer) leaves Ray's
DashboardAgent, RuntimeEnvAgent and idle workers running. The driver starts this process in its own
session; it remembers the driver's descendants every second and, when the driver has exited for any
reason, terminates those still alive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil


def spawn(driver_pid: int | None = None) -> subprocess.Popen:
    # Run as a plain script, not ``-m study.reaper``: the package would import torch (seconds of CPU) for nothing.
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(driver_pid or os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(pid: int) -> dict[int, float]:
    try:
        mine = os.getpid()  # the driver started this watchdog too: it must not end itself first
        return {p.pid: p.create_time() for p in psutil.Process(pid).children(recursive=True) if p.pid != mine}
    except psutil.Error:
        return {}


def terminate_then_kill(procs: list[psutil.Process], grace: float) -> None:
    """SIGTERM each, SIGKILL those still alive after ``grace`` seconds, and wait for them to go."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(procs, timeout=grace)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=grace)


def watch(driver_pid: int, interval: float = 1.0) -> int:
    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return 0
    known: dict[int, float] = {}
    while _alive(driver):
        known.update(_descendants(driver_pid))
        time.sleep(interval)
    time.sleep(2 * interval)  # let Ray's own shutdown finish first
    alive = []
    for pid, created in known.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created:  # not a recycled pid
                alive.append(proc)
        except psutil.Error:
            continue
    terminate_then_kill(alive, grace=5)
    return len(alive)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
