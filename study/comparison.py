"""Several studies side by side, and which winner is better where they share data (``python -m study.compare``).

For each study: its answer (the confirmed winner, its gain over the book's recipe with its interval, its test result
where it was rerun), the winner's hyperparameters, which hyperparameters mattered, its wall time and its trials'
seconds, and whether its data and weights are the first study's (what differs, named).

Where a study shares the first study's data (equal data fingerprints: the same images, wherever they lie), its
winner and the first study's are compared **paired**, on the same cross-validation folds with the same seed per
fold: the first study's confirmation design (its folds, its split seed, fold k trained with its seed + k). A run
either study's confirmation stage already made on exactly that fold and seed is reused; the others are trained
(``--parallel``: as Ray tasks). The per-fold differences give a mean and a 95% t-interval (``study.decision.paired``);
"within noise" is an answer too. The runs used land in ``compare.parquet`` beside ``compare.html``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from trainable import TrainConfig, UserError

from study.analysis import Analysis, analyze, answer_lines, winner_row
from study.decision import CONFIRM_FOLDS, Paired, images_se_of, paired
from study.folder import StudyFolder, StudySettings, write_parquet_atomic
from study.values import HYPERPARAMETERS, fmt, isnan, typed

COMPARE_FILE = "compare.parquet"
COMPARE_REPORT = "compare.html"
COMPARE_TYPES = {"study": "str", "optuna_trial": "int64", "fold": "int64", "cv_folds": "int64", "seed": "int64", "split_seed": "int64",
                 "val_acc": "float64", "seconds": "float64", "source": "str"}


@dataclass
class Entry:
    """One study as the comparison sees it."""

    folder: StudyFolder
    analysis: Analysis
    winner: int | None  # the confirmed winner, else rank 1 (None: no usable trial)
    confirmed: bool
    differences: list[str]  # how its data and weights differ from the first study's (empty: the same)

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

    def winner_params(self) -> dict:
        trials = self.analysis.data.trials
        row = trials[trials["optuna_trial"] == self.winner].iloc[0]
        return {p: typed(p, row[p]) for p in self.settings.space}

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
    trained: int = 0  # runs trained for it (the rest came from the studies' confirmation stages)
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
    pairs: list[PairedWinners] = field(default_factory=list)
    runs: pd.DataFrame | None = None


def classes_of(settings: StudySettings) -> list[str]:
    return sorted((settings.data_fingerprint or {}).get("train", {}))


def differences(first: StudySettings, other: StudySettings) -> list[str]:
    """How ``other``'s data and weights differ from ``first``'s (empty: the same)."""
    found = []
    if first.data_fingerprint != other.data_fingerprint:
        found.append(f"other data ({other.base.get('data_dir') or 'the book hotdog set'})")
    if (first.base.get("weights"), first.weights_fingerprint) != (other.base.get("weights"), other.weights_fingerprint):
        if first.weights_fingerprint is None or first.weights_fingerprint != other.weights_fingerprint:
            found.append(f"other weights ({other.base.get('weights')})")
    return found


def differences_of_recipe(first: Entry, other: Entry) -> list[str]:
    """The fixed settings two winners trained with differently (weights, image size, epochs, batch size, momentum)."""
    keys = ("weights", "image_size", "epochs", "batch_size", "momentum", "precision")
    return [k for k in keys if k not in other.settings.space and first.settings.base.get(k) != other.settings.base.get(k)]


def read_entries(paths: list[str]) -> list[Entry]:
    entries = []
    for path in paths:
        folder = StudyFolder(Path(path).expanduser())
        if not folder.path.is_dir() or not folder.exists():
            raise UserError(f"{path} is not a study: pass folders written by python -m study.run, e.g. results/<name>")
        analysis = analyze(folder)
        row, what = winner_row(analysis.data)
        entries.append(Entry(folder, analysis, None if row is None else int(row["optuna_trial"]), what == "confirmed winner", []))
    first = entries[0]
    for entry in entries[1:]:
        if classes_of(entry.settings) != classes_of(first.settings):
            raise UserError(f"studies {first.name!r} and {entry.name!r} have different classes ({', '.join(classes_of(first.settings))} "
                            f"against {', '.join(classes_of(entry.settings))}): their accuracies answer different questions; compare "
                            "studies of the same classes")
        entry.differences = differences(first.settings, entry.settings)
    if len({e.folder.path for e in entries}) < len(entries):
        raise UserError("a study is named twice: compare different studies")
    return entries


# --- the paired comparison ------------------------------------------------------------------------------
def design(first: Entry) -> tuple[int, int, list[int]]:
    """The first study's confirmation design: its folds, its split seed, each fold's training seed."""
    from study.driver.confirm import fold_seed

    folds = int((first.settings.confirm or {}).get("folds") or CONFIRM_FOLDS)
    return folds, int(first.settings.base["split_seed"]), [fold_seed(first.settings.seed, k) for k in range(folds)]


def existing_run(entry: Entry, fold: int, folds: int, seed: int, split_seed: int) -> dict | None:
    """The entry's winner's confirmation run on exactly that fold, fold count, seed and split, where it made one."""
    runs = entry.analysis.data.confirm
    if runs is None or int(entry.settings.base["split_seed"]) != split_seed:
        return None
    match = runs[(runs["optuna_trial"] == entry.winner) & (runs["fold"] == fold) & (runs["cv_folds"] == folds)
                 & (runs["seed"] == seed) & runs["status"].isin(["completed", "diverged", "errored", "timed_out"])]
    if match.empty:
        return None
    row = match.iloc[0]
    return {"val_acc": float(row["val_acc"]) if row["status"] == "completed" else 0.0, "seconds": float(row["seconds"]),
            "source": "confirm.parquet"}


def fold_config(entry: Entry, fold: int, folds: int, seed: int, split_seed: int) -> TrainConfig:
    """The entry's winner as its study trained it, on the first study's fold ``fold`` with seed ``seed``."""
    return TrainConfig.from_dict({**entry.settings.base, **entry.winner_params(), "val_fold": fold, "cv_folds": folds, "seed": seed,
                                  "split_seed": split_seed, "val_last_only": True})


def run_fold(cfg: TrainConfig, data) -> dict:
    """Train ``cfg`` on its fold of ``data`` (every training image, decoded); its validation accuracy at the end."""
    from trainable import train
    from trainable.data import split_fold

    t0 = time.perf_counter()
    result = train(cfg, split_fold(data, cfg.val_fraction, cfg.split_seed, cfg.val_fold, cfg.cv_folds))
    last = result.history[-1] if result.history else None
    acc = 0.0 if result.status == "diverged" or last is None or isnan(last.val_acc) else float(last.val_acc)  # as the stage counts it
    return {"val_acc": acc, "seconds": time.perf_counter() - t0, "source": "trained"}


def compare(paths: list[str], parallel: bool = False, log=print) -> Comparison:
    entries = read_entries(paths)
    comparison = Comparison(entries)
    first = entries[0]
    folds, split_seed, seeds = design(first)
    rows: list[dict] = []
    todo: list[tuple[Entry, int, TrainConfig]] = []
    sharing = [e for e in entries[1:] if not any(d.startswith("other data") for d in e.differences)]
    for entry in entries[1:]:
        if entry not in sharing:
            comparison.pairs.append(PairedWinners(first, entry, folds, seeds, None, note="no paired comparison: "
                                                  f"{'; '.join(entry.differences)} (a winner is judged on its own study's images)"))
    if sharing and first.winner is not None:
        for entry in [first, *sharing]:
            if entry.winner is None:
                continue
            for k in range(folds):
                found = existing_run(entry, k, folds, seeds[k], split_seed)
                base = {"study": entry.name, "optuna_trial": entry.winner, "fold": k, "cv_folds": folds, "seed": seeds[k],
                        "split_seed": split_seed}
                if found is not None:
                    rows.append({**base, **found})
                else:
                    todo.append((entry, k, fold_config(entry, k, folds, seeds[k], split_seed)))
        if todo:
            log(f"training {len(todo)} run(s) that no confirmation stage made on these folds and seeds"
                + (" (as Ray tasks)" if parallel else ""))
            for (entry, k, cfg), result in zip(todo, train_missing([cfg for _, _, cfg in todo], parallel, log)):
                rows.append({"study": entry.name, "optuna_trial": entry.winner, "fold": k, "cv_folds": folds, "seed": seeds[k],
                             "split_seed": split_seed, **result})
        frame = pd.DataFrame(rows, columns=list(COMPARE_TYPES)).astype(COMPARE_TYPES)
        comparison.runs = frame
        mine = frame[frame["study"] == first.name].set_index("fold")["val_acc"]
        for entry in sharing:
            if entry.winner is None:
                comparison.pairs.append(PairedWinners(first, entry, folds, seeds, None, note=entry.no_winner()))
                continue
            if entry.winner_params() == first.winner_params() and not differences_of_recipe(first, entry):
                comparison.pairs.append(PairedWinners(first, entry, folds, seeds, None, note="the same configuration as "
                                                      f"{first.name}'s winner, trained the same way: nothing to tell apart"))
                continue
            theirs = frame[frame["study"] == entry.name].set_index("fold")["val_acc"]
            shared = sorted(set(mine.index) & set(theirs.index))
            trained = sum(1 for e, _, _ in todo if e is entry or e is first)
            images = first.settings.training_images()  # every fold's runs together judged on each training image once
            floor = images_se_of(theirs[shared], mine[shared], images)
            comparison.pairs.append(PairedWinners(first, entry, folds, seeds, paired([theirs[k] - mine[k] for k in shared], shared,
                                                                                     images_se=floor), trained=trained))
    elif sharing:
        for entry in sharing:
            comparison.pairs.append(PairedWinners(first, entry, folds, seeds, None, note=first.no_winner()))
    return comparison


def train_missing(configs: list[TrainConfig], parallel: bool, log) -> list[dict]:
    """Each config's run on its fold, in order: one after the other here, or as Ray tasks (``parallel``)."""
    from trainable import prepare_data

    cache: dict[tuple, object] = {}

    def data_for(cfg: TrainConfig):
        key = (cfg.data_dir, cfg.image_size)
        if key not in cache:
            cache[key] = prepare_data(cfg.data_dir, cfg.image_size, 0.0, cfg.split_seed, min_per_class=2)
        return cache[key]

    if not parallel:
        out = []
        for i, cfg in enumerate(configs, 1):
            out.append(run_fold(cfg, data_for(cfg)))
            log(f"  run {i}/{len(configs)}: fold {cfg.val_fold}, seed {cfg.seed}: val acc {out[-1]['val_acc']:.3f} in {out[-1]['seconds']:.0f}s")
        return out
    import ray

    from study.driver.session import start_ray

    log(start_ray(None))
    try:
        task = ray.remote(num_cpus=1)(run_fold)
        refs = {}
        pending = []
        for cfg in configs:
            key = (cfg.data_dir, cfg.image_size)
            if key not in refs:
                refs[key] = ray.put(data_for(cfg))
            pending.append(task.remote(cfg.replace(threads=1), refs[key]))
        return ray.get(pending)
    finally:
        ray.shutdown()


