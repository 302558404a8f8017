"""Several studies side by side, and which winner is better where they share data (``python -m study.compare``).

For each study: its answer (the confirmed winner, its gain over the book's recipe with its interval, its test result
where it was rerun), the winner's hyperparameters, which hyperparameters mattered, its wall time and its trials'
seconds, and how its data, weights and recipe differ from the first study's (``study.core.comparability``).

Where a study shares the first study's data, its winner and the first study's are compared **paired**, on the same
cross-validation folds with the same seed per fold: the first study's confirmation design (its folds, its split seed,
fold k trained with its seed + k). A run either study's confirmation stage already made on exactly that fold and seed
is reused, and so is a run an earlier comparison in the same ``--out`` trained; the others are trained
(``study.driver.runner``: one after the other, or ``--parallel`` as Ray tasks, with the same numbers either way: each
trains with the thread count its study's trials had). Two winners with the same configuration trained the same way
are not trained at all: there is nothing to tell apart. The per-fold differences give a mean and a 95% t-interval
(``study.core.decision.paired``); "within noise" is an answer too. The runs used land in ``compare.parquet`` beside
``compare.html``; the output folder is checked before anything trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from trainable import TrainConfig, UserError

from study.core.comparability import Difference, differences
from study.core.decision import CONFIRM_FOLDS, Paired, images_se_of, paired
from study.core.folder import StudyFolder, open_study, write_parquet_atomic
from study.core.settings import StudySettings
from study.core.values import fmt
from study.core.vocabulary import COMPLETED, DIVERGED, HYPERPARAMETERS, RUN_ENDED, fold_seed, run_score, typed
from study.findings.analysis import Analysis, analyze, answer

COMPARE_FILE = "compare.parquet"
COMPARE_REPORT = "compare.html"
COMPARE_TYPES = {"study": "str", "study_path": "str", "optuna_trial": "int64", "fold": "int64", "cv_folds": "int64", "seed": "int64",
                 "split_seed": "int64", "val_acc": "float64", "seconds": "float64", "source": "str"}
KEY = ["study_path", "optuna_trial", "fold", "cv_folds", "seed", "split_seed"]  # a run is this, wherever it was made


@dataclass
class Entry:
    """One study as the comparison sees it."""

    folder: StudyFolder
    analysis: Analysis
    winner: int | None  # the confirmed winner, else rank 1 (None: no usable trial)
    confirmed: bool
    differences: list[Difference] = field(default_factory=list)  # how it differs from the first study (empty: the same)

    @property
    def settings(self) -> StudySettings:
        return self.analysis.data.settings

    @property
    def name(self) -> str:
        return self.settings.name

    def label(self) -> str:
        return self.name if self.winner is None else f"{self.name}'s trial {self.winner}"

    def no_winner(self) -> str:
        """Why the study has no winner to compare: no trial with a validation accuracy, and where it stands."""
        state = self.analysis.data.state()
        return f"{self.name} has no trial with a validation accuracy" + (f" ({state})" if state else "")

    def winner_row(self):
        trials = self.analysis.data.trials
        return trials[trials["optuna_trial"] == self.winner].iloc[0]

    def winner_params(self) -> dict:
        row = self.winner_row()
        return {p: typed(p, row[p]) for p in self.settings.space}

    def other_data(self) -> bool:
        return any(d.kind == "data" for d in self.differences)

    def trained_otherwise(self) -> list[Difference]:
        """What its winner trained with otherwise than the first study's (weights, recipe): not the same run even with the
        same hyperparameters."""
        return [d for d in self.differences if d.kind in ("weights", "recipe")]

    def wall_s(self) -> float:
        return float(sum((r.get("timings") or {}).get("wall_s") or 0.0 for r in self.settings.runs))

    def trial_s(self) -> float:
        return float(self.analysis.data.trials["seconds"].fillna(0).sum())


@dataclass
class PairedWinners:
    first: Entry
    other: Entry
    folds: int
    seeds: list[int]
    result: Paired | None  # other minus first over the folds
    trained: int = 0  # runs trained for it (the rest came from the studies' confirmation stages or an earlier comparison)
    note: str = ""

    def line(self) -> str:
        a, b = self.first.label(), self.other.label()
        if self.note:
            return f"{b} vs {a}: {self.note}"
        how = f" ({self.trained} run(s) trained for it)" if self.trained else ""
        verdict = "better" if self.result.beyond_noise and self.result.mean > 0 else "worse" if self.result.beyond_noise else "within noise of it"
        return (f"{b} vs {a}, on {self.folds} folds with the same seed per fold{how}: {self.result.describe('fold')}; "
                f"{self.other.name}'s winner is {verdict}")


@dataclass
class Comparison:
    entries: list[Entry]
    out: Path
    pairs: list[PairedWinners] = field(default_factory=list)
    runs: pd.DataFrame | None = None


def classes_of(settings: StudySettings) -> list[str]:
    return sorted((settings.data_fingerprint or {}).get("train", {}))


def read_entries(paths: list[str]) -> list[Entry]:
    entries = []
    for path in paths:
        folder = open_study(path)
        analysis = analyze(folder)
        row, what = analysis.data.winner()
        entries.append(Entry(folder, analysis, None if row is None else int(row["optuna_trial"]), what == "confirmed winner"))
    if len({e.folder.path for e in entries}) < len(entries):
        raise UserError("a study is named twice: compare different studies")
    first = entries[0]
    for entry in entries[1:]:
        if classes_of(entry.settings) != classes_of(first.settings):
            raise UserError(f"studies {first.name!r} and {entry.name!r} have different classes ({', '.join(classes_of(first.settings))} "
                            f"against {', '.join(classes_of(entry.settings))}): their accuracies answer different questions; compare "
                            "studies of the same classes")
        entry.differences = differences(first.settings, entry.settings)
    return entries


def default_out(entries: list[Entry]) -> Path:
    return entries[0].folder.path.parent / ("compare-" + "-".join(e.name for e in entries))


# --- the paired comparison ------------------------------------------------------------------------------
def design(first: Entry) -> tuple[int, int, list[int]]:
    """The first study's confirmation design: its folds, its split seed, each fold's training seed."""
    folds = int((first.settings.confirm or {}).get("folds") or CONFIRM_FOLDS)
    return folds, int(first.settings.base["split_seed"]), [fold_seed(first.settings.seed, k) for k in range(folds)]


def confirmation_run(entry: Entry, fold: int, folds: int, seed: int, split_seed: int) -> dict | None:
    """The entry's winner's confirmation run on exactly that fold, fold count, seed and split, where it made one."""
    runs = entry.analysis.data.confirm
    if runs is None or int(entry.settings.base["split_seed"]) != split_seed:
        return None
    match = runs[(runs["optuna_trial"] == entry.winner) & (runs["fold"] == fold) & (runs["cv_folds"] == folds)
                 & (runs["seed"] == seed) & runs["status"].isin(RUN_ENDED)]
    if match.empty:
        return None
    row = match.iloc[0]
    return {"val_acc": run_score(row["status"], row["val_acc"]), "seconds": float(row["seconds"]), "source": "confirm.parquet"}


def fold_config(entry: Entry, fold: int, folds: int, seed: int, split_seed: int) -> TrainConfig:
    """The entry's winner as its study trained it (its threads too: they change a seeded run's numbers), on the first
    study's fold ``fold`` with seed ``seed``."""
    return TrainConfig.from_dict({**entry.settings.base, **entry.winner_params(), "val_fold": fold, "cv_folds": folds, "seed": seed,
                                  "split_seed": split_seed, "val_last_only": True,
                                  "threads": entry.analysis.data.threads_of(entry.winner_row())})


