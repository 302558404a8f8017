"""``python -m study.run``: the hyperparameter study.

Ray Tune runs the trials (fractional GPUs, or CPU slots), Optuna's TPE proposes each configuration (the
book's recipe first, as the baseline), ASHA stops poor trials early. Results land in
``<results-dir>/<name>/``: ``trials.parquet`` (ranked), ``epochs.parquet``, ``optuna.db``, ``study.json``.

Exit codes: 0 the study finished and at least one trial has a validation accuracy; 1 it stopped before
every trial finished (Ctrl-C, SIGTERM, a full disk, a crash of Ray): the line before says how to resume;
2 bad input, or the study cannot run as asked (one ``error:`` line); 3 it finished but no trial is usable
(every one diverged or failed, so there is nothing to rerun); 130 interrupted before the study existed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from trainable import TrainConfig, UserError, prepare_data
from trainable.cli import add_data_options, check_output_folder, run_main
from trainable.data import check_layout, max_cv_folds, split_fold

from .layout import StudyFolder, StudySettings, fmt, isnan, typed, write_text_atomic
from .selection import CONFIRM_FOLDS, CONFIRM_TOP
from .space import baseline_params, load_space, show_space
from .trackers import check_trackers, tracker_callbacks

# Quiet: our own console lines instead of Ray's tables; no CSV/TensorBoard files per trial unless asked for.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

EXIT_OK, EXIT_STOPPED, EXIT_BAD_INPUT, EXIT_NO_RESULT = 0, 1, 2, 3
# Options that decide what a trial computes: fixed for the life of a study (--resume refuses a change).
FIXED_ON_RESUME = ("data_dir", "weights", "epochs", "image_size", "batch_size", "val_fraction", "split_seed", "precision",
                   "device", "augment_path", "momentum", "seed", "space", "grace_epochs", "reduction_factor", "storage", "no_test_split")
# Options that decide only where and how many trials run: kept from study.json unless given again.
RUN_OPTIONS = {"gpus_per_trial": "gpus_requested", "cpus_per_trial": "cpus_requested", "max_concurrent": "max_concurrent",
               "fresh_actors": "fresh_actors", "address": "address", "trial_timeout": "trial_timeout", "time_budget": "time_budget"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32, help="number of trials (default: %(default)s; with --resume, more extends the study)")
    parser.add_argument("--name", help="study name: its folder under --results-dir (default: <data>-<date>-<time>)")
    parser.add_argument("--results-dir", default="results", help="the folder that holds the study folders (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue the study --name: its stored options, unfinished trials first")
    parser.add_argument("--seed", type=int, default=0, help="seeds the TPE sampler and every trial's training (default: %(default)s)")
    parser.add_argument("--space", help="JSON file with the search space (see --show-space)")
    parser.add_argument("--show-space", action="store_true", help="print the search space as JSON and exit")
    add_data_options(parser, folds=False)  # the study splits on its own: fold 0 for trials, k-fold for the confirmation
    parser.add_argument("--momentum", type=float, default=0.0, help="SGD momentum for every trial unless searched (default: the book's 0)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.25, help="GPU share per trial where there are GPUs (default: %(default)s: 4 trials per GPU); 0 trains on CPUs")
    parser.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs (= torch threads) per trial (default: 1 on CPU-only machines; CPUs/trials per GPU machine)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="most trials at once (default: as many as the resources fit)")
    parser.add_argument("--grace-epochs", type=int, default=1, help="ASHA: epochs before a trial may be stopped (default: %(default)s)")
    parser.add_argument("--reduction-factor", type=float, default=3, help="ASHA: keep the best 1/this at each rung (default: %(default)s)")
    parser.add_argument("--confirm-top", type=int, default=CONFIRM_TOP,
                        help="the confirmation stage: the top K configurations by validation accuracy, and the book's recipe, "
                             "cross-validated on --confirm-folds folds before naming a winner (default: %(default)s)")
    parser.add_argument("--confirm-folds", type=int, default=CONFIRM_FOLDS,
                        help="stratified cross-validation folds of the whole train split in the confirmation stage: each "
                             "configuration trains F times on (F-1)/F of the images and is judged on all of them (default: %(default)s)")
    parser.add_argument("--no-confirm", action="store_true", help="skip the confirmation stage: the study's best validation accuracy names the winner")
    parser.add_argument("--fresh-actors", action="store_true",
                        help="start a new Ray worker process for every trial (default: a finished trial's process runs the next one, "
                             "which saves each trial the seconds of importing torch and Ray Tune)")
    parser.add_argument("--tensorboard", action="store_true",
                        help='TensorBoard event files per trial (metrics per epoch, hyperparameters) under <study>/ray; needs pip install -e ".[tensorboard]"')
    parser.add_argument("--mlflow", metavar="URI",
                        help='log every trial to MLflow at this tracking URI (e.g. sqlite:///results/mlflow.db); needs pip install -e ".[mlflow]"')
    parser.add_argument("--trial-timeout", type=float, default=None, metavar="SECONDS",
                        help="stop a trial that runs longer than this (wall time; its process ends, recorded as timed_out, the study "
                             "goes on); default: stop one that goes 10x the study's median epoch time + 60 s without finishing an "
                             "epoch, once 3 epochs are known; 0: no limit")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="the study's wall time: no trial is started that would end past it (the confirmation stage's time kept "
                             "in reserve), trials still running then are stopped (timed_out), and the confirmation stage runs on "
                             "what finished")
    parser.add_argument("--retry-timed-out", action="store_true",
                        help="--resume: run each configuration that timed out again, as a new trial (by default a timed-out trial "
                             "stays as it ended)")
    parser.add_argument("--no-test-split", action="store_true",
                        help="the data folder has no test/ split: the study runs without one, and study.rerun cannot measure test accuracy")
    parser.add_argument("--accept-data-change", action="store_true",
                        help="--resume: go on although the data or the weights file changed since the study started "
                             "(refused otherwise; the change is recorded in study.json)")
    parser.add_argument("--address", help="an existing Ray cluster (e.g. auto or HOST:6379); default: start Ray on this machine")
    parser.add_argument("--storage", help="where Ray keeps the trials' checkpoints (a folder every node sees, or s3://...); default: <study>/ray")
    return parser


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``dest`` of every option spelled out on the command line (``--x v`` or ``--x=v``)."""
    spelled = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return {action.dest for action in parser._actions if spelled & set(action.option_strings)}


