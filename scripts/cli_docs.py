"""The option tables of docs/options.md, generated from the commands' own argparse parsers (so they cannot drift).

``python -m scripts.cli_docs docs/options.md`` rewrites every block between ``<!-- options: python -m X -->`` and
``<!-- /options -->``; ``--check`` only says whether the file is in step (tests/test_docs.py checks it).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

PARSERS = {
    "python -m trainable": "trainable.__main__",
    "python -m trainable.decoded": "trainable.decoded",
    "python -m study.run": "study.options",
    "python -m study.analyze": "study.analyze",
    "python -m study.rerun": "study.rerun",
    "python -m study.compare": "study.compare",
    "python -m study.predict": "study.predict",
    "python -m study.export": "study.export",
    "python -m bench": "bench.cli",
}
BLOCK = re.compile(r"(<!-- options: (?P<command>[^>]+?) -->\n)(?P<table>.*?)(<!-- /options -->)", re.S)


def _default(action: argparse.Action) -> str:
    if action.nargs == 0:  # a flag (store_true and the like): no value to default to
        return ""
    value = action.default
    if value is None or value is argparse.SUPPRESS:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _help(action: argparse.Action) -> str:
    default = _default(action)
    text = (action.help or "").replace("%(default)s", default)
    if default:  # the default has its own column: drop "(default: X)" and "X, " from "(default: X, why)"
        text = text.replace(f" (default: {default})", "").replace(f"(default: {default})", "")
        text = text.replace(f"(default: {default}, ", "(").replace(f"(default: {default}: ", "(")
    if action.choices and action.nargs != argparse.PARSER:  # a subcommand's choices are parsers, not values
        text = f"{text} (one of: {', '.join(str(c) for c in action.choices)})" if text else f"one of: {', '.join(str(c) for c in action.choices)}"
    return text.replace("|", "\\|")


def options_table(parser: argparse.ArgumentParser) -> str:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for action in parser._actions:  # argparse lists its options only in _actions (no public accessor; there since 3.2)
        if action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        name = ", ".join(action.option_strings) if action.option_strings else action.dest
        if action.option_strings and action.nargs != 0:
            name += f" {action.metavar or action.dest.upper()}" + (" ..." if action.nargs in ("+", "*") else "")
        default = _default(action)
        rows.append(f"| `{name}` | {f'`{default}`' if default else ''} | {_help(action)} |")
    return "\n".join(rows) + "\n"


def parser_of(command: str) -> argparse.ArgumentParser:
    return importlib.import_module(PARSERS[command]).build_parser()


def render(readme: str) -> str:
    def table(match: re.Match) -> str:
        return match.group(1) + options_table(parser_of(match.group("command"))) + match.group(4)

    return BLOCK.sub(table, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.cli_docs", description=__doc__)
    parser.add_argument("readme", nargs="?", default="docs/options.md")
    parser.add_argument("--check", action="store_true", help="exit 1 where the tables differ from the parsers")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    old = path.read_text()
    new = render(old)
    if args.check:
        print("the option tables are in step" if new == old else f"{path}: option tables out of date: run python -m scripts.cli_docs {path}")
        return 0 if new == old else 1
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
