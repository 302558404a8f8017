"""The house and its layering rule (docs/design.md), checked on the source:

    bench  ->  entry points (study.run, study.analyze, study.rerun, study.compare, study.api)
           ->  services (study.analysis with study.study_data, study.importance and study.ranges; study.summary,
               study.report, study.retrain, study.comparison)
           ->  study.driver.*  (what runs inside a Tune run)
           ->  the study's model (study.values, study.folder, study.space, study.results, study.decision,
               study.datacheck, study.options, study.timing)
           ->  trainable

A module imports only from its own layer or the layers below it; no entry point imports another; nothing imports
in a circle; every module imports alone.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainable", "study", "bench")
ENTRY_POINTS = {"study.run", "study.analyze", "study.rerun", "study.compare", "study.api", "study.__main__"}
SERVICES = {"study.analysis", "study.study_data", "study.importance", "study.ranges", "study.summary", "study.report", "study.retrain",
            "study.comparison"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def layer(module: str) -> int:
    """0 trainable, 1 the study's model, 2 the driver, 3 services, 4 entry points, 5 bench."""
    if module.startswith("trainable"):
        return 0
    if module.startswith("bench"):
        return 5
    if module in ENTRY_POINTS:
        return 4
    if module in SERVICES:
        return 3
    if module.startswith("study.driver"):
        return 2
    return 1  # study and its model modules


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports, at its top or inside a function (absolute or relative)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from study.driver import reaper" imports the module study.driver.reaper; "from study.values import fmt" study.values
            candidates = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for name in candidates:  # "study.driver.clock" counts as that module, "study.values.fmt" as study.values
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name.split(".")[0] in PACKAGES:
                found.add(name)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_house_has_the_rooms_the_docs_name():
    assert {"study.driver.adapter", "study.driver.session", "study.decision", "study.options", "bench.selection"} <= set(MODULES)
    assert not any(p.name.startswith("bench") for p in (ROOT / "study").glob("*.py")), "measurement lives in bench/"


def test_each_module_imports_only_its_own_layer_or_below():
    upward = [f"{m} ({layer(m)}) imports {o} ({layer(o)})" for m, others in GRAPH.items() for o in others
              if layer(o) > layer(m) and not (m == "study" and o == "study.api")]  # study/__init__ re-exports the notebook API, lazily
    assert upward == []


def test_the_product_never_imports_bench_and_trainable_never_imports_study():
    assert [m for m, others in GRAPH.items() if not m.startswith("bench") and any(o.startswith("bench") for o in others)] == []
    assert [m for m, others in GRAPH.items() if m.startswith("trainable") and any(o.startswith("study") for o in others)] == []


def test_no_entry_point_imports_another():
    crossing = {m: GRAPH[m] & ENTRY_POINTS for m in ENTRY_POINTS if GRAPH[m] & ENTRY_POINTS and m != "study.__main__"}
    assert crossing == {}
    assert GRAPH["study.__main__"] == {"study.run", "trainable.cli"}


def test_no_import_circle():
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(GRAPH[module]):
            assert state.get(other) != 1, f"import circle: {' -> '.join(path + [module, other])}"
            if other not in state:
                visit(other, path + [module])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_the_rule_catches_a_breach(tmp_path):
    """The checker itself: an upward import in a source text is found (a test that cannot fail is no test)."""
    assert layer("study.driver.confirm") < layer("study.report") < layer("study.rerun") < layer("bench.cli")
    source = "from study.report import write_report\nfrom ..analysis import analyze\n"
    MODULES["study.driver.probe"] = tmp_path / "probe.py"
    try:
        (tmp_path / "probe.py").write_text(source)
        assert imports_of("study.driver.probe") == {"study.report", "study.analysis"}
    finally:
        del MODULES["study.driver.probe"]


@pytest.mark.slow
def test_each_module_imports_alone():
    def load(module: str) -> tuple[str, int, str]:
        done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        return module, done.returncode, done.stderr[-500:]

    modules = [m for m in MODULES if not m.endswith("__main__")]
    with ThreadPoolExecutor(4) as pool:
        failed = [(m, err) for m, code, err in pool.map(load, modules) if code != 0]
    assert failed == []


def test_the_install_holds_every_product_package_and_not_the_measurements():
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    on_disk = sorted(module_name(p.parent / "__init__.py") for pkg in ("trainable", "study") for p in (ROOT / pkg).rglob("__init__.py"))
    assert sorted(packages) == on_disk and not any(p.startswith("bench") for p in packages)


@pytest.mark.slow
def test_the_study_driver_never_loads_torch(tmp_path):
    # Only the trials train; torch and torchvision in the driver would cost every study start seconds of imports.
    from tests.conftest import write_image_folder
    from tests.test_study import study_args

    data = write_image_folder(tmp_path / "data", n_train=6, n_test=2)
    argv = study_args(data, tmp_path / "r", "light", 2, 1, "--confirm-top", "1", "--confirm-folds", "2", confirm=True)
    script = ("import sys; from study.run import main; code = main(sys.argv[1:]); "
              "print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))[:3]); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "confirmation" in done.stdout, done.stdout + done.stderr
    assert "loaded: []" in done.stdout, done.stdout.splitlines()[-1]
