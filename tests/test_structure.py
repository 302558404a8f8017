"""The house and its layering rule (docs/design.md), checked on the source, by folder:

    bench                       the measurements
    study/*.py                  the commands and the notebook API: they parse, call, print
    study/stages/               the study's pipeline: data check, warm start, trials, confirmation, summary
    study/findings/             what a study found: reading it, the answer, importance, report, comparison, reruns
    study/driver/               what runs inside Ray: the session, the Tuner, the trial adapter, searcher, scheduler
    study/core/                 the study's model: vocabulary, settings, comparability, folder, tables, space, decision
    trainable/                  one configuration, trained

A module imports only from its own layer or the layers below it; no command imports another; nothing imports in a
circle; every module imports alone. Beside the layers, the rules that have one home each: a confirmation run is
recognised only by the vocabulary, what the user asked for is changed only by ``study.core.settings``, and every
resolved field of ``study.json`` has one writer.
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
# Layers by path prefix, lowest first; a module directly in study/ is a command (or the notebook API, or the options).
LAYERS = ["trainable", "study.core", "study.driver", "study.findings", "study.stages", "study", "bench"]
NOT_COMMANDS = {"study", "study.options", "study.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def layer(module: str) -> int:
    """The index in LAYERS of the longest prefix the module lies under (a subpackage is its own layer)."""
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)
    return LAYERS.index(best)


def is_command(module: str) -> bool:
    return layer(module) == LAYERS.index("study") and module not in NOT_COMMANDS


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports, at its top or inside a function (absolute or relative)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}  # annotations' imports never run
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from study.driver import reaper" imports the module study.driver.reaper; "from study.core.values import fmt" the module
            candidates = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for name in candidates:  # "study.driver.clock" counts as that module, "study.core.values.fmt" as study.core.values
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name.split(".")[0] in PACKAGES:
                found.add(name)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_house_has_the_rooms_the_docs_name():
    for folder in ("core", "driver", "findings", "stages"):
        assert (ROOT / "study" / folder / "__init__.py").is_file(), folder
    assert {"study.core.vocabulary", "study.core.settings", "study.core.comparability", "study.driver.adapter", "study.driver.runner",
            "study.stages.study", "study.stages.confirmation", "study.findings.reading", "bench.selection"} <= set(MODULES)
    commands = sorted(m for m in MODULES if is_command(m))
    assert commands == ["study.analyze", "study.api", "study.compare", "study.export", "study.predict", "study.rerun", "study.run"], commands
    assert not any(p.name.startswith("bench") for p in (ROOT / "study").rglob("*.py")), "measurement lives in bench/"


def test_each_module_imports_only_its_own_layer_or_below():
    upward = [f"{m} ({LAYERS[layer(m)]}) imports {o} ({LAYERS[layer(o)]})" for m, others in GRAPH.items() for o in others
              if layer(o) > layer(m) and not (m == "study" and o == "study.api")]  # study/__init__ re-exports the notebook API, lazily
    assert upward == []


def test_the_product_never_imports_bench_and_trainable_never_imports_study():
    assert [m for m, others in GRAPH.items() if not m.startswith("bench") and any(o.startswith("bench") for o in others)] == []
    assert [m for m, others in GRAPH.items() if m.startswith("trainable") and any(o.startswith("study") for o in others)] == []


def test_no_command_imports_another():
    crossing = {m: {o for o in GRAPH[m] if is_command(o)} for m in MODULES if is_command(m)}
    assert {m: o for m, o in crossing.items() if o} == {}
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
    assert layer("study.core.tables") < layer("study.driver.tuner") < layer("study.findings.report") < layer("study.stages.study")
    assert layer("study.stages.study") < layer("study.rerun") < layer("bench.cli") and layer("study.core") == 1
    source = "from study.findings.report import write_report\nfrom ..stages import study\n"
    MODULES["study.driver.probe"] = tmp_path / "probe.py"
    try:
        (tmp_path / "probe.py").write_text(source)
        assert imports_of("study.driver.probe") == {"study.findings.report", "study.stages.study"}
        assert all(layer(o) > layer("study.driver.probe") for o in imports_of("study.driver.probe"))
    finally:
        del MODULES["study.driver.probe"]


# --- one home per rule ----------------------------------------------------------------------------------
def _source_constants(module: str) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(MODULES[module].read_text())) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_only_the_vocabulary_knows_how_a_confirmation_run_is_written():
    """A confirmation run's config is ``{"job": ...}``: only study.core.vocabulary spells it."""
    spelled = [m for m in MODULES if m.startswith("study") and m != "study.core.vocabulary" and "job" in _source_constants(m)]
    assert spelled == []


def _writes(tree: ast.AST) -> list[tuple[str, int]]:
    """(attribute, line) of every ``<...>settings.<attribute>`` this source assigns or changes in place (``=``, ``+=``,
    ``[...] =``, ``.append(...)``, ``.update(...)`` ...)."""
    def settings_attr(node) -> str | None:
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "settings") or (isinstance(owner, ast.Attribute) and owner.attr == "settings"):
                return node.attr
        return None

    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "append", "extend", "update", "pop", "clear", "setdefault", "insert", "remove"):
            targets = [node.func.value]
        for target in targets:
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                while isinstance(t, ast.Subscript):
                    t = t.value
                if (attr := settings_attr(t)) is not None:
                    found.append((attr, node.lineno))
    return sorted(found, key=lambda f: f[1])


def test_each_field_of_study_json_has_one_writer():
    from study.core.settings import ASKED, WRITERS

    wrong = []
    for module, path in MODULES.items():
        if not module.startswith("study"):
            continue
        for attr, line in _writes(ast.parse(path.read_text())):
            if attr == "asked" or attr in ASKED:
                owner = "study.core.settings"
            elif attr in WRITERS:
                owner = WRITERS[attr]
            else:
                continue
            if module != owner:
                wrong.append(f"{module}:{line} writes settings.{attr} (its one writer: {owner})")
    assert wrong == []


def test_the_writers_check_catches_a_breach():
    tree = ast.parse("settings.summary = {}\nself.settings.runs.append(1)\nsettings.confirm['top'] = 3\nx.summary = 1\n")
    assert _writes(tree) == [("summary", 1), ("runs", 2), ("confirm", 3)]


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
