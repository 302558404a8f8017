"""``python -m study.run --warm-start A``: a new study B begins from a finished study A, which it only reads.

- **Same problem** (A and B differ in nothing that changes what a validation accuracy means:
  ``study.core.comparability``): A's finished trials enter B's Optuna study as observations, each as A recorded it
  (completed with its best validation accuracy, stopped by ASHA with its epochs' accuracies, diverged as infeasible,
  failed), so TPE proposes from what A learned. A trial whose values B's space could not propose (a narrower
  ``--space``, or a hyperparameter B fixes at another value) is left out, and counted.
- **Another problem** (other data, weights, recipe or validation split): A's observations would describe it, so none
  is carried over (a *transfer start*): A's confirmed winner and its next best configurations become B's first trials.

Either way A's confirmed winner (its rank 1 where it had no confirmation stage) is B's first trial after the book's
recipe, so B's own confirmation stage judges it again, wherever it ranks in B. What was carried is recorded in B's
``study.json`` (``warm_start``) and shown by ``study.analyze``. In B's ``optuna.db`` an observation carries the user
attribute ``warm_start`` (A's name) and ``source_trial``: it is not one of B's trials (its tables, its ``--samples``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from trainable import UserError

from study.core.comparability import differences
from study.core.folder import StudyFolder, open_study, resume_command, storage_url
from study.core.optuna_store import WARM_START_ATTR, add_finished, open_study as open_optuna
from study.core.settings import StudySettings
from study.core.space import outside, to_distributions
from study.core.values import isnan
from study.core.vocabulary import FINISHED, typed, usable_rows
from study.findings.reading import StudyData, read_study

TRANSFER_FIRST = 3  # a transfer start runs A's winner and its next best configurations: this many in all


def source_study(path: str) -> StudyData:
    """A, checked: a finished study that no driver holds. One line (UserError) otherwise."""
    folder = open_study(path, "--warm-start", "the folder of a finished study")
    settings = folder.read_settings()
    holder = folder.in_use()
    if holder is not None:
        raise UserError(f"--warm-start {path}: study {settings.name!r} is running{holder}: wait for it to finish")
    if not settings.finished():
        raise UserError(f"--warm-start {path}: study {settings.name!r} is unfinished: finish it first with {resume_command(folder)}")
    if not folder.trials.is_file():
        raise UserError(f"--warm-start {path}: study {settings.name!r} has no trials.parquet: it never ran a trial")
    return read_study(folder)


@dataclass
class WarmStart:
    source: str  # A's folder
    name: str  # A's name
    kind: str  # "observations" (the same problem) or "transfer"
    differences: list[str] = field(default_factory=list)  # why a transfer: what differs
    first: list[dict] = field(default_factory=list)  # B's first trials after the book's recipe: {"source_trial": n, "params": {...}}
    observations: int = 0  # A's trials carried as observations
    left_out: list[int] = field(default_factory=list)  # A's trials outside B's space (not carried)
    run_again: list[int] = field(default_factory=list)  # A's trials B runs itself (the book's recipe, the carried winner): held once
    skipped_first: list[str] = field(default_factory=list)  # first configurations left out, and why
    after_baseline: bool = True  # B runs the book's recipe first (it lies in B's space)
    winner: int | None = None  # A's confirmed winner
    winner_gain: dict | None = None  # its gain over the book's recipe in A, corrected for A's choice ({"mean", "ci"})
    roles: dict[int, str] = field(default_factory=dict)  # run_again's trials: what each is to B (not in study.json)

    def lines(self) -> list[str]:
        """What the warm start did, in a line or two."""
        firsts = ", ".join(f"trial {f['source_trial']}" + self._gain_of(f["source_trial"]) for f in self.first) \
            or "none (outside this study's space)"
        if self.kind == "observations":
            head = (f"warm start from study {self.name!r} ({self.source}): the same data and settings, so its {self.observations} "
                    f"finished trial(s) are observations for the searcher")
            head += f"; {len(self.left_out)} left out (outside this study's space)" if self.left_out else ""
            again = ", ".join(f"trial {n} ({self._role(n)})" for n in sorted(self.run_again))
            head += f"; its {again} run again here instead, as this study's own" if self.run_again else ""
        else:
            head = (f"warm start from study {self.name!r} ({self.source}): a transfer start ({'; '.join(self.differences)}), so no "
                    "observation is carried over")
        first = "first after the book's recipe" if self.after_baseline else "first"
        return [head, f"{first}: its {firsts}" + (f" ({'; '.join(self.skipped_first)})" if self.skipped_first else "")]

    def _role(self, trial: int) -> str:
        """What A's trial, run again, is to B: the book's recipe, its winner, or another configuration B runs first."""
        return self.roles[trial]

    def _gain_of(self, trial: int) -> str:
        """A's winner's gain there, as the figure to expect: corrected for A's confirmation having chosen it."""
        if trial != self.winner or not self.winner_gain:
            return ""
        low, high = self.winner_gain["ci"]
        return (f" (its winner: {self.winner_gain['mean']:+.3f} over the book's recipe there, corrected for the choice, "
                f"95% CI {low:+.3f} to {high:+.3f})")

    def as_dict(self) -> dict:
        recorded = asdict(self)
        del recorded["roles"]  # said by lines(), not kept
        return recorded