def run_fold(cfg: TrainConfig, data, report=None, gpu_share: float = 0.0, **_) -> dict:
    """Train ``cfg`` on its fold of ``data`` (every training image, decoded); its score at the end, as the confirmation
    stage counts it (``study.core.vocabulary.run_score``)."""
    from trainable import train
    from trainable.data import split_fold

    from study.driver.runner import hold_to_gpu_share

    hold_to_gpu_share(gpu_share)
    t0 = time.perf_counter()
    result = train(cfg, split_fold(data, cfg.val_fraction, cfg.split_seed, cfg.val_fold, cfg.cv_folds))
    last = result.history[-1] if result.history else None
    status = DIVERGED if result.status == "diverged" or last is None else COMPLETED
    return {"val_acc": run_score(status, None if last is None else last.val_acc), "seconds": time.perf_counter() - t0, "source": "trained"}


def earlier_runs(out: Path) -> dict[tuple, dict]:
    """The runs an earlier comparison in ``out`` used, by their key: what is trained once need not be trained again."""
    path = out / COMPARE_FILE
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError):
        return {}
    if not set(KEY) <= set(frame.columns):
        return {}  # a compare.parquet from before its runs were keyed by their study's folder
    return {tuple(r[k] for k in KEY): r for r in frame.to_dict("records")}


