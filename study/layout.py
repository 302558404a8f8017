"""Where a study keeps its files, and its ``study.json`` (the settings that analyze, rerun and resume need)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainable import UserError

STUDY_FILE = "study.json"


@dataclass
class StudySettings:
    name: str
    base: dict  # TrainConfig fields shared by all trials (data, weights, epochs, image size, ...)
    space: dict
    samples: int
    seed: int
    experiment_path: str  # Ray Tune's experiment folder (Tuner.restore reads it)
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    created: str = ""
    val_images: int | None = None  # validation images each trial scores on (the same split for all)
    summary: dict = field(default_factory=dict)  # filled in when the study ends


class StudyFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()

    trials = property(lambda self: self.path / "trials.parquet")
    epochs = property(lambda self: self.path / "epochs.parquet")
    optuna_db = property(lambda self: self.path / "optuna.db")
    settings_file = property(lambda self: self.path / STUDY_FILE)

    def exists(self) -> bool:
        return self.settings_file.is_file()

    def read_settings(self) -> StudySettings:
        if not self.exists():
            raise UserError(f"{self.path} holds no study (no {STUDY_FILE}): pass a folder written by python -m study.run, e.g. results/<name>")
        try:
            return StudySettings(**json.loads(self.settings_file.read_text()))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{self.settings_file} is damaged ({exc}): it was not written by this version of study.run") from None

    def write_settings(self, settings: StudySettings) -> None:
        write_text_atomic(self.settings_file, json.dumps(asdict(settings), indent=2))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def newest_study(results_dir: Path) -> Path:
    candidates = sorted((p.parent for p in Path(results_dir).glob(f"*/{STUDY_FILE}")), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"no study in {results_dir}: run python -m study.run first, or pass a study folder")
    return candidates[-1]
