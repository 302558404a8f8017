"""The training loop: one configuration, epoch by epoch. It knows nothing of Ray; callers pass a callback.

One epoch reads top to bottom: shuffle (seeded per epoch), augment each batch, one SGD step on the loss
summed over the batch and divided by the configured batch size (the book's update, short last batch
included: see ``config``), then evaluate. Randomness is the run's own: every draw happens inside
``torch.random.fork_rng``, seeded from ``cfg.seed`` and the epoch, so the caller's generators are left as
they were and a resumed run draws exactly what an uninterrupted one would.

On a GPU the decoded uint8 images move to the device once, batches are augmented there as whole batches
(``batch_augment``), and loss, accuracy and the divergence flag accumulate on the device: the host waits
for the GPU a few times per epoch, not at every step.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .augment import augment_batch, center_crop, normalize, train_transform
from .config import TrainConfig
from .data import PreparedData, Split, available_cpus, prepare_data
from .errors import UserError
from .files import write_atomic
from .model import build_model, freeze, param_groups, set_train_mode

CHECKPOINT_FILE = "state.pt"
META_FILE = "meta.json"  # the checkpoint's epoch, readable without loading the model
SYNC_EVERY = 8  # on a GPU, steps between reads of the divergence flag (each read waits for the GPU)


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for a GPU but torch {torch.__version__} sees none: use --device cpu or auto")
    return device


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast where the hardware has it natively: GPUs with bf16 units, CPUs with AVX512-BF16/AMX.

    Emulated bf16 is slower than fp32 (10x slower on an AVX2 CPU without it, measured with python -m bench), so ``auto`` never picks it.
    """
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    # torch has no public query for native CPU bf16; this op is what torch's own tests ask
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_augment_path(path: str, device: torch.device) -> str:
    """``auto``: whole batches on the device on a GPU; torchvision image by image on a CPU. On a CPU either path
    feeds the step 15-60 times faster than it trains at 224 px (``python -m bench --feed``), and the
    per-image path, on one thread, holds up better where a study's trials share the cores (with a busy process
    on one of two cores, the batched path on two threads fell to 0.72-1.02 of per-image at 224 px)."""
    if path != "auto":
        return path
    return "batched" if device.type == "cuda" else "per-image"


