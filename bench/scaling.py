"""``python -m bench --scaling``: whole studies (``python -m study.run``) timed, their phases (from ``study.json``),
and the same studies projected to the full data from the rates measured."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trainable import UserError
from trainable.data import IMAGE_SUFFIXES, check_layout

from bench.cells import ROOT, load_average


def stratified_subset(source: Path, target: Path, n_train: int, val_fraction: float = 0.1, seed: int = 0) -> Path:
    """``target/{train,test}/<class>/`` of symlinks to ``n_train`` training images (an equal share per class)
    and a test share: no image is copied."""
    _, classes = check_layout(source)
    rng = np.random.default_rng(seed)
    n_test = max(len(classes), round(n_train * val_fraction))
    for split, n in (("train", n_train), ("test", n_test)):
        for i, name in enumerate(classes):
            files = sorted(p for p in (source / split / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            want = n // len(classes) + (1 if i < n % len(classes) else 0)
            folder = target / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in rng.permutation(np.array(files, dtype=object))[:want]:
                (folder / path.name).symlink_to(path.resolve())
    return target


def run_study_timed(argv: list[str], log, env: dict | None = None, on_start=None, lines: list[str] | None = None,
                    what: str | None = None) -> float:
    """Run ``python -m study.run``; its wall time in seconds, process start to exit (its phases are in its study.json).

    ``env``: its environment (default: this one's, unbuffered); ``on_start``: called with the ``Popen`` once it runs;
    ``lines``: a list its output lines are appended to; ``what``: the study as the failure's message names it (default:
    its argv)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"} if env is None else env
    lines = [] if lines is None else lines
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if on_start is not None:
        on_start(proc)
    lines.extend(line.rstrip() for line in proc.stdout)
    code = proc.wait()
    wall = time.perf_counter() - t0
    if code != 0:
        log("\n".join(lines[-20:]))
        raise UserError(f"the study {argv if what is None else what} failed with exit code {code}")
    return wall


def scaling_breakdown(run: dict, wall: float, epochs, n_train: int, n_val: int) -> dict:
    """Split one study's wall time (``wall``: its process, start to exit) into phases (seconds) from the driver
    run's record in study.json (``run``: ``runs[-1]``, with its ``timings`` and ``concurrent``) and epochs.parquet."""
    timings = run["timings"]
    slots = max(1, round(run.get("concurrent", 1)))
    fit = float(timings.get("fit_s", 0.0))
    decode = float(timings["decode_s"])
    setup = float(timings.get("setup_s", decode + timings.get("ray_start_s", 0.0)))  # set-up ends where the trials start
    train_s = (n_train / epochs["images_per_s"]).clip(upper=epochs["seconds"])
    eval_s = epochs["seconds"] - train_s
    trials = int(epochs["trial_id"].nunique())
    phases = {
        "start-up": float(timings.get("startup_s", 0.0)) + (setup - decode),  # interpreter and imports; Ray's start, the study's set-up
        "data preparation": decode,
        "training": float(train_s.sum()) / slots,
        "evaluation": float(eval_s.sum()) / slots,
    }
    phases["Ray overhead"] = max(0.0, wall - sum(phases.values()))  # trial start-up, reporting, idle slots, shutdown
    return {
        "wall_s": round(wall, 1), "fit_s": round(fit, 1), "trials": trials, "slots": slots,
        "epochs_trained": int(len(epochs)), "train_images_per_s_per_trial": round(float(epochs["images_per_s"].median()), 2),
        "eval_images_per_s_per_trial": round(float(n_val / eval_s[eval_s > 0].median()), 2) if (eval_s > 0).any() else None,
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "shares": {k: round(v / wall, 3) for k, v in phases.items()},
        "ray_overhead_per_trial_s": round(max(0.0, fit * slots - float(epochs["seconds"].sum())) / max(trials, 1), 1),
    }


def project_full(measured: dict, samples: int, full_train: int, full_val: int, full_decode_s: float) -> dict:
    """The same study on the full data: measured rates, start-up and per-trial overhead; ASHA's pattern of
    epochs per trial taken as measured on the subset (real data may stop different trials)."""
    slots = measured["slots"]
    epochs = measured["epochs_trained"] * samples / max(measured["trials"], 1)
    per_epoch = full_train / measured["train_images_per_s_per_trial"] + (full_val / measured["eval_images_per_s_per_trial"] if measured["eval_images_per_s_per_trial"] else 0)
    compute = epochs * per_epoch / slots
    overhead = measured["ray_overhead_per_trial_s"] * samples / slots
    startup = measured["phases_s"]["start-up"]
    total = startup + full_decode_s + compute + overhead
    return {"samples": samples, "epochs_trained": round(epochs, 1), "train_images": full_train, "val_images": full_val,
            "seconds": round(total, 0), "minutes": round(total / 60, 1),
            "parts_s": {"start-up": round(startup, 1), "data preparation": round(full_decode_s, 1),
                        "training + evaluation": round(compute, 1), "Ray overhead": round(overhead, 1)}}