def compare(paths: list[str], out: str | Path | None = None, parallel: bool = False, log=print, cache: bool = True) -> Comparison:
    """The studies at ``paths`` side by side, the first study's winner paired with each other's that shares its data.
    ``out``: where compare.parquet (and compare.html) go, checked writable before any run trains."""
    from trainable.cli import check_output_folder

    entries = read_entries(paths)
    out = Path(out).expanduser() if out else default_out(entries)
    check_output_folder(out, "--out", holds="the comparison", kind="folder")
    comparison = Comparison(entries, out)
    first = entries[0]
    folds, split_seed, seeds = design(first)
    for entry in entries[1:]:
        if entry.other_data():
            why = "; ".join(d.text() for d in entry.differences if d.kind == "data")
            comparison.pairs.append(PairedWinners(first, entry, folds, seeds, None, note=f"no paired comparison: {why} (a winner is "
                                                  "judged on its own study's images)"))
    sharing = [e for e in entries[1:] if not e.other_data()]
    if not sharing:
        return comparison
    if first.winner is None:
        comparison.pairs += [PairedWinners(first, e, folds, seeds, None, note=first.no_winner()) for e in sharing]
        return comparison
    paired_with: list[Entry] = []
    for entry in sharing:
        if entry.winner is None:
            comparison.pairs.append(PairedWinners(first, entry, folds, seeds, None, note=entry.no_winner()))
        elif entry.winner_params() == first.winner_params() and not entry.trained_otherwise():
            comparison.pairs.append(PairedWinners(first, entry, folds, seeds, None, note="the same configuration as "
                                                  f"{first.name}'s winner, trained the same way: nothing to tell apart"))
        else:
            paired_with.append(entry)
    if not paired_with:
        return comparison
    rows: list[dict] = []
    todo: list[dict] = []
    earlier = earlier_runs(out)
    for entry in [first, *paired_with]:
        for k in range(folds):
            base = {"study": entry.name, "study_path": str(entry.folder.path), "optuna_trial": entry.winner, "fold": k,
                    "cv_folds": folds, "seed": seeds[k], "split_seed": split_seed}
            found = confirmation_run(entry, k, folds, seeds[k], split_seed) or earlier.get(tuple(base[key] for key in KEY))
            if found is not None:
                rows.append({**base, "val_acc": found["val_acc"], "seconds": found["seconds"], "source": found["source"]})
            else:
                todo.append({"cfg": fold_config(entry, k, folds, seeds[k], split_seed), "row": base, "entry": entry.name})
    if todo:
        from trainable import prepare_data

        from study.driver.runner import run_each

        reused = sum(r["source"] != "confirm.parquet" for r in rows)
        log(f"training {len(todo)} run(s) that no confirmation stage made on these folds and seeds"
            + (f" ({reused} reused from the earlier comparison in {out})" if reused else "") + (" (as Ray tasks)" if parallel else ""))
        decoded: dict[tuple, object] = {}

        def data_for(cfg: TrainConfig):
            key = (cfg.data_dir, cfg.image_size, cfg.split_seed)
            if key not in decoded:
                decoded[key] = prepare_data(cfg.data_dir, cfg.image_size, 0.0, cfg.split_seed, min_per_class=2, cache=cache, log=log)
            return decoded[key]

        gpus = float(first.settings.gpus_granted or 0)
        for i, (job, result) in enumerate(run_each(run_fold, todo, data_for, parallel, gpus, log), 1):
            rows.append({**job["row"], **result})
            log(f"  run {i}/{len(todo)}: {job['entry']} fold {job['cfg'].val_fold}, seed {job['cfg'].seed}: val acc "
                f"{result['val_acc']:.3f} in {result['seconds']:.0f}s")
    frame = pd.DataFrame(rows, columns=list(COMPARE_TYPES)).astype(COMPARE_TYPES)
    comparison.runs = frame
    write_runs(comparison)  # at once: what was trained is kept, whatever happens next
    mine = frame[frame["study_path"] == str(first.folder.path)].set_index("fold")["val_acc"]
    images = first.settings.training_images()  # every fold's runs together judged on each training image once
    for entry in paired_with:
        theirs = frame[frame["study_path"] == str(entry.folder.path)].set_index("fold")["val_acc"]
        shared = sorted(set(mine.index) & set(theirs.index))
        trained = sum(1 for job in todo if job["entry"] in (entry.name, first.name))
        floor = images_se_of(theirs[shared], mine[shared], images)
        comparison.pairs.append(PairedWinners(first, entry, folds, seeds, paired([theirs[k] - mine[k] for k in shared], shared,
                                                                                 images_se=floor), trained=trained))
    return comparison


