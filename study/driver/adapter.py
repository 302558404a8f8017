"""The thin layer between Ray Tune and the training loop: config in, one report per epoch (with the checkpoint,
written off the training path, of an earlier one: ``study.driver.checkpoints``).

A trial that raises is not a crash of the study: its exception becomes one final result (``trial_error``:
the exception's last line, ``trial_traceback``: the whole text) and the function returns, so Ray does not
retry it; only a worker process that dies (Ray's own error) is retried from the trial's checkpoint.

Ray reuses a worker process for trial after trial. What the process keeps between them lives here, once per
process: the study's decoded images (fetched from Ray's object store once: ``SharedData``) and the training loop's
``WorkerCache`` (the model and its starting weights, the images on the device). Every report says where the time
went: the first of a run its start (``import_s``, ``data_wait_s``, ``restore_s`` and the loop's ``RunPhases``), each its epoch's ``train_s``,
``val_s`` and ``checkpoint_s``, and the time the run waited in the report before (``report_s_before``).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import socket
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from ray import tune

from trainable import TrainConfig, UserError

from study.core.vocabulary import clock_key, run_config, run_key

if TYPE_CHECKING:
    from trainable import PreparedData

# The training loop (and torch with it) is imported inside the functions that run in a trial's process: the driver
# imports this module only to hand run_trial to Tune, and torch would cost it seconds at every start.

TRIAL_KEYS = ("optuna_trial", "baseline", "resume_dir")  # study bookkeeping carried in the Tune config, not TrainConfig fields
CUDA_CONTEXT_BYTES = 1 << 30  # left outside a trial's memory cap: the CUDA context and allocator slack of its process


class SharedData:
    """The study's decoded images (every training image: a trial's split and each confirmation fold are views of
    them), one copy per machine, however many trials run there.

    On this machine (a local Ray) with the decoded-image cache (``trainable.decoded``), every worker process maps the
    cache's entry: the page cache holds it once, and a set larger than memory reads from the disk. Otherwise (a cluster,
    ``--no-cache``, a cache that could not be written) the driver puts the data in Ray's object store once, and each
    node's processes read it there without a copy. Each worker process fetches it once."""

    _fetched: dict[str, PreparedData] = {}  # in a worker: the data's key -> the data, for the process's life

    def __init__(self, data: PreparedData, local: bool):
        entry = data.entries.get("train")
        self.entry = str(entry) if local and entry is not None and data.val is None else None
        self.meta = (list(data.classes), data.stored_size, data.root)
        self.ref = None if self.entry else ray.put(data)

    @property
    def how(self) -> str:
        """Where the trials read the images, in words."""
        return (f"memory-mapped by every trial from the cache ({self.entry})" if self.entry
                else "in Ray's object store, read there by every trial")

    def get(self) -> PreparedData:
        key = self.entry or self.ref.hex()
        if key not in self._fetched:
            self._fetched.clear()  # another study's data: one set at a time
            self._fetched[key] = self._read() if self.entry else ray.get(self.ref)
        return self._fetched[key]

    def _read(self) -> PreparedData:
        from trainable.data import PreparedData, Split
        from trainable.decoded import read_entry

        decoded = read_entry(Path(self.entry))
        classes, stored_size, root = self.meta
        return PreparedData(classes, stored_size, Split(decoded.images, decoded.labels), None, None, decoded.skipped, root,
                            {"train": Path(self.entry)})


_CACHE = None  # this worker process's trainable.worker_cache.WorkerCache, made at its first run


def worker_cache():
    global _CACHE
    if _CACHE is None:
        from trainable.worker_cache import WorkerCache

        from study.driver.checkpoints import sweep_scratch

        sweep_scratch()  # what workers killed on this machine left behind
        _CACHE = WorkerCache()
    return _CACHE


class TrialError(Exception):
    """A trial that cannot run as asked; its message is the one line the study prints."""


def trial_config(base: dict, config: dict, threads: int, gpus: list) -> TrainConfig:
    fields = {k: v for k, v in config.items() if k not in TRIAL_KEYS}
    cfg = TrainConfig.from_dict({**base, **fields, "threads": threads})
    if cfg.device == "auto":  # a trial runs where Ray put it: the GPU it was given, else the CPU (never a GPU it was not given)
        cfg = cfg.replace(device="cuda" if gpus else "cpu")
    return cfg


def check_gpu(gpus: list) -> None:
    """A trial given a GPU runs on it or fails at once: never 100x slower on the CPU without a word."""
    import torch

    if gpus and not torch.cuda.is_available():
        why = "a CPU build of torch" if torch.version.cuda is None else "no CUDA device visible to torch (driver older than the wheel's CUDA?)"
        raise TrialError(f"Ray gave this trial GPU {gpus} but torch {torch.__version__} sees no CUDA device ({why}): "
                         "install a CUDA build of torch on every GPU node, or train on CPUs with --gpus-per-trial 0")


def cap_gpu_memory(share: float) -> None:
    """Keep a trial to its share of the GPU: Ray's GPU fractions are logical and limit nothing themselves."""
    import torch

    if 0 < share < 1 and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(max(0.05, share - CUDA_CONTEXT_BYTES / total), 0)


def checkpoint_dirs(trial_dir: str | None) -> list[tuple[int, str]]:
    """(epoch, folder) of the complete checkpoints in a trial folder of an earlier driver run, newest first.

    Complete means its meta file exists and names the state file's size: a copy cut short is passed over.
    """
    if not trial_dir:
        return []
    import pyarrow.fs as pafs

    from trainable.loop import CHECKPOINT_FILE, META_FILE

    fs, root = pafs.FileSystem.from_uri(trial_dir) if "://" in trial_dir else (pafs.LocalFileSystem(), trial_dir)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type != pafs.FileType.Directory or not Path(info.path).name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_file(f"{info.path}/{META_FILE}") as f:
                meta = json.loads(f.read())
            if fs.get_file_info(f"{info.path}/{CHECKPOINT_FILE}").size != meta["bytes"]:
                continue
            found.append((int(meta["epoch"]), info.path if "://" not in trial_dir else f"{trial_dir.split('://')[0]}://{info.path}"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, reverse=True)


def _local(folder: str, scratch: str) -> str:
    """A checkpoint folder on this machine (copied from remote storage where it lives there)."""
    if "://" not in folder:
        return folder
    return tune.Checkpoint(folder).to_directory(str(Path(scratch) / Path(folder).name))


def restore_state(scratch: str, resume_dir: str | None) -> tuple[dict | None, int, str]:
    """The newest checkpoint that loads, from Ray's (a retry in this driver run) or an earlier run's folder.

    Returns (state or None, its epoch, a note when a checkpoint could not be used). A damaged file is
    skipped for the next older one, or the trial starts over: never retried as it is.
    """
    from trainable.loop import Checkpoint

    candidates: list[tuple[int, str]] = []
    restored = tune.get_checkpoint()
    if restored is not None:
        folder = restored.to_directory(str(Path(scratch) / "restored"))
        candidates.append((Checkpoint.epoch(folder) or 0, folder))
    candidates += checkpoint_dirs(resume_dir)
    skipped = []
    for epoch, folder in sorted(candidates, key=lambda c: -c[0]):
        try:
            state = Checkpoint.load(_local(folder, scratch))
            note = f"; checkpoint(s) {', '.join(skipped)} could not be read, continued from epoch {epoch}" if skipped else ""
            return state, int(state["epoch"]), note.lstrip("; ")
        except Exception as exc:  # truncated, zeroed or foreign: the next older one, else start over
            skipped.append(f"{folder} ({type(exc).__name__})")
    return None, 0, (f"checkpoint(s) {', '.join(skipped)} could not be read: started again from epoch 1" if skipped else "")


def failure_message(exc: BaseException, cfg: TrainConfig | None) -> str:
    """The one line the study shows for a trial that raised."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        batch = cfg.batch_size if cfg else "?"
        return (f"CUDA out of memory at batch size {batch} in this trial's share of the GPU: "
                "give each trial more of it (--gpus-per-trial) or use a smaller --batch-size")
    if disk_full(exc):
        return f"no space left on the device writing {getattr(exc, 'filename', None) or 'a checkpoint'}: free space, then resume the study"
    if isinstance(exc, (TrialError, UserError)):
        return str(exc)
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]


def fail_for_tests() -> None:
    """``HOTDOG_TUNE_FAIL=<message>``: every run raises RuntimeError(message) after its first epoch, as a run that
    meets a bug or a device error would. Tests only."""
    if message := os.environ.get("HOTDOG_TUNE_FAIL"):
        raise RuntimeError(message)


def hang_for_tests(key: str, epoch: int) -> None:
    """``HOTDOG_TUNE_HANG=<key>:<epoch>:<fifo>``: this run blocks for good after that epoch, reading a FIFO nobody
    writes (as a read from a dead network file system would), its pid written beside the FIFO. Tests only."""
    spec = os.environ.get("HOTDOG_TUNE_HANG", "")
    name, _, rest = spec.partition(":")
    at, _, fifo = rest.partition(":")
    if spec and name == key and at == str(epoch):
        Path(f"{fifo}.pid").write_text(str(os.getpid()))
        with open(fifo) as blocked:  # opening a FIFO for reading blocks until a writer comes: none does
            blocked.read()


def run_trial(config: dict, data: SharedData, base: dict, clock: str | None = None) -> None:
    """A Ray Tune function trainable: a study trial, or a confirmation run (``study.core.vocabulary``), which trains the
    same way on its fold. ``clock``: the name of the study's Clock actor (study.driver.clock), whose limits a watchdog
    thread enforces on this run's process."""
    key = clock_key(*run_key(config))
    config = run_config(config)
    context = ray.get_runtime_context()
    resources = context.get_assigned_resources()
    threads = max(1, int(resources.get("CPU", 1)))
    gpus = ray.get_gpu_ids()
    node = {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
            "worker_pid": os.getpid()}
    watchdog = None
    if clock is not None:
        from study.driver.clock import Watchdog

        handle = ray.get_actor(clock)
        why = ray.get(handle.timed_out.remote(key))
        if why:  # its watchdog ended the last attempt: it ends here, recorded as timed out, never run again
            tune.report({"val_acc": math.nan, "trial_error": why, "timed_out": True, **node})
            return
        watchdog = Watchdog(handle, key).start()
    cfg = None
    checkpointer = None
    try:
        started = time.perf_counter()
        from trainable.data import split_fold
        from trainable.loop import RunPhases, train  # torch and torchvision: seconds in a new process, nothing after

        start = {"import_s": time.perf_counter() - started}
        check_gpu(gpus)
        cfg = trial_config(base, config, threads, gpus)
        cap_gpu_memory(float(resources.get("GPU", 0)))
        started = time.perf_counter()
        fold = split_fold(data.get(), cfg.val_fraction, cfg.split_seed, cfg.val_fold, cfg.cv_folds)  # views: no pixels copied
        start["data_wait_s"] = time.perf_counter() - started
        from study.driver.checkpoints import Checkpointer, scratch_dir

        started = time.perf_counter()
        scratch = scratch_dir()
        try:
            state, resumed, note = restore_state(scratch, config.get("resume_dir"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        start["restore_s"] = time.perf_counter() - started
        first = {"resume_note": note} if note else {}
        # The driver may have died before it recorded the epochs this checkpoint holds: send them again
        # (marked replayed; the driver keeps the rows it has, the searcher and ASHA ignore repeats).
        for past in (state or {}).get("history", []):
            tune.report({**past, **node, **first, "replayed": True, "resumed_from_epoch": 0, "threads": threads})
            first = {}
        if state and state["history"] and state["history"][-1].get("diverged"):
            return  # it ended in that epoch; nothing follows a diverged one

        phases = RunPhases()
        checkpointer = Checkpointer(cfg.epochs)
        import torch

        from trainable.loop import resolve_device

        device = resolve_device(cfg.device)
        waits: list[float] = []  # how long each report of this run kept it waiting for the study

        def on_epoch(metrics, save) -> None:
            folder, epoch = checkpointer.take()
            result = {**metrics.as_dict(), **node, **first, "resumed_from_epoch": resumed, "threads": threads,
                      "checkpoint_s": checkpointer.spent(), "report_s_before": waits[-1] if waits else math.nan}
            if not waits:  # the run's first report: where its start went
                result.update(start, **phases.as_dict())
            if device.type == "cuda":  # what the trial's process holds on the GPU (python -m bench --scale reads it)
                result["device_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
            last = metrics.epoch >= cfg.epochs or metrics.diverged
            carried = folder if folder is not None and not last else None  # the last report needs none: nothing resumes after it
            t0 = time.perf_counter()
            tune.report({**result, "checkpoint_epoch": epoch if carried else None},
                        checkpoint=tune.Checkpoint.from_directory(carried) if carried else None)
            waits.append(time.perf_counter() - t0)
            first.clear()
            checkpointer.after_report(save, metrics.epoch, metrics.diverged)
            if watchdog is not None:
                watchdog.progress()
            hang_for_tests(key, metrics.epoch)
            fail_for_tests()

        train(cfg, fold, on_epoch=on_epoch, resume_from=state, cache=worker_cache(), phases=phases)
    except Exception as exc:  # reported once, not retried: rerunning the same configuration would fail the same way
        tune.report({"val_acc": math.nan, "trial_error": failure_message(exc, cfg), "trial_traceback": traceback.format_exc(),
                     "disk_full": disk_full(exc), **node})
    finally:
        if checkpointer is not None:
            checkpointer.close()
        if watchdog is not None:
            watchdog.stop()


def disk_full(exc: BaseException) -> bool:
    """Whether an exception (or one it wraps) is a full disk."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False

