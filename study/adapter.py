"""The thin layer between Ray Tune and the training loop: config in, one report (and checkpoint) per epoch."""

from __future__ import annotations

import re
import socket
import tempfile
from pathlib import Path

import ray
from ray import tune

from trainable import Checkpoint, PreparedData, TrainConfig, train

TRIAL_KEYS = ("optuna_trial", "baseline")  # study bookkeeping carried in the Tune config, not TrainConfig fields


def trial_config(base: dict, config: dict, cpus: float) -> TrainConfig:
    fields = {k: v for k, v in config.items() if k not in TRIAL_KEYS}
    return TrainConfig.from_dict({**base, **fields, "threads": max(1, int(cpus))})


def latest_checkpoint_on_disk(trial_dir: str | None) -> Path | None:
    """The newest complete checkpoint in the trial's folder.

    After the driver is killed, Ray restores a trial from the checkpoint recorded in its last experiment
    snapshot, which can be older than (or absent for) what the trial wrote since: the folder is the truth.
    """
    if not trial_dir or not Path(trial_dir).is_dir():
        return None
    found = [p for p in Path(trial_dir).glob("checkpoint_*") if Checkpoint.exists(p)]
    return max(found, key=lambda p: int(re.sub(r"\D", "", p.name) or 0), default=None)


def _epoch_of(directory: Path | None) -> int:
    if directory is None:
        return 0
    return int(Checkpoint.load(directory)["epoch"])


def run_trial(config: dict, data: PreparedData, base: dict) -> None:
    """A Ray Tune function trainable."""
    context = ray.get_runtime_context()
    cpus = context.get_assigned_resources().get("CPU", 1)
    cfg = trial_config(base, config, cpus)
    node = {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname()}

    with tempfile.TemporaryDirectory() as scratch:
        resume_from = None
        restored = tune.get_checkpoint()
        if restored is not None:
            resume_from = Path(restored.to_directory(str(Path(scratch) / "restored")))
        on_disk = latest_checkpoint_on_disk(tune.get_context().get_trial_dir())
        if on_disk is not None and _epoch_of(on_disk) > _epoch_of(resume_from):
            resume_from = on_disk

        def on_epoch(metrics, save) -> None:
            with tempfile.TemporaryDirectory() as directory:
                save(directory)
                tune.report(
                    {**metrics.as_dict(), **node, "resumed_from_epoch": _epoch_of(resume_from)},
                    checkpoint=tune.Checkpoint.from_directory(directory),
                )

        train(cfg, data, on_epoch=on_epoch, resume_from=resume_from)
