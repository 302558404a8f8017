"""Fine-tune an ImageNet-pretrained ResNet18 on a folder of images (the d2l hotdog set by default).

The config and errors import at once; the parts that need torch (data, loop) load on first use, so a
command line with a wrong option answers in a fraction of a second instead of after importing torch.
Every module that imports torchvision imports ``tv_compat`` first.
"""

from __future__ import annotations

import importlib

from .config import AUGMENT_POLICIES, TrainConfig
from .errors import UserError

_LAZY = {
    "PreparedData": "data", "prepare_data": "data",
    "Checkpoint": "loop", "EpochMetrics": "loop", "RunResult": "loop", "evaluate": "loop", "train": "loop",
}

__all__ = ["AUGMENT_POLICIES", "TrainConfig", "UserError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
