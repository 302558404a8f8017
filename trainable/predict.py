"""A trained model on photos: each decoded as evaluation decodes it, its class probabilities out.

The preprocessing is evaluation's, exactly: ``trainable.data.decode_image`` at the stored size (EXIF orientation,
any mode to 8-bit RGB, PIL's bilinear resize to a square of ``stored_size(image_size)``), then the centre crop and
ImageNet normalisation of ``trainable.loop.eval_logits``, in batches of the evaluation's size and with its precision:
on a test split the predictions are the evaluation's, image for image. Nothing here knows of a study.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from .config import TrainConfig
from .data import Split
from .images import available_cpus, decode_each, is_image, visible_files
from .loop import eval_logits, resolve_device, use_bf16


@dataclass
class Decoded:
    """Photos decoded for a model: ``images`` (N x 3 x S x S uint8) for ``paths``, and the files that could not be
    (path, why)."""

    images: np.ndarray
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def decode_files(paths: list[Path], stored_size: int, progress: Callable[[int], None] | None = None) -> Decoded:
    """Each file decoded as evaluation decodes it (threads: PIL releases the GIL); a file that cannot be is listed with
    its reason, never raised. ``progress(n)``: called as each file is done."""
    images = np.empty((len(paths), 3, stored_size, stored_size), dtype=np.uint8)
    kept: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for decoded, path in zip(decode_each(paths, stored_size, max(1, min(8, available_cpus()))), paths):
        if isinstance(decoded, Exception):
            skipped.append((path, f"{type(decoded).__name__}: {str(decoded).splitlines()[0][:200] if str(decoded) else 'cannot be decoded'}"))
        else:
            images[len(kept)] = decoded
            kept.append(path)
        if progress is not None:
            progress(1)
    return Decoded(images[:len(kept)], kept, skipped)


def find_images(path: Path) -> list[Path]:
    """A photo, or every image file under a folder (searched recursively, hidden files and folders left out), sorted."""
    if path.is_file():
        return [path]
    return [Path(entry.path) for entry in visible_files(path) if is_image(entry.name)]


def log_probabilities(model: torch.nn.Module, images: np.ndarray, cfg: TrainConfig, device: str | torch.device | None = None,
                      precision: str | None = None) -> np.ndarray:
    """One model's log class probabilities on ``images`` (N x 3 x S x S uint8, decoded as above), float64 N x classes:
    evaluation's logits (``cfg``'s device and precision unless given) through a float64 log-softmax."""
    device = resolve_device(str(device or cfg.device))
    bf16 = use_bf16(precision or cfg.precision, device)
    split = Split(images, np.zeros(len(images), dtype=np.int64))
    model.to(device, memory_format=torch.channels_last)
    parts = [torch.log_softmax(logits.double(), dim=1).cpu() for logits, _ in eval_logits(model, split, cfg, device, bf16, True)]
    return torch.cat(parts).numpy() if parts else np.empty((0, 0))


def probabilities(models: Iterable[torch.nn.Module], images: np.ndarray, cfg: TrainConfig, device: str | torch.device | None = None,
                  precision: str | None = None) -> np.ndarray:
    """Each model's class probabilities on ``images``, averaged over the models (one model: its own); float64,
    N x classes."""
    found = [np.exp(log_probabilities(model, images, cfg, device, precision)) for model in models]
    return np.mean(found, axis=0) if found else np.empty((len(images), 0))


def log_loss(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """The mean cross-entropy of the true classes (what evaluation reports as a loss)."""
    return float(-log_probs[np.arange(len(labels)), labels].mean()) if len(labels) else math.nan


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean()) if len(labels) else math.nan


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``counts[true, predicted]``."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def balanced_accuracy(counts: np.ndarray) -> float:
    """The mean over classes of each class's accuracy (classes with no image left out)."""
    per_class = [counts[c, c] / counts[c].sum() for c in range(len(counts)) if counts[c].sum()]
    return float(np.mean(per_class)) if per_class else math.nan
