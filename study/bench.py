"""``python -m study.bench``: how fast the trainable is, measured side by side in one process.

For each image size and freeze depth it measures, on the same machine, one after the other:

a  limit      the bare ResNet18 training step on tensors already in memory, at the trainable's settings
              (precision, channels_last, threads, SGD parameter groups, frozen stages);
b  trainable  real epochs of ``trainable.loop.train`` on the decoded data: augmentation, the step and
              the epoch's validation; b = training images / epoch seconds (validation included), b_train =
              the epoch's own training images/s (validation excluded). Decoding (once per run) is timed
              apart;
c  naive      the trainable a user copies from Ray Tune's tutorial: ImageFolder + PIL + DataLoader
              (``--workers``) + RandomResizedCrop/flip/ToTensor/Normalize, fp32, contiguous, decoding
              every image every epoch (training only: its validation is not counted, which favours c).

Every figure covers the same number of images (``--steps`` x ``--batch-size``) after a warm-up; a, b and
c are measured in turn ``--repeats`` times (a, b, c, a, b, c, ...), so a change in the machine's load hits
all three alike, and each keeps its best window (other work on the machine only ever slows one down).

a, b and c run on ``--device`` (cpu, the default, or cuda) at the trainable's ``--precision`` (auto: bf16
where the device has it natively); a and b channels_last, c fp32 and contiguous (on a GPU its DataLoader
decodes on the CPU into pinned memory and the batch moves with ``non_blocking``, as the tutorial does).
On a GPU the clock is read after ``torch.cuda.synchronize()``; cuDNN's benchmark mode is on for all three
(the trainable turns it on, process-wide).

``--scaling`` instead times whole studies (``python -m study.run``) of ``--scaling-samples`` trials on a
stratified ``--scaling-images`` subset of the data (symlinks in a temporary folder), splits each wall time
into start-up, data preparation, training, evaluation and Ray overhead (the phases ``study.run`` records in
``study.json``), and projects the time of the same study on the full data from the rates it measured.

``--feed`` measures the input pipeline alone (no model step): per-image (torchvision on the CPU) against
batched (``trainable.batch_augment`` on the device), every augmentation policy, per device
(``study.bench_feed``). ``--trials-per-gpu 1 2 4 8`` runs N training processes sharing one GPU at once
(``study.bench_share``). ``--make-gpu-data`` copies a stratified subset of the photos under 40 MB into
``.gpu-data/hotdog`` for ``scripts/gpu_check.sh`` (``study.bench_data``).

Nothing here imports Ray or Optuna (the GPU check runs where neither is installed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import trainable.tv_compat  # noqa: F401  (first: makes torchvision importable)
from trainable import TrainConfig, UserError
from trainable.cli import run_main
from trainable.data import IMAGE_SUFFIXES, PreparedData, Split, check_layout, prepare_data, stored_size
from trainable.loop import available_cpus, resolve_device, use_bf16

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "assets" / "hotdog"
ROOT = Path(__file__).resolve().parents[1]


CUDA_DEFAULTS = {"sizes": [224], "batch_size": 64, "steps": 40, "repeats": 3}  # a GPU step is ~10 ms: 40 steps a window
CPU_DEFAULTS = {"sizes": [224, 128], "batch_size": 64, "steps": 4, "repeats": 2}
TINY_DEFAULTS = {"sizes": [32], "batch_size": 8, "steps": 1, "repeats": 1}
GPU_DATA = ROOT / ".gpu-data" / "hotdog"  # git-ignored: the photos scripts/gpu_check.sh reads where ../shared is absent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help=f"train/<class>/, test/<class>/ image folders (default: $HOTDOG_ASSETS/hotdog or {DEFAULT_DATA})")
    p.add_argument("--device", help="cpu or cuda[:N]: where a, b and c run (default: cpu); --feed: that device only (default: cpu, "
                                    "and cuda where there is one); --trials-per-gpu: cuda, or cpu for a debug run of the plumbing")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="a and b, as the trainable's --precision: auto = bf16 where the device has it natively (default: %(default)s); c is always fp32")
    p.add_argument("--sizes", type=int, nargs="+", help="image sizes in px (default: 224 128; on cuda: 224; --feed: 224 128; --tiny: 32)")
    p.add_argument("--freeze", type=int, nargs="+", default=[0, 5], help="freeze depths (default: 0 5)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: 64; --feed and --trials-per-gpu: 128; --tiny: 8)")
    p.add_argument("--steps", type=int, default=None, help="training steps per measured window (default: 4; on cuda: 40; --tiny: 1)")
    p.add_argument("--repeats", type=int, default=None, help="measured windows per figure, best taken (default: 2; on cuda: 3; --feed: 5; --tiny: 1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for a, b and c (default: 0 = the CPUs given, as the trainable)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers of the naive trainable c (default: 2; on cuda: 8 or the CPUs if fewer)")
    p.add_argument("--tiny", action="store_true", help="generated images and a step or two: seconds, for tests")
    p.add_argument("--json", help="also write the figures to this JSON file")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--scaling", action="store_true", help="time whole studies instead (see --scaling-*)")
    mode.add_argument("--feed", action="store_true",
                      help="the input pipeline's images/s without the model step: per-image against batched augmentation, every policy, per device")
    mode.add_argument("--trials-per-gpu", type=int, nargs="+", metavar="N",
                      help="N training processes sharing one GPU at once (e.g. 1 2 4 8), each capped at 1/N of its memory: "
                           "aggregate images/s, against one process's bare step a, and the GPU's utilisation")
    mode.add_argument("--make-gpu-data", nargs="?", const=str(GPU_DATA), metavar="DIR",
                      help=f"copy a stratified subset of the photos (--data-dir) under --gpu-data-mb into DIR (default: {GPU_DATA}) and exit")
    mode.add_argument("--gpu-worker", action="store_true", help=argparse.SUPPRESS)  # one process of --trials-per-gpu
    mode.add_argument("--selection", action="store_true",
                      help="simulate whole studies (no training) with known true accuracies: the expected regret of picking by one "
                           "validation accuracy against the confirmation stage, and the stage's extra compute (study.selection)")
    p.add_argument("--selection-repeats", type=int, default=1000, help="--selection: simulated studies (default: %(default)s)")
    p.add_argument("--feed-window", type=float, default=None, help="--feed: seconds per measured window (default: 0.3; --tiny: 0.02)")
    p.add_argument("--seconds", type=float, default=None, help="--trials-per-gpu: seconds each process trains, all together (default: 30; --tiny: 2)")
    p.add_argument("--epoch-images", type=int, default=None,
                   help="--trials-per-gpu: training images per epoch of each process (default: 1800, the hotdog set's; --tiny: 16)")
    p.add_argument("--gpu-data-mb", type=float, default=38.0, help="--make-gpu-data: size budget in MB, at most 40 (default: %(default)s)")
    p.add_argument("--worker-dir", help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker-count", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--scaling-samples", type=int, nargs="+", default=[8, 16, 32], help="study sizes (default: 8 16 32)")
    p.add_argument("--scaling-images", type=int, default=200, help="training images of the subset the studies run on (default: %(default)s)")
    p.add_argument("--scaling-size", type=int, default=128, help="--scaling: image size (default: %(default)s)")
    p.add_argument("--scaling-epochs", type=int, default=3, help="--scaling: epochs per trial (default: %(default)s)")
    p.add_argument("--scaling-actors", choices=["reused", "fresh", "both"], default="reused",
                   help="reused: study.run's default (a trial's worker process runs the next trial); fresh: --fresh-actors; "
                        "both: each study size twice, fresh then reused, side by side (default: %(default)s)")
    p.add_argument("--scaling-batch-size", type=int, default=64, help="--scaling: batch size (default: %(default)s)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    tiny = args.tiny
    share = bool(args.trials_per_gpu) or args.gpu_worker
    args.device_given = args.device is not None
    if args.device is None:
        args.device = "cuda" if share else "cpu"
    on_cuda = args.device.startswith("cuda")
    defaults = TINY_DEFAULTS if tiny else CUDA_DEFAULTS if on_cuda else CPU_DEFAULTS
    if args.feed:
        defaults = {"sizes": [224, 128], "batch_size": 16 if tiny else 128, "steps": 1, "repeats": 1 if tiny else 5}
    elif share and not tiny:
        defaults = {**defaults, "batch_size": 128}  # a study trial's batch (TrainConfig's default)
    args.sizes = args.sizes or list(defaults["sizes"])
    args.batch_size = args.batch_size or defaults["batch_size"]
    args.steps = args.steps or defaults["steps"]
    args.repeats = args.repeats or defaults["repeats"]
    args.workers = args.workers if args.workers is not None else (min(8, available_cpus()) if on_cuda else 2)
    args.feed_window = args.feed_window or (0.02 if tiny else 0.3)
    args.seconds = args.seconds or (2.0 if tiny else 30.0)
    args.epoch_images = args.epoch_images or (16 if tiny else 1800)
    checks = [
        (args.device == "cpu" or args.device == "cuda" or (args.device.startswith("cuda:") and args.device[5:].isdigit()),
         f"--device {args.device!r}: use cpu, cuda or cuda:N"),
        (all(s >= 32 for s in args.sizes), "--sizes must be 32 or more"),
        (all(0 <= f <= 5 for f in args.freeze), "--freeze depths must be 0-5"),
        (args.batch_size >= 2 and args.steps >= 1 and args.repeats >= 1, "--batch-size must be 2 or more, --steps and --repeats 1 or more"),
        (args.threads >= 0 and args.workers >= 0, "--threads and --workers must be 0 or more"),
        (all(n >= 1 for n in args.scaling_samples) and args.scaling_images >= 20, "--scaling-samples must be 1 or more, --scaling-images 20 or more"),
        (args.feed_window > 0 and args.seconds > 0 and args.epoch_images >= 2, "--feed-window and --seconds must be positive, --epoch-images 2 or more"),
        (not args.trials_per_gpu or all(1 <= n <= 64 for n in args.trials_per_gpu), "--trials-per-gpu counts must be 1-64"),
        (0 < args.gpu_data_mb <= 40, f"--gpu-data-mb {args.gpu_data_mb:g} must be above 0 and at most 40"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return args


def default_data_dir() -> Path:
    env = os.environ.get("HOTDOG_ASSETS")
    return Path(env) / "hotdog" if env else DEFAULT_DATA


# --- the machine -------------------------------------------------------------------------------------
def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def busy_processes(threshold: float = 20.0, own: set[int] | None = None) -> list[str]:
    """Other processes using more than ``threshold`` % CPU now: the measurement's competition."""
    try:
        import psutil
    except ImportError:
        return []
    own = own or {os.getpid()}
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for proc in procs:
        try:
            proc.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(0.5)
    out = []
    for proc in procs:
        try:
            pct = proc.cpu_percent(None)
            if pct >= threshold and proc.pid not in own:
                cmd = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])
                out.append(f"{pct:.0f}% {cmd[:100].strip()}")
        except psutil.Error:
            pass
    return out


