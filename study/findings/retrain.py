"""Retraining a study's configuration for its final number: which trial (``choose``, the book's recipe beside it:
``choose_baseline``), its exported config, and ``retrain`` (each seed on the whole train split, judged once on
the test split; in order, or all at once on Ray), with its rows in ``rerun.parquet``.

``python -m study.rerun`` and the notebook API (``study.api``) both run it.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from trainable import TrainConfig, UserError

from study.core.folder import RERUN_DIR, RERUN_FILE, RERUN_LOCK_FILE, StudyFolder, write_atomic, write_parquet_atomic, write_text_atomic
from study.core.settings import StudySettings
from study.core.values import fmt, isnan, plain
from study.core.vocabulary import (BOOK_CLASSES, BOOK_FIGURE, BOOK_TEST_IMAGES, BOOK_TRAIN_IMAGES, FAILED, HYPERPARAMETERS, PARAM_TYPES,
                                   RUNNING, typed)
from study.findings.reading import StudyData, read_study


# TrainConfig fields and the flags of python -m trainable that set them: every one that shapes the numbers.
TRAINABLE_FLAGS = ("data_dir", "weights", "epochs", "image_size", "val_fraction", "split_seed", "precision", "device", "augment_path",
                   *HYPERPARAMETERS, "seed", "threads")


@dataclass
class Chosen:
    """The trial picked (by --rank, or the confirmed winner) and the configurations that reproduce and retrain it."""

    settings: StudySettings
    row: dict  # its trials.parquet row
    trial: TrainConfig  # the trial as it ran in the study: its validation split, epochs, seed and threads
    config: TrainConfig  # the retraining: train + validation (val_fraction 0), the rerun's epochs and threads, the first seed
    why: str = ""  # how it was picked

    @property
    def rank(self) -> int:
        return int(self.row["rank"])

    def describe(self) -> str:
        tag = ", the book's recipe" if self.row.get("baseline") else ""
        acc = self.row.get("best_val_acc")
        acc_text = f"val acc {acc:.3f} in the study" if acc is not None and not isnan(acc) else f"no val acc ({self.row.get('status')})"
        return f"rank {self.rank} (Optuna trial {fmt(self.row.get('optuna_trial'))}{tag}): {acc_text}"


def choose(folder: StudyFolder, rank: int | None, epochs: int | None, device: str | None = None, threads: int | None = None) -> Chosen:
    data = read_trials(folder)
    trials = data.trials
    why = ""
    if rank is None:
        row, what = data.winner()
        if what == "confirmed winner":
            rank = int(row["rank"])
            why = (f"the confirmed winner: best mean validation accuracy over {int(row['confirm_folds'])} folds "
                   f"({row['confirm_mean']:.3f}); --rank N picks by the study's ranking instead")
        else:
            rank = 1
            why = "rank 1, the best validation accuracy in the study (no confirmation stage ran)"
    else:
        why = f"--rank {rank}, by the study's ranking"
    if not 1 <= rank <= len(trials):
        raise UserError(f"--rank {rank} is beyond the table: study {data.settings.name!r} has {len(trials)} trial(s), ranks 1-{len(trials)}")
    row = {k: plain(v) for k, v in trials[trials["rank"] == rank].iloc[0].to_dict().items()}
    if isnan(row.get("best_val_acc")):
        from study.core.folder import resume_command

        status = row.get("status")
        if status == RUNNING:
            state = "is running" if data.running is not None else "was running when the study stopped"
        else:
            state = f"is {status}" if status in FAILED else "has none"
        raise UserError(f"rank {rank} (trial {row.get('optuna_trial')}) has no validation accuracy (it {state}): nothing was "
                        f"learned to rerun" + (f"; finish the study first: {resume_command(folder)}" if status == RUNNING and data.running is None
                                               else "; wait for the study to finish" if status == RUNNING else
                                               "; pick a trial that trained with --rank"))
    return _chosen(data, row, epochs, device, threads, why)


def choose_baseline(folder: StudyFolder, chosen: Chosen, epochs: int | None, device: str | None = None,
                    threads: int | None = None) -> tuple[Chosen | None, str]:
    """The book's recipe as the study ran it, to retrain beside ``chosen`` on the same seeds; (None, why not) where
    there is none to compare with."""
    if chosen.row.get("baseline"):
        return None, "the trial picked is the book's recipe itself"
    data = read_trials(folder)
    rows = data.trials[data.trials["baseline"].fillna(False).astype(bool)]
    if not len(rows):
        return None, "the study has no baseline (the book's recipe lies outside its search space)"
    row = {k: plain(v) for k, v in rows.iloc[0].to_dict().items()}
    return _chosen(data, row, epochs, device, threads, "the book's recipe, on the same seeds"), ""


def read_trials(folder: StudyFolder) -> StudyData:
    settings = folder.read_settings()
    if not folder.trials.is_file():
        raise UserError(f"study {settings.name!r} in {folder.path} has no trials yet (no trials.parquet): nothing to rerun")
    return read_study(folder)


def _chosen(data: StudyData, row: dict, epochs: int | None, device: str | None, threads: int | None, why: str) -> Chosen:
    settings = data.settings
    params = {}
    for name in settings.space:
        value = row.get(name)
        if value is None:
            raise UserError(f"trial {row.get('optuna_trial')} (rank {row.get('rank')}) has no value for {name!r} in trials.parquet: "
                            "choose another --rank")
        params[name] = typed(name, value)
    base = TrainConfig.from_dict(dict(settings.base))
    trial = base.replace(**params, threads=data.threads_of(row), **({"device": device} if device else {})).validate()
    config = trial.replace(val_fraction=0.0, epochs=epochs or base.epochs, threads=threads or trial.threads).validate()
    return Chosen(settings, row, trial, config, why)


def comparable_to_book(cfg: TrainConfig, classes: list[str], train_images: int, test_images: int) -> str:
    """"" when a run is the book's setting (its data and TrainConfig's defaults: ImageNet weights, 224 px, 5 epochs), else why it is not."""
    reasons = []
    if not (cfg.data_dir is None or (list(classes) == BOOK_CLASSES and train_images == BOOK_TRAIN_IMAGES and test_images == BOOK_TEST_IMAGES)):
        reasons.append("other data than the book's hotdog.zip")
    book = TrainConfig()  # the book's setting is TrainConfig's defaults: one home for it
    if cfg.weights != book.weights:
        reasons.append(f"weights {cfg.weights} instead of ImageNet's")
    if cfg.image_size != book.image_size:
        reasons.append(f"{cfg.image_size} px instead of {book.image_size}")
    if cfg.epochs != book.epochs:
        reasons.append(f"{cfg.epochs} epoch(s) instead of {book.epochs}")
    return ", ".join(reasons)


# --- export ------------------------------------------------------------------------------------------
def command_line(cfg: TrainConfig) -> str:
    """The plain ``python -m trainable`` command that trains ``cfg`` (every flag that shapes the numbers)."""
    parts = ["python", "-m", "trainable"]
    for name in TRAINABLE_FLAGS:
        value = getattr(cfg, name)
        if value is None:
            continue  # data_dir None: the book's hotdog set, the default
        parts += ["--" + name.replace("_", "-"), repr(value) if isinstance(value, float) else str(value)]
    return shlex.join(parts)


def export(chosen: Chosen, target: str) -> None:
    """Write the trial as it ran in the study: ``python -m trainable --config FILE`` reproduces its numbers."""
    text = json.dumps(chosen.trial.to_dict(), indent=2) + "\n"
    line = command_line(chosen.trial)
    final = "--val-fraction 0 --test"
    if target == "-":
        sys.stdout.write(text)
        print(f"# {chosen.describe()}\n# the same as: {line}", file=sys.stderr)
        return
    path = Path(target).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): pass --export a writable file, or - for stdout") from None
    print(f"{chosen.describe()}")
    print(f"wrote the trial's configuration to {path} ({chosen.trial.epochs} epoch(s), its validation split, seed {chosen.trial.seed}, "
          f"{chosen.trial.threads} thread(s): the same numbers as in the study). Train it with:")
    print(f"  python -m trainable --config {shlex.quote(str(path))}")
    print(f"the final model on train + validation, with its test accuracy:\n  python -m trainable --config {shlex.quote(str(path))} {final}")
    print(f"or, without the file:\n  {line}")


# --- retraining --------------------------------------------------------------------------------------
def run_seed(cfg: TrainConfig, data, weights_path: str, report=None, label: str = "", gpu_share: float = 0.0) -> dict:
    """Train ``cfg`` on ``data.train``, evaluate once on ``data.test``, save the weights; one result row, and the test
    photos' class probabilities (``test_probabilities``: what the ensemble and the per-class figures are made of).

    ``report`` takes each epoch's progress line (``print`` here, a queue's ``put`` in a Ray task). ``gpu_share``: the
    fraction of a GPU Ray gave this task (``study.driver.runner``). The test split is judged as ``study.predict`` judges
    photos (``trainable.predict.probabilities``): the model folder's figures and a prediction of the same photos agree.
    """
    import numpy as np
    import torch

    from study.driver.runner import hold_to_gpu_share

    hold_to_gpu_share(gpu_share)
    from trainable import train
    from trainable.predict import accuracy, log_loss, log_probabilities

    def on_epoch(m, _save) -> None:
        if report:
            report(f"  {label}seed {cfg.seed} epoch {m.epoch}/{cfg.epochs}: train loss {m.train_loss:.4f} acc {m.train_acc:.3f}, "
                   f"{m.seconds:.0f}s, {m.images_per_s:.1f} img/s" + ("  DIVERGED" if m.diverged else ""))

    t0 = time.perf_counter()
    result = train(cfg, data, on_epoch=on_epoch)
    last = result.history[-1] if result.history else None
    row = {"seed": cfg.seed, "status": result.status, "test_acc": math.nan, "test_loss": math.nan,
           "train_loss": last.train_loss if last else math.nan, "train_acc": last.train_acc if last else math.nan,
           "epochs": len(result.history), "images_per_s": float(sum(m.images_per_s for m in result.history) / max(len(result.history), 1)),
           "weights_file": None, "test_images": len(data.test), "balanced_acc": math.nan, "test_probabilities": None}
    if result.status != "diverged":
        from trainable.predict import balanced_accuracy, confusion

        log_probs = log_probabilities(result.model, data.test.images, cfg)
        probs, labels = np.exp(log_probs), data.test.labels
        row["test_acc"] = accuracy(probs, labels)
        row["test_loss"] = log_loss(log_probs, labels)
        row["balanced_acc"] = balanced_accuracy(confusion(labels, probs.argmax(1), len(data.classes)))
        row["test_probabilities"] = probs
        path = Path(weights_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
        write_atomic(path, lambda tmp: torch.save(weights, tmp))
        row["weights_file"] = str(path)
    row["seconds"] = time.perf_counter() - t0
    return row


RERUN_TYPES = {"rank": "int64", "trial_id": "str", "optuna_trial": "int64", "baseline": "bool", "study_val_acc": "float64",
               "seed": "int64", "status": "str", "test_acc": "float64", "test_loss": "float64", "train_loss": "float64",
               "train_acc": "float64", "epochs": "int64", "images_per_s": "float64", "weights_file": "str", "seconds": "float64",
               **PARAM_TYPES, "image_size": "int64", "weights": "str", "data_dir": "str", "threads": "int64",
               "comparable_to_book": "bool", "test_images": "Int64", "balanced_acc": "float64"}


def _row(chosen: Chosen, result: dict, comparable: bool) -> dict:
    cfg = chosen.config
    return {"comparable_to_book": comparable, "rank": chosen.rank, "trial_id": chosen.row.get("trial_id"), "optuna_trial": chosen.row.get("optuna_trial"),
            "baseline": bool(chosen.row.get("baseline")), "study_val_acc": chosen.row.get("best_val_acc"), **result,
            **{h: getattr(cfg, h) for h in HYPERPARAMETERS}, "image_size": cfg.image_size, "weights": cfg.weights,
            "data_dir": cfg.data_dir, "threads": cfg.threads}


def write_rerun(folder: StudyFolder, chosen: Chosen, rows: list[dict]) -> Path:
    """``rerun.parquet``: this trial's rows replace its earlier ones; other trials' rows stay. Atomic.

    The read-merge-write holds a lock, so that reruns of two ranks at once (two terminals) keep each other's rows.
    """
    from filelock import FileLock

    path = folder.path / RERUN_FILE
    new = pd.DataFrame(rows, columns=list(RERUN_TYPES))
    with FileLock(str(folder.path / RERUN_LOCK_FILE)):
        if path.is_file():
            old = pd.read_parquet(path)
            old = old[old["optuna_trial"] != chosen.row.get("optuna_trial")].reindex(columns=list(RERUN_TYPES))
            new = pd.concat([old, new], ignore_index=True) if len(old) else new
        new = new.sort_values(["rank", "seed"]).reset_index(drop=True).astype(RERUN_TYPES)
        write_parquet_atomic(new, path)
    return path


def label(chosen: Chosen) -> str:
    """``trial 18 (the book's recipe)``: how a run's lines name it."""
    return f"trial {fmt(chosen.row.get('optuna_trial'))}" + (" (the book's recipe)" if chosen.row.get("baseline") else "")


def _print_seed(name: str, row: dict) -> None:
    if row["status"] == "diverged":
        print(f"{name} seed {row['seed']}: DIVERGED (loss NaN/inf) after {row['epochs']} epoch(s) in {row['seconds']:.0f}s: "
              "no test accuracy", flush=True)
    else:
        print(f"{name} seed {row['seed']}: test acc {row['test_acc']:.3f} (loss {row['test_loss']:.4f}) after {row['epochs']} epoch(s) "
              f"in {row['seconds']:.0f}s -> {row['weights_file']}", flush=True)


def summary_line(accs: list[float], not_the_book: str) -> str:
    """The rerun's test accuracy; beside it the book's figure only where the run is the book's setting."""
    if not accs:
        return "no seed produced a test accuracy (every run diverged): try another --rank"
    mean = sum(accs) / len(accs)
    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
    line = f"test accuracy over {len(accs)} seed(s): {mean:.3f} +- {sd:.3f} (mean +- sd)"
    if not_the_book:
        return f"{line}\nthe book's 0.940 is not shown beside it: this run differs from the book's setting ({not_the_book})"
    return f"{line}    {BOOK_FIGURE}"


def paired_line(name: str, rows: list[dict], baseline_rows: list[dict]) -> str:
    """``name`` minus the book's recipe on the test split, paired seed by seed, with its 95% t-interval."""
    from study.core.decision import paired_by_seed

    images = max((int(r["test_images"]) for r in rows + baseline_rows if not isnan(r.get("test_images"))), default=None)
    versus = paired_by_seed(*({r["seed"]: r["test_acc"] for r in side if not isnan(r["test_acc"])} for side in (rows, baseline_rows)),
                            images=images)
    if versus is None:
        return f"{name} vs the book's recipe: no seed where both have a test accuracy"
    return f"{name} vs the book's recipe on the test split: " + versus.describe("seed")


def retrain(folder: StudyFolder, chosen: Chosen, seeds: int, parallel: bool = False, baseline: Chosen | None = None,
            model_dir: str | Path | None = None, command: str = "", cache: bool = True) -> list[dict]:
    """Each seed of ``chosen`` (and of ``baseline``, on the same seeds), trained and tested; their rows, also in
    rerun.parquet; the ensembles and per-class figures (rerun_classes.parquet); and ``chosen``'s model folder
    (``model_dir``, default the study's ``model/``: ``study.findings.model``), which ``command`` made."""
    from trainable import prepare_data

    from study.driver.progress import decode_progress
    from study.driver.runner import run_each
    from study.findings.ensemble import CLASSES_FILE, TestResult, versus_on_images, write_classes

    cfg = chosen.config
    t0 = time.perf_counter()
    data = prepare_data(cfg.data_dir, cfg.image_size, val_fraction=0.0, split_seed=cfg.split_seed, with_test=True, log=print,
                        cache=cache, progress=decode_progress())
    how = "decoded" if data.decode_s else "read from the decoded-image cache"
    print(f"{how} {len(data.train)} train (train + validation) and {len(data.test)} test images once, classes {data.classes}, "
          f"in {time.perf_counter() - t0:.1f}s")
    not_the_book = comparable_to_book(cfg, data.classes, len(data.train), len(data.test))
    seeds_list = [cfg.seed + i for i in range(seeds)]
    runs = {run.row["optuna_trial"]: run for run in [chosen] + ([baseline] if baseline is not None else [])}
    # seed by seed, the runs side by side: an interrupted rerun keeps pairs
    jobs = [{"cfg": run.config.replace(seed=s), "weights_path": str(folder.path / RERUN_DIR / f"trial{number}-seed{s}.pt"),
             "label": f"{label(run)} ", "number": number} for s in seeds_list for number, run in runs.items()]
    rows: dict[int, list[dict]] = {number: [] for number in runs}
    tested = {number: TestResult(int(number), bool(run.row.get("baseline")), data.classes, data.test.labels, {})
              for number, run in runs.items()}
    gpus = float(chosen.settings.gpus_granted or 0)
    for job, result in run_each(_seed_task, jobs, lambda _cfg: data, parallel, gpus, log=lambda line: print(line, flush=True)):
        run = runs[job["number"]]
        probs = result.pop("test_probabilities", None)
        if probs is not None:
            tested[job["number"]].probabilities[int(result["seed"])] = probs
        mine = rows[job["number"]]
        mine.append(_row(run, result, not not_the_book))
        _print_seed(label(run), result)
        write_rerun(folder, run, mine)  # after every seed: an interrupted rerun keeps what it finished
    for number in runs:
        rows[number].sort(key=lambda r: r["seed"])
    note = ""
    for number, run in runs.items():
        line, _, note = summary_line([r["test_acc"] for r in rows[number] if not isnan(r["test_acc"])], not_the_book).partition("\n")
        print(f"{label(run)}: {line}")
        if tested[number].probabilities:
            print(f"{label(run)}: {tested[number].line()}")
    if note:  # why the book's figure is not beside them: once for all
        print(note)
    if baseline is not None:
        print(paired_line(label(chosen), rows[chosen.row["optuna_trial"]], rows[baseline.row["optuna_trial"]]))
        versus = versus_on_images(tested[chosen.row["optuna_trial"]], tested[baseline.row["optuna_trial"]])
        if versus is not None:
            print(f"{label(chosen)}'s ensemble vs the book's recipe's, photo by photo on the same {len(data.test)} test photos: "
                  + versus.describe("photo"))
    write_classes(folder, [t for t in tested.values() if t.probabilities])
    print(f"results: {folder.path / RERUN_FILE}, per class: {folder.path / CLASSES_FILE}")
    mine = tested[chosen.row["optuna_trial"]]
    if mine.probabilities:
        from study.findings.model import MODEL_DIR, write_model

        target = Path(model_dir).expanduser() if model_dir else folder.path / MODEL_DIR
        files = {int(r["seed"]): Path(r["weights_file"]) for r in rows[chosen.row["optuna_trial"]] if not isnan(r.get("weights_file"))}
        model = write_model(target, folder, chosen, mine, files, data.stored_size, command or f"python -m study.rerun {folder.path}",
                            evaluate=lambda path: _probabilities_of(path, data, cfg))
        print(f"model: {model.path} ({model.describe()}); use it with python -m study.predict {shlex.quote(str(model.path))} PHOTOS")
    else:
        print(f"no model written: every seed of {label(chosen)} diverged")
    return [r for number in runs for r in rows[number]]


def _probabilities_of(path: Path, data, cfg: TrainConfig):
    """The test photos' class probabilities by the weights in ``path`` (a seed an earlier rerun trained)."""
    from trainable.predict import probabilities

    from study.findings.model import trained_module

    return probabilities([trained_module(path, len(data.classes))], data.test.images, cfg)


def _seed_task(cfg: TrainConfig, data, report, gpu_share: float, weights_path: str, label: str, number: int) -> dict:
    """One seed as ``study.driver.runner`` runs it."""
    return run_seed(cfg, data, weights_path, report, label, gpu_share)
