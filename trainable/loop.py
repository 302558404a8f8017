"""The training loop: one configuration, epoch by epoch. It knows nothing of Ray; callers pass a callback."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .augment import augment_batch, eval_transform, normalize, train_transform
from .config import TrainConfig
from .data import PreparedData, Split, prepare_data
from .errors import UserError
from .model import build_model, freeze, param_groups, set_train_mode

CHECKPOINT_FILE = "state.pt"


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float  # NaN when there is no validation split
    val_acc: float
    seconds: float  # the whole epoch, evaluation included
    images_per_s: float  # training images per second of training (augmentation included)
    diverged: bool = False  # the loss became NaN/inf: the run stopped in this epoch

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunResult:
    status: str  # "completed" or "diverged"
    history: list[EpochMetrics]
    model: nn.Module

    @property
    def best(self) -> EpochMetrics | None:
        valid = [m for m in self.history if not m.diverged and not math.isnan(m.val_acc)]
        return max(valid, key=lambda m: m.val_acc) if valid else None


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for a GPU but torch sees none: use --device cpu or auto")
    return device


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast where it pays: GPUs with bf16, CPUs with native bf16 (AVX512-BF16/AMX).

    On a CPU without it, bf16 is emulated and measured here 10x slower than fp32.
    """
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Checkpoint:
    """Save/restore model, optimiser and epoch; loaded with ``weights_only=True``."""

    @staticmethod
    def save(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[EpochMetrics]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CHECKPOINT_FILE
        tmp = path.with_suffix(".tmp")
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "history": [m.as_dict() for m in history],
        }
        torch.save(state, tmp)
        os.replace(tmp, path)  # never a half-written checkpoint
        return path

    @staticmethod
    def load(directory: str | Path) -> dict:
        return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)

    @staticmethod
    def exists(directory: str | Path | None) -> bool:
        return directory is not None and (Path(directory) / CHECKPOINT_FILE).is_file()


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy view of a (possibly read-only, e.g. Ray object store) array; it is never written to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable"
        return torch.from_numpy(np.ascontiguousarray(array))


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on a single image
        batches.pop()
    return batches


def evaluate(model: nn.Module, split: Split, cfg: TrainConfig, device: torch.device, bf16: bool, channels_last: bool) -> tuple[float, float]:
    """Mean loss and accuracy on a split, with the evaluation transform."""
    model.eval()
    images, labels = as_tensor(split.images), as_tensor(split.labels)
    crop = eval_transform(cfg.image_size)
    total_loss, correct = 0.0, 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for index in torch.arange(len(labels)).split(max(cfg.batch_size, 256)):  # every image: eval mode takes a batch of 1
            x = normalize(crop(images[index]), device, channels_last)
            y = labels[index].to(device)
            logits = model(x).float()
            total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    n = max(len(labels), 1)
    return total_loss / n, correct / n


def train(
    cfg: TrainConfig,
    data: PreparedData | None = None,
    on_epoch: Callable[[EpochMetrics, Callable[[str | Path], Path]], None] | None = None,
    resume_from: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Fine-tune ResNet18 with ``cfg``; call ``on_epoch(metrics, save_checkpoint)`` after every epoch.

    ``save_checkpoint(directory)`` writes the state a run needs to continue; ``resume_from`` (a
    directory it wrote) continues with the next epoch.
    """
    cfg.validate()
    torch.set_num_threads(cfg.threads or available_cpus())
    if data is None:
        data = prepare_data(cfg.data_dir, cfg.image_size, cfg.val_fraction, cfg.split_seed, log=log)
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    channels_last = True  # pays on CPU (1.2x here) and GPU alike

    model = build_model(cfg.weights, len(data.classes), seed=cfg.seed)
    freeze(model, cfg.freeze_depth)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(param_groups(model, cfg.lr, cfg.head_lr_mult, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)

    history: list[EpochMetrics] = []
    start = 1
    if resume_from is not None:
        state = Checkpoint.load(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = [EpochMetrics(**m) for m in state["history"]]
        start = int(state["epoch"]) + 1

    images, labels = as_tensor(data.train.images), as_tensor(data.train.labels)
    transform = train_transform(cfg.augment, cfg.image_size)
    status = "completed"
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        # Seeded per epoch, so a resumed run draws the same batches and crops as an uninterrupted one.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        set_train_mode(model, cfg.freeze_depth)
        loss_sum, correct, seen, diverged = 0.0, 0, 0, False
        for index in _batches(len(labels), cfg.batch_size, order):
            x = normalize(augment_batch(images[index], transform), device, channels_last)
            y = labels[index].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
                loss = nn.functional.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        train_seconds = time.perf_counter() - t0
        # The last step may have blown the weights up though its own loss was finite: no later epoch recovers.
        diverged = diverged or not all(torch.isfinite(p).all() for p in model.parameters())
        if diverged:
            val_loss, val_acc = math.nan, math.nan
        elif data.val is not None and len(data.val):
            val_loss, val_acc = evaluate(model, data.val, cfg, device, bf16, channels_last)
        else:
            val_loss, val_acc = math.nan, math.nan
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum / seen if seen else math.nan,
            train_acc=correct / seen if seen else math.nan,
            val_loss=val_loss,
            val_acc=val_acc,
            seconds=time.perf_counter() - t0,
            images_per_s=seen / train_seconds if train_seconds > 0 else 0.0,
            diverged=diverged,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, lambda directory, _e=epoch: Checkpoint.save(directory, model, optimizer, _e, history))
        if diverged:
            status = "diverged"
            break
    return RunResult(status, history, model)
