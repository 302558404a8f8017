"""``python -m trainable``: fine-tune ResNet18 with one configuration and print each epoch's metrics.

The last line of standard output is always one JSON object: ``status`` (completed or diverged),
``final_val_acc``, ``best_val_acc``, ``best_epoch``, and with ``--test`` ``test_acc`` and ``test_loss``.
Exit 0, or 1 when the run diverged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .cli import add_data_options, add_hyperparameter_options, check_output_folder, run_main
from .config import TrainConfig
from .errors import UserError
from .files import write_atomic


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainable", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="JSON file of TrainConfig fields (e.g. from python -m study.rerun --export); flags given here override it")
    add_data_options(parser)
    add_hyperparameter_options(parser)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default 0: the CPUs this process may use); the numbers depend on it: "
                             "the same seed and thread count give the same run")
    parser.add_argument("--test", action="store_true",
                        help="after training, evaluate once on the test split and add test_acc/test_loss to the last line")
    # ~ expanded here, once: the folder checked before training is the one written after it (no shell expands --x=~/y)
    parser.add_argument("--checkpoint-dir", type=os.path.expanduser, help="save model/optimizer/epoch here after every epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir's last epoch")
    parser.add_argument("--save-weights", type=os.path.expanduser, help="write the final model's state dict here (atomically: a kill or a full disk mid-save leaves the old file whole)")
    parser.add_argument("--no-cache", action="store_true",
                        help="decode the images in memory for this run only (by default they are decoded once and kept for "
                             "every later run on the same folder: python -m trainable.decoded --list)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def config_from_args(args: argparse.Namespace, argv: list[str] | None) -> TrainConfig:
    base = TrainConfig.from_json(args.config) if args.config else TrainConfig()
    given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
    changes = {}
    for field in base.to_dict():
        flag = "--" + field.replace("_", "-")
        if hasattr(args, field) and (not args.config or flag in given):
            changes[field] = getattr(args, field)
    return base.replace(**changes).validate()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args, argv)
    import torch  # only now: a wrong option is answered without importing torch

    from .loop import Checkpoint, EpochMetrics, data_for, train

    if args.resume and not Checkpoint.exists(args.checkpoint_dir):
        raise UserError(f"--resume needs a checkpoint: none in {args.checkpoint_dir!r}; pass the --checkpoint-dir of the earlier run")
    if args.checkpoint_dir:
        check_output_folder(args.checkpoint_dir, "--checkpoint-dir")
    if args.save_weights:
        if Path(args.save_weights).is_dir():
            raise UserError(f"--save-weights {args.save_weights} is a folder: pass the path of a file to write")
        check_output_folder(Path(args.save_weights).parent, "--save-weights")

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    def on_epoch(m: "EpochMetrics", save) -> None:
        if args.checkpoint_dir:
            save(args.checkpoint_dir)
        flag = "  DIVERGED (loss is NaN/inf)" if m.diverged else ""
        val = "not validated" if math.isnan(m.val_acc) and not m.diverged else f"val loss {m.val_loss:.4f} acc {m.val_acc:.3f}"
        print(
            f"epoch {m.epoch}/{cfg.epochs}  train loss {m.train_loss:.4f} acc {m.train_acc:.3f}  "
            f"{val}  {m.seconds:.1f}s  {m.images_per_s:.1f} img/s{flag}",
            flush=True,
        )

    data = data_for(cfg, with_test=args.test, log=log, cache=not args.no_cache)
    result = train(cfg, data, on_epoch=on_epoch, resume_from=args.checkpoint_dir if args.resume else None, log=log)
    if args.save_weights:
        Path(args.save_weights).parent.mkdir(parents=True, exist_ok=True)
        state = result.model.state_dict()
        try:  # a kill or a full disk mid-save leaves the old file, never half a new one
            write_atomic(Path(args.save_weights), lambda tmp: torch.save(state, tmp))
        except OSError as exc:
            raise UserError(f"cannot write the weights to {args.save_weights} ({exc.strerror or exc}): free some space there, "
                            "or pass --save-weights another path") from None
    best = result.best
    final = result.history[-1] if result.history else None
    summary = {
        "status": result.status,
        "final_val_acc": _number(final.val_acc) if final else None,  # no validation split: null, not NaN (invalid JSON)
        "best_val_acc": best.val_acc if best else None,
        "best_epoch": best.epoch if best else None,
    }
    if args.test and result.status != "diverged":
        from .loop import evaluate, resolve_device, use_bf16

        device = resolve_device(cfg.device)
        summary["test_loss"], summary["test_acc"] = evaluate(result.model, data.test, cfg, device, use_bf16(cfg.precision, device), True)
    if result.status == "diverged":
        print("the loss diverged (NaN/inf): lower --lr or --head-lr-mult", file=sys.stderr)
    print(json.dumps(summary))  # the last line is JSON, whatever the outcome
    return 1 if result.status == "diverged" else 0


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


if __name__ == "__main__":
    run_main(main)
