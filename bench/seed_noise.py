"""How noisy is one run's validation accuracy? The same configurations, several seeds, on fixed images.

For each configuration (the book's recipe, and any exported with ``python -m study.rerun --export FILE``) and
each split (both folds of 2-fold cross-validation, as the confirmation stage runs them, and the study's
held-out split), train ``--seeds`` runs and record which validation images each one gets right. Printed per
configuration and split: the mean accuracy; the sd between seeds; how much an image's correctness varies
between seeds (a coin flip with the run's accuracy p would give p(1-p)); and, from the seed-averaged answers,
the sd that belongs to which images were drawn (independent images would give the binomial sqrt(p(1-p)/n)).
Then the between-seed sd pooled over configurations, per kind of split. These are the noise figures the
seed-noise paragraphs of docs/selection.md quote (bench.selection.simulate's seed_sd and confirm_seed_sd).

    python -m bench.seed_noise --data-dir ../shared/assets/hotdog --config best.json [--json noise.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from study.core.vocabulary import HYPERPARAMETERS
from trainable.cli import run_main
from trainable.config import TrainConfig
from trainable.errors import UserError

SPLITS = {"cv fold 0": (2, 0), "cv fold 1": (2, 1), "held out": (0, 0)}  # (cv_folds, val_fold)


def answers(cfg: TrainConfig, data) -> np.ndarray:
    """Train ``cfg`` and return 1/0 per validation image: right or wrong after the last epoch."""
    import torch

    from trainable.loop import eval_logits, train

    model = train(cfg, data).model
    right = [logits.argmax(1) == y for logits, y in eval_logits(model, data.val, cfg, torch.device("cpu"), False, True)]
    return torch.cat(right).numpy().astype(int)


def summarise(runs: np.ndarray) -> dict:
    """Figures of one configuration on one split from its (seeds x images) right/wrong table."""
    seeds, n = runs.shape
    acc = runs.mean(axis=1)
    p = float(acc.mean())
    per_image = runs.var(axis=0, ddof=1).mean()  # an image's right/wrong between seeds
    # the seed-averaged answers vary over images by the images' own spread plus per_image / seeds
    image_var = max(runs.mean(axis=0).var(ddof=1) - per_image / seeds, 0.0)
    return {"seeds": seeds, "images": n, "accuracy": p, "seed_sd": float(acc.std(ddof=1)),
            "per_image_var": float(per_image), "coin_var": p * (1 - p),
            "image_sd": float(np.sqrt(image_var / n)), "binomial_sd": float(np.sqrt(p * (1 - p) / n))}


def pooled_sd(tables: list[np.ndarray]) -> tuple[float, int]:
    """Between-seed sd pooled over configurations (sum of squares over degrees of freedom)."""
    ss = sum(float(((t.mean(axis=1) - t.mean()) ** 2).sum()) for t in tables)
    df = sum(len(t) - 1 for t in tables)
    return (ss / df) ** 0.5, df


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.seed_noise", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder with train/<class>/ and test/<class>/")
    p.add_argument("--weights", default="none", help="none (from scratch), imagenet, or a state-dict path (default: %(default)s)")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="a configuration exported by python -m study.rerun --export (repeatable); the book's recipe always runs")
    p.add_argument("--seeds", type=int, default=6, help="runs per configuration and split (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--image-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the figures and every run's answers here")
    args = p.parse_args(argv)
    if args.seeds < 2:
        raise UserError(f"--seeds {args.seeds}: a spread needs 2 or more")
    configs = {"book's recipe": {}}
    for path in args.config:
        exported = TrainConfig.from_json(path)
        # the searched hyperparameters, except the batch size: this script's --batch-size sets it for every run
        configs[Path(path).stem] = {k: getattr(exported, k) for k in HYPERPARAMETERS if k != "batch_size"}
    from trainable.loop import data_for

    base = TrainConfig(data_dir=args.data_dir, weights=args.weights, epochs=args.epochs, image_size=args.image_size,
                       batch_size=args.batch_size, threads=args.threads, device="cpu", precision="fp32",
                       val_last_only=True).validate()
    tables: dict[tuple[str, str], np.ndarray] = {}
    for split, (cv_folds, fold) in SPLITS.items():
        on_split = base.replace(cv_folds=cv_folds, val_fold=fold)
        data = data_for(on_split)
        for name, changes in configs.items():
            cfg = on_split.replace(**changes)
            rows = []
            for seed in range(args.seeds):
                rows.append(answers(cfg.replace(seed=seed), data))
                print(f"{name}, {split}, seed {seed}: val acc {rows[-1].mean():.3f}", flush=True)
            tables[(name, split)] = np.array(rows)
    figures = {f"{name} | {split}": summarise(t) for (name, split), t in tables.items()}
    print("\nconfiguration | split: accuracy, sd between seeds; an image's variance between seeds (a coin's); "
          "sd from which images (binomial)")
    for key, f in figures.items():
        print(f"{key}: {f['accuracy']:.3f}, sd {f['seed_sd']:.3f}; {f['per_image_var']:.3f} ({f['coin_var']:.3f}); "
              f"{f['image_sd']:.4f} ({f['binomial_sd']:.4f}) on {f['images']} images")
    pooled = {}
    for kind, splits in (("cross-validation", ("cv fold 0", "cv fold 1")), ("held out", ("held out",))):
        sd, df = pooled_sd([t for (_, split), t in tables.items() if split in splits])
        pooled[kind] = {"seed_sd": sd, "df": df}
        print(f"between-seed sd pooled, {kind} runs: {sd:.4f} ({df} df)")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "pooled": pooled, "answers":
                                               {f"{n} | {s}": t.tolist() for (n, s), t in tables.items()}}) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