def write_runs(comparison: Comparison) -> Path | None:
    if comparison.runs is None:
        return None
    comparison.out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(comparison.runs, comparison.out / COMPARE_FILE)
    return comparison.out / COMPARE_FILE


# --- what is shown --------------------------------------------------------------------------------------
def overview_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    columns = ["study", "trials", "winner", "how named", "wall time", "trials' seconds", "how it differs"]
    rows = []
    for i, e in enumerate(comparison.entries):
        rows.append([e.name, str(len(e.analysis.data.trials)), "-" if e.winner is None else f"trial {e.winner}",
                     "confirmed" if e.confirmed else "rank 1 (no confirmation)", f"{e.wall_s():.0f} s", f"{e.trial_s():.0f} s",
                     "the first study" if i == 0 else ("; ".join(d.text() for d in e.differences) or "the same as the first study's")])
    return columns, rows


def params_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    names = [p for p in HYPERPARAMETERS if any(p in e.settings.space for e in comparison.entries)]
    rows = []
    for e in comparison.entries:
        params = e.winner_params() if e.winner is not None else {}
        rows.append([e.name, *[fmt(params.get(p, e.settings.base.get(p))) + ("" if p in e.settings.space else " (fixed)") for p in names]])
    return ["study", *names], rows


def importance_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    names = [p for p in HYPERPARAMETERS if any(p in e.settings.space for e in comparison.entries)]
    rows = []
    for e in comparison.entries:
        imp = e.analysis.importance
        rows.append([e.name, *[(f"{imp.values[p]:.2f}" if imp.values and p in imp.values else "-") for p in names]])
    return ["study", *names], rows


def answers(comparison: Comparison) -> dict[str, list[str]]:
    """Each study's winner, its gain over the book's recipe and its test result."""
    return {e.name: answer(e.analysis).headline() for e in comparison.entries}


def write_html(comparison: Comparison, path: Path) -> Path:
    """``compare.html``: self-contained (no script, no file beside it)."""
    import datetime as dt
    import html

    from study.findings.report import CSS, html_table

    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>studies compared</title><style>{CSS}</style></head><body>",
             f"<h1>Studies compared: {html.escape(', '.join(e.name for e in comparison.entries))}</h1>",
             f"<p class=\"muted\">written {dt.datetime.now():%Y-%m-%d %H:%M}; the first study, {html.escape(comparison.entries[0].name)}, "
             "sets the data and the folds the others are compared on.</p>", "<h2>Which winner is better</h2><ul>"]
    parts += [f"<li>{html.escape(p.line())}</li>" for p in comparison.pairs] or ["<li>one study: nothing to compare</li>"]
    parts.append("</ul><h2>The studies</h2>")
    columns, rows = overview_rows(comparison)
    parts.append(html_table(columns, rows, {"study", "winner", "how named", "how it differs"}))
    parts.append("<h2>Each study's answer</h2>")
    for name, lines in answers(comparison).items():
        parts.append(f"<h3>{html.escape(name)}</h3><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
    columns, rows = params_rows(comparison)
    parts.append("<h2>The winners' hyperparameters</h2>" + html_table(columns, rows, {"study"}))
    columns, rows = importance_rows(comparison)
    parts.append("<h2>How much each hyperparameter mattered</h2><p class=\"muted\">Each study's own importance (its method as "
                 "study.analyze names it); a hyperparameter a study did not search: -.</p>" + html_table(columns, rows, {"study"}))
    if comparison.runs is not None and len(comparison.runs):
        frame = comparison.runs
        rows = [[r["study"], str(r["optuna_trial"]), str(r["fold"]), str(r["seed"]), f"{r['val_acc']:.3f}", f"{r['seconds']:.0f}", r["source"]]
                for r in frame.to_dict("records")]
        parts.append("<h2>The paired runs</h2>" + html_table(["study", "trial", "fold", "seed", "val acc", "seconds", "from"], rows,
                                                          {"study", "from"}))
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    from study.core.folder import write_text_atomic

    write_text_atomic(path, "\n".join(parts))
    return path
