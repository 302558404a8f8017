"""``python -m bench --overhead``: what a study's trials cost besides their epochs, measured on a whole study.

Runs ``python -m study.run`` as a user would (by default the tiny study: 32 trials on the 64-photo mini set at
32 px, 1 epoch each, weights none, no confirmation stage, the machine's default slots), samples the GPU's
utilisation every 0.5 s where ``nvidia-smi`` is present, and reports from the study's own tables and
``study.json`` (``study.core.timing``):

- ``slot_s_per_trial``: the trials' stage's wall time x its slots / trials (all a trial costs, on average);
- ``lost_per_trial_s``: of it, what was not spent in epochs (training and validation): the fixed cost;
- ``time_use``: the slot time in parts that add up (epochs, each trial's fixed cost, the worker processes' first
  trials, slots no trial held) and the median of each phase a trial records;
- the median first epoch against the median later one (with ``--overhead-epochs`` 2 or more);
- the GPU's mean utilisation over the trials' stage (None without a GPU);
- ``tune_floor``: the same number of trials of a trainable that does nothing, through Ray Tune alone
  (``bench.tune_floor``), measured in the same run: what no change to the trainable or the driver can remove.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from trainable import UserError


def run_overhead(data_dir: Path, samples: int, epochs: int, image_size: int, confirm: bool, extra: list[str], log) -> dict:
    from bench.scaling import run_study_timed
    from bench.share import GpuSampler
    from study.core.folder import StudyFolder
    from study.findings.reading import read_study
    from study.core.timing import time_use

    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as results:
        argv = ["--samples", str(samples), "--data-dir", str(data_dir), "--weights", "none", "--image-size", str(image_size),
                "--epochs", str(epochs), "--results-dir", results, "--name", "overhead", *([] if confirm else ["--no-confirm"]),
                *extra]
        log(f"python -m study.run {' '.join(argv)}")
        sampler = GpuSampler()
        sampler.start()
        try:
            wall = run_study_timed(argv, log)
        finally:
            sampler.stop()
        study = read_study(StudyFolder(Path(results) / "overhead"))
    run = study.settings.runs[-1]
    timings, slots = run["timings"], int(run.get("concurrent") or 1)
    use = time_use(study.trials, study.epochs, study.settings.runs)
    if use is None:
        raise UserError("the study recorded no slot times: is this checkout's study.run the one that ran?")
    fit_s = float(timings.get("fit_s") or 0.0)
    start = float(run.get("fit_started_at") or 0.0)
    ratio = use.first_epoch_s / use.later_epoch_s if use.later_epoch_s and not math.isnan(use.later_epoch_s) else None
    return {
        "command": f"python -m study.run {' '.join(argv)}", "wall_s": round(wall, 2), "timings": timings, "slots": slots,
        "tune_floor": tune_floor(use.trials, slots, log),
        "trials": use.trials, "slot_s_per_trial": round(fit_s * slots / use.trials, 3) if use.trials else None,
        "lost_per_trial_s": round(use.lost_per_trial, 3), "time_use": use.as_dict(),
        "first_over_later_epoch": None if ratio is None or math.isnan(ratio) else round(ratio, 2),
        "gpu_during_trials": sampler.summary(start, start + fit_s) if start else sampler.summary(0, time.time()),
    }


def tune_floor(trials: int, slots: int, log) -> dict | None:
    """``bench.tune_floor`` in a process of its own (a Ray of its own), or None where it failed (said in one line)."""
    import subprocess
    import sys

    from bench.cells import ROOT

    proc = subprocess.run([sys.executable, "-m", "bench.tune_floor", str(trials), str(slots)], cwd=ROOT, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        log(f"the Ray Tune floor could not be measured (exit {proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]}")
        return None


def print_overhead(result: dict, log) -> None:
    use = result["time_use"]
    parts = use["parts_s"]
    log(f"{result['trials']} trials on {result['slots']} slot(s): the trials' stage {result['timings'].get('fit_s')} s, "
        f"{result['slot_s_per_trial']} slot-seconds a trial, of which {result['lost_per_trial_s']} s outside its epochs")
    log("slot-seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
        + f"; a trial's fixed cost on a worker that had trained before: {use['fixed_per_trial_s']} s")
    log("median phases (s): " + ", ".join(f"{k} {v}" for k, v in use["phases_median_s"].items()))
    if result["first_over_later_epoch"] is not None:
        log(f"first epoch {use['first_epoch_s']} s against later ones {use['later_epoch_s']} s: x{result['first_over_later_epoch']}")
    if floor := result.get("tune_floor"):
        log(f"Ray Tune alone, {floor['trials']} trials that do nothing on {floor['slots']} slot(s): first report after "
            f"{floor['first_report_s']} s, {floor['slot_s_per_trial_between']} slot-seconds a trial after it, {floor['end_s']} s to end")
    gpu = result["gpu_during_trials"]
    if gpu.get("gpu_util_mean") is not None:
        log(f"GPU busy {gpu['gpu_util_mean']}% on average during the trials' stage ({gpu['gpu_samples']} samples)")

