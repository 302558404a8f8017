"""The model a study ships: ``study.rerun`` writes it, ``study.predict``, ``study.export`` and ``load_study(...).model()``
read it.

A model folder (``results/<study>/model/`` unless ``--model-dir`` says elsewhere) holds the configuration's weights,
one file per seed (``seed-<S>.pt``), and ``model.json``: everything needed to use them without the study: the classes
in order, the image size and the exact evaluation preprocessing, the ``TrainConfig``, the data and weights
fingerprints, each seed's test accuracy and their ensemble's (the seeds' class probabilities averaged), the test
split's confusion matrix, and the command that made it. A rerun of the same configuration with other seeds extends
it (a seed it trained again replaces the older file); a rerun of another configuration replaces it. ``model.json``
is written last, atomically: a folder without it is partial, and says so.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from trainable import TrainConfig, UserError
from trainable.augment import IMAGENET_MEAN, IMAGENET_STD

from study.core.folder import STUDY_FILE, StudyFolder, write_text_atomic

MODEL_DIR = "model"
MODEL_FILE = "model.json"
FORMAT = 1  # model.json's layout


def weights_name(seed: int) -> str:
    return f"seed-{int(seed)}.pt"


def trained_module(file: Path, classes: int):
    """The ResNet18 a seed's weights file holds (eval mode, on the CPU), with ``classes`` outputs."""
    from trainable.model import build_model

    return build_model(str(file), classes).eval()


def preprocessing(cfg: TrainConfig, stored_size: int) -> dict:
    """How a photo becomes the model's input, as evaluation does it (``trainable.predict``), in words and numbers."""
    return {"decode": "PIL: EXIF orientation applied; any mode to 8-bit RGB (transparency on white, 16-bit scaled to 8-bit)",
            "resize": {"size": [stored_size, stored_size], "method": "PIL bilinear, the whole photo to a square (no aspect kept)"},
            "center_crop": cfg.image_size, "scale": "1/255", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "layout": "RGB, channels first: N x 3 x H x W"}


@dataclass
class ModelFolder:
    """A model folder, read and checked: ``info`` is its model.json."""

    path: Path
    info: dict

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.info["config"])

    @property
    def stored_size(self) -> int:
        return int(self.info["preprocessing"]["resize"]["size"][0])

    @property
    def seeds(self) -> list[int]:
        return [int(s["seed"]) for s in self.info["seeds"]]

    def weights(self, seed: int | None = None) -> list[tuple[int, Path]]:
        """(seed, file) of every seed, or of ``seed`` alone (one line where the folder has no such seed)."""
        chosen = self.seeds if seed is None else [seed]
        if seed is not None and seed not in self.seeds:
            raise UserError(f"--seed {seed}: the model in {self.path} has seeds {', '.join(map(str, self.seeds))}: pick one of them")
        return [(s, self.path / weights_name(s)) for s in chosen]

    def modules(self, seed: int | None = None) -> list:
        """The trained ResNet18s (eval mode, on the CPU): every seed, or ``seed`` alone."""
        return [trained_module(file, len(self.classes)) for _, file in self.weights(seed)]

    def shipped(self, seed: int | None = None):
        """The model as it ships (``trainable.export.Shipped``): a uint8 batch at the stored size in, each class's
        probability out (the ensemble of every seed, or ``seed``'s)."""
        from trainable.export import Shipped

        return Shipped(self.modules(seed), self.config.image_size, self.stored_size)

    def describe(self) -> str:
        ensemble = self.info.get("ensemble") or {}
        seeds = self.info["seeds"]
        accs = ", ".join(format(s["test_acc"], ".3f") for s in seeds)
        return (f"trial {self.info['study'].get('optuna_trial')} of study {self.info['study'].get('name')!r}, {len(seeds)} seed(s): "
                f"test accuracy {accs}" + (f", their ensemble {ensemble['test_acc']:.3f}" if len(seeds) > 1 else ""))