def carries_a_winner(settings: StudySettings) -> bool:
    """Whether B began with a configuration its warm start carried (which its confirmation stage then judges)."""
    return bool((settings.warm_start or {}).get("first"))


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


def _ranked_winners(a: StudyData) -> list[int]:
    """A's configurations best first: its confirmed winner, then the other candidates by confirmed mean, then the
    rest by the study's ranking (never the book's recipe: B runs it first anyway)."""
    trials = a.trials
    order: list[int] = []
    winner = (a.settings.summary.get("confirmation") or {}).get("winner")
    if winner is not None:
        order.append(int(winner))
    confirmed = trials[trials["confirm_folds"] > 0].sort_values("confirm_mean", ascending=False) if "confirm_mean" in trials else trials[:0]
    for number in [*confirmed["optuna_trial"], *trials.loc[usable_rows(trials), "optuna_trial"]]:
        if int(number) not in order:
            order.append(int(number))
    baseline = set(trials.loc[trials["baseline"], "optuna_trial"])
    return [n for n in order if n not in baseline]


def plan(a: StudyData, b: StudySettings) -> WarmStart:
    """What B takes from A (``b`` with its fingerprints recorded)."""
    found = [d.text() for d in differences(a.settings, b) if d.changes_the_problem]
    warm = WarmStart(source=str(a.folder.path), name=a.settings.name, kind="transfer" if found else "observations",
                     differences=found, after_baseline=b.baseline is not None)
    confirmation = a.settings.summary.get("confirmation") or {}
    warm.winner = confirmation.get("winner")
    warm.winner_gain = (confirmation.get("gain") or {}).get("corrected")
    rows = {int(r["optuna_trial"]): r for r in a.trials.to_dict("records")}
    room = b.samples - (1 if b.baseline is not None else 0)  # B's trials after the book's recipe: no more can run first
    wanted = min(TRANSFER_FIRST if found else 1, room)
    for number in _ranked_winners(a):
        if len(warm.first) >= wanted:
            break
        params = _params_as_b(rows[number], a.settings, b)
        if params is None or outside(b.space, params):
            warm.skipped_first.append(f"trial {number} lies outside this study's space")
            continue
        if b.baseline is not None and params == b.baseline:
            continue  # the book's recipe: B's trial 0 already
        warm.first.append({"source_trial": number, "params": params})
    if not found:
        for number, row in rows.items():
            if row.get("status") not in FINISHED:
                continue
            params = _params_as_b(row, a.settings, b)
            if params is None or outside(b.space, params):
                warm.left_out.append(number)
            elif (role := _runs_again(params, warm, b)) is not None:
                warm.run_again.append(number)
                warm.roles[number] = role
            else:
                warm.observations += 1
    return warm


def _runs_again(params: dict, warm: WarmStart, b: StudySettings) -> str | None:
    """What this configuration is to B where B runs it as its own trial ("the book's recipe", "its winner", "run first"),
    else None: B's study then holds it once, as B's trial, not also as A's observation."""
    if b.baseline is not None and params == dict(b.baseline):
        return "the book's recipe"
    first = next((f for f in warm.first if params == f["params"]), None)
    if first is None:
        return None
    return "its winner" if first["source_trial"] == warm.winner else "run first"


def seed_study(storage: str, a: StudyData, b: StudySettings, warm: WarmStart):
    """Create B's Optuna study: the book's recipe first, then ``warm.first``, then A's observations (the same problem only)."""
    from optuna.trial import TrialState

    study = open_optuna(storage, b.name, b.seed, b.baseline)  # a new study: the book's recipe enqueued as trial 0
    if study.trials and any(t.state != TrialState.WAITING for t in study.trials):
        return study  # seeded before (a resume): nothing again
    for first in warm.first:
        study.enqueue_trial(first["params"], user_attrs={"warm_start_from": warm.name, "source_trial": first["source_trial"]})
    if warm.kind != "observations":
        return study
    dists = to_distributions(b.space)
    epochs = a.epochs
    not_carried = set(warm.left_out) | set(warm.run_again)  # as plan decided: outside B's space, or B's own trials
    for row in a.trials.sort_values("optuna_trial").to_dict("records"):
        if row["status"] not in FINISHED or int(row["optuna_trial"]) in not_carried:
            continue
        params = _params_as_b(row, a.settings, b)
        mine = epochs[(epochs["optuna_trial"] == row["optuna_trial"]) & ~epochs["diverged"].astype(bool)]
        values = {int(e): float(v) for e, v in zip(mine["epoch"], mine["val_acc"]) if not isnan(v)}
        add_finished(study, params, dists, row["status"], values,
                     {WARM_START_ATTR: warm.name, "source_trial": int(row["optuna_trial"])})
    return study


def begin(folder: StudyFolder, source: str | StudyData, settings: StudySettings, log=print) -> WarmStart:
    """B's warm start from the study at ``source`` (its folder, or as ``source_study`` read it): planned, recorded in its
    settings, said, and its Optuna study seeded."""
    a = source_study(source) if isinstance(source, str) else source
    warm = plan(a, settings)
    settings.warm_start = warm.as_dict()
    for line in warm.lines():
        log(line)
    seed_study(storage_url(folder.optuna_db), a, settings, warm)
    return warm

