"""``python -m study.rerun [results/<study>] [--rank 1] [--seeds 3]``: the final, honest number.

Takes the configuration of the trial with ``--rank`` (1 = the best) from ``trials.parquet`` over the
study's shared settings, retrains it with each of ``--seeds`` seeds (the study's seed + 0, 1, ...) on the
whole train split (train + validation), evaluates each model once on the test split, and prints the test
accuracy as mean +- sd. Writes ``rerun.parquet`` beside the study's tables (one row per seed) and each
seed's weights under ``rerun/``. The data is decoded once for all seeds.

``--export FILE`` (or ``-`` for stdout) writes that configuration as a JSON file for
``python -m trainable --config FILE`` instead, and prints the equivalent plain command line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from trainable import TrainConfig, UserError
from trainable.cli import run_main

from .analyze import RERUN_FILE, find_study, fmt
from .layout import StudyFolder, StudySettings, write_text_atomic

WEIGHTS_DIR = "rerun"
BOOK_HOTDOG_CLASSES = ["hotdog", "not-hotdog"]
BOOK_FIGURE = "the book: 0.940 (0.933 +- 0.012 over its builds)"
HYPERPARAMETERS = ("lr", "head_lr_mult", "weight_decay", "momentum", "freeze_depth", "augment", "batch_size")
# TrainConfig fields and the flags of python -m trainable that set them (split_seed has none: with
# --val-fraction 0 it does not matter)
TRAINABLE_FLAGS = ("data_dir", "weights", "epochs", "image_size", "batch_size", "val_fraction", "precision", "device",
                   "lr", "head_lr_mult", "weight_decay", "momentum", "freeze_depth", "augment", "seed", "threads")


@dataclass
class Chosen:
    """The trial picked by --rank and the configuration that retrains it."""

    settings: StudySettings
    row: dict  # its trials.parquet row
    config: TrainConfig  # train + validation (val_fraction 0), the rerun's epochs, the first seed

    @property
    def rank(self) -> int:
        return int(self.row["rank"])

    def describe(self) -> str:
        tag = ", the book's recipe" if self.row.get("baseline") else ""
        acc = self.row.get("best_val_acc")
        acc_text = f"val acc {acc:.3f} in the study" if acc is not None and not _isnan(acc) else f"no val acc ({self.row.get('status')})"
        return f"rank {self.rank} (trial {self.row.get('trial_id')}, Optuna trial {fmt(self.row.get('optuna_trial'))}{tag}): {acc_text}"


def _isnan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value):
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def choose(folder: StudyFolder, rank: int, epochs: int | None, device: str | None = None) -> Chosen:
    settings = folder.read_settings()
    if not folder.trials.is_file():
        raise UserError(f"study {settings.name!r} in {folder.path} has no trials yet (no trials.parquet): nothing to rerun")
    trials = pd.read_parquet(folder.trials)
    if len(trials) == 0:
        raise UserError(f"study {settings.name!r} has no trials yet: nothing to rerun")
    if not 1 <= rank <= len(trials):
        raise UserError(f"--rank {rank} is beyond the table: study {settings.name!r} has {len(trials)} trial(s), ranks 1-{len(trials)}")
    row = {k: _plain(v) for k, v in trials[trials["rank"] == rank].iloc[0].to_dict().items()}
    params = {}
    for name in settings.space:
        value = row.get(name)
        if value is None:
            raise UserError(f"trial {row.get('trial_id')} (rank {rank}) has no value for {name!r} in trials.parquet: choose another --rank")
        params[name] = int(value) if name in ("freeze_depth", "batch_size") else value
    base = TrainConfig.from_dict(settings.base)
    config = base.replace(**params, val_fraction=0.0, epochs=epochs or base.epochs, threads=0,
                          **({"device": device} if device else {}))
    return Chosen(settings, row, config.validate())


def is_book_hotdog(data_dir: str | None, classes: list[str] | None) -> bool:
    return data_dir is None or list(classes or []) == BOOK_HOTDOG_CLASSES


# --- export ------------------------------------------------------------------------------------------
def command_line(cfg: TrainConfig) -> str:
    """The plain ``python -m trainable`` command that trains ``cfg`` (every flag spelled out)."""
    parts = ["python", "-m", "trainable"]
    for name in TRAINABLE_FLAGS:
        value = getattr(cfg, name)
        if value is None:
            continue  # data_dir None: the book's hotdog set, the default
        parts += ["--" + name.replace("_", "-"), repr(value) if isinstance(value, float) else str(value)]
    return shlex.join(parts)


def export(chosen: Chosen, target: str) -> None:
    text = json.dumps(chosen.config.to_dict(), indent=2) + "\n"
    line = command_line(chosen.config)
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
    print(f"wrote its configuration (train + validation, {chosen.config.epochs} epoch(s)) to {path}; train it with:")
    print(f"  python -m trainable --config {shlex.quote(str(path))}")
    print("or, the same without the file:")
    print(f"  {line}")


# --- retraining --------------------------------------------------------------------------------------
def run_seed(cfg: TrainConfig, data, weights_path: str, progress: bool = False) -> dict:
    """Train ``cfg`` on ``data.train``, evaluate once on ``data.test``, save the weights; one result row."""
    import torch

    from trainable import evaluate, train
    from trainable.loop import resolve_device, use_bf16

    def on_epoch(m, _save) -> None:
        if progress:
            print(f"  seed {cfg.seed} epoch {m.epoch}/{cfg.epochs}: train loss {m.train_loss:.4f} acc {m.train_acc:.3f}, "
                  f"{m.seconds:.0f}s, {m.images_per_s:.1f} img/s" + ("  DIVERGED" if m.diverged else ""), flush=True)

    t0 = time.perf_counter()
    result = train(cfg, data, on_epoch=on_epoch)
    last = result.history[-1] if result.history else None
    row = {"seed": cfg.seed, "status": result.status, "test_acc": math.nan, "test_loss": math.nan,
           "train_loss": last.train_loss if last else math.nan, "train_acc": last.train_acc if last else math.nan,
           "epochs": len(result.history), "images_per_s": float(sum(m.images_per_s for m in result.history) / max(len(result.history), 1)),
           "weights_file": None}
    if result.status != "diverged":
        device = resolve_device(cfg.device)
        row["test_loss"], row["test_acc"] = evaluate(result.model, data.test, cfg, device, use_bf16(cfg.precision, device), True)
        path = Path(weights_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}, tmp)
        os.replace(tmp, path)
        row["weights_file"] = str(path)
    row["seconds"] = time.perf_counter() - t0
    return row


def _row(chosen: Chosen, result: dict) -> dict:
    cfg = chosen.config
    return {"rank": chosen.rank, "trial_id": chosen.row.get("trial_id"), "optuna_trial": chosen.row.get("optuna_trial"),
            "baseline": bool(chosen.row.get("baseline")), "study_val_acc": chosen.row.get("best_val_acc"), **result,
            **{h: getattr(cfg, h) for h in HYPERPARAMETERS}, "image_size": cfg.image_size, "weights": cfg.weights,
            "data_dir": cfg.data_dir}


def write_rerun(folder: StudyFolder, chosen: Chosen, rows: list[dict]) -> Path:
    """``rerun.parquet``: this trial's rows replace its earlier ones; other trials' rows stay. Atomic."""
    from .results import write_parquet_atomic

    path = folder.path / RERUN_FILE
    new = pd.DataFrame(rows)
    if path.is_file():
        old = pd.read_parquet(path)
        old = old[old["trial_id"] != chosen.row.get("trial_id")]
        new = pd.concat([old, new], ignore_index=True) if len(old) else new
    new = new.sort_values(["rank", "seed"]).reset_index(drop=True)
    write_parquet_atomic(new.astype({"optuna_trial": "Int64"}) if "optuna_trial" in new else new, path)
    return path


def _print_seed(row: dict) -> None:
    if row["status"] == "diverged":
        print(f"seed {row['seed']}: DIVERGED (loss NaN/inf) after {row['epochs']} epoch(s) in {row['seconds']:.0f}s: no test accuracy", flush=True)
    else:
        print(f"seed {row['seed']}: test acc {row['test_acc']:.3f} (loss {row['test_loss']:.4f}) after {row['epochs']} epoch(s) "
              f"in {row['seconds']:.0f}s -> {row['weights_file']}", flush=True)


def summary_line(accs: list[float], hotdog: bool) -> str:
    if not accs:
        return "no seed produced a test accuracy (every run diverged): try another --rank"
    mean = sum(accs) / len(accs)
    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
    line = f"test accuracy over {len(accs)} seed(s): {mean:.3f} +- {sd:.3f} (mean +- sd)"
    return f"{line}    {BOOK_FIGURE}" if hotdog else line


def retrain(folder: StudyFolder, chosen: Chosen, seeds: int, parallel: bool = False) -> list[dict]:
    from trainable import prepare_data

    cfg = chosen.config
    t0 = time.perf_counter()
    data = prepare_data(cfg.data_dir, cfg.image_size, val_fraction=0.0, split_seed=cfg.split_seed, with_test=True, log=print)
    print(f"decoded {len(data.train)} train (train + validation) and {len(data.test)} test images once, classes {data.classes}, "
          f"in {time.perf_counter() - t0:.1f}s")
    hotdog = is_book_hotdog(cfg.data_dir, data.classes)
    seeds_list = [cfg.seed + i for i in range(seeds)]
    weights = {s: str(folder.path / WEIGHTS_DIR / f"rank{chosen.rank}-seed{s}.pt") for s in seeds_list}
    rows: list[dict] = []
    if parallel:
        rows = _retrain_ray(chosen, data, seeds_list, weights, lambda rs: write_rerun(folder, chosen, rs))
    else:
        for s in seeds_list:
            result = run_seed(cfg.replace(seed=s), data, weights[s], progress=True)
            rows.append(_row(chosen, result))
            _print_seed(result)
            write_rerun(folder, chosen, rows)  # after every seed: an interrupted rerun keeps what it finished
    accs = [r["test_acc"] for r in rows if not _isnan(r["test_acc"])]
    print(summary_line(accs, hotdog))
    print(f"results: {folder.path / RERUN_FILE}")
    return rows


def _retrain_ray(chosen: Chosen, data, seeds: list[int], weights: dict, save) -> list[dict]:
    """Each seed as a Ray task with the study's per-trial resources; the data goes to the object store once."""
    import ray

    from .run import start_ray

    settings = chosen.settings
    start_ray(None)
    try:
        cpus = float(settings.cpus_per_trial or 1)
        gpus = float(settings.gpus_per_trial or 0) if ray.cluster_resources().get("GPU", 0) else 0.0
        task = ray.remote(num_cpus=cpus, num_gpus=gpus)(run_seed)
        data_ref = ray.put(data)
        threads = max(1, int(cpus))
        print(f"{len(seeds)} seed(s) as Ray tasks, each with {cpus:g} CPU(s)" + (f" and {gpus:g} GPU" if gpus else ""), flush=True)
        # progress=True: Ray forwards each task's per-epoch lines to this console, prefixed with its pid
        pending = {task.remote(chosen.config.replace(seed=s, threads=threads), data_ref, weights[s], True): s for s in seeds}
        rows = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            pending.pop(done[0])
            result = ray.get(done[0])
            rows.append(_row(chosen, result))
            _print_seed(result)
            save(rows)
        return sorted(rows, key=lambda r: r["seed"])
    finally:
        ray.shutdown()


