"""``python -m bench.tune_floor N SLOTS``: Ray Tune's own cost, with a trainable that does nothing.

The same plumbing as a study's trials (a function trainable reporting once, ``SLOTS`` trials at a time on one CPU
each, worker processes reused, Tune's console output off) around a function that only reports: what is left is
Ray Tune's. Prints one JSON line: Ray's start, the Tune run's wall time, when the first and last reports came
(seconds from the run's start), the slot-seconds per trial between them, and how long the run took to end after
the last report (stopping the worker processes). ``python -m bench --overhead`` runs it beside the study it times.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def floor(trials: int, slots: int) -> dict:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import logging

    import ray
    from ray import tune

    t0 = time.time()
    ray.init(include_dashboard=False, num_cpus=slots, logging_level=logging.ERROR, log_to_driver=False)
    ray_start = time.time() - t0

    def report_once(config):
        tune.report({"reported_at": time.time()})

    with tempfile.TemporaryDirectory(prefix="bench-tune-floor-") as storage:
        start = time.time()
        grid = tune.Tuner(tune.with_resources(report_once, {"cpu": 1}), param_space={"i": tune.grid_search(list(range(trials)))},
                          tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=slots),
                          run_config=tune.RunConfig(verbose=0, storage_path=storage)).fit()
        end = time.time()
    reports = sorted(grid[i].metrics["reported_at"] for i in range(len(grid)))
    ray.shutdown()
    between = (reports[-1] - reports[0]) * slots / max(1, trials - 1)
    return {"trials": trials, "slots": slots, "ray_start_s": round(ray_start, 2), "fit_s": round(end - start, 2),
            "first_report_s": round(reports[0] - start, 2), "last_report_s": round(reports[-1] - start, 2),
            "slot_s_per_trial_between": round(between, 3), "end_s": round(end - reports[-1], 2)}


if __name__ == "__main__":
    print(json.dumps(floor(int(sys.argv[1]), int(sys.argv[2]))))
