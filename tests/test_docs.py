"""The docs say what the program does: the option tables are the parsers' own, each option and link they name
exists, the tables they quote are what the code gives, and the README stays a front page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scripts import cli_docs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def test_the_option_tables_match_each_commands_help():
    text = (DOCS / "options.md").read_text()
    assert cli_docs.render(text) == text, "docs/options.md is out of date: run python -m scripts.cli_docs docs/options.md"
    blocks = set(re.findall(r"<!-- options: ([^>]+?) -->", text))
    assert blocks == set(cli_docs.PARSERS)


def test_every_option_the_docs_name_exists():
    """Each `--option` in the prose belongs to one of the commands (a renamed option cannot linger)."""
    known = set()
    for command in cli_docs.PARSERS:
        known |= {s for action in cli_docs.parser_of(command)._actions for s in action.option_strings}
    outside = {"--logdir", "--head", "--address", "--port", "--num-gpus", "--dist"}  # ray start's, tensorboard's, pytest-xdist's own
    for page in PAGES:
        prose = re.sub(r"<!-- options:.*?<!-- /options -->", "", page.read_text(), flags=re.S)
        named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", prose))
        assert named - known - outside == set(), (page.name, sorted(named - known - outside))


def test_every_link_in_the_docs_leads_somewhere():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), (page.name, target)


def test_the_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert "python -m pytest" in text and "pip install -e" in text and "docs/report.png" in text


def test_the_docs_list_confirm_parquets_columns_in_order():
    from study.core.tables import CONFIRM_TYPES

    paragraph = (DOCS / "results.md").read_text().split("`confirm.parquet`: ", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"`([a-z_]+)`", paragraph)
    assert listed == list(CONFIRM_TYPES), listed


# docs/selection.md's simulation table, row by row: the arguments each row changes (the rest are simulate's defaults).
SELECTION_ROWS = {
    "defaults:": {},
    "top 3, 2 folds": dict(top_k=3),
    "top 8, 2 folds": dict(top_k=8),
    "top 5, 3 folds": dict(folds=3),
    "a race: top 8": dict(top_k=8, finalists=3),
    "the hold-out design": dict(top_k=3, folds=3, scheme="holdout", reuse_study_fold=True, confirm_val_last_only=False),
    "less early stopping (grace 2": dict(grace=2),
    "grace 2 and a race": dict(grace=2, top_k=7, finalists=3),
    "grace 3, rf 2": dict(grace=3, reduction_factor=2),
    "ImageNet-like": dict(truth_mean=0.90, truth_sd=0.02, baseline_acc=0.93),
    "the seed noise measured for": dict(confirm_seed_sd=0.036),
}


def docs_table(header: str, labels: dict) -> list[tuple[str, list[str], dict]]:
    """The rows of docs/selection.md's table that starts with ``header``: (label, cells, the simulate arguments its
    label names)."""
    table = (DOCS / "selection.md").read_text().split(header, 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    assert len(rows) == len(labels)
    out = []
    for line in rows:
        label, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        (changes,) = [kw for start, kw in labels.items() if label.startswith(start)]
        out.append((label, cells, changes))
    return out


@pytest.mark.slow  # 7 simulations of 10,000 studies each
def test_the_selection_table_is_what_the_simulation_gives():
    from bench.selection import simulate

    for label, cells, changes in docs_table("| simulated study, 10,000 repeats each |", SELECTION_ROWS):
        r = simulate(**changes)  # 10,000 repeats, seed 0, as the bench
        expected = [f"{r['regret_single']:.4f}", f"{r['regret_confirmed']:.4f}", f"{r['regret_ratio']:.2f}",
                    f"{r['extra_compute_fraction']:.2f}", f"{r['study_epochs']:.0f} + {r['confirm_epochs']:.0f}",
                    f"{r['p_best_in_candidates']:.2f}"]
        assert cells == expected, (label, cells, expected)
        assert not r["goal_met"]  # the docs say no row meets the goal


from bench.correction import PRETRAINED  # noqa: E402  (the regimes are the correction bench's)

GAIN_ROWS = {"from scratch, the model above": {}, "from scratch, the noise measured for": dict(confirm_seed_sd=0.036),
             "pretrained backbone": PRETRAINED}


@pytest.mark.slow  # 6 simulations of 10,000 studies each
def test_the_gain_interval_table_is_what_the_simulation_gives():
    from bench.selection import simulate

    for label, cells, changes in docs_table("| regime | holds the true gain, a seed per fold |", GAIN_ROWS):
        a, b = simulate(**changes), simulate(fold_seeds=False, **changes)
        expected = [f"{a['gain_coverage']:.3f}", f"{a['gain_ci_width']:.3f}", f"{a['gain_beyond_noise']:.2f}",
                    f"{b['gain_coverage']:.3f}", f"{b['gain_ci_width']:.3f}", f"{b['gain_beyond_noise']:.2f}",
                    f"{a['gain_true']:.3f} / {a['gain_estimate']:.3f}", f"{a['regret_ratio']:.2f}"]
        assert cells == expected, (label, cells, expected)
        assert a["gain_coverage"] >= 0.90 > b["gain_coverage"]  # the goal, and why the design changed


CORRECTION_ROWS = {"raw": "raw", "Tibshirani": "tibshirani", "split": "split", "bootstrap of the whole": "bootstrap",
                   "shrinkage": "shrinkage", "the bootstrap from the shrunk means": "shrunk bootstrap"}


@pytest.mark.slow  # 3 simulations of 10,000 studies, each corrected 6 ways (about 20 s)
def test_the_correction_table_is_what_the_bench_gives():
    from bench.correction import CHOSEN, METHODS, REGIMES, run_corrections

    table = (DOCS / "selection.md").read_text().split("| method (mean error / coverage / width) |", 1)[1].split("\n\n", 1)[0]
    header, _, *rows = table.splitlines()
    regimes = [c.strip() for c in header.strip().strip("|").split("|")]
    assert regimes == list(REGIMES)  # the bench's regimes, in its order
    result = run_corrections()
    assert len(rows) == len(METHODS)
    for line in rows:
        label, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        (method,) = [m for start, m in CORRECTION_ROWS.items() if label.startswith(start)]
        expected = [f"{r[method]['error']:+.4f} / {r[method]['coverage']:.3f} / {r[method]['width']:.3f}" for r in result.values()]
        assert cells == expected, (label, cells, expected)
    for r in result.values():  # the goal the docs say the product's method meets, and that the raw one misses
        assert abs(r[CHOSEN]["error"]) <= abs(r["raw"]["error"]) / 4 and r[CHOSEN]["coverage"] >= 0.90
