"""The README says what the program does: its option tables are the parsers' own, and each command it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from scripts import cli_docs

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_option_tables_match_each_commands_help():
    text = README.read_text()
    assert cli_docs.render(text) == text, "README option tables are out of date: run python -m scripts.cli_docs README.md"
    blocks = set(re.findall(r"<!-- options: ([^>]+?) -->", text))
    assert blocks >= {"python -m trainable", "python -m study.run", "python -m study.analyze", "python -m study.rerun"}


def test_every_option_the_readme_names_exists():
    """Each `--option` in the README's prose belongs to one of the commands (a renamed option cannot linger)."""
    known = set()
    for command in cli_docs.PARSERS:
        try:
            parser = cli_docs.parser_of(command)
        except (ImportError, AttributeError):
            continue
        known |= {s for action in parser._actions for s in action.option_strings}
    prose = re.sub(r"<!-- options:.*?<!-- /options -->", "", README.read_text(), flags=re.S)
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", prose))
    outside = {"--logdir", "--head", "--address", "--port", "--num-gpus"}  # ray start's and tensorboard's own
    assert named - known - outside == set(), sorted(named - known - outside)


def test_the_readme_lists_confirm_parquets_columns_in_order():
    from study.driver.confirm import CONFIRM_TYPES

    paragraph = README.read_text().split("`confirm.parquet`: ", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"`([a-z_]+)`", paragraph)
    assert listed == list(CONFIRM_TYPES), listed


# The README's simulation table, row by row: the arguments each row changes (the rest are simulate's defaults).
SELECTION_ROWS = {
    "defaults:": {},
    "top 3, 2 folds": dict(top_k=3),
    "top 8, 2 folds": dict(top_k=8),
    "top 5, 3 folds": dict(folds=3),
    "a race: top 8": dict(top_k=8, finalists=3),
    "the earlier design": dict(top_k=3, folds=3, scheme="holdout", reuse_study_fold=True, confirm_val_last_only=False),
    "less early stopping (grace 2": dict(grace=2),
    "grace 2 and a race": dict(grace=2, top_k=7, finalists=3),
    "grace 3, rf 2": dict(grace=3, reduction_factor=2),
    "ImageNet-like": dict(truth_mean=0.90, truth_sd=0.02, baseline_acc=0.93),
    "the seed noise measured here": dict(confirm_seed_sd=0.036),
}


def readme_table(header: str, labels: dict) -> list[tuple[str, list[str], dict]]:
    """The rows of the README table that starts with ``header``: (label, cells, the simulate arguments its label names)."""
    table = README.read_text().split(header, 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    assert len(rows) == len(labels)
    out = []
    for line in rows:
        label, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        (changes,) = [kw for start, kw in labels.items() if label.startswith(start)]
        out.append((label, cells, changes))
    return out


def test_the_readme_selection_table_is_what_the_simulation_gives():
    from bench.selection import simulate

    for label, cells, changes in readme_table("| simulated study, 10,000 repeats each |", SELECTION_ROWS):
        r = simulate(**changes)  # 10,000 repeats, seed 0, as the bench
        expected = [f"{r['regret_single']:.4f}", f"{r['regret_confirmed']:.4f}", f"{r['regret_ratio']:.2f}",
                    f"{r['extra_compute_fraction']:.2f}", f"{r['study_epochs']:.0f} + {r['confirm_epochs']:.0f}",
                    f"{r['p_best_in_candidates']:.2f}"]
        assert cells == expected, (label, cells, expected)
        assert not r["goal_met"]  # the README says no row meets the goal


PRETRAINED = dict(truth_mean=0.68, truth_sd=0.02, bad_fraction=0.1, baseline_acc=0.655, epochs=3, seed_sd=0.017, confirm_seed_sd=0.0115)
GAIN_ROWS = {"from scratch, the model above": {}, "from scratch, the noise measured since": dict(confirm_seed_sd=0.036),
             "pretrained backbone": PRETRAINED}


def test_the_readme_gain_interval_table_is_what_the_simulation_gives():
    from bench.selection import simulate

    for label, cells, changes in readme_table("| regime | holds the true gain, a seed per fold |", GAIN_ROWS):
        a, b = simulate(**changes), simulate(fold_seeds=False, **changes)
        expected = [f"{a['gain_coverage']:.3f}", f"{a['gain_ci_width']:.3f}", f"{a['gain_beyond_noise']:.2f}",
                    f"{b['gain_coverage']:.3f}", f"{b['gain_ci_width']:.3f}", f"{b['gain_beyond_noise']:.2f}",
                    f"{a['gain_true']:.3f} / {a['gain_estimate']:.3f}", f"{a['regret_ratio']:.2f}"]
        assert cells == expected, (label, cells, expected)
        assert a["gain_coverage"] >= 0.90 > b["gain_coverage"]  # the goal, and why the design changed
