"""A study's state before a driver run: read, repaired where a file is damaged, and reconciled.

The truth is kept twice, on purpose: in the parquet tables (what every trial did, epoch by epoch) and in
``optuna.db`` (what the searcher learned). A driver killed at any moment can leave them one event apart;
a damaged file can lose one of them. Before each run this module

1. reads both, rebuilding a damaged or missing one from the other (the damaged file is kept beside, renamed),
   or says in one line which file cannot be recovered and what to do;
2. closes in Optuna what the tables show finished, and in the tables what Optuna shows finished;
3. finishes the samples whose end is already decided (a diverged epoch, every epoch run, or an ASHA stop
   that the killed driver had no time to act on), and
4. lists the rest of the unfinished samples: each is run again under its own Optuna trial number, from its
   newest intact checkpoint. No sample is lost, none is counted twice, and none stays ``running``.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from trainable import UserError

from study.core.folder import StudyFolder, set_aside, storage_url
from study.core.optuna_store import Unfinished, add_finished, handle, is_observation, tell_finished
from study.core.settings import StudySettings, grow
from study.core.tables import StudyTables
from study.core.space import to_distributions
from study.core.values import isnan
from study.core.vocabulary import COMPLETED, DIVERGED, ERRORED, FINISHED, RUNNING, STOPPED_EARLY, TIMED_OUT, status_of, typed


@dataclass
class StudyState:
    tables: StudyTables
    unfinished: list[Unfinished] = field(default_factory=list)
    finished: int = 0  # samples that have ended
    notes: list[str] = field(default_factory=list)  # what was repaired or decided, one line each


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def read_tables(folder: StudyFolder, params: list[str], max_epochs: int, seed: int) -> tuple[StudyTables, dict[str, str]]:
    """The tables, and the files among them that could not be read (name -> why)."""
    tables = StudyTables(folder.path, params, max_epochs, seed, load=False)
    return tables, tables.load(tolerate_damage=True)


def open_optuna(folder: StudyFolder, name: str) -> tuple[optuna.Study | None, str]:
    """The stored Optuna study, or None and why (missing, damaged)."""
    path = folder.optuna_db
    if not path.exists():
        return None, "missing"
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:  # read only: a check repairs nothing
            check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            return None, f"damaged ({check})"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=name, storage=storage_url(path))
        study.get_trials(deepcopy=False)
        return study, ""
    except Exception as exc:  # not a database, truncated, another study's file
        return None, f"damaged ({_first_line(exc)})"


def rebuild_optuna(folder: StudyFolder, settings: StudySettings, tables: StudyTables) -> optuna.Study:
    """A new optuna.db holding every sample of the tables, with its parameters, intermediate values and end."""
    dists = to_distributions(settings.space)
    if folder.optuna_db.exists():
        set_aside(folder.optuna_db)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=settings.name, storage=storage_url(folder.optuna_db), direction="maximize")
    renumber = {old: new for new, old in enumerate(sorted(tables.trials))}
    for old in renumber:
        row = tables.trials[old]
        values = {epoch: float(r["val_acc"]) for (n, epoch), r in tables.epochs.items()
                  if n == old and not r.get("diverged") and not isnan(r.get("val_acc"))}
        status = row.get("status", RUNNING)
        attrs = {"ray_trial_id": str(row.get("trial_id") or ""), "baseline": bool(row.get("baseline"))}
        if row.get("error") and not isnan(row.get("error")):
            attrs["error"] = str(row["error"])
        params = {p: typed(p, row[p]) for p in dists}
        if status in FINISHED:
            add_finished(study, params, dists, status, values, attrs)
        else:  # still running when the driver died: it continues as this trial
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, state=TrialState.RUNNING,
                                                      intermediate_values=values, user_attrs={"status": status, **attrs}))
    if any(old != new for old, new in renumber.items()):
        _renumber(tables, renumber)
    return study


def _renumber(tables: StudyTables, renumber: dict[int, int]) -> None:
    tables.trials = {renumber[n]: {**row, "optuna_trial": renumber[n]} for n, row in tables.trials.items()}
    tables.epochs = {(renumber[n], e): {**row, "optuna_trial": renumber[n]} for (n, e), row in tables.epochs.items() if n in renumber}


def rebuild_trials(tables: StudyTables, study: optuna.Study) -> None:
    """Trial rows from Optuna (parameters, how each ended) and the epoch rows (everything measured)."""
    for ft in study.get_trials(deepcopy=False):
        if ft.state == TrialState.WAITING or is_observation(ft):
            continue
        config = {**ft.params, "baseline": bool(ft.user_attrs.get("baseline", False))}
        tables.on_start(ft.number, str(ft.user_attrs.get("ray_trial_id", "")), config)
        _end_from_optuna(tables, ft)


def rebuild_epochs(tables: StudyTables, study: optuna.Study) -> None:
    """Epoch rows from Optuna's intermediate values: validation accuracy only (losses and times are lost)."""
    for ft in study.get_trials(deepcopy=False):
        if is_observation(ft):
            continue
        for epoch, value in ft.intermediate_values.items():
            tables.epochs[(ft.number, int(epoch))] = {"trial_id": str(ft.user_attrs.get("ray_trial_id", "")), "optuna_trial": ft.number,
                                                     "epoch": int(epoch), "val_acc": float(value), "diverged": False}


def _end_from_optuna(tables: StudyTables, ft: optuna.trial.FrozenTrial) -> None:
    if not ft.state.is_finished():
        return
    row = tables.trials[ft.number]
    tables.summarise(ft.number)
    row["status"] = status = status_of(ft)
    if status in (ERRORED, TIMED_OUT):
        row["error"] = ft.user_attrs.get("error", "the trial failed")


