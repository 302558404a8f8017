"""Fine-tune an ImageNet-pretrained ResNet18 on a folder of images (the d2l hotdog set by default)."""

from . import tv_compat  # noqa: F401  (first: makes torchvision importable on CPU-only torch)
from .config import AUGMENT_POLICIES, TrainConfig
from .data import PreparedData, prepare_data
from .errors import UserError
from .loop import Checkpoint, EpochMetrics, RunResult, evaluate, train

__all__ = [
    "AUGMENT_POLICIES", "Checkpoint", "EpochMetrics", "PreparedData", "RunResult", "TrainConfig",
    "UserError", "evaluate", "prepare_data", "train",
]