def write_runs(comparison: Comparison, out: Path) -> Path | None:
    if comparison.runs is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(comparison.runs, out / COMPARE_FILE)
    return out / COMPARE_FILE


# --- what is shown --------------------------------------------------------------------------------------
def overview_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    columns = ["study", "trials", "winner", "how named", "wall time", "trials' seconds", "data and weights"]
    rows = []
    for i, e in enumerate(comparison.entries):
        rows.append([e.name, str(len(e.analysis.data.trials)), "-" if e.winner is None else f"trial {e.winner}",
                     "confirmed" if e.confirmed else "rank 1 (no confirmation)", f"{e.wall_s():.0f} s", f"{e.trial_s():.0f} s",
                     "the first study" if i == 0 else ("; ".join(e.differences) or "the same as the first study's")])
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
    return {e.name: answer_lines(e.analysis)[:3] for e in comparison.entries}


def write_html(comparison: Comparison, path: Path) -> Path:
    """``compare.html``: self-contained (no script, no file beside it)."""
    import datetime as dt
    import html

    from study.report import CSS, html_table

    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>studies compared</title><style>{CSS}</style></head><body>",
             f"<h1>Studies compared: {html.escape(', '.join(e.name for e in comparison.entries))}</h1>",
             f"<p class=\"muted\">written {dt.datetime.now():%Y-%m-%d %H:%M}; the first study, {html.escape(comparison.entries[0].name)}, "
             "sets the data and the folds the others are compared on.</p>", "<h2>Which winner is better</h2><ul>"]
    parts += [f"<li>{html.escape(p.line())}</li>" for p in comparison.pairs] or ["<li>one study: nothing to compare</li>"]
    parts.append("</ul><h2>The studies</h2>")
    columns, rows = overview_rows(comparison)
    parts.append(html_table(columns, rows, {"study", "winner", "how named", "data and weights"}))
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
    from study.folder import write_text_atomic

    write_text_atomic(path, "\n".join(parts))
    return path
