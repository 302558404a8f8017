"""``python -m study.run``: the hyperparameter study.

Ray Tune runs the trials (fractional GPUs, or CPU slots), Optuna's TPE proposes each configuration (the
book's recipe first, as the baseline), ASHA stops poor trials early. Results land in
``<results-dir>/<name>/``: ``trials.parquet`` (ranked), ``epochs.parquet``, ``optuna.db``, ``study.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

from trainable import TrainConfig, UserError, prepare_data
from trainable.cli import add_data_options, check_output_folder, run_main
from trainable.data import check_layout

from .layout import StudyFolder, StudySettings
from .space import baseline_params, load_space, show_space

# Quiet, and snapshot the experiment often: a hard kill then loses at most this many seconds of bookkeeping.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Ray tables; ours instead
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/TensorBoard files per trial
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32, help="number of trials (default: %(default)s)")
    parser.add_argument("--name", help="study name: its folder under --results-dir (default: <data>-<date>-<time>)")
    parser.add_argument("--results-dir", default="results", help="(default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted study --name")
    parser.add_argument("--seed", type=int, default=0, help="seeds the TPE sampler and every trial's training (default: %(default)s)")
    parser.add_argument("--space", help="JSON file with the search space (see --show-space)")
    parser.add_argument("--show-space", action="store_true", help="print the search space as JSON and exit")
    add_data_options(parser)
    parser.add_argument("--momentum", type=float, default=0.0, help="SGD momentum for every trial unless searched (default: the book's 0)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.25, help="GPU share per trial where there are GPUs (default: %(default)s: 4 trials per GPU)")
    parser.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs (= torch threads) per trial (default: 1 on CPU-only machines; CPUs/trials per GPU machine)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="most trials at once (default: as many as the resources fit)")
    parser.add_argument("--grace-epochs", type=int, default=1, help="ASHA: epochs before a trial may be stopped (default: %(default)s)")
    parser.add_argument("--reduction-factor", type=float, default=3, help="ASHA: keep the best 1/this at each rung (default: %(default)s)")
    parser.add_argument("--fresh-actors", action="store_true",
                        help="start a new Ray worker process for every trial (default: a finished trial's process runs the next one, "
                             "which saves each trial the seconds of importing torch and Ray Tune)")
    parser.add_argument("--address", help="an existing Ray cluster (e.g. auto or HOST:6379); default: start Ray on this machine")
    parser.add_argument("--storage", help="where the Ray experiment goes (a folder every node sees, or s3://...); default: inside the study folder")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    checks = [
        (args.samples >= 1, f"--samples {args.samples} must be 1 or more"),
        (args.gpus_per_trial >= 0, f"--gpus-per-trial {args.gpus_per_trial} must be 0 or more"),
        (args.gpus_per_trial <= 1 or float(args.gpus_per_trial).is_integer(), f"--gpus-per-trial {args.gpus_per_trial}: above 1 it must be a whole number"),
        (args.cpus_per_trial is None or args.cpus_per_trial > 0, f"--cpus-per-trial {args.cpus_per_trial} must be positive"),
        (args.max_concurrent is None or args.max_concurrent >= 1, f"--max-concurrent {args.max_concurrent} must be 1 or more"),
        (args.grace_epochs >= 1, f"--grace-epochs {args.grace_epochs} must be 1 or more"),
        (args.reduction_factor > 1, f"--reduction-factor {args.reduction_factor} must be above 1"),
        (args.name is None or (args.name.strip() and "/" not in args.name and args.name not in (".", "..")), f"--name {args.name!r} must be a plain folder name"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def plan_resources(args: argparse.Namespace, cluster: dict) -> tuple[dict, int, str | None]:
    """Per-trial resources, how many trials fit at once, and a message when the request was changed.

    Never asks Ray for a GPU the cluster does not have: such trials would wait forever.
    """
    cpus, gpus = float(cluster.get("CPU", 1)), float(cluster.get("GPU", 0))
    message = None
    gpu_share = args.gpus_per_trial
    if gpu_share > 0 and gpus == 0:
        message = f"no GPU in the Ray cluster: running trials on CPU slots instead of {gpu_share:g} GPU each"
        gpu_share = 0.0
    elif gpu_share > gpus:
        raise UserError(f"--gpus-per-trial {gpu_share:g} is more than the {gpus:g} GPU(s) of the cluster: ask for at most {gpus:g}")
    if gpu_share > 0:
        slots = int(gpus / gpu_share + 1e-9)
        cpu_share = args.cpus_per_trial or max(1.0, math.floor(cpus / slots))
        slots = min(slots, int(cpus / cpu_share + 1e-9))
    else:
        cpu_share = args.cpus_per_trial or 1.0
        slots = int(cpus / cpu_share + 1e-9)
    if slots < 1:
        raise UserError(f"--cpus-per-trial {cpu_share:g} is more than the {cpus:g} CPU(s) of the cluster: ask for at most {cpus:g}")
    resources = {"cpu": cpu_share, "gpu": gpu_share}
    return resources, slots, message


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def default_name(data_dir: str | None) -> str:
    stem = Path(data_dir).resolve().name if data_dir else "hotdog"
    return f"{stem}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def check_reachable(address: str) -> None:
    """Fail at once where nothing listens at ``address``: ray.init would retry it for minutes."""
    if address in ("auto", "local") or "://" in address:
        return
    import socket

    try:  # 127.0.0.1 -> the node's IP, as ray.init does (Ray's GCS may listen on that IP only)
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without it: probe the address as given
        canonicalize_bootstrap_address = str
    try:
        host, _, port = canonicalize_bootstrap_address(address).rpartition(":")
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach the Ray cluster at {address} ({exc}): start it with ray start --head, or check --address") from None


def start_ray(address: str | None) -> None:
    import ray

    from . import reaper

    if address:
        check_reachable(address)
    else:
        reaper.spawn()  # ends this driver's local Ray processes even if it is killed hard
    kwargs = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        auth = ("; a cluster with token authentication (ray start --head's default where ~/.ray/auth_token exists) "
                "also needs RAY_AUTH_MODE=token here") if address and not os.environ.get("RAY_AUTH_MODE") else ""
        raise UserError(f"cannot start or reach {where} ({str(exc).splitlines()[0]}): check --address, or leave it out{auth}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    if args.show_space:
        print(show_space(load_space(args.space)))
        return 0

    results_dir = Path(args.results_dir).expanduser().resolve()
    if args.resume:
        if not args.name:
            raise UserError("--resume needs --name: the study to continue (a folder under --results-dir)")
        folder = StudyFolder(results_dir / args.name)
        if not folder.exists():
            raise UserError(f"no study named {args.name!r} in {results_dir} to resume: check --name and --results-dir")
        settings = folder.read_settings()
    else:
        space = load_space(args.space)
        base = TrainConfig(
            data_dir=str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None,
            weights=args.weights if args.weights in ("imagenet", "none") else str(Path(args.weights).expanduser().resolve()),
            epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size,
            val_fraction=args.val_fraction, precision=args.precision, device=args.device, momentum=args.momentum,
            seed=args.seed,
        ).validate()
        if base.val_fraction <= 0:
            raise UserError("--val-fraction must be above 0 for a study: trials are compared on the validation split")
        if base.data_dir is not None:
            check_layout(base.data_dir)  # a wrong --data-dir fails now, before a study folder is created
        if base.weights not in ("imagenet", "none"):
            from trainable.model import build_model
            build_model(base.weights, 2)  # a bad weights file fails now, not in every trial
        name = args.name or default_name(args.data_dir)
        folder = StudyFolder(results_dir / name)
        if folder.exists():
            raise UserError(f"a study named {name!r} already exists in {results_dir}: pass --resume to continue it, or choose another --name")
        if args.storage and "://" not in args.storage:
            check_output_folder(Path(args.storage).expanduser().resolve(), "--storage", holds="results", kind="folder")  # before any study folder is made
        created = not folder.path.exists()
        check_output_folder(folder.path, "--results-dir", holds="results", kind="folder")
        experiment = Path(args.storage).expanduser().resolve() / name if args.storage and "://" not in args.storage else (
            f"{args.storage.rstrip('/')}/{name}" if args.storage else folder.path / "ray")
        settings = StudySettings(name=name, base=base.to_dict(), space=space, samples=args.samples, seed=args.seed,
                                 experiment_path=str(experiment), created=dt.datetime.now().isoformat(timespec="seconds"))
        try:
            return run_study(args, folder, settings)
        except BaseException:
            if created and not folder.exists():  # it failed before its study.json: leave no half-made study behind
                shutil.rmtree(folder.path, ignore_errors=True)
            raise
    return run_study(args, folder, settings)


def run_study(args: argparse.Namespace, folder: StudyFolder, settings: StudySettings) -> int:
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from .adapter import run_trial
    from .asha import ResumableASHA
    from .callback import StudyCallback
    from .searcher import AskTellOptunaSearch, storage_url
    from .summary import print_summary

    base = TrainConfig.from_dict(settings.base)
    print(f"study {settings.name}: {settings.samples} trials, {base.epochs} epoch(s) at {base.image_size}px, weights {base.weights}")
    t0 = time.perf_counter()
    data = prepare_data(base.data_dir, base.image_size, base.val_fraction, base.split_seed, log=print)
    print(f"decoded {len(data.train) + len(data.val)} images once ({len(data.train)} train, {len(data.val)} validation, "
          f"classes {data.classes}) in {time.perf_counter() - t0:.1f}s")

    start_ray(args.address)
    try:
        resources, slots, message = plan_resources(args, ray.cluster_resources())
        if message:
            print(message)
        settings.val_images = len(data.val)
        if not args.resume:
            settings.gpus_per_trial, settings.cpus_per_trial = resources["gpu"], resources["cpu"]
            folder.write_settings(settings)
        concurrent = min(args.max_concurrent or slots, slots, settings.samples)
        print(f"{concurrent} trial(s) at a time, each with {resources['cpu']:g} CPU(s)"
              + (f" and {resources['gpu']:g} GPU" if resources["gpu"] else ""))

        params = list(settings.space)
        trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, base=settings.base), resources)
        experiment = settings.experiment_path
        fit_start = time.perf_counter()
        if args.resume:
            if not tune.Tuner.can_restore(experiment):
                raise UserError(f"study {settings.name!r} has no Ray experiment to restore at {experiment}: start it again under a new --name")
            tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False)
        else:
            searcher = AskTellOptunaSearch(
                settings.space, storage_url(folder.optuna_db), settings.name, max_epochs=base.epochs, seed=settings.seed,
                baseline=baseline_params(settings.space), fixed={},
            )
            scheduler = ResumableASHA(base.epochs, folder.path, grace_period=args.grace_epochs, reduction_factor=args.reduction_factor)
            storage_path, exp_name = str(Path(experiment).parent) if "://" not in experiment else experiment.rsplit("/", 1)[0], Path(experiment).name
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(num_samples=settings.samples, search_alg=ConcurrencyLimiter(searcher, concurrent),
                                            scheduler=scheduler, reuse_actors=not args.fresh_actors, trial_dirname_creator=trial_dirname),
                run_config=tune.RunConfig(
                    name=exp_name, storage_path=storage_path, verbose=0,
                    callbacks=[StudyCallback(folder.path, params, base.epochs, settings.seed, settings.samples)],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=2),  # a crashed worker: retried from its checkpoint
                ),
            )
        tuner.fit()
        wall = time.perf_counter() - fit_start
        settings.summary = print_summary(folder, settings, wall, len(data.train))
        folder.write_settings(settings)
        unfinished = [t for t in _trial_statuses(folder) if t == "running"]
        if unfinished:
            print(f"the study stopped with {len(unfinished)} trial(s) unfinished: continue it with --resume --name {settings.name}")
            return 1
        return 0
    finally:
        ray.shutdown()


def _trial_statuses(folder: StudyFolder) -> list[str]:
    import pandas as pd

    return list(pd.read_parquet(folder.trials)["status"]) if folder.trials.exists() else []


if __name__ == "__main__":
    run_main(main)