def open_model(path: str | Path, option: str = "MODEL") -> ModelFolder:
    """The model folder at ``path``, or the one in the study folder at ``path``; one line where there is none, it is
    partial, or its files do not match what it says."""
    given = Path(path).expanduser()
    if not given.exists():
        raise UserError(f"{option} {path}: no such folder: pass a study folder after python -m study.rerun, or its model folder")
    folder = given / MODEL_DIR if (given / STUDY_FILE).is_file() else given
    if (given / STUDY_FILE).is_file() and not folder.is_dir():
        raise UserError(f"{option} {path}: study {given.name!r} has no model yet: python -m study.rerun {given} trains one "
                        f"(the winner on the whole train split) and writes it to {folder}")
    if not folder.is_dir():
        raise UserError(f"{option} {path} is not a folder: pass a study folder or a model folder")
    try:
        info = json.loads((folder / MODEL_FILE).read_text())
        info["classes"], info["seeds"], info["config"], info["preprocessing"]["resize"]["size"]  # noqa: B018
    except FileNotFoundError:
        raise UserError(f"{option} {path}: {folder} holds no {MODEL_FILE} (a partial model folder, or none): run python -m "
                        "study.rerun on its study again to write it whole") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{option} {path}: {folder / MODEL_FILE} is damaged ({exc}): run python -m study.rerun on its study again") from None
    missing = [weights_name(s["seed"]) for s in info["seeds"] if not (folder / weights_name(s["seed"])).is_file()]
    if missing:
        raise UserError(f"{option} {path}: {folder} lacks {', '.join(missing)} that its {MODEL_FILE} names (a partial copy?): copy "
                        "the whole folder, or run python -m study.rerun on its study again")
    return ModelFolder(folder, info)


def write_model(target: Path, study: StudyFolder, chosen, tested, seeds: dict[int, Path], stored_size: int,
                command: str, evaluate, log=print) -> ModelFolder:
    """The model folder of ``chosen`` (a ``study.findings.retrain.Chosen``) at ``target``: ``seeds`` (seed -> the weights
    this rerun trained, whose test probabilities ``tested``, a ``study.findings.ensemble.TestResult``, holds) beside the
    seeds of the same configuration already there (each evaluated on the test split by ``evaluate(file) ->
    probabilities``), and model.json written last."""
    from trainable.predict import accuracy, balanced_accuracy

    from study.findings.ensemble import TestResult

    settings = chosen.settings
    cfg = chosen.config
    identity = {"study": str(study.path), "optuna_trial": int(chosen.row["optuna_trial"]), "config": _identity(cfg),
                "data_fingerprint": settings.data_fingerprint}
    earlier: dict[int, Path] = {}
    try:
        old = json.loads((target / MODEL_FILE).read_text())
        if {k: old.get("identity", {}).get(k) for k in identity} == identity:
            earlier = {int(s["seed"]): target / weights_name(s["seed"]) for s in old["seeds"] if (target / weights_name(s["seed"])).is_file()}
        else:
            log(f"the model in {target} was another configuration's: replaced by trial {identity['optuna_trial']}'s")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    target.mkdir(parents=True, exist_ok=True)
    (target / MODEL_FILE).unlink(missing_ok=True)  # partial from here until the new one is written
    for stale in target.glob("seed-*.pt"):
        if int(stale.stem.split("-")[1]) not in {*seeds, *earlier}:
            stale.unlink()
    for seed, source in seeds.items():
        _place(source, target / weights_name(seed))
    every = sorted({*earlier, *seeds})
    known = tested.probabilities
    result = TestResult(tested.number, tested.baseline, tested.classes, tested.labels,
                        {s: known[s] if s in known else evaluate(target / weights_name(s)) for s in every})
    classes, labels, per_seed = result.classes, result.labels, result.probabilities
    ensemble = result.ensemble
    counts = result.counts()
    info = {
        "format": FORMAT,
        "classes": list(classes),
        "image_size": cfg.image_size,
        "preprocessing": preprocessing(cfg, stored_size),
        "config": cfg.replace(seed=every[0]).to_dict(),
        "precision": cfg.precision,
        "identity": identity,
        "study": {"name": settings.name, "path": str(study.path), "optuna_trial": identity["optuna_trial"],
                  "rank": int(chosen.row["rank"]), "why": chosen.why},
        "data_fingerprint": settings.data_fingerprint,
        "weights_fingerprint": settings.weights_fingerprint,
        "seeds": [{"seed": s, "file": weights_name(s), "test_acc": accuracy(per_seed[s], labels)} for s in every],
        "ensemble": {"seeds": len(every), "test_acc": accuracy(ensemble, labels), "balanced_acc": balanced_accuracy(counts)},
        "test_images": int(len(labels)),
        "confusion": {"rows": "true class", "columns": "predicted class", "counts": counts.tolist()},
        "command": command,
        "written": dt.datetime.now().isoformat(timespec="seconds"),
    }
    write_text_atomic(target / MODEL_FILE, json.dumps(info, indent=2))
    return ModelFolder(target, info)


def _identity(cfg: TrainConfig) -> dict:
    """What makes two reruns' seeds one model: everything the configuration trains with but its seed and threads."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "threads", "device")}


def _place(source: Path, target: Path) -> None:
    """``source``'s bytes at ``target`` (a hard link where the file system allows: the same 45 MB once), atomically."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
