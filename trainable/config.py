"""The configuration of one fine-tuning run: every knob, with defaults that reproduce the d2l book.

The book ("Fine-Tuning", PyTorch edition) trains with SGD at lr 5e-5, weight decay 1e-3, head lr x10,
batch 128, but it *sums* the per-example losses of the batch (``l.sum().backward()``). With the usual mean
loss the same update needs lr 5e-5 * 128 = 6.4e-3, and since SGD adds ``weight_decay * w`` to the
gradient before scaling by lr, weight decay 1e-3 / 128 = 7.8e-6. These defaults are that update.

The loop divides the batch's summed loss by the *configured* batch size (not by the images in the batch),
so the short last batch of an epoch (1,800 = 14 x 128 + 8 images) moves the weights in proportion to its
size, as the book's summed loss does; for full batches this is the usual mean.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

# The TrainConfig fields a study may search (study.space), in the order the study's tables show them.
HYPERPARAMETERS = ("lr", "head_lr_mult", "weight_decay", "momentum", "freeze_depth", "augment", "batch_size")
AUGMENT_POLICIES = ("none", "flip", "d2l", "trivialaugment", "randaugment", "autoaugment")
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")  # ResNet18's stages: freeze depth k freezes the first k of them
FREEZE_DEPTHS = range(len(STAGES) + 1)  # 0 (everything trains) to 5 (only the new head trains)
AUGMENT_PATHS = ("auto", "per-image", "batched")
NAMED_WEIGHTS = ("imagenet", "none")  # --weights takes one of these names, or the path of a state-dict file
BOOK_BATCH = 128


@dataclass
class TrainConfig:
    # --- data -------------------------------------------------------------------------------------
    data_dir: str | None = None  # train/<class>/*, test/<class>/*; None: the book's hotdog.zip (downloaded once)
    image_size: int = 224  # training crop; evaluation is Resize(size*256/224) + CenterCrop(size)
    val_fraction: float = 0.1  # stratified share of train held out for validation; test never chooses anything
    split_seed: int = 0  # which images form the validation split; one value for a whole study (same images for every trial)
    val_fold: int = 0  # another disjoint validation split of the same size (0: the usual one), or with cv_folds the validating part
    cv_folds: int = 0  # 0: hold out val_fraction; F >= 2: stratified F-fold cross-validation (the confirmation stage's folds)
    val_last_only: bool = False  # validate after the last epoch only: a run scored by its end need not pay for the others
    # --- model ------------------------------------------------------------------------------------
    weights: str = "imagenet"  # "imagenet" (torchvision IMAGENET1K_V1), "none" (from scratch) or a state-dict path
    freeze_depth: int = 0  # leading STAGES frozen (stem, layer1, layer2, layer3, layer4; 5: only the head trains)
    # --- optimisation: the book's update in the mean-loss convention (see module docstring) ---------
    lr: float = 5e-5 * BOOK_BATCH  # backbone lr = 6.4e-3
    head_lr_mult: float = 10.0  # the new head's lr = lr * head_lr_mult
    weight_decay: float = 1e-3 / BOOK_BATCH  # = 7.8e-6, on every trainable parameter (as the book does)
    momentum: float = 0.0  # the book uses plain SGD
    batch_size: int = BOOK_BATCH
    epochs: int = 5
    augment: str = "d2l"  # one of AUGMENT_POLICIES; d2l = RandomResizedCrop + horizontal flip
    augment_path: str = "auto"  # per-image (torchvision, CPU), batched (whole batches on the device) or auto (per device)
    seed: int = 0  # model head init, batch order and augmentation
    # --- runtime ----------------------------------------------------------------------------------
    device: str = "auto"  # auto (cuda if present), cpu, cuda, cuda:N
    precision: str = "auto"  # auto (bf16 autocast where the hardware has native bf16), fp32, bf16
    threads: int = 0  # torch threads; 0 = the CPUs this process may use. Results depend on it (float sums)

    def validate(self) -> "TrainConfig":
        """Raise UserError naming the first option that makes no sense."""
        checks = [
            (self.image_size >= 32, f"--image-size {self.image_size} is too small: use 32 or more"),
            (0 <= self.val_fraction < 1, f"--val-fraction {self.val_fraction} must be in [0, 1)"),
            (self.val_fold >= 0, f"--val-fold {self.val_fold} must be 0 or more"),
            (self.cv_folds == 0 or self.cv_folds >= 2, f"--cv-folds {self.cv_folds} must be 0 (a held-out split) or 2 or more"),
            (not self.cv_folds or self.val_fold < self.cv_folds,
             f"--val-fold {self.val_fold} does not exist in {self.cv_folds}-fold cross-validation: use 0 to {self.cv_folds - 1}"),
            (self.freeze_depth in FREEZE_DEPTHS, f"--freeze-depth {self.freeze_depth} must be {FREEZE_DEPTHS[0]}-{FREEZE_DEPTHS[-1]}"),
            (self.lr > 0, f"--lr {self.lr} must be positive"),
            (self.head_lr_mult > 0, f"--head-lr-mult {self.head_lr_mult} must be positive"),
            (self.weight_decay >= 0, f"--weight-decay {self.weight_decay} must be 0 or more"),
            (0 <= self.momentum < 1, f"--momentum {self.momentum} must be in [0, 1)"),
            (self.batch_size >= 2, f"--batch-size {self.batch_size} must be 2 or more"),
            (self.epochs >= 1, f"--epochs {self.epochs} must be 1 or more"),
            (self.augment in AUGMENT_POLICIES, f"--augment {self.augment!r} is unknown: use one of {', '.join(AUGMENT_POLICIES)}"),
            (self.augment_path in AUGMENT_PATHS, f"--augment-path {self.augment_path!r} is unknown: use one of {', '.join(AUGMENT_PATHS)}"),
            (self.precision in ("auto", "fp32", "bf16"), f"--precision {self.precision!r}: use auto, fp32 or bf16"),
            (self.threads >= 0, f"--threads {self.threads} must be 0 (auto) or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown config keys {unknown}: valid keys are {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read config file {path}: {exc}") from None
        if not isinstance(values, dict):
            raise UserError(f"config file {path} must hold a JSON object of TrainConfig fields")
        for f in dataclasses.fields(cls):
            if f.name in values and not _fits(values[f.name], f.default):
                raise UserError(f"config file {path}: {f.name} is {json.dumps(values[f.name])} but must be {_KINDS[_kind(f.default)]}")
        return cls.from_dict(values)


def weights_file(weights: str | None) -> Path | None:
    """The state-dict file ``weights`` names, or None for a named one (``NAMED_WEIGHTS``) or none at all."""
    return None if weights is None or weights in NAMED_WEIGHTS else Path(weights).expanduser()


_KINDS = {"str": "a string", "str|None": "a string or null", "bool": "true or false", "int": "a whole number", "float": "a number"}


def _kind(default) -> str:
    if isinstance(default, bool):
        return "bool"
    return "str|None" if default is None else "str" if isinstance(default, str) else "int" if isinstance(default, int) else "float"


def _fits(value, default) -> bool:
    """Whether a JSON value has the type of a field whose default is ``default``."""
    kind = _kind(default)
    if kind.startswith("str"):
        return isinstance(value, str) or (value is None and kind == "str|None")
    if isinstance(value, bool) or kind == "bool":
        return isinstance(value, bool) and kind == "bool"
    return isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
