"""python -m study.analyze and python -m study.rerun (issue 4).

Most tests run on a synthetic study folder (the files study.run writes, made without Ray, in a second);
the ``slow`` ones build one tiny real study with study.run and analyze and rerun it end to end.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import trainable.tv_compat  # noqa: F401  (first: the torchvision-on-CPU import fix)

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from PIL import Image

from study.findings import analysis as analysis_mod
from study.findings import importance as importance_mod
from study.findings import ranges as ranges_mod
from study import analyze as analyze_mod
from study import rerun as rerun_mod
from study.findings import retrain as retrain_mod
from study.core.folder import StudyFolder, storage_url
from study.core.settings import StudySettings
from study.core.tables import StudyTables
from study.core.space import BASELINE, DEFAULT_SPACE, to_distributions
from trainable import TrainConfig, evaluate, prepare_data
from trainable.cli import run_main
from trainable.loop import resolve_device, use_bf16
from trainable.model import build_model

PARAMS = list(DEFAULT_SPACE)
REPO = Path(__file__).resolve().parents[1]
PNGS = ("parallel.png", "importance.png", "params.png", "curves.png")


# --- data and study folders --------------------------------------------------------------------------
def make_images(root: Path, n_train: int = 16, n_test: int = 6) -> Path:
    """Two easy classes of 40x48 noise images: a reddish, b bluish."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls, channel in (("a", 0), ("b", 2)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 110, (48, 40, 3)).astype(np.uint8)
                pixels[..., channel] = rng.integers(160, 255, (48, 40))
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _sample(rng: np.random.Generator) -> dict:
    out = {}
    for name, spec in DEFAULT_SPACE.items():
        if spec["type"] == "float":
            lo, hi = math.log10(spec["low"]), math.log10(spec["high"])
            out[name] = float(10 ** rng.uniform(lo, hi))
        elif spec["type"] == "int":
            out[name] = int(rng.integers(spec["low"], spec["high"] + 1))
        else:
            out[name] = str(rng.choice(spec["choices"]))
    return out


def make_fake_study(folder: Path, data_dir: Path, n: int = 14, epochs: int = 3, complete: int | None = None,
                    constant: float | None = None, failures: bool = True, name: str = "fake") -> StudyFolder:
    """The files of a finished study (study.json, trials/epochs.parquet, optuna.db) without running one.

    Accuracy peaks at lr 1e-2 and falls with freeze depth; the worse trials are stopped after epoch 1 (as ASHA
    does) unless ``complete`` says how many run every epoch. With ``failures``, one trial diverges, one errors.
    """
    study_folder = StudyFolder(folder / name)
    study_folder.path.mkdir(parents=True)
    base = TrainConfig(data_dir=str(data_dir), weights="none", epochs=epochs, image_size=32, batch_size=8, val_fraction=0.25)
    settings = StudySettings.from_dict(dict(name=name, base=base.to_dict(), space=DEFAULT_SPACE, samples=n, seed=0,
                             experiment_path=str(study_folder.path / "ray"), created="2026-01-01T00:00:00"))
    study_folder.write_settings(settings)
    dists = to_distributions(DEFAULT_SPACE)
    ostudy = optuna.create_study(study_name=name, storage=storage_url(study_folder.optuna_db), direction="maximize")
    tables = StudyTables(study_folder.path, PARAMS, epochs, seed=0)
    rng = np.random.default_rng(1)
    trials = [{k: BASELINE[k] for k in PARAMS}] + [_sample(rng) for _ in range(n - 1)]
    finals = [constant if constant is not None else
              0.95 - 0.12 * abs(math.log10(p["lr"]) + 2) - 0.03 * p["freeze_depth"] + rng.normal(0, 0.01) for p in trials]
    keep = complete if complete is not None else max(5, n // 2)
    failing = 2 if failures else 0  # the last trial diverges, the one before errors
    ranked = [i for i in np.argsort(finals)[::-1] if i < n - failing]
    full = set(ranked[:keep])
    for number, (params, final) in enumerate(zip(trials, finals)):
        trial_id = f"t{number:04d}"
        config = {**params, "optuna_trial": number, "baseline": number == 0}
        tables.on_start(number, trial_id, config)
        diverged, errored = failures and number == n - 1, failures and number == n - 2
        run = epochs if number in full else 1
        values = {}
        for epoch in range(1, (0 if errored else run) + 1):
            acc = math.nan if diverged else min(1.0, final - (0.0 if constant is not None else 0.04 * (epochs - epoch)))
            values[epoch] = acc
            tables.on_result(number, trial_id, config, {
                "epoch": epoch, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.4, "val_acc": acc, "seconds": 1.0,
                "images_per_s": 30.0, "diverged": diverged, "node_id": "n", "node_ip": "127.0.0.1", "hostname": "h"})
        tables.on_end(number, trial_id, config, "RuntimeError: boom" if errored else None)
        # as study.driver.searcher tells them: diverged trials PRUNED and infeasible, with no value for the diverged epoch
        if errored:
            state, value, inter, status = optuna.trial.TrialState.FAIL, None, {}, "errored"
        elif diverged:
            state, value, inter, status = optuna.trial.TrialState.PRUNED, None, {}, "diverged"
        elif run == epochs:
            state, value, inter, status = optuna.trial.TrialState.COMPLETE, max(values.values()), values, "completed"
        else:
            state, value, inter, status = optuna.trial.TrialState.PRUNED, None, values, "stopped early"
        ostudy.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value, intermediate_values=inter,
                                                   state=state, user_attrs={"status": status},
                                                   constraints={"diverged": 1.0} if diverged else None))
    tables.write()
    return study_folder


def exit_code_and_stderr(capsys, main, argv) -> tuple[int, list[str], str]:
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    captured = capsys.readouterr()
    return exc.value.code, [line for line in captured.err.splitlines() if line.strip()], captured.out


class ExternalRefs(HTMLParser):
    """src/href attributes of tags that point at the network (script bodies are not parsed as tags)."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("src", "href") and value and value.strip().lower().startswith(("http:", "https:", "//")):
                self.found.append(f"<{tag} {key}={value}>")


def check_report(folder: Path) -> str:
    html = (folder / "report.html").read_text()
    for p in PARAMS:
        assert p in html, f"the report does not name {p}"
    refs = ExternalRefs()
    refs.feed(html)
    assert refs.found == [], f"the report loads from the network: {refs.found}"
    assert "<script" in html and "Plotly" in html  # plotly.js is inline
    for name in PNGS:
        data = (folder / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
    return html


RERUN_SCHEMA = {  # as docs/results.md lists rerun.parquet's columns
    "rank": "int64", "trial_id": "large_string", "optuna_trial": "int64", "baseline": "bool", "study_val_acc": "double",
    "seed": "int64", "status": "large_string", "test_acc": "double", "test_loss": "double", "train_loss": "double",
    "train_acc": "double", "epochs": "int64", "images_per_s": "double", "weights_file": "large_string", "seconds": "double",
    "lr": "double", "head_lr_mult": "double", "weight_decay": "double", "momentum": "double", "freeze_depth": "int64",
    "augment": "large_string", "batch_size": "int64", "image_size": "int64", "weights": "large_string",
    "data_dir": "large_string", "threads": "int64", "comparable_to_book": "bool", "test_images": "int64", "balanced_acc": "double"}


def picked_by_default(folder: StudyFolder) -> pd.Series:
    """The trial rerun and --export take without --rank: the confirmed winner, else rank 1."""
    trials = pd.read_parquet(folder.trials)
    winner = trials[trials.get("recommended", pd.Series(dtype=str)).fillna("").str.contains("winner")]
    return winner.iloc[0] if len(winner) else trials[trials["rank"] == 1].iloc[0]


def check_rerun(folder: StudyFolder, seeds: int, epochs: int) -> pd.DataFrame:
    import pyarrow.parquet as pq

    assert {f.name: str(f.type) for f in pq.read_schema(folder.path / "rerun.parquet")} == RERUN_SCHEMA
    table = pd.read_parquet(folder.path / "rerun.parquet")
    picked = picked_by_default(folder)
    mine = table[table["rank"] == int(picked["rank"])]
    assert list(mine["seed"]) == list(range(seeds))
    if not picked["baseline"]:  # the book's recipe beside it, on the same seeds
        book = table[table["baseline"]]
        assert list(book["seed"]) == list(range(seeds)) and len(table) == 2 * seeds
        trials = pd.read_parquet(folder.trials)
        assert set(book["optuna_trial"]) == set(trials.loc[trials["baseline"], "optuna_trial"])
    else:
        assert len(table) == seeds
    assert set(table["epochs"]) == {epochs}
    for p in PARAMS:
        assert p in table.columns
    base = TrainConfig.from_dict(folder.read_settings().base)
    data = prepare_data(base.data_dir, base.image_size, val_fraction=0.0, with_test=True)
    device = resolve_device("cpu")
    for _, row in table.iterrows():
        assert row["status"] == "completed" and Path(row["weights_file"]).is_file()
        cfg = base.replace(**{p: row[p] for p in PARAMS}, val_fraction=0.0).replace(freeze_depth=int(row["freeze_depth"]))
        model = build_model(row["weights_file"], len(data.classes)).to(memory_format=torch.channels_last)
        loss, acc = evaluate(model, data.test, cfg, device, use_bf16(cfg.precision, device), True)
        assert acc == pytest.approx(row["test_acc"], abs=1e-9)
        assert loss == pytest.approx(row["test_loss"], rel=1e-3, abs=1e-4)
    return table


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture()
def fake(tmp_path, data_dir) -> StudyFolder:
    return make_fake_study(tmp_path, data_dir)


# --- analyze -----------------------------------------------------------------------------------------
def test_analyze_writes_a_self_contained_report(fake, capsys):
    assert analyze_mod.main([str(fake.path)]) == 0
    out = capsys.readouterr().out
    for p in PARAMS:
        assert p in out
    assert "completed trials" in out  # enough COMPLETE trials: importance from the stored study
    html = check_report(fake.path)
    assert "How much each hyperparameter matters" in html and "Learning curves" in html


def test_importance_and_best_ranges(fake):
    analysis = analysis_mod.analyze(fake)
    values = analysis.importance.values
    assert values is not None and set(values) == set(PARAMS)
    for p, share in values.items():  # the estimate (the resamples' median) lies inside its own 90% interval
        low, high = analysis.importance.intervals[p]
        assert 0 <= low <= share <= high <= 1, (p, low, share, high)
    assert list(values) == sorted(values, key=lambda p: -values[p])  # most important first
    assert "PED-ANOVA" in analysis.importance.method and "with 7 trials these importances cannot be told from chance" in analysis.importance.note
    scored = analysis.data.scored
    n_top = ranges_mod.top_count(len(scored))
    top = scored.head(n_top)
    lr = analysis.ranges["lr"]
    assert lr.n_top == n_top and lr.low == pytest.approx(top["lr"].min()) and lr.high == pytest.approx(top["lr"].max())
    assert sum(analysis.ranges["augment"].counts.values()) == n_top
    # errored and epoch-1-diverged trials have no accuracy: left out of the figures, kept in the table
    assert len(scored) == len(analysis.data.trials) - 2


def test_importance_finds_the_planted_effects(tmp_path, data_dir):
    # the fake study's accuracy depends on lr and the freeze depth alone: with 40 completed trials both come out
    # on top, far above the three hyperparameters that do nothing
    folder = make_fake_study(tmp_path, data_dir, n=40, complete=40, failures=False)
    values = analysis_mod.analyze(folder).importance.values
    assert set(list(values)[:2]) == {"lr", "freeze_depth"}, values
    assert min(values["lr"], values["freeze_depth"]) > 2 * max(values["head_lr_mult"], values["weight_decay"], values["augment"]), values


def test_importance_intervals_and_the_warning_when_chance_would_do_as_well(tmp_path, data_dir):
    real = analysis_mod.analyze(make_fake_study(tmp_path / "real", data_dir, n=24, complete=24, failures=False)).importance
    assert "cannot be told from chance" not in real.note
    for p in real.values:
        low, high = real.intervals[p]
        assert 0 <= low <= high <= 1, (p, low, high)
    assert real.intervals["lr"][0] > real.intervals["head_lr_mult"][0]  # lr matters; the head multiplier does not
    few = analysis_mod.analyze(make_fake_study(tmp_path / "few", data_dir, n=8, complete=8, failures=False)).importance
    assert "with 8 trials these importances cannot be told from chance" in few.note
    noise = make_fake_study(tmp_path / "noise", data_dir, n=24, complete=24, failures=False)
    stored = optuna.load_study(study_name="fake", storage=storage_url(noise.optuna_db))
    shuffled = optuna.create_study(study_name="fake2", storage=storage_url(noise.optuna_db), direction="maximize")
    rng = np.random.default_rng(5)
    for t in stored.trials:  # the same configurations, accuracies that have nothing to do with them
        shuffled.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=float(0.6 + rng.normal(0, 0.05))))
    optuna.delete_study(study_name="fake", storage=storage_url(noise.optuna_db))
    optuna.copy_study(from_study_name="fake2", from_storage=storage_url(noise.optuna_db), to_storage=storage_url(noise.optuna_db), to_study_name="fake")
    assert "cannot be told from chance" in analysis_mod.analyze(noise).importance.note


def test_importance_falls_back_on_pruned_trials(tmp_path, data_dir):
    folder = make_fake_study(tmp_path, data_dir, n=10, complete=2)
    imp = analysis_mod.analyze(folder).importance
    assert imp.values is not None and set(imp.values) == set(PARAMS)
    assert "stopped early" in imp.note and "all" in imp.method


def test_importance_when_all_trials_tie(tmp_path, data_dir):
    folder = make_fake_study(tmp_path, data_dir, n=6, constant=0.5, failures=False)
    analysis = analysis_mod.analyze(folder)
    assert analysis.importance.values is None and "all reached 0.500" in analysis.importance.note
    from study.findings.report import write_report

    write_report(analysis)  # still writes every figure
    check_report(folder.path)


def test_importance_when_the_top_trials_tie(tmp_path, data_dir):
    # all at 0.5 but one completed trial at 0.3: PED-ANOVA's top set would be nearly everything
    folder = make_fake_study(tmp_path, data_dir, n=6, constant=0.5, failures=False)
    stored = optuna.load_study(study_name="fake", storage=storage_url(folder.optuna_db))
    low = stored.trials[-1]
    stored.add_trial(optuna.trial.create_trial(params=low.params, distributions=low.distributions, value=0.3))
    imp = analysis_mod.analyze(folder).importance
    assert imp.values is None and "tie at the top" in imp.note


def test_analyze_without_optuna_db_uses_the_table(fake):
    fake.optuna_db.unlink()
    imp = analysis_mod.analyze(fake).importance
    assert imp.values is not None and "trials.parquet" in imp.note


def test_analyze_picks_the_newest_study(tmp_path, data_dir, capsys):
    folder = make_fake_study(tmp_path, data_dir, n=6)
    assert analyze_mod.main(["--results-dir", str(tmp_path), "--no-report"]) == 0
    assert "study fake" in capsys.readouterr().out
    assert not (folder.path / "report.html").exists()


def test_analyze_an_empty_folder_is_one_error_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([sys.executable, "-m", "study.analyze", str(empty)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "holds no study" in lines[0], done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("argv, words", [
    (["{missing}"], "no such folder"),
    (["--results-dir", "{empty}"], "no study in"),
    (["{empty}", "--top", "0"], "--top 0"),
])
def test_analyze_errors(tmp_path, capsys, argv, words):
    (tmp_path / "empty").mkdir()
    argv = [a.format(missing=tmp_path / "missing", empty=tmp_path / "empty") for a in argv]
    code, err, _ = exit_code_and_stderr(capsys, analyze_mod.main, argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and words in err[0], err


def test_study_without_trials_is_an_error(tmp_path, data_dir, capsys):
    folder = make_fake_study(tmp_path, data_dir, n=4)
    folder.trials.unlink()
    code, err, _ = exit_code_and_stderr(capsys, analyze_mod.main, [str(folder.path)])
    assert code == 2 and len(err) == 1 and "no trials yet" in err[0]


# --- rerun -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, words", [
    (["--rank", "99"], "beyond the table"),
    (["--rank", "0"], "--rank 0"),
    (["--seeds", "0"], "--seeds 0"),
    (["--epochs", "0"], "--epochs 0"),
])
def test_rerun_rejects_bad_options(fake, capsys, extra, words):
    code, err, out = exit_code_and_stderr(capsys, rerun_mod.main, [str(fake.path), *extra])
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and words in err[0], err
    assert not (fake.path / "rerun.parquet").exists()


def test_chosen_config_is_the_trial_over_the_base(fake):
    chosen = retrain_mod.choose(fake, rank=2, epochs=None)
    assert chosen.trial.val_fraction == fake.read_settings().base["val_fraction"] and chosen.trial.threads == 1
    row = pd.read_parquet(fake.trials).set_index("rank").loc[2]
    cfg = chosen.config
    for p in PARAMS:
        assert getattr(cfg, p) == (int(row[p]) if p == "freeze_depth" else row[p])
    base = fake.read_settings().base
    assert cfg.val_fraction == 0.0 and cfg.epochs == base["epochs"] and cfg.image_size == base["image_size"]
    assert cfg.data_dir == base["data_dir"] and cfg.weights == "none" and cfg.seed == base["seed"]
    assert retrain_mod.choose(fake, 1, epochs=7).config.epochs == 7


def test_export_and_command_line_give_the_same_config(fake, tmp_path, capsys):
    from trainable.__main__ import config_from_args, parse_args

    target = tmp_path / "best.json"
    assert rerun_mod.main([str(fake.path), "--export", str(target)]) == 0
    out = capsys.readouterr().out
    exported = TrainConfig.from_json(target)
    assert exported == retrain_mod.choose(fake, 1, None).trial  # the trial as it ran: its validation split and threads
    assert exported.val_fraction == fake.read_settings().base["val_fraction"] and exported.threads == 1
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("python -m trainable --data-dir"))
    argv = shlex.split(command)[3:]
    assert config_from_args(parse_args(argv), argv) == exported
    argv = ["--config", str(target), "--epochs", "1"]
    assert config_from_args(parse_args(argv), argv) == exported.replace(epochs=1)

    assert rerun_mod.main([str(fake.path), "--export", "-"]) == 0
    assert TrainConfig.from_dict(json.loads(capsys.readouterr().out)) == exported  # stdout: the JSON alone


def test_export_runs_with_python_m_trainable(fake, tmp_path, capsys):
    from trainable.__main__ import main as trainable_main

    target = tmp_path / "best.json"
    rerun_mod.main([str(fake.path), "--rank", "3", "--export", str(target)])
    capsys.readouterr()
    assert trainable_main(["--config", str(target), "--epochs", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out
    final = json.loads(out.strip().splitlines()[-1])
    assert 0 <= final["final_val_acc"] <= 1 and final["status"] == "completed"  # an accuracy, never a line of nulls
    assert trainable_main(["--config", str(target), "--epochs", "1", "--val-fraction", "0", "--test"]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["final_val_acc"] is None and 0 <= final["test_acc"] <= 1


@pytest.mark.slow
def test_rerun_trains_each_seed_and_saves_weights(fake, capsys):
    book_rank = int(pd.read_parquet(fake.trials).query("baseline")["rank"].iloc[0])
    assert book_rank not in (1, 3)  # ranks 1 and 3 are other configurations: the book's recipe runs beside them
    assert rerun_mod.main([str(fake.path), "--seeds", "2", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy over 2 seed(s)" in out and "+-" in out
    assert "0.933 +- 0.012" not in out and "not shown beside it" in out  # not the book's setting
    table = check_rerun(fake, seeds=2, epochs=1)
    assert table["test_acc"].between(0, 1).all()
    # the paired difference on the test split, seed by seed, with its interval
    mine, book = (table[table["baseline"] == b].set_index("seed")["test_acc"] for b in (False, True))
    diff = float((mine - book).mean())
    (line,) = [line for line in out.splitlines() if "vs the book's recipe on the test split" in line]
    assert f"{diff:+.3f} over 2 paired seeds" in line and "the images' own" in line, line
    assert "95% CI" in line or "2 seeds bound nothing here" in line, line  # 12 test images: an interval or the words
    # --no-baseline: this trial only; a rerun of another trial keeps these rows; rerunning the same trial replaces them
    assert rerun_mod.main([str(fake.path), "--rank", "3", "--seeds", "1", "--epochs", "1", "--no-baseline"]) == 0
    assert "vs the book's recipe" not in capsys.readouterr().out
    assert rerun_mod.main([str(fake.path), "--seeds", "1", "--epochs", "1"]) == 0
    table = pd.read_parquet(fake.path / "rerun.parquet")
    assert sorted(zip(table["rank"], table["seed"])) == sorted([(1, 0), (3, 0), (book_rank, 0)])
    # the report shows the final evaluation: both, and their paired difference; a rerun rewrites it
    analyze_mod.main([str(fake.path)])
    capsys.readouterr()
    html = (fake.path / "report.html").read_text()
    assert "test accuracy <b>" in html and "vs the book's recipe</b>, paired seed by seed" in html
    assert rerun_mod.main([str(fake.path), "--seeds", "2", "--epochs", "1"]) == 0
    assert "rewritten with these results" in capsys.readouterr().out
    assert "over 2 paired seeds" in (fake.path / "report.html").read_text()


WRITE_RERUN_ROWS = """
import sys, types
from study.core.folder import StudyFolder
from study.findings.retrain import RERUN_TYPES, write_rerun
folder, trial = StudyFolder(sys.argv[1]), int(sys.argv[2])
blank = {"int64": 1, "Int64": 400, "float64": 0.5, "bool": False, "str": "x"}
rows = []
for seed in range(40):  # as a rerun does after every seed
    rows.append({**{k: blank[t] for k, t in RERUN_TYPES.items()}, "optuna_trial": trial, "rank": trial + 1, "seed": seed})
    write_rerun(folder, types.SimpleNamespace(row={"optuna_trial": trial}), rows)