def run_scaling(args: argparse.Namespace, data_dir: Path, log) -> dict:
    import pandas as pd

    _, classes = check_layout(data_dir)
    full_train_all = sum(1 for name in classes for p in (data_dir / "train" / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    full_val = max(1, round(full_train_all * 0.1))
    full_train = full_train_all - full_val
    out = {"measured_on": {}, "studies": [], "projected_full": []}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        subset = stratified_subset(data_dir, Path(tmp) / "data", args.scaling_images)
        n_val = max(1, round(args.scaling_images * 0.1))
        n_train = args.scaling_images - n_val
        out["measured_on"] = {"data_dir": str(data_dir), "subset_train_images": n_train, "subset_val_images": n_val,
                              "image_size": args.scaling_size, "epochs": args.scaling_epochs, "weights": "none",
                              "batch_size": args.scaling_batch_size}
        modes = ["fresh", "reused"] if args.scaling_actors == "both" else [args.scaling_actors]
        for samples, actors in ((n, mode) for n in args.scaling_samples for mode in modes):
            name = f"scaling-{samples}-{actors}"
            argv = ["--samples", str(samples), "--data-dir", str(subset), "--weights", "none", "--epochs", str(args.scaling_epochs),
                    "--image-size", str(args.scaling_size), "--batch-size", str(args.scaling_batch_size),
                    "--results-dir", str(Path(tmp) / "results"), "--name", name,
                    "--no-confirm"] + (["--fresh-actors"] if actors == "fresh" else [])  # the trials alone: the stage is timed apart
            log(f"study of {samples} trials on {n_train}+{n_val} images, {actors} actors: python -m study.run {' '.join(argv)}")
            load_before = load_average()
            wall = run_study_timed(argv, log)
            folder = Path(tmp) / "results" / name
            settings = json.loads((folder / "study.json").read_text())
            trials = pd.read_parquet(folder / "trials.parquet")
            epochs = pd.read_parquet(folder / "epochs.parquet")
            run = settings["runs"][-1]
            measured = scaling_breakdown(run, wall, epochs, n_train, n_val)
            measured.update(samples=samples, actors=actors, load_before=load_before, load_after=load_average(),
                            status_counts={str(k): int(v) for k, v in trials["status"].value_counts().items()})
            out["studies"].append(measured)
            log(f"  {samples} trials: {measured['wall_s']:.0f}s wall, {measured['epochs_trained']} epochs, shares {measured['shares']}")
            decode_s = float(run["timings"]["decode_s"])
            decoded = run.get("train_images", n_train) + run.get("val_images", n_val)
            decode_rate = decoded / decode_s if decode_s > 0 else math.inf
            full_decode = (full_train + full_val) / decode_rate
            out["projected_full"].append({**project_full(measured, samples, full_train, full_val, full_decode), "actors": actors})
    return out


def print_scaling(result: dict, console) -> None:
    from rich.table import Table

    m = result["measured_on"]
    table = Table(title=f"MEASURED: studies on a subset of {m['subset_train_images']}+{m['subset_val_images']} images, "
                        f"{m['image_size']} px, {m['epochs']} epochs, weights {m['weights']}", title_justify="left")
    phases = ["start-up", "data preparation", "training", "evaluation", "Ray overhead"]
    for col in ["samples", "actors", "wall s", "epochs", "img/s/trial", *phases, "Ray s/trial"]:
        table.add_column(col, justify="right")
    for s in result["studies"]:
        table.add_row(str(s["samples"]), s["actors"], f"{s['wall_s']:.0f}", str(s["epochs_trained"]), f"{s['train_images_per_s_per_trial']:.1f}",
                      *[f"{s['phases_s'][p]:.0f}s {100 * s['shares'][p]:.0f}%" for p in phases], f"{s['ray_overhead_per_trial_s']:.1f}")
    console.print(table)
    table = Table(title="PROJECTED (not measured): the same studies on the full data, from the rates measured above", title_justify="left")
    for col in ["samples", "actors", "train+val images", "epochs", "start-up s", "data prep s", "train+eval s", "Ray s", "total min"]:
        table.add_column(col, justify="right")
    for p in result["projected_full"]:
        parts = p["parts_s"]
        table.add_row(str(p["samples"]), p["actors"], f"{p['train_images']}+{p['val_images']}", f"{p['epochs_trained']:.0f}", f"{parts['start-up']:.0f}",
                      f"{parts['data preparation']:.0f}", f"{parts['training + evaluation']:.0f}", f"{parts['Ray overhead']:.0f}", f"{p['minutes']:.1f}")
    console.print(table)
