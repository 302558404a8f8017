"""Fault injection for the tests: a fault at a named moment of the driver, deterministically.

``HOTDOG_TUNE_FAULT=<moment>:<n>[:<action>]`` acts the n-th time the driver reaches ``moment``. Moments:
``asked`` (Optuna proposed a configuration, Ray has not started it), ``trial_started`` (its row is written),
``result`` (an epoch's row is written; the trial is then inside its next epoch) and ``trial_ended`` (a
finished trial's row is written; the next trial has not started). Actions: ``kill`` (SIGKILL, the default),
``term`` (SIGTERM, as a preempted job gets) and ``fill`` (fill the disk holding ``HOTDOG_TUNE_FILL``, a file
path, to its last megabyte, as another program might). Unset, as in normal use, it does nothing.
"""

from __future__ import annotations

import os
import shutil
import signal

ENV = "HOTDOG_TUNE_FAULT"
_seen: dict[str, int] = {}


def at(moment: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    count, _, action = rest.partition(":")
    if name != moment:
        return
    _seen[moment] = _seen.get(moment, 0) + 1
    if _seen[moment] != int(count or 1):
        return
    if action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "fill":
        path = os.environ["HOTDOG_TUNE_FILL"]
        free = shutil.disk_usage(os.path.dirname(path)).free
        with open(path, "wb") as f:
            f.truncate(0)
            f.write(b"\0" * max(0, free - (1 << 20)))
    else:
        os.kill(os.getpid(), signal.SIGKILL)
