"""ResNet18 with a new head, its weights, freezing by stage and the optimiser's parameter groups."""

from __future__ import annotations

from . import tv_compat  # noqa: F401  (must precede torchvision)

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from .config import STAGES, weights_file  # noqa: F401  (freeze depth k freezes the first k of them: stage_modules lists them in order)
from .errors import UserError



def stage_modules(model: nn.Module) -> list[list[nn.Module]]:
    return [[model.conv1, model.bn1], [model.layer1], [model.layer2], [model.layer3], [model.layer4]]


def _imagenet_state_dict() -> Mapping[str, torch.Tensor]:
    try:  # torchvision's own download + hash check, cached under $TORCH_HOME/hub/checkpoints
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as exc:
        raise UserError(
            f"cannot get torchvision's ImageNet ResNet18 weights ({exc}): download "
            f"{ResNet18_Weights.IMAGENET1K_V1.url} elsewhere and pass --weights PATH/resnet18-f37072fd.pth, "
            "or train from scratch with --weights none"
        ) from None


def _load_error_reason(exc: BaseException) -> str:
    """The line of a torch.load error that says what is wrong, without torch's advice to retry with
    ``weights_only=False`` (which would run whatever code the file holds)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        detail = [line for line in lines[1:] if not line.startswith(("Please file an issue", "Check the documentation"))]
        reason = detail[0].removeprefix("WeightsUnpickler error:").strip() if detail else "unsupported content"
        if reason.startswith("Unsupported operand"):  # the pickle opcodes make no sense: not torch.save output at all
            return "not a file written by torch.save"
        return f"refused by the safe loader: {reason}"
    return lines[0] if lines else type(exc).__name__


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file, loaded with ``weights_only=True`` (no arbitrary code from pickles)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"--weights {path} is a folder, not a file: pass the path of a ResNet18 state dict file (e.g. resnet18-f37072fd.pth), "
                        "or imagenet, or none")
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: pass --weights imagenet, none, or the path of a ResNet18 state dict")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says what matters
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UserError(f"weights file {path} is not a PyTorch state dict ({_load_error_reason(exc)}): save one with torch.save(model.state_dict(), PATH)") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"weights file {path} does not hold a state dict (a mapping of names to tensors): save one with torch.save(model.state_dict(), PATH)")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def read_weights(weights: str) -> tuple[Mapping[str, torch.Tensor] | None, str | None]:
    """The state dict ``weights`` names ("imagenet", "none" or a path) and how to name it in a message."""
    if weights == "imagenet":
        return _imagenet_state_dict(), "ImageNet weights"
    if weights == "none":
        return None, None
    return load_state_dict_file(weights), f"weights file {weights}"


def weights_identity(weights: str) -> tuple:
    """What identifies the weights a run starts from: a file by its path, size and modification time (a file
    replaced under the same name is another)."""
    path = weights_file(weights)
    if path is None:
        return (weights,)
    try:
        stat = path.stat()
    except OSError:
        return (str(path),)  # read_weights says what is wrong with it
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def build_model(weights: str, num_classes: int, seed: int = 0, read: tuple | None = None) -> nn.Module:
    """torchvision resnet18 with ``weights`` ("imagenet", "none" or a path) and a new, seeded head.

    Every random draw (the from-scratch backbone, the head's weight and bias) comes from ``seed``, never
    from the caller's global generator, which is left untouched: the same seed gives the same model.
    ``read``: what ``read_weights(weights)`` returned, where the caller has read them already.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet18(weights=None)
    state, source = read if read is not None else read_weights(weights)
    own_head = False
    if state is not None:
        expected = model.state_dict()
        head_fits = (
            state.get("fc.weight") is not None and state["fc.weight"].shape == (num_classes, 512)
            and state.get("fc.bias") is not None and state["fc.bias"].shape == (num_classes,)
        )
        backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
        # BatchNorm's num_batches_tracked is absent from pre-PyTorch-0.4 files such as torchvision's ImageNet
        # ResNet18: it is only a counter, so a file without it still fits.
        missing = sorted(k for k in expected if not k.startswith("fc.") and k not in backbone and not k.endswith(".num_batches_tracked"))
        wrong = sorted(k for k, v in backbone.items() if k in expected and expected[k].shape != v.shape)
        unexpected = sorted(k for k in backbone if k not in expected)  # e.g. a deeper ResNet's extra blocks
        if missing or wrong or unexpected:
            detail = f"missing {missing[:3]}" if missing else f"wrong shapes for {wrong[:3]}" if wrong else f"unexpected {unexpected[:3]}"
            raise UserError(f"{source} does not fit ResNet18 ({detail}): pass the state dict of a torchvision resnet18")
        model.load_state_dict(backbone, strict=False)
        own_head = head_fits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(model.fc.in_features, num_classes)  # its bias keeps nn.Linear's init, drawn from seed
        nn.init.xavier_uniform_(head.weight)  # as the book initialises its new head
    if own_head:  # a fine-tuned file for the same classes keeps its head
        head.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
    model.fc = head
    return model


def freeze(model: nn.Module, depth: int) -> None:
    """Freeze the first ``depth`` stages: no gradients (so no backward compute there) and no weight decay."""
    for i, modules in enumerate(stage_modules(model)):
        for module in modules:
            module.requires_grad_(i >= depth)


def set_train_mode(model: nn.Module, depth: int) -> None:
    """``model.train()``, except that frozen stages stay in eval mode so BatchNorm statistics stay fixed."""
    model.train()
    for modules in stage_modules(model)[:depth]:
        for module in modules:
            module.eval()


def param_groups(model: nn.Module, lr: float, head_lr_mult: float, weight_decay: float) -> list[dict]:
    """Trainable backbone at ``lr``, head at ``lr * head_lr_mult``; frozen parameters are left out."""
    head = [p for p in model.fc.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"name": "backbone", "params": backbone, "lr": lr, "weight_decay": weight_decay}] if backbone else []
    groups.append({"name": "head", "params": head, "lr": lr * head_lr_mult, "weight_decay": weight_decay})
    return groups
