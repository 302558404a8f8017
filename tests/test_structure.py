"""The house: each study module imports alone, and the modules' imports run one way (no circle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "study").glob("*.py") if p.stem != "__main__")


def imports_of(module: str) -> set[str]:
    """The study modules ``study/<module>.py`` imports, at its top or inside a function (relative or absolute)."""
    tree = ast.parse((ROOT / "study" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found |= {alias.name for alias in node.names}
            elif node.module and node.module.startswith("study."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("study.")}
    return (found & set(MODULES)) - {module}


def test_the_study_modules_import_one_way():
    graph = {m: imports_of(m) for m in MODULES}
    # no entry point imports another's CLI (rerun rewrites the report through report, not through analyze)
    assert not graph["report"] & {"analyze", "rerun"} and not graph["rerun"] & {"analyze"}
    assert not graph["analysis"] & {"analyze", "report", "rerun"}
    assert not graph["layout"], "layout is the bottom: it imports no other study module"
    # no circle anywhere: a depth-first walk never meets a module it is inside of
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in graph[module]:
            assert state.get(other) != 1, f"import circle: {' -> '.join(path + [module, other])}"
            if other not in state:
                visit(other, path + [module])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [])


def test_each_study_module_imports_alone():
    def load(module: str) -> tuple[str, int, str]:
        done = subprocess.run([sys.executable, "-c", f"import study.{module}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        return module, done.returncode, done.stderr[-500:]

    with ThreadPoolExecutor(4) as pool:
        failed = [(m, err) for m, code, err in pool.map(load, MODULES) if code != 0]
    assert failed == []
