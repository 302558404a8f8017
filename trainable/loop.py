"""The training loop: one configuration, epoch by epoch. It knows nothing of Ray; callers pass a callback.

One epoch reads top to bottom: shuffle (seeded per epoch), augment each batch, one SGD step on the loss
summed over the batch and divided by the configured batch size (the book's update, short last batch
included: see ``config``), then evaluate. Randomness is the run's own: every draw happens inside
``torch.random.fork_rng``, seeded from ``cfg.seed`` and the epoch, so the caller's generators are left as
they were and a resumed run draws exactly what an uninterrupted one would.

On a GPU the decoded uint8 images move to the device once, batches are augmented there as whole batches
(``batch_augment``), and loss, accuracy and the divergence flag accumulate on the device: the host waits
for the GPU a few times per epoch, not at every step. cuDNN tunes its kernels for each new input shape, so
on a GPU every shape but two stays out of its tuning: the one short batch of an epoch runs with cuDNN's
heuristics, and evaluation pads its last batch to the same size as the others (in eval mode a padded row
changes no other row's output). A worker that trains many runs passes a ``WorkerCache`` (``trainable.worker_cache``):
the model, its starting weights and the images on the device are then made once per process.

Where a run's time goes is recorded as it goes: ``RunPhases`` (before the first epoch) and each epoch's
``train_s`` and ``val_s``.
"""

from __future__ import annotations

import json
import math
import time
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
from .model import build_model, freeze, param_groups, read_weights, set_train_mode
from .worker_cache import DEVICE_DATA_SHARE, WorkerCache, as_tensor, placement

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
    train_s: float = math.nan  # of seconds: the training steps (augmentation included)
    val_s: float = math.nan  # of seconds: the evaluation on the validation split

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunPhases:
    """Where a run's time went before and at its first step, in seconds (filled in by ``train`` as it goes)."""

    build_s: float = 0.0  # the model made (or reset to its starting state), frozen, on its device; the optimiser
    weights_s: float = 0.0  # of build_s: reading the weights file (0 where the process had read it)
    to_device_s: float = 0.0  # the images copied to the device (0 on the CPU: a view; 0 where the process holds them)
    first_step_s: float = 0.0  # the run's first training step alone (lazy initialisation, cuDNN's tuning; part of train_s)
    warm_runs: int = 0  # runs the process trained with the same WorkerCache before this one (0: a cold process or none)
    data_mode: str = ""  # where the decoded images were read from, and why (``trainable.worker_cache.placement``)

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
    def state(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[EpochMetrics]) -> dict:
        """What a checkpoint holds: the live tensors, no copy."""
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "history": [m.as_dict() for m in history]}

    @staticmethod
    def write(directory: str | Path, state: dict) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CHECKPOINT_FILE
        write_atomic(path, lambda tmp: torch.save(state, tmp))  # never a half-written checkpoint
        meta = json.dumps({"epoch": state["epoch"], "bytes": path.stat().st_size})
        write_atomic(directory / META_FILE, lambda tmp: tmp.write_text(meta))  # written last: a checkpoint with its meta is complete
        return path

    @staticmethod
    def save(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[EpochMetrics]) -> Path:
        return Checkpoint.write(directory, Checkpoint.state(model, optimizer, epoch, history))

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


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on a single image
        batches.pop()
    return batches


class SaveCheckpoint:
    """What ``on_epoch`` gets to checkpoint the run as the epoch left it: ``save(directory)`` writes it now;
    ``save.snapshot()`` copies it to the host, for a writer that lets the run train on meanwhile
    (``Checkpoint.write(directory, snapshot)``)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[EpochMetrics]):
        self.model, self.optimizer, self.epoch, self.history = model, optimizer, epoch, list(history)

    def __call__(self, directory: str | Path) -> Path:
        return Checkpoint.save(directory, self.model, self.optimizer, self.epoch, self.history)

    def snapshot(self) -> dict:
        return _host_copy(Checkpoint.state(self.model, self.optimizer, self.epoch, self.history))


def _host_copy(value):
    """``value`` with every tensor in it copied to the host (nested dicts and lists followed)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_host_copy(v) for v in value)
    return value


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


