"""``python -m bench --flow``: the whole used-by flow, timed, and whether the study's stated certainty held.

As a user runs it, each step the real command line: ``python -m study.run`` (the study and its confirmation
stage), ``python -m study.rerun --seeds N --parallel`` (the confirmed winner and the book's recipe, on the same
seeds, tested once each on the test split; as Ray tasks, as many at once as the CPUs allow) and ``python -m study.analyze`` (the report). Writes one JSON: the wall
time of each phase (the study's own phases from its ``study.json``), the confirmation's gain over the book's
recipe with its 95% interval, the rerun's paired gain on the test split with its interval, and whether the
confirmation's interval held the rerun's gain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from trainable import UserError

from bench.cells import ROOT


def run_command(module: str, argv: list[str], log) -> float:
    """Run ``python -m module argv`` from the checkout, its output echoed to ``log``; its wall time in seconds."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        log(line.rstrip())
    code = proc.wait()
    if code != 0:
        raise UserError(f"python -m {module} {' '.join(argv)} failed with exit code {code} (its output is above)")
    return time.perf_counter() - t0


def flow_result(folder: Path, walls: dict, model: dict | None) -> dict:
    """The figures of one finished flow from its study folder: phases, the confirmation's gain, the test's gain
    (``model``: its model.json, None where it has none)."""
    from study.findings.analysis import reruns_on_test, versus_book_on_test
    from study.core.folder import StudyFolder
    from study.findings.reading import read_study
    from study.core.values import plain

    data = read_study(StudyFolder(folder))
    settings, trials = data.settings, data.trials
    timings = settings.runs[-1].get("timings", {})
    confirmation = settings.summary.get("confirmation") or {}
    gain = confirmation.get("gain") or {}
    runs = reruns_on_test(data)
    winner = confirmation.get("winner")
    versus = versus_book_on_test(runs, winner) if winner is not None else None
    book = next((r for r in runs if r.baseline), None)
    mine = next((r for r in runs if r.optuna_trial == winner), None)
    ci = gain.get("ci") or [None, None]
    winner_row = trials[trials["optuna_trial"] == winner].iloc[0] if winner is not None else None
    held = None
    if versus is not None and None not in ci:
        held = bool(ci[0] <= versus.mean <= ci[1])
    return {
        "study": str(folder),
        "seed": settings.seed,
        "wall_s": {**{k: round(v, 1) for k, v in walls.items()}, "total": round(sum(walls.values()), 1)},
        "study_phases_s": {k: timings.get(k) for k in ("startup_s", "decode_s", "ray_start_s", "fit_s", "confirm_s")},
        "trials": int(len(trials)),
        "status_counts": {str(k): int(v) for k, v in trials["status"].value_counts().items()},
        "rank1": {"optuna_trial": int(trials.iloc[0]["optuna_trial"]), "best_val_acc": float(trials.iloc[0]["best_val_acc"])},
        "baseline_val_acc": float(trials.loc[trials["baseline"], "best_val_acc"].iloc[0]) if trials["baseline"].any() else None,
        "winner": winner,
        "winner_params": None if winner is None else {p: plain(winner_row[p]) for p in settings.space},
        "confirmation": {"winner_mean": confirmation.get("winner_mean"), "winner_ci": confirmation.get("winner_ci"),
                         "gain": gain.get("mean"), "gain_ci": ci, "gain_df": gain.get("df"), "beyond_noise": gain.get("beyond_noise"),
                         "gain_corrected": (gain.get("corrected") or {}).get("mean"),
                         "gain_corrected_ci": (gain.get("corrected") or {}).get("ci")},
        "test": {"winner": None if mine is None else mine.accs, "book": None if book is None else book.accs,
                 "winner_mean": None if mine is None else mine.mean, "book_mean": None if book is None else book.mean,
                 "gain": None if versus is None else versus.mean,
                 "gain_ci": None if versus is None else [versus.ci_low, versus.ci_high],
                 "gain_sd": None if versus is None else versus.sd},
        "confirmation_interval_held_test_gain": held,
        "model": _model_figures(folder, model),
    }