def check_args(args: argparse.Namespace) -> None:
    checks = [
        (args.samples >= 1, f"--samples {args.samples} must be 1 or more"),
        (args.gpus_per_trial >= 0, f"--gpus-per-trial {args.gpus_per_trial} must be 0 or more"),
        (args.gpus_per_trial <= 1 or float(args.gpus_per_trial).is_integer(), f"--gpus-per-trial {args.gpus_per_trial}: above 1 it must be a whole number"),
        (args.cpus_per_trial is None or args.cpus_per_trial > 0, f"--cpus-per-trial {args.cpus_per_trial} must be positive"),
        (args.max_concurrent is None or args.max_concurrent >= 1, f"--max-concurrent {args.max_concurrent} must be 1 or more"),
        (args.grace_epochs >= 1, f"--grace-epochs {args.grace_epochs} must be 1 or more"),
        (args.reduction_factor > 1, f"--reduction-factor {args.reduction_factor} must be above 1"),
        (args.confirm_top >= 1, f"--confirm-top {args.confirm_top} must be 1 or more (--no-confirm skips the confirmation stage)"),
        (args.confirm_folds >= 2, f"--confirm-folds {args.confirm_folds} must be 2 or more: cross-validation needs a part to train "
                                  "on and a part to judge (--no-confirm skips the confirmation stage)"),
        (args.trial_timeout is None or args.trial_timeout >= 0, f"--trial-timeout {fmt(args.trial_timeout)} must be 0 (no limit) or more"),
        (args.time_budget is None or args.time_budget > 0, f"--time-budget {fmt(args.time_budget)} must be above 0"),
        (args.name is None or (args.name.strip() and "/" not in args.name and args.name not in (".", "..")), f"--name {args.name!r} must be a plain folder name"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def plan_resources(gpus_requested: float, cpus_requested: float | None, cluster: dict) -> tuple[dict, int, str | None]:
    """Per-trial resources, how many trials fit at once, and a message when the request was changed.

    Never asks Ray for a GPU the cluster does not have: such trials would wait forever.
    """
    cpus, gpus = float(cluster.get("CPU", 1)), float(cluster.get("GPU", 0))
    message = None
    gpu_share = gpus_requested
    if gpu_share > 0 and gpus == 0:
        message = f"no GPU in the Ray cluster: running trials on CPU slots instead of {gpu_share:g} GPU each"
        gpu_share = 0.0
    elif gpu_share > gpus:
        raise UserError(f"--gpus-per-trial {gpu_share:g} is more than the {gpus:g} GPU(s) of the cluster: ask for at most {gpus:g}")
    if gpu_share > 0:
        slots = int(gpus / gpu_share + 1e-9)
        cpu_share = cpus_requested or max(1.0, math.floor(cpus / slots))
        slots = min(slots, int(cpus / cpu_share + 1e-9))
    else:
        cpu_share = cpus_requested or 1.0
        slots = int(cpus / cpu_share + 1e-9)
    if slots < 1:
        raise UserError(f"--cpus-per-trial {cpu_share:g} is more than the {cpus:g} CPU(s) of the cluster: ask for at most {cpus:g}")
    return {"cpu": cpu_share, "gpu": gpu_share}, slots, message


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def default_name(data_dir: str | None) -> str:
    stem = Path(data_dir).resolve().name if data_dir else "hotdog"
    return f"{stem}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def resume_command(folder: StudyFolder) -> str:
    return shlex.join(["python", "-m", "study.run", "--resume", "--name", folder.path.name, "--results-dir", str(folder.path.parent)])


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


def start_ray(address: str | None, log_to_driver: bool = False) -> None:
    import ray

    from . import reaper

    if address:
        check_reachable(address)
    else:
        reaper.spawn()  # ends this driver's local Ray processes even if it is killed hard
    if log_to_driver and not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # workers' lines reach a file or pipe: no ANSI colour codes in it
    kwargs = dict(logging_level=logging.ERROR, log_to_driver=log_to_driver, configure_logging=True)
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


# Ray loggers whose tracebacks the console need not show: Ray's experiment snapshot (a sync of driver_artifacts that
# races with the next stage's start; the study does not need it to resume) and the controller's traceback of a trial
# whose process died (the study prints its own line for it, and keeps the text in logs/trial-<n>.log). A traceback on
# the console says something broke when nothing did. Their records go to the study's logs/ray.log instead.
RAY_QUIET_LOGGERS = ("ray.tune.execution.experiment_state", "ray.tune.execution.tune_controller")


def keep_ray_tracebacks_in(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False
        logger.handlers = [handler]


def check_cluster_gpus(resources: dict, local: bool) -> None:
    """Trials given a GPU must be able to use it: check once, before the first trial, not 100x slower later.

    On this machine the driver's own torch tells; on a cluster a probe task asks a GPU node's.
    """
    if not resources["gpu"]:
        return
    from .adapter import check_gpu

    if local:
        try:
            check_gpu([0])
        except Exception as exc:
            raise UserError(str(exc)) from None
        return
    import ray

    def probe():
        from study.adapter import TrialError, check_gpu
        try:
            check_gpu(ray.get_gpu_ids())
            return ""
        except TrialError as exc:
            return str(exc)

    problem = ray.get(ray.remote(num_gpus=resources["gpu"], num_cpus=resources["cpu"])(probe).remote())
    if problem:
        raise UserError(problem)


def checkpoint_bytes(base: TrainConfig, space: dict) -> int:
    """The size of one trial checkpoint: the model's state, twice that with momentum (its buffers)."""
    from trainable.model import build_model

    model_bytes = sum(t.numel() * t.element_size() for t in build_model("none", 2).state_dict().values())
    momentum = base.momentum > 0 or "momentum" in space
    return model_bytes * (2 if momentum else 1)


def check_free_space(folder: StudyFolder, experiment: str, concurrent: int, per_checkpoint: int) -> None:
    """Fail before the first trial where the checkpoints cannot fit: a running trial holds one, two while the
    next replaces it, and its worker writes it to a temporary folder first."""
    need = concurrent * 2 * per_checkpoint + (16 << 20)
    places = {"--results-dir": folder.path} | ({} if "://" in experiment else {"--storage": Path(experiment)})
    places["the temporary folder (TMPDIR)"] = Path(tempfile.gettempdir())
    for option, path in places.items():
        probe = path
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        want = concurrent * per_checkpoint + (16 << 20) if option.startswith("the temporary") else need
        if free < want:
            raise UserError(f"not enough free space in {path}: the study needs about {want >> 20} MB there "
                            f"({concurrent} trial(s) at a time, a {per_checkpoint >> 20} MB checkpoint each) and {free >> 20} MB are free: "
                            f"free space, or give {option} a larger disk")


def _interrupted(folder: StudyFolder) -> int:
    """Ctrl-C or SIGTERM before the trials started: nothing was lost; say how to go on where there is a study."""
    if folder.exists():
        print(f"interrupted before the trials started; continue the study with:\n  {resume_command(folder)}")
        return EXIT_STOPPED
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (a preempted job) is handled as Ctrl-C throughout: Ray's handler during the trials, else an interrupt
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_options(parser, argv)
    check_args(args)
    if args.show_space:
        print(show_space(load_space(args.space)))
        return EXIT_OK

    check_trackers(args.tensorboard, args.mlflow)
    results_dir = Path(args.results_dir).expanduser().resolve()
    if args.resume:
        if not args.name:
            raise UserError("--resume needs --name: the study to continue (a folder under --results-dir)")
        folder = StudyFolder(results_dir / args.name)
        if not folder.exists():
            raise UserError(f"no study named {args.name!r} in {results_dir} to resume: check --name and --results-dir")
        lock = folder.lock()
        try:
            settings = folder.read_settings()
            apply_resume_options(args, given, settings)
            try:
                return run_study(args, folder, settings, resumed=True)
            except KeyboardInterrupt:
                return _interrupted(folder)
        finally:
            lock.release()

    space = load_space(args.space)
    base = TrainConfig(
        data_dir=str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None,
        weights=args.weights if args.weights in ("imagenet", "none") else str(Path(args.weights).expanduser().resolve()),
        epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size, val_fraction=args.val_fraction,
        split_seed=args.split_seed, precision=args.precision, device=args.device, augment_path=args.augment_path,
        momentum=args.momentum, seed=args.seed,
    ).validate()
    if base.val_fraction <= 0:
        raise UserError("--val-fraction must be above 0 for a study: trials are compared on the validation split")
    if base.data_dir is not None:  # a wrong --data-dir, test/ included, fails now, before a study folder is created
        check_layout(base.data_dir, need_test=not args.no_test_split, no_test="pass --no-test-split")
    if base.weights not in ("imagenet", "none"):
        from trainable.model import build_model
        build_model(base.weights, 2)  # a bad weights file fails now, not in every trial
    name = args.name or default_name(args.data_dir)
    folder = StudyFolder(results_dir / name)
    if folder.exists():
        raise UserError(f"a study named {name!r} already exists in {results_dir}: pass --resume to continue it, or choose another --name")
    storage = str(Path(args.storage).expanduser().resolve()) if args.storage and "://" not in args.storage else args.storage
    if storage and "://" not in storage:
        check_output_folder(storage, "--storage", holds="results", kind="folder")  # before any study folder is made
    created = not folder.path.exists()
    check_output_folder(folder.path, "--results-dir", holds="results", kind="folder")
    lock = folder.lock()
    try:
        if folder.exists():  # another driver created it between our check and our lock
            raise UserError(f"a study named {name!r} already exists in {results_dir}: pass --resume to continue it, or choose another --name")
        experiment = f"{storage.rstrip('/')}/{name}" if storage else str(folder.path / "ray")
        baseline, baseline_note = baseline_params(space)
        settings = StudySettings(
            name=name, base=base.to_dict(), space=space, samples=args.samples, seed=args.seed, experiment_path=experiment,
            created=dt.datetime.now().isoformat(timespec="seconds"), gpus_requested=args.gpus_per_trial, cpus_requested=args.cpus_per_trial,
            max_concurrent=args.max_concurrent, grace_epochs=args.grace_epochs, reduction_factor=float(args.reduction_factor),
            fresh_actors=args.fresh_actors, address=args.address, storage=storage, baseline=baseline, baseline_note=baseline_note,
            confirm={} if args.no_confirm else {"top": args.confirm_top, "folds": args.confirm_folds},
            trackers={"tensorboard": args.tensorboard, "mlflow": args.mlflow}, test_split=not args.no_test_split,
            trial_timeout=args.trial_timeout, time_budget=args.time_budget)
        try:
            return run_study(args, folder, settings, resumed=False)
        except KeyboardInterrupt:
            if created and not folder.exists():
                shutil.rmtree(folder.path, ignore_errors=True)
            return _interrupted(folder)
        except BaseException:
            if created and not folder.exists():  # it failed before its study.json: leave no half-made study behind
                shutil.rmtree(folder.path, ignore_errors=True)
            raise
    finally:
        lock.release()


def apply_resume_options(args: argparse.Namespace, given: set[str], settings: StudySettings) -> None:
    """--resume runs the study with the options it was started with; only where and how many trials run may
    change (said in one line), and --samples may grow. Anything else given again is refused."""
    base = settings.base
    stored = {**base, "space": settings.space, "grace_epochs": settings.grace_epochs, "reduction_factor": settings.reduction_factor,
              "storage": settings.storage, "seed": settings.seed, "no_test_split": not settings.test_split}
    for dest in FIXED_ON_RESUME:
        if dest in given and getattr(args, dest) != stored.get(dest) and not _same_path(getattr(args, dest), stored.get(dest)):
            flag = "--" + dest.replace("_", "-")
            raise UserError(f"{flag} cannot change when resuming: study {settings.name!r} runs with {stored.get(dest)!r}; "
                            f"leave {flag} out, or start a new study under another --name")
    for dest, key in RUN_OPTIONS.items():
        if dest in given and getattr(args, dest) != getattr(settings, key):
            print(f"--{dest.replace('_', '-')} {getattr(args, dest)} from now on (the study was started with {getattr(settings, key)})")
            setattr(settings, key, getattr(args, dest))
    if given & {"tensorboard", "mlflow"}:
        trackers = {"tensorboard": args.tensorboard or ("tensorboard" not in given and settings.trackers.get("tensorboard", False)),
                    "mlflow": args.mlflow if "mlflow" in given else settings.trackers.get("mlflow")}
        print(f"trackers from now on: {trackers}")
        settings.trackers = trackers
    if given & {"confirm_top", "confirm_folds", "no_confirm"}:
        confirm = {} if args.no_confirm else {"top": args.confirm_top if "confirm_top" in given else settings.confirm.get("top", CONFIRM_TOP),
                                              "folds": args.confirm_folds if "confirm_folds" in given else settings.confirm.get("folds", CONFIRM_FOLDS)}
        if confirm != {k: v for k, v in settings.confirm.items() if k in ("top", "folds")}:
            stage = "off" if not confirm else f"top {confirm['top']}, {confirm['folds']} folds"
            print(f"confirmation stage from now on: {stage}")
            settings.confirm = confirm
    if "samples" in given and args.samples != settings.samples:
        print(f"--samples {args.samples}: the study grows from {settings.samples} trial(s)" if args.samples > settings.samples
              else f"--samples {args.samples}: fewer than the study's {settings.samples}")
        settings.samples = args.samples


def _same_path(a, b) -> bool:
    try:
        return a is not None and b is not None and Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()
    except (OSError, ValueError):
        return False


def run_study(args: argparse.Namespace, folder: StudyFolder, settings: StudySettings, resumed: bool) -> int:
    base = TrainConfig.from_dict(settings.base)
    run = {"started": dt.datetime.now().isoformat(timespec="seconds"), "resumed": resumed, "timings": {}}
    timings = run["timings"]
    t0 = time.perf_counter()
    timings["startup_s"] = round(time.time() - _process_start(), 2)  # interpreter, imports, checks: before this function
    print(f"study {settings.name}: {settings.samples} trials, {base.epochs} epoch(s) at {base.image_size}px, weights {base.weights}")
    if settings.baseline_note and not resumed:
        print(settings.baseline_note)
    from . import datacheck

    if resumed:  # the data and weights the study started with, or one line that says what changed
        for change in datacheck.check(settings, args.accept_data_change, "python -m study.run --resume",
                                      "start a new study under another --name"):
            print(f"going on with changed data ({datacheck.ACCEPT_FLAG}): {change}")
    else:
        datacheck.record(settings)
    # decoded once: every training image (the confirmation stage cross-validates on them), and the study's split of them
    all_data = prepare_data(base.data_dir, base.image_size, 0.0, base.split_seed, log=print, min_per_class=2)
    data = split_fold(all_data, base.val_fraction, base.split_seed, 0)
    if settings.confirm and settings.confirm["folds"] > (most := max_cv_folds(all_data.train.labels)):
        raise UserError(f"--confirm-folds {settings.confirm['folds']} is more than the smallest class's {most} training images "
                        f"allow (every fold needs an image of each class): ask for at most {most}")
    timings["decode_s"] = round(time.perf_counter() - t0, 2)
    print(f"decoded {len(data.train) + len(data.val)} images once ({len(data.train)} train, {len(data.val)} validation, "
          f"classes {data.classes}) in {timings['decode_s']:.1f}s")
    settings.val_images = len(data.val)

    from .asha import ResumableASHA
    from .state import prepare

    params = list(settings.space)
    scheduler = ResumableASHA(base.epochs, grace_period=settings.grace_epochs, reduction_factor=settings.reduction_factor)
    plan = prepare(folder, settings, params, decisions_of=lambda tables: scheduler.replay(tables.history()))
    for note in plan.notes:
        print(note)
    if settings.samples < plan.finished + len(plan.unfinished):
        raise UserError(f"--samples {settings.samples} is fewer than the {plan.finished + len(plan.unfinished)} trial(s) study "
                        f"{settings.name!r} already has: ask for at least that many")
    if resumed and args.retry_timed_out:
        retry_timed_out(folder, settings, plan)
    remaining = settings.samples - plan.finished
    if resumed:
        print(f"resuming: {plan.finished} trial(s) finished, {len(plan.unfinished)} to continue, "
              f"{remaining - len(plan.unfinished)} to start")

    import ray

    start_ray(settings.address)
    keep_ray_tracebacks_in(folder.logs / "ray.log")
    try:
        timings["ray_start_s"] = round(time.perf_counter() - t0 - timings["decode_s"], 2)
        resources, slots, message = plan_resources(settings.gpus_requested, settings.cpus_requested, ray.cluster_resources())
        if message:
            print(message)
        check_cluster_gpus(resources, local=not settings.address)
        settings.gpus_per_trial, settings.cpus_per_trial = resources["gpu"], resources["cpu"]
        concurrent = max(1, min(settings.max_concurrent or slots, slots, remaining or 1))
        check_free_space(folder, settings.experiment_path, concurrent, checkpoint_bytes(base, settings.space))
        run.update(concurrent=concurrent, resources=resources, train_images=len(data.train), val_images=len(data.val))
        settings.runs.append(run)
        folder.write_settings(settings)
        plan.tables.write()  # repairs and decisions made above, on disk before any trial runs
        timings["setup_s"] = round(time.perf_counter() - t0, 2)
        clock = study_clock(settings, run, concurrent, time.time() - (time.perf_counter() - t0))
        fit_s, stopped = 0.0, None
        if remaining <= 0:
            print("every trial of the study has finished")
        else:
            print(f"{concurrent} trial(s) at a time, each with {resources['cpu']:g} CPU(s)"
                  + (f" and {resources['gpu']:g} GPU" if resources["gpu"] else ""))
            fit_s, stopped = fit(args, folder, settings, data, plan, scheduler, resources, concurrent, remaining, len(settings.runs),
                                 clock)
            timings["fit_s"] = round(fit_s, 2)
            if not stopped:  # the confirmation stage follows: a kill there must not lose the trials' training time
                try:
                    folder.write_settings(settings)
                except OSError:
                    pass  # finish() writes it again and says so if it still cannot
        lines: list[str] = []
        confirmed = True
        budget_reached = bool(clock and clock.budget_reached)
        if budget_reached:
            print(f"the time budget (--time-budget {settings.time_budget:g} s) ended the search after {len(plan.tables.trials)} of "
                  f"{settings.samples} trial(s)" + ("; the confirmation stage runs on those that finished" if settings.confirm else ""))
        if (settings.confirm and not stopped and not plan.tables.counts().get("running")
                and (len(plan.tables.trials) >= settings.samples or budget_reached)):
            from .confirm import run_stage
            from .progress import Progress

            if clock is not None:
                clock.for_confirmation()
            start = time.perf_counter()
            stopped, lines, confirmed = run_stage(folder, settings, plan.tables, all_data, resources, slots, len(settings.runs),
                                                  Progress(settings.samples), clock)
            timings["confirm_s"] = round(time.perf_counter() - start, 2)
        return finish(folder, settings, plan.tables, run, t0, fit_s, stopped, lines, confirmed, budget_reached)
    finally:
        ray.shutdown()


def retry_timed_out(folder: StudyFolder, settings: StudySettings, plan) -> None:
    """--retry-timed-out: each timed-out configuration runs again as a new trial (Optuna cannot reopen a failed one)."""
    import optuna

    from .layout import storage_url

    again = [row for row in plan.tables.trials.values() if row.get("status") == "timed_out"]
    if not again:
        print("--retry-timed-out: no trial timed out")
        return
    study = optuna.load_study(study_name=settings.name, storage=storage_url(folder.optuna_db))
    for row in again:
        study.enqueue_trial({p: typed(p, row[p]) for p in settings.space}, user_attrs={"retry_of": int(row["optuna_trial"])})
    settings.samples += len(again)
    print(f"--retry-timed-out: trial(s) {', '.join(str(r['optuna_trial']) for r in again)} run again as new trial(s); "
          f"the study grows to {settings.samples}")


def _process_start() -> float:
    import psutil

    return psutil.Process().create_time()


def confirm_study_epochs(settings: StudySettings) -> float:
    """The confirmation stage's work in study epochs: a cross-validation run trains on (F-1)/F of the images, a trial
    on 1 - val_fraction of them."""
    if not settings.confirm:
        return 0.0
    base, folds = settings.base, settings.confirm["folds"]
    return (settings.confirm["top"] + 1) * folds * base["epochs"] * (folds - 1) / folds / (1 - base["val_fraction"])


def study_clock(settings: StudySettings, run: dict, concurrent: int, run_started: float):
    """The study's DriverClock (study.clock) for this driver run, or None where no limit applies (--trial-timeout 0
    and no --time-budget)."""
    if settings.trial_timeout == 0 and not settings.time_budget:
        return None
    from .clock import DriverClock

    spent = sum(r.get("timings", {}).get("wall_s", 0.0) for r in settings.runs if r is not run)
    return DriverClock(f"hotdog-tune-clock-{os.getpid()}-{len(settings.runs)}", settings.trial_timeout, settings.time_budget,
                       spent, int(settings.base["epochs"]), confirm_study_epochs(settings), concurrent, run_started)


def fit(args, folder: StudyFolder, settings: StudySettings, data, plan, scheduler, resources: dict, concurrent: int,
        remaining: int, run_index: int, clock=None) -> tuple[float, str | None]:
    """Run the trials still to run; returns (seconds, why the study stopped early or None)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from .adapter import disk_full, run_trial
    from .callback import StudyCallback
    from .progress import Progress
    from .layout import storage_url
    from .searcher import AskTellOptunaSearch

    params = list(settings.space)
    base = TrainConfig.from_dict(settings.base)
    searcher = AskTellOptunaSearch(settings.space, storage_url(folder.optuna_db), settings.name, max_epochs=base.epochs,
                                   seed=settings.seed, baseline=settings.baseline, unfinished=plan.unfinished, clock=clock)
    progress = Progress(settings.samples, base.epochs, concurrent, settings.grace_epochs, settings.reduction_factor,
                        confirm_study_epochs(settings))
    callback = StudyCallback(folder.path, plan.tables, settings.samples, params, storage=settings.storage, progress=progress, clock=clock)
    check_trackers(bool(settings.trackers.get("tensorboard")), settings.trackers.get("mlflow"))
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, base=settings.base, clock=clock.name if clock else None),
                                    resources)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(num_samples=remaining, search_alg=ConcurrencyLimiter(searcher, concurrent), scheduler=scheduler,
                                    reuse_actors=not settings.fresh_actors, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=f"run-{run_index}", storage_path=settings.experiment_path, verbose=0,
            callbacks=[callback, *tracker_callbacks(settings.trackers, settings.name)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=2),  # a worker process that died: retried from its checkpoint
        ),
    )
    interrupted: list[str] = []

    def on_sigterm(signum, frame):  # preemption (Slurm, Kubernetes) is handled as Ctrl-C: state kept, resumable
        interrupted.append("stopped by SIGTERM")
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    start = time.perf_counter()
    try:
        tuner.fit()
    except Exception as exc:  # Ray's own failure: one line here, the whole traceback in the study's log
        log = folder.logs / "driver.log"
        try:
            log.parent.mkdir(exist_ok=True)
            write_text_atomic(log, traceback.format_exc())
        except OSError:
            log = None
        if disk_full(exc):
            callback.disk_full = callback.disk_full or f"no space left on a disk Ray writes to ({str(exc).splitlines()[0][:200]})"
        else:
            interrupted.append(f"Ray failed: {(str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]}"
                               + (f" (traceback in {log})" if log else ""))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if callback.disk_full:
        return time.perf_counter() - start, f"{callback.disk_full}; free space there first"
    return time.perf_counter() - start, interrupted[0] if interrupted else None


def finish(folder: StudyFolder, settings: StudySettings, tables, run: dict, t0: float, fit_s: float, stopped: str | None,
           confirmation: list[str] | None = None, confirmed: bool = True, budget_reached: bool = False) -> int:
    """Summary, the run's record in study.json, and the exit code."""
    from .summary import print_summary

    run["timings"]["fit_s"] = round(fit_s, 2)
    run["timings"]["wall_s"] = round(time.perf_counter() - t0, 2)
    counts = tables.counts()
    # samples the time budget left unstarted are not unfinished: the study ended as asked
    unfinished = counts.get("running", 0) + (0 if budget_reached else max(0, settings.samples - len(tables.trials)))
    total_fit = sum(r.get("timings", {}).get("fit_s", 0.0) for r in settings.runs if r is not run) + fit_s
    settings.summary = {**print_summary(folder, settings, tables, total_fit, confirmation),
                        **({"confirmation": settings.summary["confirmation"]} if "confirmation" in settings.summary else {}),
                        **({"time_budget_reached": True} if budget_reached else {})}
    unfinished_confirmation = not unfinished and not confirmed
    run["outcome"] = "finished" if not unfinished and not unfinished_confirmation else "stopped"
    try:
        folder.write_settings(settings)
    except OSError as exc:
        print(f"could not update {folder.settings_file} ({exc.strerror or exc})")
    if unfinished or unfinished_confirmation:
        reason = f": {stopped}" if stopped else ""
        what = f"{unfinished} trial(s) unfinished" if unfinished else "its confirmation stage unfinished"
        print(f"the study stopped with {what}{reason}; continue it with:\n  {resume_command(folder)}")
        return EXIT_STOPPED
    if not any(t["status"] in ("completed", "stopped early") and not isnan(t.get("best_val_acc")) for t in tables.trials.values()):
        return EXIT_NO_RESULT  # every trial diverged or failed: nothing to rerun
    return EXIT_OK


if __name__ == "__main__":
    run_main(main)