@dataclass
class OnDevice:
    """A split where the loop reads it: the decoded set's images and labels as tensors, and the split's rows of them."""

    images: torch.Tensor  # uint8 N x 3 x S x S
    labels: torch.Tensor  # int64 N
    rows: torch.Tensor | None  # the split's rows (on the images' device); None: all of them
    mode: str = ""  # where the images are read from, and why

    def __len__(self) -> int:
        return len(self.labels) if self.rows is None else len(self.rows)

    def take(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and labels at ``positions`` of the split (a batch)."""
        index = positions if self.rows is None else self.rows[positions]
        return self.images[index], self.labels[index]

    def feed(self, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each batch's images and labels, in order."""
        for positions in batches:
            yield self.take(positions.to(self.images.device, non_blocking=True))


@dataclass
class Streamed:
    """A split whose images stay in host memory (a decoded set too large for the device, or a memory-mapped one): each
    batch is gathered there, pinned, and copied to the device while the step before it runs."""

    images: torch.Tensor  # uint8 N x 3 x S x S, on the host
    labels: torch.Tensor
    rows: torch.Tensor | None
    device: torch.device
    mode: str = ""

    def __len__(self) -> int:
        return len(self.labels) if self.rows is None else len(self.rows)

    def _gather(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = positions.cpu() if self.rows is None else self.rows[positions.cpu()]
        images, labels = self.images[index], self.labels[index]
        if self.device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def feed(self, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each batch on the device, in order; the next one gathered and pinned on a thread while this one trains."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as ahead:
            pending = ahead.submit(self._gather, batches[0]) if batches else None
            for i in range(len(batches)):
                images, labels = pending.result()
                if i + 1 < len(batches):
                    pending = ahead.submit(self._gather, batches[i + 1])
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def to_device(split: Split, device: torch.device, cache: WorkerCache | None = None) -> OnDevice | Streamed:
    """A split where the loop reads it. Where its decoded set fits the device (``placement``): its images and labels on
    ``device`` (a zero-copy view on the CPU, one copy on a GPU: once per process with ``cache``), with its rows where it
    is a view of a larger set. Else its batches stream from host memory."""
    fits, mode = placement(split.base_images.nbytes, device, cache.device_share if cache is not None else DEVICE_DATA_SHARE)
    rows = None if split.rows is None else torch.from_numpy(np.asarray(split.rows, dtype=np.int64))
    if not fits:
        return Streamed(as_tensor(split.base_images), as_tensor(split.base_labels), rows, device, mode)
    if cache is not None:
        images, labels = cache.on_device(split.base_images, split.base_labels, device)
    else:
        images, labels = as_tensor(split.base_images), as_tensor(split.base_labels)
        if device.type != "cpu":
            images, labels = images.to(device), labels.to(device)
    return OnDevice(images, labels, None if rows is None else rows.to(images.device), mode)


def eval_batch_size(cfg: TrainConfig) -> int:
    """Evaluation's batch size: the training one, at least 256 (eval mode takes a batch of 1 too)."""
    return max(cfg.batch_size, 256)


def eval_logits(model: nn.Module, split: Split | OnDevice | Streamed, cfg: TrainConfig, device: torch.device,
                bf16: bool, channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float logits, labels) batch by batch of a split (a ``Split`` or what ``to_device`` made of one),
    centre-cropped, the model in eval mode, without autograd. On a GPU a short batch is padded to the full size
    (its padding's logits dropped): one input shape for every split and fold, so cuDNN tunes once."""
    model.eval()
    data = to_device(split, device) if isinstance(split, Split) else split
    size = eval_batch_size(cfg)
    batches, counts = [], []
    for positions in torch.arange(len(data), device=data.images.device).split(size):  # where the split's rows are read
        counts.append(len(positions))
        if device.type == "cuda" and len(positions) < size:
            positions = torch.cat([positions, positions[-1:].expand(size - len(positions))])
        batches.append(positions)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for n, (images, labels) in zip(counts, data.feed(batches)):
            x = normalize(center_crop(images, cfg.image_size), device, channels_last)
            yield model(x)[:n].float(), labels[:n].to(device)


def evaluate(model: nn.Module, split: Split | OnDevice | Streamed, cfg: TrainConfig, device: torch.device,
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


def data_for(cfg: TrainConfig, with_test: bool = False, log: Callable[[str], None] | None = None, cache: bool = True) -> PreparedData:
    """The data ``cfg`` trains on: its folder at its image size, its validation split or CV fold (and the test split);
    decoded once and kept (``trainable.decoded``) unless ``cache`` is False."""
    return prepare_data(cfg.data_dir, cfg.image_size, cfg.val_fraction, cfg.split_seed, with_test=with_test, log=log,
                        val_fold=cfg.val_fold, cv_folds=cfg.cv_folds, cache=cache)


def train(
    cfg: TrainConfig,
    data: PreparedData | None = None,
    on_epoch: Callable[[EpochMetrics, SaveCheckpoint], None] | None = None,
    resume_from: str | Path | dict | None = None,
    log: Callable[[str], None] | None = None,
    cache: WorkerCache | None = None,
    phases: RunPhases | None = None,
) -> RunResult:
    """Fine-tune ResNet18 with ``cfg``; call ``on_epoch(metrics, save_checkpoint)`` after every epoch.

    ``save_checkpoint(directory)`` writes the state a run needs to continue; ``resume_from`` (a directory it
    wrote, or the state ``Checkpoint.load`` read from one) continues with the next epoch. ``cache``: what the
    process keeps between runs (``trainable.worker_cache``); ``phases``: filled in with where the time went before
    the first epoch, by the first ``on_epoch``.
    """
    cfg.validate()
    if data is None:
        data = data_for(cfg, log=log)
    device = resolve_device(cfg.device)
    with own_rng(device), thread_count(cfg.threads or available_cpus()):
        return _train(cfg, data, device, on_epoch, resume_from, cache, phases if phases is not None else RunPhases())


def _train(cfg: TrainConfig, data: PreparedData, device: torch.device, on_epoch, resume_from, cache: WorkerCache | None,
           phases: RunPhases) -> RunResult:
    bf16 = use_bf16(cfg.precision, device)
    channels_last = True  # pays on CPU (1.2x here) and GPU alike
    cuda = device.type == "cuda"
    if cuda:
        # cuDNN's heuristics, not its benchmark mode: measured on one H200 (docs/speed.md), tuning cost each worker
        # process's first step 8.2 s against 0.8 s, and no later epoch ran faster for it
        torch.backends.cudnn.benchmark = False

    t0 = time.perf_counter()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if cache is not None:
        phases.warm_runs = cache.runs
        cache.runs += 1
        model, phases.weights_s = cache.model(cfg.weights, len(data.classes), cfg.seed, device, memory_format)
    else:
        read = read_weights(cfg.weights)
        phases.weights_s = time.perf_counter() - t0
        model = build_model(cfg.weights, len(data.classes), seed=cfg.seed, read=read).to(device, memory_format=memory_format)
    freeze(model, cfg.freeze_depth)
    optimizer = torch.optim.SGD(param_groups(model, cfg.lr, cfg.head_lr_mult, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)

    history: list[EpochMetrics] = []
    start = 1
    if resume_from is not None:
        state = resume_from if isinstance(resume_from, dict) else Checkpoint.load(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = [EpochMetrics(**m) for m in state["history"]]
        start = int(state["epoch"]) + 1
    phases.build_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    path = resolve_augment_path(cfg.augment_path, device)
    train_data = to_device(data.train, device if path == "batched" else torch.device("cpu"), cache)
    val_data = to_device(data.val, device, cache) if data.val is not None and len(data.val) else None
    if cuda:
        torch.cuda.synchronize(device)
    phases.to_device_s = time.perf_counter() - t0
    phases.data_mode = train_data.mode
    transform = train_transform(cfg.augment, cfg.image_size) if path == "per-image" else None
    if path == "batched":
        from .batch_augment import batch_augment

    status = "completed"
    first_step = True
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(cfg.seed, epoch))  # the per-image path draws from the (forked) global generator
        order = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        crops = torch.Generator(device=device).manual_seed(epoch_seed(cfg.seed, epoch)) if path == "batched" else None
        set_train_mode(model, cfg.freeze_depth)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        bad = torch.zeros((), device=device, dtype=torch.bool)
        seen, diverged = 0, False
        batches = _batches(len(train_data), cfg.batch_size, order)
        for step, (images, y) in enumerate(train_data.feed(batches), start=1):
            step_t0 = time.perf_counter() if first_step else 0.0
            if path == "batched":
                batch = batch_augment(images, cfg.augment, cfg.image_size, crops)
            else:
                batch = augment_batch(images, transform)
            x = normalize(batch, device, channels_last)
            y = y.to(device, non_blocking=True)
            logits, summed = forward(model, x, y, bf16)
            bad |= ~torch.isfinite(summed)
            # On a CPU reading the flag costs nothing: stop before a bad step touches the weights. On a GPU
            # read it every few steps (a bad step then leaves NaN weights, and the run ends all the same).
            if (device.type == "cpu" or step % SYNC_EVERY == 0) and bad.item():
                diverged = True
                break
            descend(optimizer, summed, cfg.batch_size)
            loss_sum += summed.detach()
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if first_step:
                if cuda:
                    torch.cuda.synchronize(device)  # once per run: the first step's own time, not the queue's
                phases.first_step_s = time.perf_counter() - step_t0
                first_step = False
        diverged = diverged or bool(bad.item())
        train_seconds = time.perf_counter() - t0
        # The last step may have blown the weights up though its own loss was finite: no later epoch recovers.
        diverged = diverged or not all(torch.isfinite(p).all() for p in model.parameters())
        val_t0 = time.perf_counter()
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
            train_s=train_seconds,
            val_s=time.perf_counter() - val_t0,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, SaveCheckpoint(model, optimizer, epoch, history))
        if diverged:
            status = "diverged"
            break
    return RunResult(status, history, model)


def forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A training step's forward pass (bf16 autocast where asked) and the batch's loss *summed* (float32)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    return logits, nn.functional.cross_entropy(logits.float(), y, reduction="sum")


def descend(optimizer: torch.optim.Optimizer, summed: torch.Tensor, batch_size: int) -> None:
    """The book's update: the summed loss divided by the *configured* batch size (a short batch moves the weights in
    proportion to its size), backward, one SGD step."""
    optimizer.zero_grad(set_to_none=True)
    (summed / batch_size).backward()
    optimizer.step()