def _model_figures(folder: Path, info: dict | None) -> dict | None:
    """The model folder's test accuracies (each seed's, the ensemble's, from its model.json ``info``) beside
    study.predict's on the test photos."""
    import pandas as pd

    if info is None:
        return None
    out = {"seeds": {str(s["seed"]): s["test_acc"] for s in info["seeds"]}, "ensemble": info["ensemble"]["test_acc"],
           "balanced_acc": info["ensemble"].get("balanced_acc")}
    for name in ("predict", "predict_one_seed"):
        table = folder / f"{name}.parquet"
        if table.is_file():
            rows = pd.read_parquet(table)
            known = rows[rows["true"].notna()]
            out[name] = {"rows": int(len(rows)), "accuracy": float((known["predicted"] == known["true"]).mean())}
    return out


def run_flow(data_dir: str, weights: str, results: Path, seed: int, samples: int, epochs: int, image_size: int,
             batch_size: int, seeds: int, log=print) -> dict:
    """Study, rerun (winner and the book's recipe, ``seeds`` seeds) and analyze, as a user runs them; the figures."""
    name = f"flow-seed{seed}"
    folder = results / name
    if folder.exists():
        raise UserError(f"{folder} exists: pass another --results-dir or remove it")
    walls = {}
    walls["study"] = run_command("study.run", [
        "--samples", str(samples), "--data-dir", data_dir, "--weights", weights, "--epochs", str(epochs),
        "--image-size", str(image_size), "--batch-size", str(batch_size), "--seed", str(seed),
        "--results-dir", str(results), "--name", name], log)
    walls["rerun"] = run_command("study.rerun", [str(folder), "--seeds", str(seeds), "--parallel"], log)
    walls["analyze"] = run_command("study.analyze", [str(folder)], log)
    test = Path(data_dir) / "test"
    path = folder / "model" / "model.json"
    model = json.loads(path.read_text()) if path.is_file() else None  # study.predict only reads it
    if test.is_dir() and model is not None:  # the model users ship, on the test photos: the ensemble, then its first seed alone
        first = model["seeds"][0]["seed"]
        for name, extra in (("predict", []), ("predict_one_seed", ["--seed", str(first)])):
            walls[name] = run_command("study.predict", [str(folder), str(test), "--out", str(folder / f"{name}.parquet"), *extra], log)
    return flow_result(folder, walls, model)


def print_flow(result: dict, log=print) -> None:
    c, t = result["confirmation"], result["test"]

    def interval(ci) -> str:
        return "-" if not ci or None in ci else f"{ci[0]:+.3f} to {ci[1]:+.3f}"

    log(f"flow, study seed {result['seed']}: wall {result['wall_s']}")
    log(f"  confirmation: winner trial {result['winner']}, gain over the book's recipe {c['gain']:+.3f} (95% CI {interval(c['gain_ci'])})"
        + (f", corrected for the choice {c['gain_corrected']:+.3f} (95% CI {interval(c['gain_corrected_ci'])})"
           if c.get("gain_corrected") is not None else "")
        if c["gain"] is not None else f"  confirmation: winner trial {result['winner']}, no gain interval")
    if t["gain"] is not None:
        log(f"  test split: winner {t['winner_mean']:.3f}, book {t['book_mean']:.3f}, paired gain {t['gain']:+.3f} "
            f"(95% CI {interval(t['gain_ci'])}); the confirmation's interval held it: {result['confirmation_interval_held_test_gain']}")
    if m := result.get("model"):
        log(f"  model: seeds {', '.join(f'{v:.4f}' for v in m['seeds'].values())}, ensemble {m['ensemble']:.4f}"
            + "".join(f"; {name}: {p['rows']} rows, accuracy {p['accuracy']:.4f}" for name in ("predict", "predict_one_seed")
                      if (p := m.get(name))))


def write_json(path: str, value) -> None:
    Path(path).write_text(json.dumps(value, indent=2, default=str) + "\n")