def prepare(folder: StudyFolder, settings: StudySettings, params: list[str], decisions_of) -> StudyState:
    """Read, repair and reconcile the study; ``decisions_of(tables)`` replays ASHA and returns each sample's
    last decision (``"STOP"``/``"CONTINUE"``)."""
    max_epochs = int(settings.base["epochs"])
    tables, damaged = read_tables(folder, params, max_epochs, settings.seed)
    study, why = open_optuna(folder, settings.name)
    notes: list[str] = []
    trials_bad, epochs_bad = folder.trials.name in damaged, folder.epochs.name in damaged

    def lost(*files: str) -> UserError:
        return UserError(f"{' and '.join(files)} of study {settings.name!r} are both lost: the study cannot be rebuilt honestly "
                         "from what is left; start it again under a new --name")

    if study is None and (why != "missing" or tables.trials or trials_bad):
        if trials_bad:
            raise lost(f"optuna.db ({why})", f"trials.parquet ({damaged[folder.trials.name]})")
        if epochs_bad:
            raise lost(f"optuna.db ({why})", f"epochs.parquet ({damaged[folder.epochs.name]})")
        study = rebuild_optuna(folder, settings, tables)
        kept = " (the damaged file is kept beside it)" if why != "missing" else ""
        notes.append(f"optuna.db was {why}: rebuilt it from trials.parquet and epochs.parquet, {len(tables.trials)} trial(s){kept}")
    elif study is not None and trials_bad:
        if epochs_bad:
            raise lost(f"trials.parquet ({damaged[folder.trials.name]})", f"epochs.parquet ({damaged[folder.epochs.name]})")
        aside = set_aside(folder.trials)
        rebuild_trials(tables, study)
        notes.append(f"trials.parquet was damaged ({damaged[folder.trials.name]}): rebuilt it from optuna.db and "
                     f"epochs.parquet (the damaged file is kept as {aside.name})")
    elif study is not None and not folder.trials.exists():
        rebuild_trials(tables, study)  # the driver died before it wrote its first row: nothing was lost
    elif study is not None and epochs_bad:
        aside = set_aside(folder.epochs)
        rebuild_epochs(tables, study)
        for number in tables.trials:
            tables.summarise(number)
        notes.append(f"epochs.parquet was damaged ({damaged[folder.epochs.name]}): rebuilt each epoch's validation accuracy "
                     f"from optuna.db; their losses and times are lost (the damaged file is kept as {aside.name})")
    if study is None:  # a new study, or one stopped before its first trial
        return StudyState(tables=tables, notes=notes)

    decisions = decisions_of(tables)
    state = StudyState(tables=tables, notes=notes)
    frozen = study.get_trials(deepcopy=False)
    for ft in frozen:
        if ft.state == TrialState.WAITING or is_observation(ft):
            continue  # the enqueued baseline (not yet asked for: the next ask takes it); another study's trial (--warm-start)
        row = tables.trials.get(ft.number)
        if ft.state.is_finished():
            if row is None:
                tables.on_start(ft.number, str(ft.user_attrs.get("ray_trial_id", "")), {**ft.params, "baseline": ft.user_attrs.get("baseline")})
            if row is None or row.get("status") == RUNNING:
                _end_from_optuna(tables, ft)
            state.finished += 1
            continue
        status = row.get("status") if row else RUNNING
        rows = tables.rows_of(ft.number)
        if status == RUNNING:
            if any(r.get("diverged") for r in rows):
                status = DIVERGED
            elif rows and rows[-1]["epoch"] >= max_epochs:
                status = COMPLETED
            elif decisions.get(ft.number) == "STOP":
                status = STOPPED_EARLY
        if status in FINISHED:
            tables.summarise(ft.number)
            row = tables.trials[ft.number]
            row["status"] = status
            best = row.get("best_val_acc")
            tell_finished(study, handle(study, ft.number), status, None if isnan(best) else float(best),
                          error=None if isnan(row.get("error")) else str(row.get("error")))
            state.finished += 1
            continue
        state.unfinished.append(Unfinished(ft.number, dict(ft.params), bool(ft.user_attrs.get("baseline", False)),
                                          None if row is None or isnan(row.get("trial_dir")) else str(row.get("trial_dir"))))
    known = {ft.number for ft in frozen if not is_observation(ft)}
    for number in [n for n in tables.trials if n not in known]:  # rows Optuna never had (cannot happen but by hand)
        tables.forget(number)
        notes.append(f"dropped trial {number} from the tables: optuna.db has no such trial")
    return state


def retry_timed_out(folder: StudyFolder, settings: StudySettings, state, log=print) -> None:
    """--retry-timed-out: each timed-out configuration runs again as a new trial (Optuna cannot reopen a failed one)."""
    again = [row for row in state.tables.trials.values() if row.get("status") == TIMED_OUT]
    if not again:
        log("--retry-timed-out: no trial timed out")
        return
    study = optuna.load_study(study_name=settings.name, storage=storage_url(folder.optuna_db))
    for row in again:
        study.enqueue_trial({p: typed(p, row[p]) for p in settings.space}, user_attrs={"retry_of": int(row["optuna_trial"])})
    grow(settings, len(again))
    log(f"--retry-timed-out: trial(s) {', '.join(str(r['optuna_trial']) for r in again)} run again as new trial(s); "
        f"the study grows to {settings.samples}")
