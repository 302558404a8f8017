"""A worker process's cache, kept from one run to the next: the model, its starting weights and the data on its device.

A study trains many short configurations in a few long-lived worker processes (Ray Tune reuses them). Built
anew for each run, every run would pay again for reading the weights file, constructing and initialising
ResNet18 and copying its images to the device, before a first step that may take a fraction of a second.
A ``WorkerCache`` keeps them for the process: pass the same one to every ``train`` call the process makes.

Nothing it keeps changes a run's numbers: the model is reset to exactly the state a new one would start from
(the same tensors, loaded into the same instance), and the data are the same decoded pixels. The model a run
returns is the worker's instance: the next run resets it, so a caller that keeps a trained model passes no
``WorkerCache`` (``study.rerun``, ``python -m trainable``).
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from .model import build_model, read_weights, weights_identity

KEEP_STARTS = 4  # starting states kept (weights x classes x seed: a study uses one to a few), ~45 MB each on the host
KEEP_SETS = 2  # decoded image sets kept on a device (a study's worker uses one)
DEVICE_DATA_SHARE = 0.5  # decoded images stay on a GPU only where they take at most this share of what the process may use there


def placement(nbytes: int, device: torch.device, share: float = DEVICE_DATA_SHARE) -> tuple[bool, str]:
    """Whether a decoded set of ``nbytes`` stays on ``device`` (else its batches stream from host memory), and why, in
    words. On a GPU the images stay where they take at most ``share`` of the memory this process may use there (its
    ``set_per_process_memory_fraction`` of the card: a trial's share of the GPU), leaving the rest to the model, its
    activations and the optimiser; on the CPU they are read in place. ``share`` 0 streams everywhere."""
    size = f"the decoded images ({nbytes / 1e9:.2f} GB)"
    if share <= 0:
        return False, f"{size} stream from host memory (asked for)"
    if device.type != "cuda":
        return True, f"{size} are read in place in host memory"
    fraction_of = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = float(fraction_of(device)) if fraction_of is not None else 1.0
    limit = torch.cuda.get_device_properties(device).total_memory * fraction
    if nbytes <= share * limit:
        return True, f"{size} stay on {device}: at most {share:.0%} of the {limit / 1e9:.1f} GB this process may use there"
    return False, (f"{size} stream from host memory, each batch copied ahead: they would take more than {share:.0%} of the "
                   f"{limit / 1e9:.1f} GB this process may use on {device}")


class WorkerCache:
    def __init__(self, device_share: float = DEVICE_DATA_SHARE) -> None:
        self.device_share = device_share  # placement's share: 0 streams every set from host memory
        self.runs = 0  # runs started with this state in this process before the current one (0: a cold process)
        self._starts: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()  # starting states, on the host
        self._models: dict[tuple, nn.Module] = {}  # (device, classes) -> the instance runs on that device reuse
        self._sets: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]] = OrderedDict()

    def model(self, weights: str, num_classes: int, seed: int, device: torch.device,
              memory_format: torch.memory_format) -> tuple[nn.Module, float]:
        """A model in the state ``build_model(weights, num_classes, seed)`` gives, on ``device`` in ``memory_format``;
        and the seconds spent reading the weights file (0 when this process read them before)."""
        key = (weights_identity(weights), num_classes, seed)
        instance_key = (str(device), num_classes, memory_format)
        weights_s, fresh = 0.0, None
        start = self._starts.get(key)
        if start is None:
            t0 = time.perf_counter()
            read = read_weights(weights)
            weights_s = time.perf_counter() - t0
            fresh = build_model(weights, num_classes, seed, read=read)
            start = {k: v.detach().clone() for k, v in fresh.state_dict().items()}
            self._starts[key] = start
            while len(self._starts) > KEEP_STARTS:
                self._starts.popitem(last=False)
        self._starts.move_to_end(key)
        model = self._models.get(instance_key)
        if model is None:
            model = (fresh or build_model("none", num_classes)).to(device, memory_format=memory_format)
            self._models[instance_key] = model
        model.load_state_dict(start)  # copies into the instance's own tensors: their device and layout stay
        for parameter in model.parameters():
            parameter.grad = None  # the last run's gradients (a stage it trained may be frozen now)
        return model, weights_s

    def on_device(self, images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A decoded set's images and labels as tensors on ``device``, copied there once per process.

        Keyed by the arrays' identity; the entry holds the array, so its identity cannot pass to another while kept.
        """
        key = (id(images), id(labels), str(device))
        entry = self._sets.get(key)
        if entry is None:
            entry = (images, labels, *_to_device(images, labels, device))  # the arrays held: their ids stay theirs
            self._sets[key] = entry
            while len(self._sets) > KEEP_SETS:
                self._sets.popitem(last=False)
        self._sets.move_to_end(key)
        return entry[2], entry[3]


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy view of a (possibly read-only, e.g. Ray object store) array; it is never written to."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable"
        return torch.from_numpy(np.ascontiguousarray(array))


def _to_device(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors on ``device``: a zero-copy view on the CPU, one copy on a GPU."""
    x, y = as_tensor(images), as_tensor(labels)
    if device.type != "cpu":
        x, y = x.to(device), y.to(device)
    return x, y
