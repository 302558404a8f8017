"""``python -m study.run --warm-start A``: a new study B begins from a finished study A, which it only reads.

- **Same data, same fixed settings** (A's and B's data fingerprints equal; the same weights, image size, epochs,
  batch size and validation split): A's finished trials enter B's Optuna study as observations, each as A recorded
  it (completed with its best validation accuracy, stopped by ASHA with its epochs' accuracies, diverged as
  infeasible, failed), so TPE proposes from what A learned. A trial whose values B's space could not propose (a
  narrower ``--space``, or a hyperparameter B fixes at another value) is left out, and counted.
- **Other data or other fixed settings**: A's observations would describe another problem, so none is carried
  over (a *transfer start*): A's confirmed winner and its next best configurations become B's first trials.

Either way A's confirmed winner (its rank 1 where it had no confirmation stage) is B's first trial after the book's
recipe, so B's own confirmation stage judges it again. What was carried is recorded in B's ``study.json``
(``warm_start``) and shown by ``study.analyze``. In B's ``optuna.db`` an observation carries the user attribute
``warm_start`` (A's name) and ``source_trial``: it is not one of B's trials (its tables, its ``--samples``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from trainable import UserError

from study.folder import StudyFolder, StudySettings
from study.space import outside
from study.values import isnan, typed

TRANSFER_FIRST = 3  # a transfer start runs A's winner and its next best configurations: this many in all
SAME_FIXED = ("image_size", "epochs", "val_fraction", "split_seed")  # fixed settings a trial's accuracy depends on


def source_study(path: str) -> tuple[StudyFolder, StudySettings]:
    """A, checked: a finished study that no driver holds. One line (UserError) otherwise."""
    folder = StudyFolder(Path(path).expanduser())
    if not folder.path.exists():
        raise UserError(f"--warm-start {path}: no such folder: pass the folder of a finished study, e.g. results/<name>")
    if not folder.exists():
        raise UserError(f"--warm-start {path}: {folder.path} holds no study (no study.json): pass the folder of a finished study")
    settings = folder.read_settings()
    holder = folder.in_use()
    if holder is not None:
        raise UserError(f"--warm-start {path}: study {settings.name!r} is running{holder}: wait for it to finish")
    if not settings.runs or settings.runs[-1].get("outcome") != "finished":
        raise UserError(f"--warm-start {path}: study {settings.name!r} is unfinished: finish it first with "
                        f"python -m study.run --resume --name {settings.name} --results-dir {folder.path.parent}")
    if not folder.trials.is_file():
        raise UserError(f"--warm-start {path}: study {settings.name!r} has no trials.parquet: it never ran a trial")
    return folder, settings


@dataclass
class WarmStart:
    source: str  # A's folder
    name: str  # A's name
    kind: str  # "observations" (same data and settings) or "transfer"
    differences: list[str] = field(default_factory=list)  # why a transfer: what differs
    first: list[dict] = field(default_factory=list)  # B's first trials after the book's recipe: {"source_trial": n, "params": {...}}
    observations: int = 0  # A's trials carried as observations
    left_out: list[int] = field(default_factory=list)  # A's trials outside B's space (not carried)
    skipped_first: list[str] = field(default_factory=list)  # first configurations left out, and why

    def lines(self) -> list[str]:
        """What the warm start did, in a line or two."""
        firsts = ", ".join(f"trial {f['source_trial']}" for f in self.first) or "none (outside this study's space)"
        if self.kind == "observations":
            head = (f"warm start from study {self.name!r} ({self.source}): the same data and settings, so its {self.observations} "
                    f"finished trial(s) are observations for the searcher")
            head += f"; {len(self.left_out)} left out (outside this study's space)" if self.left_out else ""
        else:
            head = (f"warm start from study {self.name!r} ({self.source}): a transfer start ({'; '.join(self.differences)}), so no "
                    "observation is carried over")
        return [head, f"first after the book's recipe: its {firsts}" + (f" ({'; '.join(self.skipped_first)})" if self.skipped_first else "")]

    def as_dict(self) -> dict:
        return {"source": self.source, "name": self.name, "kind": self.kind, "differences": self.differences, "first": self.first,
                "observations": self.observations, "left_out": self.left_out, "skipped_first": self.skipped_first}


def differences(a: StudySettings, b: StudySettings) -> list[str]:
    """What makes A's validation accuracies another problem's than B's: data, weights, fixed settings."""
    found = []
    if a.data_fingerprint != b.data_fingerprint:
        found.append("other data" if a.base.get("data_dir") != b.base.get("data_dir") else "its data changed since")
    if a.base.get("weights") in ("imagenet", "none") or b.base.get("weights") in ("imagenet", "none"):
        if a.base.get("weights") != b.base.get("weights"):
            found.append(f"weights {a.base.get('weights')} there, {b.base.get('weights')} here")
    elif a.weights_fingerprint != b.weights_fingerprint:
        found.append("other weights")
    for name in SAME_FIXED:
        if a.base.get(name) != b.base.get(name):
            found.append(f"{name.replace('_', ' ')} {a.base.get(name)} there, {b.base.get(name)} here")
    if "batch_size" not in a.space and "batch_size" not in b.space and a.base.get("batch_size") != b.base.get("batch_size"):
        found.append(f"batch size {a.base.get('batch_size')} there, {b.base.get('batch_size')} here")
    return found


