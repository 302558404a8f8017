"""``python -m bench --feed``: how fast the input pipeline feeds the step, with the step left out.

For each image size, device and augmentation policy it times, in turn, the trainable's two ways of making a
normalised training batch from the decoded uint8 images (as ``trainable.loop`` makes it):

per-image  index the uint8 array in CPU memory, ``augment_batch`` with ``train_transform`` (torchvision,
           image by image on the CPU), ``normalize`` onto the device;
batched    the uint8 images already on the device, index there, ``batch_augment`` (whole batches on the
           device), ``normalize``.

Each window runs whole batches for about ``--feed-window`` seconds (its batch count is fixed from a timed
batch after two warm-up batches); old and new are measured in turn (per-image, batched, per-image, ...)
``--repeats`` times and each keeps its best window. On CUDA the clock is read after
``torch.cuda.synchronize()``. Rates are images/s.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import trainable.tv_compat  # noqa: F401  (first: makes torchvision importable)
from trainable.config import AUGMENT_POLICIES
from trainable.data import prepare_data, stored_size
from trainable.data import available_cpus
from trainable.loop import resolve_device

from bench.cells import synchronize

PATHS = ("per-image", "batched")
MAX_BATCHES = 500  # per window, whatever the calibration says


def feed_devices(args: argparse.Namespace) -> list[str]:
    """``--device`` when given; else the CPU, and the GPU where torch sees one."""
    import torch

    if args.device_given:
        resolve_device(args.device)  # a GPU asked for where there is none: one line, exit 2
        return [args.device]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class Feed:
    """Both paths for one (images, size, device): ``batch(path, policy)`` makes one normalised batch."""

    def __init__(self, images, size: int, device: str, batch_size: int, seed: int = 0):
        import torch

        self.size, self.batch_size = size, batch_size
        self.device = torch.device(device)
        self.cpu_images = images  # uint8 N x 3 x S x S, CPU
        self.device_images = images.to(self.device) if self.device.type != "cpu" else images
        self.index_gen = torch.Generator().manual_seed(seed)
        self.crop_gen = torch.Generator(device=self.device).manual_seed(seed)
        self.transforms = {}

    def _index(self):
        import torch

        return torch.randint(0, len(self.cpu_images), (self.batch_size,), generator=self.index_gen)

    def batch(self, path: str, policy: str):
        from trainable.augment import augment_batch, normalize, train_transform
        from trainable.batch_augment import batch_augment

        index = self._index()
        if path == "per-image":
            if policy not in self.transforms:
                self.transforms[policy] = train_transform(policy, self.size)
            out = augment_batch(self.cpu_images[index], self.transforms[policy])
        else:
            index = index.to(self.device, non_blocking=True)
            out = batch_augment(self.device_images[index], policy, self.size, self.crop_gen)
        return normalize(out, self.device, channels_last=True)

    def calibrate(self, path: str, policy: str, window_s: float) -> int:
        """Batches per window: two warm-up batches, then one timed."""
        for _ in range(2):
            self.batch(path, policy)
        synchronize(self.device)
        t0 = time.perf_counter()
        self.batch(path, policy)
        synchronize(self.device)
        return max(1, min(MAX_BATCHES, math.ceil(window_s / max(time.perf_counter() - t0, 1e-6))))

    def window(self, path: str, policy: str, batches: int) -> float:
        synchronize(self.device)
        t0 = time.perf_counter()
        for _ in range(batches):
            self.batch(path, policy)
        synchronize(self.device)
        return batches * self.batch_size / (time.perf_counter() - t0)


def measure_feed(feed: Feed, policy: str, window_s: float, repeats: int) -> dict:
    """Both paths' best images/s, measured in turn."""
    batches = {path: feed.calibrate(path, policy, window_s) for path in PATHS}
    rates = {path: [] for path in PATHS}
    for _ in range(repeats):
        for path in PATHS:
            rates[path].append(feed.window(path, policy, batches[path]))
    return {path: max(r) for path, r in rates.items()}


def run_feed(args: argparse.Namespace, data_dir: Path, devices: list[str], log, on_progress=None) -> dict:
    import torch

    from bench.cells import load_average

    torch.set_num_threads(args.threads or available_cpus())  # the trainable's count (per-image works on one: augment.one_thread)
    out, decode = {}, []
    for size in args.sizes:
        t0 = time.perf_counter()
        data = prepare_data(data_dir, size, val_fraction=0.0, split_seed=0)
        seconds = time.perf_counter() - t0
        images = torch.from_numpy(data.train.images)
        decode.append({"size": size, "stored_size": stored_size(size), "images": len(images), "seconds": round(seconds, 2)})
        log(f"decoded {len(images)} training images at {stored_size(size)} px in {seconds:.1f}s")
        table = out.setdefault(f"feed_{size}", {})
        for device in devices:
            feed = Feed(images, size, device, args.batch_size)
            for policy in AUGMENT_POLICIES:
                rates = measure_feed(feed, policy, args.feed_window, args.repeats)
                table.setdefault(policy, {})[device] = {path: round(rate, 1) for path, rate in rates.items()}
                log(f"{size}px {device} {policy}: per-image {rates['per-image']:.0f}, batched {rates['batched']:.0f} images/s "
                    f"(load {load_average()[:1]})")
                if on_progress is not None:
                    on_progress({**out, "feed_decode": decode})
            del feed
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
        del data, images
    return {**out, "feed_decode": decode}


def print_feed(report: dict, console) -> None:
    from rich.table import Table

    s = report["settings"]
    table = Table(title=f"input pipeline, images/s without the model step (batch {s['batch_size']}, best of {s['repeats']} "
                        f"windows of ~{s['window_s']:g}s): per-image = torchvision on the CPU, batched = batch_augment on the device",
                  title_justify="left")
    for col in ["policy", "size", "device", "per-image", "batched", "batched/per-image"]:
        table.add_column(col, justify="right")
    for size in s["sizes"]:
        for device in s["devices"]:
            for policy in AUGMENT_POLICIES:
                r = report[f"feed_{size}"][policy][device]
                table.add_row(policy, str(size), device, f"{r['per-image']:.0f}", f"{r['batched']:.0f}", f"{r['batched'] / r['per-image']:.2f}")
    console.print(table)
