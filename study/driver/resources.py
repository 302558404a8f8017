"""What each trial gets and whether it can run: the per-trial share of the cluster's CPUs and GPUs, a probe that
the GPU is usable, and a disk-space check for the checkpoints, all before the first trial starts.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

from trainable import TrainConfig, UserError

from study.core.folder import StudyFolder
from study.core.settings import StudySettings


def share_resources(gpus_requested: float, cpus_requested: float | None, cluster: dict) -> tuple[dict, int, str | None]:
    """Per-trial resources, how many trials fit at once, and a message when the request was changed.

    Never asks Ray for a GPU the cluster does not have: such trials would wait forever.
    """
    cpus, gpus = float(cluster.get("CPU", 1)), float(cluster.get("GPU", 0))
    message = None
    gpu_share = gpus_requested
    if gpu_share > 0 and gpus == 0:
        message = f"no GPU in the Ray cluster: running trials on CPU slots instead of {gpu_share:g} GPU each"
        gpu_share = 0.0
    elif gpu_share > gpus:
        raise UserError(f"--gpus-per-trial {gpu_share:g} is more than the {gpus:g} GPU(s) of the cluster: ask for at most {gpus:g}")
    if gpu_share > 0:
        slots = int(gpus / gpu_share + 1e-9)
        cpu_share = cpus_requested or max(1.0, math.floor(cpus / slots))
        slots = min(slots, int(cpus / cpu_share + 1e-9))
    else:
        cpu_share = cpus_requested or 1.0
        slots = int(cpus / cpu_share + 1e-9)
    if slots < 1:
        raise UserError(f"--cpus-per-trial {cpu_share:g} is more than the {cpus:g} CPU(s) of the cluster: ask for at most {cpus:g}")
    return {"cpu": cpu_share, "gpu": gpu_share}, slots, message


def at_once(settings: StudySettings, slots: int, runs: int | None = None) -> int:
    """How many runs go at once: the slots the resources fit, at most --max-concurrent, at most ``runs`` (what there is)."""
    return max(1, min(settings.max_concurrent or slots, slots, runs if runs is not None else slots))


def check_cluster_gpus(resources: dict, local: bool) -> None:
    """Trials given a GPU must be able to use it: check once, before the first trial, not 100x slower later.

    On this machine the driver's own torch tells; on a cluster a probe task asks a GPU node's.
    """
    if not resources["gpu"]:
        return
    from study.driver.adapter import check_gpu

    if local:
        try:
            check_gpu([0])
        except Exception as exc:
            raise UserError(str(exc)) from None
        return
    import ray

    def probe():
        from study.driver.adapter import TrialError, check_gpu
        try:
            check_gpu(ray.get_gpu_ids())
            return ""
        except TrialError as exc:
            return str(exc)

    problem = ray.get(ray.remote(num_gpus=resources["gpu"], num_cpus=resources["cpu"])(probe).remote())
    if problem:
        raise UserError(problem)


# ResNet18's state dict in bytes (float32 weights and BN statistics) less its head, and what the head adds per
# class (512 weights and a bias). Counted, not built: building one would cost the driver a torchvision import
# (seconds) before every study. tests/test_study.py checks both against a built model.
RESNET18_BACKBONE_STATE_BYTES = 44_744_608
RESNET18_HEAD_BYTES_PER_CLASS = 513 * 4


def checkpoint_bytes(base: TrainConfig, space: dict, num_classes: int) -> int:
    """The size of one trial checkpoint: the model's state, twice that with momentum (its buffers)."""
    model_bytes = RESNET18_BACKBONE_STATE_BYTES + RESNET18_HEAD_BYTES_PER_CLASS * num_classes
    momentum = base.momentum > 0 or "momentum" in space
    return model_bytes * (2 if momentum else 1)


def check_free_space(folder: StudyFolder, experiment: str, concurrent: int, per_checkpoint: int) -> None:
    """Fail before the first trial where the checkpoints cannot fit: a running trial holds one, two while the
    next replaces it, and its worker writes it to a temporary folder first."""
    need = concurrent * 2 * per_checkpoint + (16 << 20)
    places = {"--results-dir": folder.path} | ({} if "://" in experiment else {"--storage": Path(experiment)})
    places["the temporary folder (TMPDIR)"] = Path(tempfile.gettempdir())
    for option, path in places.items():
        probe = path
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        want = concurrent * per_checkpoint + (16 << 20) if option.startswith("the temporary") else need
        if free < want:
            raise UserError(f"not enough free space in {path}: the study needs about {want >> 20} MB there "
                            f"({concurrent} trial(s) at a time, a {per_checkpoint >> 20} MB checkpoint each) and {free >> 20} MB are free: "
                            f"free space, or give {option} a larger disk")