def _params_as_b(row: dict, a: StudySettings, b: StudySettings) -> dict | None:
    """A trial's hyperparameters as B's searcher names them: B's searched ones (from A's row where A searched them,
    else A's fixed value); None where a hyperparameter B fixes had another value in A."""
    params = {}
    for name in b.space:
        value = row.get(name) if name in a.space else a.base.get(name)
        if value is None or isnan(value):
            return None
        params[name] = typed(name, value)
    for name in a.space:
        if name not in b.space and typed(name, row.get(name)) != b.base.get(name):
            return None  # B trains every trial with another value of it
    return params


def _ranked_winners(folder: StudyFolder, a: StudySettings, trials: pd.DataFrame) -> list[int]:
    """A's configurations best first: its confirmed winner, then the other candidates by confirmed mean, then the
    rest by the study's ranking (never the book's recipe: B runs it first anyway)."""
    order: list[int] = []
    winner = (a.summary.get("confirmation") or {}).get("winner")
    if winner is not None:
        order.append(int(winner))
    confirmed = trials[trials["confirm_folds"] > 0].sort_values("confirm_mean", ascending=False) if "confirm_mean" in trials else trials[:0]
    usable = trials[trials["status"].isin(["completed", "stopped early"]) & trials["best_val_acc"].notna()]
    for number in [*confirmed["optuna_trial"], *usable["optuna_trial"]]:
        if int(number) not in order:
            order.append(int(number))
    baseline = set(trials.loc[trials["baseline"], "optuna_trial"])
    return [n for n in order if n not in baseline]


def carried_trial(trials: dict, warm_start: dict) -> int | None:
    """B's trial that ran the first configuration its warm start carried (A's winner, where B's space holds it), found
    by its hyperparameters (``trials``: number -> row); None without a warm start or before it ran."""
    first = (warm_start.get("first") or [None])[0]
    if not first:
        return None
    for number in sorted(trials):
        row = trials[number]
        if all(_same(row.get(name), value) for name, value in first["params"].items()):
            return number
    return None


def _same(stored, value) -> bool:
    if isinstance(value, float) or isinstance(stored, float):
        return stored is not None and not isnan(stored) and math.isclose(float(stored), float(value), rel_tol=1e-9)
    return stored == value


def plan(folder: StudyFolder, a: StudySettings, b: StudySettings) -> WarmStart:
    """What B takes from A (``b`` with its fingerprints recorded)."""
    from study.results import read_frames

    trials, _ = read_frames(folder.path, list(a.space), int(a.base["epochs"]), a.seed)
    rows = {int(r["optuna_trial"]): r for r in trials.to_dict("records")}
    found = differences(a, b)
    warm = WarmStart(source=str(folder.path), name=a.name, kind="transfer" if found else "observations", differences=found)
    wanted = TRANSFER_FIRST if found else 1
    for number in _ranked_winners(folder, a, trials):
        if len(warm.first) >= wanted:
            break
        params = _params_as_b(rows[number], a, b)
        if params is None or outside(b.space, params):
            warm.skipped_first.append(f"trial {number} lies outside this study's space")
            continue
        if b.baseline is not None and params == b.baseline:
            continue  # the book's recipe: B's trial 0 already
        warm.first.append({"source_trial": number, "params": params})
    if not found:
        for number, row in rows.items():
            params = _params_as_b(row, a, b)
            if row.get("status") == "running":
                continue
            if params is None or outside(b.space, params):
                warm.left_out.append(number)
            else:
                warm.observations += 1
    return warm


def seed_study(storage: str, a_folder: StudyFolder, a: StudySettings, b: StudySettings, warm: WarmStart):
    """Create B's Optuna study: the book's recipe first, then ``warm.first``, then A's observations (same data only)."""
    import optuna
    from optuna.trial import TrialState

    from study.driver.searcher import open_study
    from study.results import read_frames
    from study.space import to_distributions

    study = open_study(storage, b.name, b.seed, b.baseline)  # a new study: the book's recipe enqueued as trial 0
    if study.trials and any(t.state != TrialState.WAITING for t in study.trials):
        return study  # seeded before (a resume): nothing again
    for first in warm.first:
        study.enqueue_trial(first["params"], user_attrs={"warm_start_from": warm.name, "source_trial": first["source_trial"]})
    if warm.kind != "observations":
        return study
    trials, epochs = read_frames(a_folder.path, list(a.space), int(a.base["epochs"]), a.seed)
    dists = to_distributions(b.space)
    states = {"completed": TrialState.COMPLETE, "stopped early": TrialState.PRUNED, "diverged": TrialState.PRUNED,
              "errored": TrialState.FAIL, "timed_out": TrialState.FAIL}
    for row in trials.sort_values("optuna_trial").to_dict("records"):
        params = _params_as_b(row, a, b)
        if params is None or outside(b.space, params) or row["status"] not in states:
            continue
        mine = epochs[(epochs["optuna_trial"] == row["optuna_trial"]) & ~epochs["diverged"].astype(bool)]
        values = {int(e): float(v) for e, v in zip(mine["epoch"], mine["val_acc"]) if not isnan(v)}
        state = states[row["status"]]
        value = max(values.values()) if state == TrialState.COMPLETE and values else None
        if state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state = TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, state=state, value=value, intermediate_values=values,
            user_attrs={"warm_start": warm.name, "source_trial": int(row["optuna_trial"]), "status": row["status"]},
            constraints={"diverged": 1.0} if row["status"] == "diverged" else None))
    return study


def is_observation(trial) -> bool:
    """An Optuna trial of B's study that is one of A's, carried as an observation (not one of B's own trials)."""
    return "warm_start" in trial.user_attrs
