"""Augmentation policies by name (torchvision.transforms.v2 on uint8 tensors) and batch normalisation.

Each policy maps one stored ``3 x S x S`` uint8 image to a ``3 x size x size`` uint8 crop; the batch is
then converted to float and normalised with ImageNet's mean/std in one vectorised step.
"""

from __future__ import annotations

from . import tv_compat  # noqa: F401  (must precede torchvision)

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torchvision.transforms import v2

from .config import AUGMENT_POLICIES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(policy: str, size: int) -> v2.Transform:
    if policy not in AUGMENT_POLICIES:
        raise ValueError(f"unknown augmentation policy {policy!r}")
    crop_flip = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    steps = {
        "none": [v2.CenterCrop(size)],
        "flip": [v2.CenterCrop(size), v2.RandomHorizontalFlip()],
        "d2l": crop_flip,  # the book's recipe
        "trivialaugment": crop_flip + [v2.TrivialAugmentWide()],
        "randaugment": crop_flip + [v2.RandAugment()],
        "autoaugment": crop_flip + [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)],
    }[policy]
    return v2.Compose(steps)


def eval_transform(size: int) -> v2.Transform:
    """Stored images are already Resize(size*256/224): a centre crop completes the book's test transform."""
    return v2.CenterCrop(size)


def center_crop(batch: torch.Tensor, size: int) -> torch.Tensor:
    """The evaluation crop of a whole batch on any device (a view: torchvision's CenterCrop slices tensors)."""
    return v2.functional.center_crop(batch, [size, size])


@contextmanager
def one_thread() -> Iterator[None]:
    """torch ops on one intra-op thread inside, the caller's thread count restored after.

    The per-image transforms are many small ops: splitting each over threads gains nothing, and where
    another process holds a core the threads wait on each other; measured with 2 CPUs, a batch's
    augmentation took 30x longer on 2 threads than on 1 while the machine was busy.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def augment_batch(images: torch.Tensor, transform: v2.Transform) -> torch.Tensor:
    """Apply ``transform`` to each image separately (each gets its own random crop): uint8 in, uint8 out."""
    with one_thread():
        return torch.stack([transform(image) for image in images])


_STATS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std on ``device``, made once (not a host-to-device copy per batch)."""
    if device not in _STATS:
        _STATS[device] = (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
                          torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))
    return _STATS[device]


def normalize(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 ``B x 3 x H x W`` to normalised float32 on ``device``."""
    device = torch.device(device)
    batch = batch.to(device, non_blocking=True).float().div_(255)
    mean, std = _stats(device if device.index is not None or device.type == "cpu" else batch.device)
    batch = batch.sub_(mean).div_(std)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch
