"""A study notices what changed under it: the data and the weights file it started with, checked on every
resume and every rerun (``trainable.fingerprint``: counts and a digest of every image's path, size and time;
the weights' size and content digest).

A change is refused in one line that says what changed and how to go on: restore it, start a new study, or
pass ``--accept-data-change``, which goes on with the data as it now is and records the change in
``study.json`` (``data_changes``), where ``study.analyze`` shows it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from trainable import UserError
from trainable.config import weights_file
from trainable.fingerprint import data_changes, data_fingerprint, weights_changes, weights_fingerprint

from study.core.settings import StudySettings

ACCEPT_FLAG = "--accept-data-change"


def data_root(base: dict) -> Path:
    """The data folder a study's trials read: --data-dir, or the book's hotdog set in the cache."""
    if base.get("data_dir"):
        return Path(base["data_dir"])
    from trainable.data import fetch_hotdog

    return fetch_hotdog()


def record(settings: StudySettings) -> None:
    """The fingerprints of a study's data and weights as it starts, into its settings."""
    settings.data_fingerprint = data_fingerprint(data_root(settings.base))
    path = weights_file(settings.base.get("weights"))
    settings.weights_fingerprint = weights_fingerprint(path) if path is not None and path.is_file() else None


def changes(settings: StudySettings) -> list[str]:
    """What differs now from the data and weights the study recorded (empty for a study that recorded none)."""
    found = []
    root = data_root(settings.base)
    if settings.data_fingerprint:
        if not root.is_dir():
            return [f"the data folder {root} is gone"]
        found += data_changes(settings.data_fingerprint, data_fingerprint(root))
    path = weights_file(settings.base.get("weights"))
    if settings.weights_fingerprint and path is not None:
        found += ([f"the weights file {path} is gone"] if not path.is_file()
                  else weights_changes(settings.weights_fingerprint, weights_fingerprint(path)))
    return found


def check(settings: StudySettings, accept: bool, by: str, how: str, found: list[str] | None = None) -> list[str]:
    """Refuse (UserError) a study whose data or weights changed, unless ``accept``: then the change is recorded in
    ``settings.data_changes`` (``by``: the command that accepted it) and the fingerprints move on to what is there now.
    ``how``: the way on besides the flag (a new study for a resume, ...); ``found``: ``changes(settings)`` where the
    caller has it already (the fingerprint reads every file's metadata). Returns the changes accepted."""
    found = changes(settings) if found is None else found
    if not found:
        return []
    what = "; ".join(found)
    if not accept:
        raise UserError(f"the data of study {settings.name!r} changed since it started: {what}; its trials would be judged on other "
                        f"data: restore it, {how}, or pass {ACCEPT_FLAG} to go on with it as it is now (recorded in study.json)")
    settings.data_changes.append({"at": dt.datetime.now().isoformat(timespec="seconds"), "by": by, "changes": found})
    record(settings)
    return found


def describe_accepted(settings: StudySettings) -> list[str]:
    """One line per change a study went on with (``--accept-data-change``), for study.analyze and the report."""
    return [f"the data changed during the study and {entry.get('by')} went on with it ({ACCEPT_FLAG}, {entry.get('at')}): "
            + "; ".join(entry.get("changes", [])) for entry in settings.data_changes]
