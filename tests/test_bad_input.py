"""Bad input through the real command lines (``python -m study.run``, ``trainable``, ``study.analyze``,
``study.rerun`` as subprocesses), and the security checks: weights are unpickled with weights_only=True, the
cached hotdog.zip is verified before use, extraction stays inside its folder, no unsafe unpickling in the code.

Every case is one row of CASES: the command, its arguments and what it must say. A refused input exits 2 with
one ``error: ...`` line last on stderr and no traceback, and leaves nothing behind (no study folder; an
existing study's files unchanged). A handled input (stray or truncated files, unusual image modes, GPUs asked
for on a machine without one) exits 0 and says how it was handled. The cases run as subprocesses, a few at a
time, when the first of them is needed; each test then checks its own.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from test_data import _hotdog_zip, _zip
from test_study import TRIAL_COLUMNS, make_images, study_args
from trainable import TrainConfig, UserError
from trainable.data import fetch_hotdog
from study.core.folder import StudyFolder
from study.core.settings import StudySettings
from study.core.space import DEFAULT_SPACE

ROOT = Path(__file__).resolve().parents[1]
PARALLEL = 3  # subprocesses at once: each spends most of its few seconds importing torch
CASE_TIMEOUT = 300  # s; a case still running then has hung (e.g. waiting for a GPU the cluster lacks)

# {in}: the shared, read-only inputs; {case}: this case's own folder; {results}: {case}/results
STUDY = study_args(Path("{in}/good"), Path("{results}"), "s", 1, 1)
CONFIRMED = study_args(Path("{in}/good"), Path("{results}"), "s", 1, 1, confirm=True)
TRAIN = ["--data-dir", "{in}/good", "--weights", "none", "--epochs", "1", "--image-size", "32", "--batch-size", "8"]


@dataclass(frozen=True)
class Case:
    id: str
    module: str  # python -m MODULE
    args: list[str]
    says: str | tuple[str, ...]  # in the error line (exit 2), or anywhere in the output (exit 0)
    code: int = 2
    prepare: str | None = None  # a study in {results}/old: "study" or "garbage-parquet"; or "read-only"
    marks: tuple = ()


CASES = [
    # --- the data folder ------------------------------------------------------------------------------------
    Case("data-folder-missing", "study.run", [*STUDY, "--data-dir", "{in}/missing"], "data folder {in}/missing does not exist"),
    Case("data-folder-is-a-file", "study.run", [*STUDY, "--data-dir", "{in}/afile"], "data folder {in}/afile is a file, not a folder"),
    Case("one-class-only", "study.run", [*STUDY, "--data-dir", "{in}/one"], "holds 1 class folder(s) ['red']: at least two are needed"),
    Case("empty-class", "study.run", [*STUDY, "--data-dir", "{in}/empty"], "class folder {in}/empty/train/blue holds no image files"),
    Case("class-of-broken-files-only", "trainable", [*TRAIN, "--data-dir", "{in}/broken"],
         ("class 'blue' has 0 readable image(s)", "5 file(s) there could not be decoded")),
    Case("stray-and-truncated-files", "trainable", [*TRAIN, "--data-dir", "{in}/stray"], code=0,
         says=("ignored 1 file(s) without an image suffix, e.g. {in}/stray/train/red/notes.txt",
               "skipped 2 unreadable file(s)")),
    Case("unusual-image-modes", "trainable", [*TRAIN, "--data-dir", "{in}/modes"], code=0,
         says="converted 6 image(s) to 8-bit RGB from other modes (1 x1, CMYK x1, I;16 x1, L x1, P x1, RGBA x1)"),
    # --- weights files --------------------------------------------------------------------------------------
    # the study's driver never loads torch: its trials find a bad weights file, once Ray has started (the slow set)
    Case("weights-random-bytes", "study.run", [*STUDY, "--weights", "{in}/random.pt"], "weights file {in}/random.pt is not a PyTorch state dict",
         marks=(pytest.mark.slow,)),
    Case("weights-json-file", "trainable", [*TRAIN, "--weights", "{in}/config.json"], "weights file {in}/config.json is not a PyTorch state dict"),
    Case("weights-tiny-linear", "study.run", [*STUDY, "--weights", "{in}/linear.pt"], "weights file {in}/linear.pt does not fit ResNet18 (missing",
         marks=(pytest.mark.slow,)),
    Case("weights-resnet34", "trainable", [*TRAIN, "--weights", "{in}/resnet34.pt"], "weights file {in}/resnet34.pt does not fit ResNet18 (unexpected"),
    Case("weights-malicious-torch-save", "study.run", [*STUDY, "--weights", "{in}/evil.pt"], "refused by the safe loader",
         marks=(pytest.mark.slow,)),
    Case("weights-malicious-pickle", "trainable", [*TRAIN, "--weights", "{in}/evil.pkl"], "weights file {in}/evil.pkl is not a PyTorch state dict"),
    # --- where results go ------------------------------------------------------------------------------------
    Case("results-dir-under-a-file", "study.run", [*STUDY, "--results-dir", "{in}/afile/results"],
         "cannot write results to {in}/afile/results/s (Not a directory): pass --results-dir a writable folder"),
    Case("results-dir-read-only", "study.run", [*STUDY, "--results-dir", "{case}/read-only"], "cannot write results to", prepare="read-only"),
    Case("storage-under-a-file", "study.run", [*STUDY, "--storage", "{in}/afile/ray"], "pass --storage a writable folder"),
    Case("save-weights-under-a-file", "trainable", [*TRAIN, "--save-weights", "{in}/afile/w.pt"], "pass --save-weights a writable path"),
    # --- study names and --resume ----------------------------------------------------------------------------
    Case("existing-study-without-resume", "study.run", [*STUDY, "--name", "old"], "a study named 'old' already exists", prepare="study"),
    Case("resume-unknown-study", "study.run", ["--resume", "--name", "nope", "--results-dir", "{results}"], "no study named 'nope' in {results} to resume"),
    # --- numbers out of range ---------------------------------------------------------------------------------
    Case("samples-0", "study.run", [*STUDY, "--samples", "0"], "--samples 0 must be 1 or more"),
    Case("epochs-negative", "trainable", [*TRAIN, "--epochs", "-1"], "--epochs -1 must be 1 or more"),
    Case("image-size-8", "study.run", [*STUDY, "--image-size", "8"], "--image-size 8 is too small: use 32 or more"),
    Case("confirm-top-0", "study.run", [*STUDY, "--confirm-top", "0"], "--confirm-top 0 must be 1 or more (--no-confirm skips"),
    Case("confirm-folds-1", "study.run", [*STUDY, "--confirm-folds", "1"], "--confirm-folds 1 must be 2 or more: cross-validation needs a part"),
    Case("confirm-folds-more-than-the-classes-allow", "study.run", [*CONFIRMED, "--confirm-folds", "5"],
         "--confirm-folds 5 is more than the smallest class's 4 training images allow (every fold needs an image of each class): "
         "ask for at most 4", marks=(pytest.mark.slow,)),  # known once the images are decoded, as Ray starts
    # share_resources falls back to CPU slots where the cluster has no GPU (a real, 1-trial study on Ray)
    Case("gpus-per-trial-3-without-a-gpu", "study.run", [*STUDY, "--gpus-per-trial", "3"], code=0,
         says="no GPU in the Ray cluster: running trials on CPU slots instead of 3 GPU each", marks=(pytest.mark.slow,)),
    Case("address-nobody-listens-on", "study.run", [*STUDY, "--address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    # --- the search space file ---------------------------------------------------------------------------------
    Case("space-invalid-json", "study.run", [*STUDY, "--space", "{in}/space-invalid.json"], "cannot read search space file {in}/space-invalid.json"),
    Case("space-unknown-hyperparameter", "study.run", [*STUDY, "--space", "{in}/space-unknown.json"], "search space parameter 'dropout' is not searchable"),
    # --- analyze and rerun -------------------------------------------------------------------------------------
    Case("analyze-folder-without-a-study", "study.analyze", ["{in}/good"], "{in}/good holds no study (no study.json)"),
    Case("analyze-results-dir-without-studies", "study.analyze", ["--results-dir", "{in}/good"], "no study in {in}/good"),
    Case("analyze-unreadable-trials-table", "study.analyze", ["{results}/old"], "cannot read the tables", prepare="garbage-parquet"),
    Case("rerun-rank-99", "study.rerun", ["{results}/old", "--rank", "99"],
         "--rank 99 is beyond the table: study 'old' has 2 trial(s), ranks 1-2", prepare="study"),
]


# --- the inputs ------------------------------------------------------------------------------------------------
class Evil:
    """Unpickling this runs ``touch MARKER``: a loader that allows it would let any weights file run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_inputs(root: Path, marker: Path) -> None:
    small = dict(per_class=4, size=(32, 32))
    make_images(root / "good", **small)
    (root / "afile").write_text("a file, not a folder\n")
    shutil.rmtree(make_images(root / "one", **small) / "train" / "blue")
    for path in (make_images(root / "empty", **small) / "train" / "blue").iterdir():
        path.unlink()
    blue = make_images(root / "broken", **small) / "train" / "blue"
    for path in blue.iterdir():
        path.write_bytes(path.read_bytes()[:40])  # truncated inside the header
    (blue / "notes.jpg").write_text("not an image")
    stray = make_images(root / "stray", **small) / "train"
    (stray / "red" / "notes.txt").write_text("not an image, by its suffix")
    (stray / "red" / "fake.jpg").write_text("not an image, despite its suffix")
    (stray / "blue" / "truncated.png").write_bytes((stray / "blue" / "0.png").read_bytes()[:80])
    modes = make_images(root / "modes", **small) / "train"
    rgb = Image.open(modes / "red" / "0.png").convert("RGB")
    rgb.convert("L").save(modes / "red" / "0.png")
    rgb.convert("RGBA").save(modes / "red" / "1.png")
    rgb.convert("1").save(modes / "red" / "2.png")
    rgb.convert("P").save(modes / "blue" / "0.png")
    Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).save(modes / "blue" / "1.png")  # I;16
    (modes / "blue" / "2.png").unlink()
    rgb.convert("CMYK").save(modes / "blue" / "2.jpg")

    (root / "random.pt").write_bytes(bytes(range(256)) * 16)
    (root / "config.json").write_text(json.dumps({"lr": 0.01}))
    torch.save(nn.Linear(4, 2).state_dict(), root / "linear.pt")
    from torchvision.models import resnet34

    torch.save(resnet34().state_dict(), root / "resnet34.pt")
    torch.save({"fc.weight": Evil(marker)}, root / "evil.pt")
    (root / "evil.pkl").write_bytes(pickle.dumps({"fc.weight": Evil(marker)}))

    (root / "space-invalid.json").write_text('{"lr": {"type": "float", "low": 1e-4,')
    (root / "space-unknown.json").write_text(json.dumps({"dropout": {"type": "float", "low": 0.0, "high": 0.5}}))


