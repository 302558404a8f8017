"""A trained model as one file that needs nothing of this project: ONNX or TorchScript, preprocessing inside.

The exported module takes what ``trainable.data.decode_image`` gives (a uint8 RGB batch, N x 3 x S x S at the stored
size, any N) and returns each class's probability (N x classes, float32): the centre crop, the scaling to 0-1 and
ImageNet's normalisation happen inside, as evaluation does them, in float32. Several models (a rerun's seeds) become
one that averages their probabilities.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .augment import IMAGENET_MEAN, IMAGENET_STD

FORMATS = ("onnx", "torchscript")


class Shipped(nn.Module):
    """uint8 N x 3 x S x S in, class probabilities out: the crop, normalisation and the models' mean inside."""

    def __init__(self, models: list[nn.Module], image_size: int, stored_size: int):
        super().__init__()
        self.models = nn.ModuleList(m.eval() for m in models)
        self.top = int(round((stored_size - image_size) / 2.0))  # torchvision's center_crop offset
        self.size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images[:, :, self.top:self.top + self.size, self.top:self.top + self.size].float()
        x = (x - self.mean) / self.std
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.models]).mean(0)
        return probs


def export(module: Shipped, stored_size: int, fmt: str, out: Path) -> Path:
    """Write ``module`` as ``fmt`` (onnx: a dynamic batch axis, opset of torch's exporter; torchscript: traced) to
    ``out``, through a temporary beside it: an export that fails leaves nothing half-written."""
    import warnings

    from .files import write_atomic

    example = torch.zeros(2, 3, stored_size, stored_size, dtype=torch.uint8)
    module = module.eval()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' notes on their own versions: nothing a user can act on
        if fmt == "torchscript":
            traced = torch.jit.trace(module, example)
            write_atomic(out, lambda tmp: traced.save(str(tmp)))
        elif fmt == "onnx":
            batch = torch.export.Dim("batch")
            write_atomic(out, lambda tmp: torch.onnx.export(
                module, (example,), str(tmp), dynamo=True, input_names=["images"], output_names=["probabilities"],
                dynamic_shapes={"images": {0: batch}}, external_data=False, verbose=False, optimize=True))
        else:
            raise ValueError(f"unknown format {fmt!r}: one of {FORMATS}")
    return out
