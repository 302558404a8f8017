"""``python -m bench``'s cells: a (the bare step), b (the trainable) and c (the naive trainable), measured side by
side on one device, and the machine facts every bench figure carries (load, busy processes, CPU, GPU)."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

import trainable.tv_compat  # noqa: F401  (first: makes torchvision importable)
from trainable import TrainConfig
from trainable.data import PreparedData, Split, prepare_data, stored_size
from trainable.data import available_cpus
from trainable.loop import resolve_device, use_bf16


ROOT = Path(__file__).resolve().parents[1]


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
    """One SGD step: the product's own (``trainable.loop.forward`` and ``descend``, a full batch); nothing waits for the device."""
    from trainable.loop import descend, forward

    _, summed = forward(model, x, y, bf16)
    descend(optimizer, summed, len(y))


def _use_threads(cfg: TrainConfig) -> None:
    """The trainable's thread count (b's ``train`` sets it itself; a and c run in turn with it, so each resets it)."""
    import torch

    torch.set_num_threads(cfg.threads or available_cpus())


def _on_device(cfg: TrainConfig):
    """The run's device, with cuDNN's benchmark mode off where it is CUDA (as ``trainable.loop`` sets it)."""
    import torch

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
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