"""


def test_reruns_of_three_ranks_at_once_keep_each_others_rows(tmp_path):
    # Three terminals rerunning three ranks of one study: each merge into rerun.parquet must see the others'
    # rows. Without the lock and the writers' own temporaries, rows were lost and the file was left damaged.
    procs = [subprocess.Popen([sys.executable, "-c", WRITE_RERUN_ROWS, str(tmp_path), str(trial)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for trial in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    table = pd.read_parquet(tmp_path / "rerun.parquet")
    assert table.groupby("optuna_trial")["seed"].apply(sorted).to_dict() == {t: list(range(40)) for t in range(3)}
    assert not list(tmp_path.glob("*.tmp")), "no temporary left behind"


def test_book_figure_only_where_the_run_is_the_books_setting():
    book = TrainConfig(data_dir=None, weights="imagenet", image_size=224, epochs=5)
    assert retrain_mod.comparable_to_book(book, ["hotdog", "not-hotdog"], 2000, 800) == ""
    assert retrain_mod.comparable_to_book(book.replace(data_dir="/x/hotdog"), ["hotdog", "not-hotdog"], 2000, 800) == ""
    scratch = retrain_mod.comparable_to_book(book.replace(data_dir="/x/hotdog", weights="none", image_size=64, epochs=3),
                                           ["hotdog", "not-hotdog"], 2000, 400)
    for words in ("other data", "weights none", "64 px", "3 epoch(s)"):
        assert words in scratch
    line = retrain_mod.summary_line([0.9, 0.92, 0.94], "")
    assert "0.920 +- 0.020" in line and "the book: 0.940 (0.933 +- 0.012 over its builds)" in line
    line = retrain_mod.summary_line([0.9], "64 px instead of 224")
    assert "0.933" not in line and "not shown beside it" in line and "64 px" in line


def test_noise_note_says_when_a_lead_is_within_chance():
    from study.findings.analysis import noise_note

    close = noise_note(0.63, 0.57, 200)  # the real 16-trial study's best against the baseline
    assert "+-0.034" in close and "within chance" in close and "study.rerun --seeds 3" in close
    clear = noise_note(0.95, 0.80, 800)
    assert "+-0.008" in clear and "within chance" not in clear
    assert "within chance" not in noise_note(0.9, None, 100)  # no baseline to compare
    assert "+-0.192" in noise_note(1.0, 1.0, 2)  # a perfect score on 2 images is not certain (seen: "+-0.000")
    assert noise_note(0.9, 0.8, None) == "" and noise_note(None, 0.8, 100) == ""


# --- one real study, end to end ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_study(tmp_path_factory, data_dir) -> StudyFolder:
    from study.run import main as study_main

    results = tmp_path_factory.mktemp("results")
    code = study_main(["--samples", "3", "--epochs", "2", "--data-dir", str(data_dir), "--weights", "none", "--image-size", "32",
                       "--batch-size", "8", "--val-fraction", "0.25", "--results-dir", str(results), "--name", "tiny"])
    assert code == 0
    return StudyFolder(results / "tiny")


@pytest.mark.slow
def test_real_study_analyze_rerun_export(real_study, tmp_path, capsys):
    from trainable.__main__ import main as trainable_main

    settings = real_study.read_settings()
    base = TrainConfig.from_dict(settings.base)
    assert settings.val_images == len(prepare_data(base.data_dir, base.image_size, base.val_fraction, base.split_seed).val) > 0
    assert analyze_mod.main([str(real_study.path)]) == 0
    assert f"validation accuracy on {settings.val_images} images is uncertain" in capsys.readouterr().out
    check_report(real_study.path)

    assert rerun_mod.main([str(real_study.path), "--seeds", "2", "--epochs", "1"]) == 0
    assert "test accuracy over 2 seed(s)" in capsys.readouterr().out
    sequential = check_rerun(real_study, seeds=2, epochs=1)
    # the same seeds as Ray tasks side by side: the same numbers (same threads), in seed order, each seed's epochs shown
    assert rerun_mod.main([str(real_study.path), "--seeds", "2", "--epochs", "1", "--parallel"]) == 0
    out = capsys.readouterr().out
    runs = pd.read_parquet(real_study.path / "rerun.parquet")["optuna_trial"].nunique()  # the winner, and the book's recipe beside it
    assert f"{2 * runs} run(s) as Ray tasks" in out and "\x1b[" not in out  # uncoloured where stdout is no terminal
    lines = out.splitlines()
    names = {f"trial {n}" + (" (the book's recipe)" if b else "")
             for n, b in pd.read_parquet(real_study.path / "rerun.parquet")[["optuna_trial", "baseline"]].drop_duplicates().to_numpy()}
    for name in names:
        for seed in (0, 1):
            # each epoch line printed by the driver (no Ray pid prefix; never dropped at shutdown), before the run's result
            epoch = [i for i, line in enumerate(lines) if line.startswith(f"  {name} seed {seed} epoch 1/1: train loss")]
            result = [i for i, line in enumerate(lines) if line.startswith(f"{name} seed {seed}: test acc")]
            assert len(epoch) == 1 and len(result) == 1 and epoch[0] < result[0], out
    parallel = check_rerun(real_study, seeds=2, epochs=1)
    assert list(parallel["train_loss"]) == list(sequential["train_loss"]) and list(parallel["test_acc"]) == list(sequential["test_acc"])

    # the exported trial, trained again with python -m trainable: its numbers in the study, to the last digit
    target = tmp_path / "best.json"
    assert rerun_mod.main([str(real_study.path), "--export", str(target)]) == 0
    capsys.readouterr()
    assert trainable_main(["--config", str(target), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    printed = float(out.split("epoch 1/1  train loss ")[1].split()[0])
    picked = picked_by_default(real_study)
    assert "winner" in str(picked["recommended"])  # the study ran its confirmation stage: --export takes its winner
    number = int(picked["optuna_trial"])
    epochs = pd.read_parquet(real_study.epochs)
    in_study = epochs[(epochs["optuna_trial"] == number) & (epochs["epoch"] == 1)].iloc[0]
    assert printed == round(float(in_study["train_loss"]), 4), (printed, in_study["train_loss"])
    assert json.loads(out.strip().splitlines()[-1])["final_val_acc"] == pytest.approx(in_study["val_acc"])


def test_analyze_imports_no_ray(fake):
    code = ("import sys; sys.modules['ray'] = None  # import ray now fails\n"
            "from study.analyze import main\n"
            f"raise SystemExit(main([{str(fake.path)!r}, '--no-report']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "how much each hyperparameter matters" in done.stdout


def test_analyze_of_a_study_where_every_trial_failed(tmp_path, data_dir, capsys):
    folder = make_fake_study(tmp_path, data_dir, n=2)  # one errored, one diverged in its first epoch
    assert analyze_mod.main([str(folder.path), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "no trial has a usable validation accuracy yet (every trial diverged, failed" in out


def test_fanova_without_scikit_learn_is_refused_at_once(fake, capsys):
    try:
        import sklearn  # noqa: F401
        pytest.skip("scikit-learn is installed here: fanova runs")
    except ImportError:
        pass
    code, err, _ = exit_code_and_stderr(capsys, analyze_mod.main, [str(fake.path), "--importance", "fanova"])
    assert code == 2 and len(err) == 1 and "pip install scikit-learn" in err[0]


# --- the range warning and the importance's cross-check ------------------------------------------------
def fake_study_data(tmp_path, lr_values: list[float], space: dict | None = None, augments: list[str] | None = None):
    """A StudyData of ranked trials with the given learning rates (best first), without running anything."""
    from study.findings.reading import StudyData

    space = space or {"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
                      "freeze_depth": {"type": "int", "low": 0, "high": 5},
                      "augment": {"type": "categorical", "choices": ["none", "flip", "d2l"]}}
    n = len(lr_values)
    trials = pd.DataFrame({"rank": range(1, n + 1), "optuna_trial": range(n), "baseline": [False] * n, "lr": lr_values,
                           "freeze_depth": [i % 6 for i in range(n)], "augment": augments or ["none", "flip", "d2l"] * (n // 3) + ["none"] * (n % 3),
                           "best_val_acc": np.linspace(0.9, 0.6, n), "status": ["completed"] * n})
    settings = StudySettings.from_dict(dict(name="s", base=TrainConfig().to_dict(), space=space, samples=n, seed=0, experiment_path=str(tmp_path)))
    return StudyData(StudyFolder(tmp_path), settings, trials, pd.DataFrame(), [p for p in space if p in trials])


def test_range_warning_when_the_best_trials_crowd_a_bound(tmp_path):
    lrs = [0.09, 0.08, 0.095, 0.07, 0.003, 0.001, 0.0005, 0.01, 0.002, 0.0003, 0.004, 0.0008]  # top 3 at the high end
    (line,) = ranges_mod.range_warnings(fake_study_data(tmp_path, lrs))
    assert line.startswith("lr: 3 of the top 3 trials lie at the high end of its range") and "the range ends at 0.1" in line, line
    suggested = json.loads(line.split("e.g. ")[1].split(" (python")[0])
    assert suggested == {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}}  # a decade more, pasteable into --space


def test_range_warning_stays_quiet_inside_the_range_and_at_a_domain_limit(tmp_path):
    middle = [0.003, 0.004, 0.002, 0.09, 0.0002, 0.01, 0.0005, 0.05, 0.001, 0.0003, 0.02, 0.0008]
    assert ranges_mod.range_warnings(fake_study_data(tmp_path, middle)) == []
    # freeze depth 0 and 5 end its domain: the best trials there cannot ask for a wider range
    data = fake_study_data(tmp_path, middle)
    data.trials["freeze_depth"] = [5, 5, 5, 5] + [1] * 8
    assert ranges_mod.range_warnings(data) == []
    data.settings.asked = data.settings.asked.replace(space={**data.settings.space, "freeze_depth": {"type": "int", "low": 0, "high": 4}})  # 4 is not the domain's end: 5 could be tried
    data.trials["freeze_depth"] = [4, 4, 4, 4] + [1] * 8
    (line,) = ranges_mod.range_warnings(data)
    assert line.startswith("freeze_depth: 3 of the top 3 trials lie at the high end") and '"high": 5' in line, line


def test_top_vs_rest_finds_what_the_importance_can_miss(tmp_path):
    # every top trial uses flip, few of the rest do: the raw counts say augment matters, whatever a model says
    n = 24
    augments = ["flip"] * 6 + ["none", "d2l"] * 9
    data = fake_study_data(tmp_path, list(np.geomspace(1e-4, 0.1, n)[np.random.default_rng(0).permutation(n)]), augments=augments)
    checks = importance_mod.top_vs_rest(data)
    assert checks["augment"].strong and checks["augment"].text.startswith("flip: 6 of the top 6, 0 of the other 18")
    assert not checks["lr"].strong  # shuffled learning rates: nothing to find
    low = importance_mod.Importance({"augment": 0.05, "lr": 0.6, "freeze_depth": 0.35}, "PED-ANOVA", "",
                                  {"augment": (0.0, 0.1), "lr": (0.4, 0.8), "freeze_depth": (0.2, 0.5)})
    lines = importance_mod.importance_disagreements(low, checks)
    assert any(line.startswith("augment: importance 0.05 (0.00-0.10) says it matters little, yet") for line in lines), lines
    assert any(line.startswith("lr: importance 0.60") and "says it matters, yet the top trials do not differ" in line for line in lines)