def write_study(folder: Path, data: Path) -> None:
    """A finished two-trial study as study.run leaves it: study.json, trials.parquet, epochs.parquet."""
    folder.mkdir(parents=True)
    base = TrainConfig(data_dir=str(data), weights="none", epochs=1, image_size=32, batch_size=8).to_dict()
    StudyFolder(folder).write_settings(StudySettings.from_dict(dict(name=folder.name, base=base, space=DEFAULT_SPACE, samples=2, seed=0,
                                                     experiment_path=str(folder / "ray"), created="2026-01-01T00:00:00")))
    rows = []
    for rank, (acc, lr) in enumerate([(0.75, 0.0064), (0.5, 0.02)], start=1):
        rows.append({**{c: None for c in TRIAL_COLUMNS}, "rank": rank, "trial_id": f"t{rank}", "optuna_trial": rank - 1,
                     "baseline": rank == 1, "lr": lr, "head_lr_mult": 10.0, "weight_decay": 1e-5, "freeze_depth": 0,
                     "augment": "d2l", "best_val_acc": acc, "best_epoch": 1, "last_val_acc": acc, "epochs_run": 1,
                     "status": "completed", "seconds": 1.0, "images_per_s": 10.0, "seed": 0, "node_id": "n", "hostname": "h"})
    pd.DataFrame(rows, columns=TRIAL_COLUMNS).to_parquet(folder / "trials.parquet", index=False)
    pd.DataFrame([{"trial_id": r["trial_id"], "epoch": 1, "val_acc": r["best_val_acc"], "diverged": False} for r in rows]
                 ).to_parquet(folder / "epochs.parquet", index=False)