# --- the command -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.rerun", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", help="the study folder (default: the newest study under --results-dir)")
    parser.add_argument("--results-dir", default="results", help="where to look for the newest study (default: %(default)s)")
    parser.add_argument("--rank", type=int, default=1, help="which trial of trials.parquet: 1 = the best (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="retrain with this many seeds: the study's seed + 0, 1, ... (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per seed (default: the study's epochs)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the study's)")
    parser.add_argument("--parallel", action="store_true", help="run the seeds at once as Ray tasks, with the study's per-trial CPUs/GPUs")
    parser.add_argument("--export", metavar="FILE", help="write the configuration as JSON for python -m trainable --config (- for stdout), print the command, and exit")
    parser.add_argument("--print-command", action="store_true", help="print the equivalent python -m trainable command line and exit")
    args = parser.parse_args(argv)
    checks = [
        (args.rank >= 1, f"--rank {args.rank} must be 1 or more (1 = the best trial)"),
        (args.seeds >= 1, f"--seeds {args.seeds} must be 1 or more"),
        (args.epochs is None or args.epochs >= 1, f"--epochs {args.epochs} must be 1 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda m: print(m, file=sys.stderr)) if args.export == "-" else print
    folder = find_study(args.study, args.results_dir, log=log)
    chosen = choose(folder, args.rank, args.epochs, args.device)
    if args.export:
        export(chosen, args.export)
        return 0
    if args.print_command:
        print(command_line(chosen.config))
        return 0
    cfg = chosen.config
    print(f"study {chosen.settings.name}, {chosen.describe()}")
    if chosen.row.get("status") in ("errored", "diverged"):
        print(f"note: this trial {chosen.row.get('status')} in the study; retraining it anyway")
    params = "  ".join(f"{p}={fmt(getattr(cfg, p))}" for p in chosen.settings.space)
    print(f"retraining {params}: {cfg.epochs} epoch(s) at {cfg.image_size}px, weights {cfg.weights}, on train + validation, "
          f"{args.seeds} seed(s)")
    rows = retrain(folder, chosen, args.seeds, args.parallel)
    return 0 if any(not _isnan(r["test_acc"]) for r in rows) else 1


if __name__ == "__main__":
    from study.rerun import main as _main  # the importable module, not __main__ (Ray pickles run_seed by reference)

    run_main(_main)