def machine() -> dict:
    import torch

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {
        "cpu": model, "cpus": available_cpus(), "torch": torch.__version__, "python": platform.python_version(),
        "native_bf16": use_bf16("auto", resolve_device("cpu")), "cuda": torch.cuda.is_available(),
    }
    if out["cuda"]:
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count(),
                   gpu_native_bf16=use_bf16("auto", torch.device("cuda")), cuda_version=torch.version.cuda)
    return out


# --- the three measurements --------------------------------------------------------------------------
def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously): call before reading the clock."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(cfg: TrainConfig, classes: int, channels_last: bool, device):
    import torch

    from trainable.model import build_model, freeze, param_groups, set_train_mode

    model = build_model("none", classes, seed=cfg.seed)  # speed does not depend on the weights' values
    freeze(model, cfg.freeze_depth)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(param_groups(model, cfg.lr, cfg.head_lr_mult, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    set_train_mode(model, cfg.freeze_depth)
    return model, optimizer


def _step(model, optimizer, x, y, bf16: bool) -> None:
    """One SGD step as ``trainable.loop`` takes it (autocast on the batch's device); nothing waits for the device."""
    import torch
    from torch import nn

    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    loss = nn.functional.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _use_threads(cfg: TrainConfig) -> None:
    """The trainable's thread count (b's ``train`` sets it itself; a and c run in turn with it, so each resets it)."""
    import torch

    torch.set_num_threads(cfg.threads or available_cpus())


def _on_device(cfg: TrainConfig):
    """The run's device, with cuDNN's benchmark mode on where it is CUDA (as ``trainable.loop`` sets it)."""
    import torch

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


class Limit:
    """a: the bare training step on one normalised batch already in memory, at the trainable's settings."""

    def __init__(self, cfg: TrainConfig, classes: int = 2):
        import torch

        self.cfg = cfg
        self.device = _on_device(cfg)
        self.bf16 = use_bf16(cfg.precision, self.device)
        self.model, self.optimizer = _model(cfg, classes, channels_last=True, device=self.device)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=gen)
        self.x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, classes, (cfg.batch_size,), generator=gen).to(self.device)

    def warm_up(self) -> None:
        _use_threads(self.cfg)
        for _ in range(3 if self.device.type == "cuda" else 1):  # oneDNN primitives / cuDNN's kernel choice, the allocator
            _step(self.model, self.optimizer, self.x, self.y, self.bf16)
        synchronize(self.device)

    def window(self, steps: int) -> float:
        _use_threads(self.cfg)
        synchronize(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            _step(self.model, self.optimizer, self.x, self.y, self.bf16)
        synchronize(self.device)
        return steps * self.cfg.batch_size / (time.perf_counter() - t0)


def bench_subset(data: PreparedData, n_train: int, val_fraction: float, seed: int = 0) -> PreparedData:
    """``n_train`` training images (and the matching validation share) drawn from the decoded data."""
    rng = np.random.default_rng(seed)

    def take(split: Split, n: int) -> Split:
        index = rng.permutation(len(split))
        index = np.resize(index, n)  # repeats images when the split is smaller than asked
        return split.subset(np.sort(index))

    n_val = max(1, round(n_train * val_fraction / (1 - val_fraction)))
    val = take(data.val, n_val) if data.val is not None and len(data.val) else None
    return PreparedData(data.classes, data.stored_size, take(data.train, n_train), val, None, [], data.root)


class Trainable:
    """b: one real epoch of ``trainable.loop.train`` (augmentation, steps, the epoch's validation) on
    ``steps`` batches of the decoded data, with the validation share of a real epoch."""

    def __init__(self, cfg: TrainConfig, data: PreparedData, steps: int):
        self.cfg = cfg.replace(epochs=1)
        self.subset = bench_subset(data, steps * cfg.batch_size, cfg.val_fraction)

    def epoch(self):
        from trainable import train

        return train(self.cfg, self.subset).history[0]

    def summary(self, metrics) -> dict:
        n = len(self.subset.train)
        return {
            "images_per_s": n / metrics.seconds, "train_images_per_s": metrics.images_per_s,
            "eval_share": max(0.0, 1 - (n / metrics.images_per_s) / metrics.seconds),
        }


def naive_loader(train_dir: Path, size: int, batch_size: int, workers: int, pin_memory: bool = False):
    """The tutorial's data pipeline: decode and transform every image, every epoch, in DataLoader workers
    (into pinned memory when the step runs on a GPU)."""
    import torch
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    dataset = datasets.ImageFolder(str(train_dir), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                                         pin_memory=pin_memory)
    return loader, len(dataset.classes)


class Naive:
    """c: the naive trainable's training: decode + transforms in DataLoader workers, fp32 contiguous step on the
    device (each batch moved there with ``non_blocking`` from pinned memory on a GPU).

    Each window starts a fresh pass over the loader (as each epoch does) and takes its first batch
    before the clock starts: worker start-up is left out (which favours c), the steady state is timed
    (a window longer than a pass pays the next pass's start, as an epoch does).
    """

    def __init__(self, cfg: TrainConfig, train_dir: Path, workers: int):
        self.cfg = cfg
        self.device = _on_device(cfg)
        self.loader, classes = naive_loader(train_dir, cfg.image_size, cfg.batch_size, workers, pin_memory=self.device.type == "cuda")
        self.model, self.optimizer = _model(cfg, classes, channels_last=False, device=self.device)

    def _batches(self):
        while True:  # epoch after epoch when a window needs more batches than one pass holds
            for x, y in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def warm_up(self) -> None:
        _use_threads(self.cfg)
        stream = self._batches()
        for _ in range(3 if self.device.type == "cuda" else 1):
            x, y = next(stream)
            _step(self.model, self.optimizer, x, y, bf16=False)
        stream.close()
        synchronize(self.device)

    def window(self, steps: int) -> float:
        _use_threads(self.cfg)
        stream = self._batches()
        x, y = next(stream)
        synchronize(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            _step(self.model, self.optimizer, x, y, bf16=False)
            x, y = next(stream)
        synchronize(self.device)
        rate = steps * self.cfg.batch_size / (time.perf_counter() - t0)
        stream.close()  # ends this pass's workers
        return rate

    @property
    def batches_per_pass(self) -> int:
        return len(self.loader)


def measure_cell(cfg: TrainConfig, data: PreparedData, train_dir: Path, steps: int, repeats: int, workers: int) -> dict:
    """a, b and c, warmed up, then measured in turn ``repeats`` times (a, b, c, a, b, c, ...): a change in
    the machine's load hits all three alike; the best window of each is kept."""
    limit, trainable_, naive = Limit(cfg, len(data.classes)), Trainable(cfg, data, steps), Naive(cfg, train_dir, workers)
    limit.warm_up()
    first = trainable_.epoch()  # the trainable's first epoch: its warm-up, reported
    naive.warm_up()
    a, c, epochs = [], [], []
    for _ in range(repeats):
        a.append(limit.window(steps))
        epochs.append(trainable_.epoch())
        c.append(naive.window(steps))
    b = trainable_.summary(min(epochs, key=lambda m: m.seconds))
    result = {"a": max(a), "b": b["images_per_s"], "b_train": b["train_images_per_s"], "b_eval_share": b["eval_share"],
              "b_first_epoch": trainable_.summary(first)["images_per_s"], "c": max(c), "bf16": limit.bf16,
              "naive_batches_per_pass": naive.batches_per_pass}
    del limit, trainable_, naive
    _free_device(cfg)
    return result


def _free_device(cfg: TrainConfig) -> None:
    import gc

    import torch

    gc.collect()
    if torch.device(cfg.device).type == "cuda":
        torch.cuda.empty_cache()


def make_tiny_folder(root: Path, per_class: int, size: int = 40) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for name, colour in (("hotdog", (200, 60, 40)), ("not-hotdog", (40, 80, 200))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def run_cells(args: argparse.Namespace, data_dir: Path, log, on_progress=None) -> dict:
    cells, decode, facts = [], [], {}
    for size in args.sizes:
        t0 = time.perf_counter()
        data = prepare_data(data_dir, size, val_fraction=0.1, split_seed=0)
        seconds = time.perf_counter() - t0
        n = len(data.train) + (len(data.val) if data.val is not None else 0)
        decode.append({"size": size, "stored_size": stored_size(size), "images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1)})
        log(f"decoded {n} images at {stored_size(size)} px in {seconds:.1f}s ({n / seconds:.0f}/s)")
        for depth in args.freeze:
            cfg = TrainConfig(
                data_dir=str(data_dir), image_size=size, weights="none", freeze_depth=depth, batch_size=args.batch_size,
                augment="d2l", device=args.device, precision=args.precision, threads=args.threads, val_fraction=0.1,
            ).validate()
            load_before = load_average()
            m = measure_cell(cfg, data, data_dir / "train", args.steps, args.repeats, args.workers)
            facts = {"bf16": m["bf16"], "naive_batches_per_pass": m["naive_batches_per_pass"]}
            cell = {
                "size": size, "freeze": depth, "a": round(m["a"], 2), "b": round(m["b"], 2),
                "b_train": round(m["b_train"], 2), "b_first_epoch": round(m["b_first_epoch"], 2),
                "b_eval_share": round(m["b_eval_share"], 3), "c": round(m["c"], 2),
                "b_over_a": round(m["b"] / m["a"], 3), "b_over_c": round(m["b"] / m["c"], 3),
                "load_before": load_before, "load_after": load_average(),
            }
            cells.append(cell)
            log(f"{size}px freeze {depth}: a {cell['a']:.1f}  b {cell['b']:.1f} (train {cell['b_train']:.1f})  c {cell['c']:.1f} img/s")
            if on_progress is not None:
                on_progress({"decode": decode, "cells": cells})
        del data
    return {"decode": decode, "cells": cells, "cell_facts": facts}


def print_cells(result: dict, console) -> None:
    from rich.table import Table

    settings = result.get("settings", {})
    where = f" on {settings.get('device', 'cpu')}, a and b {'bf16' if settings.get('bf16') else 'fp32'}, c fp32"
    table = Table(title="training images/s: a = bare step (limit), b = trainable epoch, c = naive ImageFolder+DataLoader" + where,
                  title_justify="left")
    for col in ["size", "freeze", "a limit", "b trainable", "b train only", "b 1st epoch", "c naive", "b/a", "b/c", "load 1m"]:
        table.add_column(col, justify="right")
    for cell in result["cells"]:
        table.add_row(
            str(cell["size"]), str(cell["freeze"]), f"{cell['a']:.1f}", f"{cell['b']:.1f}", f"{cell['b_train']:.1f}",
            f"{cell['b_first_epoch']:.1f}", f"{cell['c']:.1f}", f"{cell['b_over_a']:.2f}", f"{cell['b_over_c']:.2f}",
            f"{cell['load_before'][0] if cell['load_before'] else float('nan'):.1f}",
        )
    console.print(table)
    for d in result["decode"]:
        console.print(f"decoding once per run (not in b): {d['images']} images at {d['stored_size']} px in {d['seconds']:.1f}s = {d['images_per_s']:.0f} images/s", markup=False)


# --- scaling: whole studies --------------------------------------------------------------------------
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


def run_study_timed(argv: list[str], log) -> float:
    """Run ``python -m study.run``; its wall time in seconds, process start to exit (its phases are in its study.json)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = [line.rstrip() for line in proc.stdout]
    code = proc.wait()
    wall = time.perf_counter() - t0
    if code != 0:
        log("\n".join(lines[-20:]))
        raise UserError(f"the study {argv} failed with exit code {code}")
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
                    "--results-dir", str(Path(tmp) / "results"), "--name", name] + (["--fresh-actors"] if actors == "fresh" else [])
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


# --- main --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = parse_args(argv)
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)

    def log(message: str) -> None:
        console.print(message, markup=False)
        sys.stdout.flush()

    if args.gpu_worker:  # one process of --trials-per-gpu: says nothing, writes its figures to --worker-dir
        from .bench_share import gpu_worker

        return gpu_worker(args)
    if args.make_gpu_data:
        from .bench_data import make_gpu_data

        source = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
        made = make_gpu_data(source, Path(args.make_gpu_data).expanduser(), budget_bytes=int(args.gpu_data_mb * 1e6))
        log(f"copied {made['files']} photos ({made['bytes'] / 1e6:.1f} MB; train {made['counts']['train']}, test {made['counts']['test']}) "
            f"from {made['source']} to {made['target']}")
        return 0
    if args.selection:
        from .selection import print_selection, run_selection

        if args.selection_repeats < 1:
            raise UserError(f"--selection-repeats {args.selection_repeats} must be 1 or more")
        result = run_selection(args.selection_repeats, 0, args.json)
        print_selection(result, console)
        return 0
    if args.trials_per_gpu:
        from .bench_share import check_share_device

        check_share_device(args)  # one line and exit 2 where there is no GPU, before any work
    report = {"machine": machine(), "load_start": load_average(), "busy_processes_start": busy_processes()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-tiny-") as tmp:
        if args.tiny and not args.data_dir:
            per_class = max(8, args.batch_size * (args.steps * args.repeats + 2) // 2 + 4)
            data_dir = make_tiny_folder(Path(tmp), per_class=24 if args.feed else per_class)
        else:
            data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
            check_layout(data_dir)
        data_dir = data_dir.resolve()
        log(f"bench on {data_dir}: {report['machine']['cpu']}, {report['machine']['cpus']} CPUs, load {report['load_start']}"
            + (f", GPU {report['machine']['gpu']}" if report["machine"].get("gpu") else ""))
        for line in report["busy_processes_start"]:
            log(f"  busy: {line}")

        def save_partial(key: str | None, part: dict) -> None:
            """The figures so far, in --json as each is measured: a run cut short (a lent GPU's time) still leaves them."""
            if args.json:
                Path(args.json).write_text(json.dumps({**report, **({key: part} if key else part), "partial": True}, indent=2))

        report["settings"] = {
            "data_dir": str(data_dir), "sizes": args.sizes, "freeze": args.freeze, "batch_size": args.batch_size,
            "steps": args.steps, "repeats": args.repeats, "images_per_window": args.steps * args.batch_size,
            "threads": args.threads or available_cpus(), "workers": args.workers, "tiny": args.tiny,
            "device": args.device, "precision": args.precision,
        }
        if args.scaling:
            report["scaling"] = run_scaling(args, data_dir, log)
            print_scaling(report["scaling"], console)
        elif args.feed:
            from .bench_feed import feed_devices, print_feed, run_feed

            devices = feed_devices(args)
            report["settings"].update(devices=devices, window_s=args.feed_window, steps=None, images_per_window=None)
            report.update(run_feed(args, data_dir, devices, log, on_progress=lambda part: save_partial(None, part)))
            print_feed(report, console)
        elif args.trials_per_gpu:
            from .bench_share import print_share, run_share

            report["settings"].update(seconds=args.seconds, epoch_images=args.epoch_images, size=args.sizes[0], freeze_depth=args.freeze[0])
            report["trials_per_gpu"] = run_share(args, data_dir, log, on_progress=lambda part: save_partial("trials_per_gpu", part))
            print_share(report["trials_per_gpu"], console)
        else:
            cells = run_cells(args, data_dir, log, on_progress=lambda part: save_partial(None, part))
            report["settings"].update(cells.pop("cell_facts"))
            report.update(cells)
            print_cells(report, console)
    report["load_end"] = load_average()
    report["seconds"] = round(time.perf_counter() - started, 1)
    log(f"load average (1, 5, 15 min) at start {report['load_start']}, at end {report['load_end']}; {report['seconds']:.0f}s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
