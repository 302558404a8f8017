"""Make torchvision importable on a CPU-only torch.

PyPI's torchvision 0.28.0 wheel is built against CUDA torch. Beside the CPU torch wheel its compiled
extension (``torchvision/_C.so``) cannot load, and ``import torchvision`` then fails with
``operator torchvision::nms does not exist``, because torchvision registers Python fallbacks for
``nms``/``qnms`` that need the op schemas to exist. Declaring those two schemas ourselves is enough for
models and transforms; the compiled ops themselves (nms, roi_align, ``torchvision.io`` decoding) stay
unavailable, which is why images are decoded with PIL.

This module must be imported before torchvision in every process (Ray workers included): every module of
``trainable`` that uses torchvision imports it first; other code imports ``trainable.tv_compat`` itself. It does nothing when the extension loads (a CUDA build, or a matching CPU build).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_LIBRARY: torch.library.Library | None = None  # held so the registered schemas stay alive
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision installed: nothing to fix
    candidates = sorted(Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"))
    if not candidates:
        return False
    try:
        torch.ops.load_library(str(candidates[0]))
        return True
    except OSError:
        return False


def ensure_torchvision_importable() -> bool:
    """Register the missing schemas when needed; returns True if this call registered them."""
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules:
        return False  # done before, or torchvision already imported (registering now could not help)
    if _extension_loads():
        return False
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _LIBRARY.define(schema)
    return True


ensure_torchvision_importable()