class Checkpoint:
    """Save/restore model, optimiser and epoch; loaded with ``weights_only=True``."""

    @staticmethod
    def save(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[EpochMetrics]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CHECKPOINT_FILE
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "history": [m.as_dict() for m in history],
        }
        write_atomic(path, lambda tmp: torch.save(state, tmp))  # never a half-written checkpoint
        meta = json.dumps({"epoch": epoch, "bytes": path.stat().st_size})
        write_atomic(directory / META_FILE, lambda tmp: tmp.write_text(meta))  # written last: a checkpoint with its meta is complete
        return path

    @staticmethod
    def load(directory: str | Path) -> dict:
        return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)

    @staticmethod
    def exists(directory: str | Path | None) -> bool:
        return directory is not None and (Path(directory) / CHECKPOINT_FILE).is_file()

    @staticmethod
    def epoch(directory: str | Path | None) -> int | None:
        """The checkpoint's epoch from its small meta file (None: no complete checkpoint there)."""
        if directory is None:
            return None
        try:
            return int(json.loads((Path(directory) / META_FILE).read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


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


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's draws start from their own seed, so a resumed run repeats an uninterrupted one."""
    return seed * 100_003 + epoch


@contextmanager
def own_rng(device: torch.device):
    """The run's random draws never touch the caller's generators (CPU, and the run's CUDA device)."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def thread_count(threads: int):
    """``threads`` torch threads inside, the caller's count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def to_device(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's uint8 images and labels as tensors on ``device``: a zero-copy view on the CPU, one copy on a GPU."""
    images, labels = as_tensor(split.images), as_tensor(split.labels)
    if device.type != "cpu":
        images, labels = images.to(device), labels.to(device)
    return images, labels


def eval_logits(model: nn.Module, split: Split | tuple[torch.Tensor, torch.Tensor], cfg: TrainConfig, device: torch.device,
                bf16: bool, channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float logits, labels) batch by batch of a split (a ``Split`` or its tensors from ``to_device``),
    centre-cropped, the model in eval mode, without autograd."""
    model.eval()
    images, labels = to_device(split, device) if isinstance(split, Split) else split
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for index in torch.arange(len(labels), device=labels.device).split(max(cfg.batch_size, 256)):  # eval mode takes a batch of 1 too
            x = normalize(center_crop(images[index], cfg.image_size), device, channels_last)
            yield model(x).float(), labels[index].to(device)


def evaluate(model: nn.Module, split: Split | tuple[torch.Tensor, torch.Tensor], cfg: TrainConfig, device: torch.device,
             bf16: bool, channels_last: bool) -> tuple[float, float]:
    """Mean loss and accuracy on a split (``eval_logits``); sums stay on the device until the end."""
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    for logits, y in eval_logits(model, split, cfg, device, bf16, channels_last):
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    n = max(n, 1)
    return total_loss.item() / n, correct.item() / n


def data_for(cfg: TrainConfig, with_test: bool = False, log: Callable[[str], None] | None = None) -> PreparedData:
    """The data ``cfg`` trains on: its folder at its image size, its validation split or CV fold (and the test split)."""
    return prepare_data(cfg.data_dir, cfg.image_size, cfg.val_fraction, cfg.split_seed, with_test=with_test, log=log,
                        val_fold=cfg.val_fold, cv_folds=cfg.cv_folds)


def train(
    cfg: TrainConfig,
    data: PreparedData | None = None,
    on_epoch: Callable[[EpochMetrics, Callable[[str | Path], Path]], None] | None = None,
    resume_from: str | Path | dict | None = None,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Fine-tune ResNet18 with ``cfg``; call ``on_epoch(metrics, save_checkpoint)`` after every epoch.

    ``save_checkpoint(directory)`` writes the state a run needs to continue; ``resume_from`` (a directory it
    wrote, or the state ``Checkpoint.load`` read from one) continues with the next epoch.
    """
    cfg.validate()
    if data is None:
        data = data_for(cfg, log=log)
    device = resolve_device(cfg.device)
    with own_rng(device), thread_count(cfg.threads or available_cpus()):
        return _train(cfg, data, device, on_epoch, resume_from)


def _train(cfg: TrainConfig, data: PreparedData, device: torch.device, on_epoch, resume_from) -> RunResult:
    bf16 = use_bf16(cfg.precision, device)
    channels_last = True  # pays on CPU (1.2x here) and GPU alike
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once

    model = build_model(cfg.weights, len(data.classes), seed=cfg.seed)
    freeze(model, cfg.freeze_depth)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(param_groups(model, cfg.lr, cfg.head_lr_mult, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)

    history: list[EpochMetrics] = []
    start = 1
    if resume_from is not None:
        state = resume_from if isinstance(resume_from, dict) else Checkpoint.load(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = [EpochMetrics(**m) for m in state["history"]]
        start = int(state["epoch"]) + 1

    path = resolve_augment_path(cfg.augment_path, device)
    train_data = to_device(data.train, device if path == "batched" else torch.device("cpu"))
    val_data = to_device(data.val, device) if data.val is not None and len(data.val) else None
    transform = train_transform(cfg.augment, cfg.image_size) if path == "per-image" else None
    if path == "batched":
        from .batch_augment import batch_augment

    status = "completed"
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(cfg.seed, epoch))  # the per-image path draws from the (forked) global generator
        order = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        crops = torch.Generator(device=device).manual_seed(epoch_seed(cfg.seed, epoch)) if path == "batched" else None
        set_train_mode(model, cfg.freeze_depth)
        images, labels = train_data
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        bad = torch.zeros((), device=device, dtype=torch.bool)
        seen, diverged = 0, False
        for step, index in enumerate(_batches(len(labels), cfg.batch_size, order), start=1):
            if path == "batched":
                index = index.to(images.device, non_blocking=True)
                batch = batch_augment(images[index], cfg.augment, cfg.image_size, crops)
            else:
                batch = augment_batch(images[index], transform)
            x = normalize(batch, device, channels_last)
            y = labels[index].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            summed = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            bad |= ~torch.isfinite(summed)
            # On a CPU reading the flag costs nothing: stop before a bad step touches the weights. On a GPU
            # read it every few steps (a bad step then leaves NaN weights, and the run ends all the same).
            if (device.type == "cpu" or step % SYNC_EVERY == 0) and bad.item():
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            (summed / cfg.batch_size).backward()
            optimizer.step()
            loss_sum += summed.detach()
            correct += (logits.argmax(1) == y).sum()
            seen += len(index)
        diverged = diverged or bool(bad.item())
        train_seconds = time.perf_counter() - t0
        # The last step may have blown the weights up though its own loss was finite: no later epoch recovers.
        diverged = diverged or not all(torch.isfinite(p).all() for p in model.parameters())
        if diverged or val_data is None or (cfg.val_last_only and epoch < cfg.epochs):
            val_loss, val_acc = math.nan, math.nan
        else:
            val_loss, val_acc = evaluate(model, val_data, cfg, device, bf16, channels_last)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum.item() / seen if seen else math.nan,
            train_acc=correct.item() / seen if seen else math.nan,
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
