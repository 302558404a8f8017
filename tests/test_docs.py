"""The README says what the program does: its option tables are the parsers' own, and each command it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from study import cli_docs

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_option_tables_match_each_commands_help():
    text = README.read_text()
    assert cli_docs.render(text) == text, "README option tables are out of date: run python -m study.cli_docs README.md"
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
    from study.confirm import CONFIRM_TYPES

    paragraph = README.read_text().split("`confirm.parquet`: ", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"`([a-z_]+)`", paragraph)
    assert listed == list(CONFIRM_TYPES), listed