def prepare_case(case: Case, case_dir: Path, inputs: Path) -> str | None:
    """Make the case's own folder; returns a reason to skip it, if any."""
    results = case_dir / "results"
    case_dir.mkdir(parents=True)
    if case.prepare in ("study", "garbage-parquet"):
        write_study(results / "old", inputs / "good")
        if case.prepare == "garbage-parquet":
            (results / "old" / "trials.parquet").write_bytes(b"PAR1 this is not a parquet file")
    if case.prepare == "read-only":
        folder = case_dir / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        try:
            (folder / "probe").write_text("x")
        except OSError:
            return None
        (folder / "probe").unlink()
        folder.chmod(0o700)
        return ("chmod 500 does not stop writes here (running as root): results-dir-under-a-file and "
                "storage-under-a-file cover an unwritable results folder instead")
    return None


# --- running the cases -----------------------------------------------------------------------------------------
@dataclass
class Outcome:
    code: int | None  # None: still running after CASE_TIMEOUT
    out: str
    err: str
    seconds: float
    before: dict
    after: dict
    places: dict
    skip: str | None = None


def snapshot(folder: Path) -> dict[str, str]:
    """Every file (with its sha1) and folder under ``folder``."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir/"
            for p in folder.rglob("*")}


def fill(text: str, places: dict) -> str:
    for key, value in places.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def run_case(case: Case, places: dict, skip: str | None) -> Outcome:
    case_dir = Path(places["case"])
    if skip:
        return Outcome(None, "", "", 0.0, {}, {}, places, skip)
    before = snapshot(case_dir)
    t0 = time.perf_counter()
    argv = [sys.executable, "-m", case.module, *(fill(a, places) for a in case.args)]
    try:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=CASE_TIMEOUT,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = None, str(exc.stdout or ""), str(exc.stderr or "")
    return Outcome(code, out, err, time.perf_counter() - t0, before, snapshot(case_dir), places)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    marker = root / "PWNED"
    write_inputs(root / "in", marker)
    return root, marker


@pytest.fixture(scope="module")
def outcomes(request, workspace):
    """Runs every selected case once, PARALLEL at a time, the slowest (those that start Ray) first."""
    root, _ = workspace
    inputs = root / "in"
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if getattr(item, "originalname", None) == "test_bad_input" and item.module is request.module}
    chosen = sorted((c for c in CASES if c.id in wanted), key=lambda c: not c.marks)
    inputs_before = snapshot(inputs)
    jobs = []
    for case in chosen:
        case_dir = root / "cases" / case.id
        skip = prepare_case(case, case_dir, inputs)
        jobs.append((case, {"in": inputs, "case": case_dir, "results": case_dir / "results"}, skip))
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = dict(zip([c.id for c, _, _ in jobs], pool.map(lambda job: run_case(*job), jobs)))
    results["__inputs__"] = (inputs_before, snapshot(inputs))
    if os.environ.get("BAD_INPUT_REPORT"):  # a JSON list of what each case ran and printed last, for a write-up
        Path(os.environ["BAD_INPUT_REPORT"]).write_text(json.dumps([
            {"id": c.id, "argv": ["python", "-m", c.module, *(fill(a, p) for a in c.args)], "code": o.code,
             "seconds": round(o.seconds, 1), "skip": o.skip,
             "last_line": ([line for line in o.err.splitlines() if line.strip()] or [""])[-1] if o.code == 2 else
             "; ".join(line for line in (o.out + o.err).splitlines() if any(fill(f, p) in line for f in ((c.says,) if isinstance(c.says, str) else c.says)))}
            for (c, p, _), o in ((job, results[job[0].id]) for job in jobs)], indent=1))
    return results


def _new_entries(outcome: Outcome) -> list[str]:
    """What the command left in its case folder; the empty results folder itself does not count."""
    return sorted(k for k, v in outcome.after.items() if outcome.before.get(k) != v and not (k == "results" and v == "dir/"))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, outcomes, workspace):
    outcome = outcomes[case.id]
    if outcome.skip:
        pytest.skip(outcome.skip)
    _, marker = workspace
    output = outcome.out + outcome.err
    assert outcome.code is not None, f"still running after {CASE_TIMEOUT}s (hung?):\n{output[-3000:]}"
    assert outcome.code == case.code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    says = (case.says,) if isinstance(case.says, str) else case.says
    says = [fill(s, outcome.places) for s in says]
    if case.code == 2:
        lines = [line for line in outcome.err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("error: "), outcome.err[-3000:]
        assert sum(line.startswith("error:") for line in lines) == 1, outcome.err[-3000:]
        for fragment in says:
            assert fragment in lines[-1], lines[-1]
    else:
        for fragment in says:
            assert fragment in output, output[-3000:]
    if case.id == "gpus-per-trial-3-without-a-gpu":  # a real study ran: its table holds the one trial
        assert len(pd.read_parquet(Path(outcome.places["results"]) / "s" / "trials.parquet")) == 1
    else:  # nothing written: no study folder, an existing study's files unchanged
        assert _new_entries(outcome) == [], f"left behind or changed: {_new_entries(outcome)}"
    assert not marker.exists(), "a pickled weights file ran code while being loaded"


def test_inputs_are_left_unchanged_and_no_pickled_code_ran(outcomes, workspace):
    before, after = outcomes["__inputs__"]
    assert after == before
    assert not workspace[1].exists()


# --- security: the weights loader, the archive, the code -------------------------------------------------------
def test_the_safe_loader_runs_no_code_in_process(tmp_path):
    from trainable.model import build_model

    marker = tmp_path / "PWNED"
    torch.save({"conv1.weight": Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused by the safe loader"):
        build_model(str(tmp_path / "evil.pt"), 2)
    assert not marker.exists()


def test_a_cached_zip_with_the_wrong_sha1_is_downloaded_again_before_anything_is_extracted(tmp_path):
    good, sha1 = _hotdog_zip(tmp_path)
    root = tmp_path / "cache"
    root.mkdir()
    _zip(root / "hotdog.zip", {"hotdog/train/planted/0.png": good.read_bytes()[:100], "planted.txt": b"x"})
    data = fetch_hotdog(root, url=good.as_uri(), sha1=sha1)  # a file:// URL: a real download through urllib
    assert (root / "hotdog.zip").read_bytes() == good.read_bytes(), "the cached archive was not replaced"
    assert sorted(p.name for p in (data / "train").iterdir()) == ["hotdog", "not-hotdog"]
    assert not (root / "planted.txt").exists() and not (data / "train" / "planted").exists()


def test_a_cached_zip_with_the_wrong_sha1_and_no_good_download_is_never_extracted(tmp_path):
    good, sha1 = _hotdog_zip(tmp_path)
    root = tmp_path / "cache"
    root.mkdir()
    bad = _zip(root / "hotdog.zip", {"hotdog/train/planted/0.png": b"x", "hotdog/test/planted/0.png": b"x"})
    planted = bad.read_bytes()
    with pytest.raises(UserError, match="cannot download the hotdog data"):
        fetch_hotdog(root, url=(tmp_path / "absent.zip").as_uri(), sha1=sha1)
    (tmp_path / "other").mkdir()
    other, _ = _hotdog_zip(tmp_path / "other")  # a good archive, but not the one whose sha1 is expected
    with pytest.raises(UserError, match="has sha1 .*, expected"):
        fetch_hotdog(root, url=other.as_uri(), sha1="0" * 40)
    assert sorted(p.name for p in root.iterdir()) == [".hotdog.lock", "hotdog.zip"], "nothing extracted, no partial download left"
    assert (root / "hotdog.zip").read_bytes() == planted


def test_a_verified_archive_with_an_entry_outside_its_folder_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    archive = _zip(tmp_path / "src" / "hotdog.zip",
                   {"hotdog/train/a/0.txt": b"ok", "../evil.txt": b"pwned", "hotdog/../../evil2.txt": b"pwned"})
    sha1 = hashlib.sha1(archive.read_bytes()).hexdigest()  # the checksum matches: only the entry names are wrong
    root = tmp_path / "cache" / "inner"
    with pytest.raises(UserError, match=r"entry outside its folder \('\.\./evil\.txt'\)"):
        fetch_hotdog(root, url=archive.as_uri(), sha1=sha1)
    assert not list(tmp_path.rglob("evil*.txt")), "an entry was written outside the target"
    assert not (root / "hotdog").exists() and not list(root.glob(".extract-*"))


UNSAFE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
                ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle")}


def test_the_code_never_unpickles_without_weights_only():
    """Every torch.load in trainable/ and study/ passes weights_only=True; nothing calls pickle.load & co."""
    torch_loads, problems = 0, []
    for path in sorted([*(ROOT / "trainable").rglob("*.py"), *(ROOT / "study").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            keywords = {k.arg: k.value for k in node.keywords}
            if (owner, node.func.attr) == ("torch", "load"):
                torch_loads += 1
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            elif (owner, node.func.attr) in UNSAFE_CALLS:
                problems.append(f"{where}: {owner}.{node.func.attr}")
            elif node.func.attr == "load" and owner in ("np", "numpy"):
                value = keywords.get("allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{where}: np.load with allow_pickle")
    assert torch_loads >= 2, "the scan found no torch.load: is it reading the right files?"
    assert problems == []
