"""A study notices what changed under it: its data and weights between a kill and a resume, and before a rerun;
and a data folder whose test/ split is wrong stops the study before its first trial."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_study import ROOT, make_images, run_study, study_args
from trainable.fingerprint import data_changes, data_fingerprint, weights_changes, weights_fingerprint


def error_line(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stdout + out.stderr
    return lines[0]


def add_image(folder: Path, name: str, colour=(200, 40, 40)) -> None:
    pixels = np.clip(np.array(colour) + np.random.default_rng(len(name)).normal(0, 50, (48, 40, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / name)


# --- the fingerprint itself (no study) -------------------------------------------------------------------
def test_the_fingerprint_names_each_kind_of_change(tmp_path):
    data = make_images(tmp_path / "d", per_class=4)
    before = data_fingerprint(data)
    assert data_changes(before, data_fingerprint(data)) == []
    add_image(data / "train" / "red", "new.png")
    assert data_changes(before, data_fingerprint(data)) == ["train/red: 1 image(s) added since the study started (4 then, 5 now)"]
    (data / "train" / "red" / "new.png").unlink()
    (data / "test" / "blue" / "0.png").unlink()
    assert data_changes(before, data_fingerprint(data)) == ["test/blue: 1 image(s) removed since the study started (4 then, 3 now)"]
    add_image(data / "test" / "blue", "0.png", colour=(10, 10, 10))  # the same name, other pixels
    assert data_changes(before, data_fingerprint(data)) == ["test/blue: images replaced, renamed or edited since the study started (still 4)"]
    (data / "train" / "red").rename(data / "train" / "cat")
    assert data_changes(before, data_fingerprint(data))[0] == "train/ classes are now ['blue', 'cat']; the study started with ['blue', 'red']"
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"a" * 100)
    first = weights_fingerprint(weights)
    weights.write_bytes(b"b" * 100)
    assert weights_changes(first, weights_fingerprint(weights)) == ["the weights file's contents changed since the study started (the same size)"]


# --- the layout, test/ included, before the first trial ----------------------------------------------------
@pytest.mark.parametrize("change, words", [
    ("no test", "has no test/ folder, which the final evaluation needs"),
    ("extra class", "has classes ['blue', 'green', 'red'] but train has ['blue', 'red']"),
    ("missing class", "has classes ['blue'] but train has ['blue', 'red']"),
    ("empty class", "holds no image files: the test split needs at least one image of each class"),
])
def test_a_wrong_test_split_stops_the_study_before_it_starts(tmp_path, change, words):
    data = make_images(tmp_path / "d", per_class=4)
    if change == "no test":
        shutil.rmtree(data / "test")
    elif change == "extra class":
        (data / "test" / "green").mkdir()
        add_image(data / "test" / "green", "0.png")
    elif change == "missing class":
        shutil.rmtree(data / "test" / "red")
    else:
        for path in (data / "test" / "red").iterdir():
            path.unlink()
    out = run_study(study_args(data, tmp_path / "r", "s", 2, 1))
    line = error_line(out)
    assert words in line, line
    assert "--no-test-split" in line or change != "no test", line
    assert not (tmp_path / "r" / "s").exists(), "no study folder is left behind"
    assert "trial" not in out.stdout


# --- a real study: changes between a kill and a resume, and before a rerun -----------------------------------
@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A tiny study on its own data and weights file, killed (SIGKILL) once its first trial ended."""
    import torch

    from trainable.model import build_model

    tmp = tmp_path_factory.mktemp("changes")
    data = make_images(tmp / "data", per_class=8)
    weights = tmp / "w.pt"
    torch.save(build_model("none", 2).state_dict(), weights)
    argv = study_args(data, tmp / "results", "k", 3, 1, "--max-concurrent", "1")
    argv[argv.index("--weights") + 1] = str(weights)
    out = run_study(argv, env={"HOTDOG_TUNE_FAULT": "trial_ended:1"})
    assert out.returncode == -signal.SIGKILL, out.stdout + out.stderr
    return tmp


def copy_of(killed: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """The killed study, its data and weights, copied (the paths in study.json rewritten to the copies)."""
    for name in ("data", "results"):
        shutil.copytree(killed / name, tmp_path / name, symlinks=True, copy_function=shutil.copy2)
    shutil.copy2(killed / "w.pt", tmp_path / "w.pt")
    settings_file = tmp_path / "results" / "k" / "study.json"
    text = settings_file.read_text().replace(str(killed / "data"), str(tmp_path / "data")).replace(str(killed / "w.pt"), str(tmp_path / "w.pt"))
    settings_file.write_text(text.replace(str(killed / "results"), str(tmp_path / "results")))
    # the fingerprint holds paths relative to the data folder and the files' times, which copy2 keeps
    return tmp_path / "data", tmp_path / "results", tmp_path / "w.pt"


def resume(results: Path, *extra: str):
    return run_study(["--resume", "--name", "k", "--results-dir", str(results), *extra])


def change(kind: str, data: Path, weights: Path) -> str:
    """Change the data or weights as ``kind`` says; return the words the refusal must hold."""
    if kind == "added":
        for i in range(3):
            add_image(data / "train" / "red", f"extra{i}.png")
        return "train/red: 3 image(s) added since the study started (8 then, 11 now)"
    if kind == "removed":
        (data / "train" / "blue" / "0.png").unlink()
        return "train/blue: 1 image(s) removed since the study started (8 then, 7 now)"
    if kind == "replaced":
        for path in sorted((data / "train" / "red").iterdir()):
            add_image(path.parent, path.name, colour=(90, 200, 90))
        return "train/red: images replaced, renamed or edited since the study started (still 8)"
    if kind == "classes renamed":
        for split in ("train", "test"):
            (data / split / "red").rename(data / split / "cat")
            (data / split / "blue").rename(data / split / "dog")
        return "train/ classes are now ['cat', 'dog']; the study started with ['blue', 'red']"
    import torch

    state = torch.load(weights, weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1.0
    torch.save(state, weights)
    return "the weights file's contents changed since the study started"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["added", "removed", "replaced", "classes renamed", "weights"])
def test_a_change_between_a_kill_and_a_resume_is_refused_in_one_line(killed, tmp_path, kind):
    data, results, weights = copy_of(killed, tmp_path)
    words = change(kind, data, weights)
    out = resume(results)
    line = error_line(out)
    assert words in line and "restore it, start a new study under another --name, or pass --accept-data-change" in line, line
    settings = json.loads((results / "k" / "study.json").read_text())
    assert settings["data_changes"] == [] and len(settings["runs"]) == 1  # refused before anything ran
    # and before a rerun, the same
    import subprocess
    import sys

    rerun = subprocess.run([sys.executable, "-m", "study.rerun", str(results / "k"), "--seeds", "1", "--epochs", "1"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert words in error_line(rerun) and "--accept-data-change" in error_line(rerun)
    assert not (results / "k" / "rerun.parquet").exists()


@pytest.mark.slow
def test_the_override_goes_on_and_is_recorded_and_shown(killed, tmp_path):
    import subprocess
    import sys

    data, results, weights = copy_of(killed, tmp_path)
    words = change("added", data, weights)
    out = resume(results, "--accept-data-change")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"going on with changed data (--accept-data-change): {words}" in out.stdout
    settings = json.loads((results / "k" / "study.json").read_text())
    (entry,) = settings["data_changes"]
    assert entry["by"] == "python -m study.run --resume" and entry["changes"] == [words]
    assert settings["data_fingerprint"] == data_fingerprint(data)  # from now on compared with the data as accepted
    assert resume(results).returncode == 0  # nothing changed since: no refusal
    analyzed = subprocess.run([sys.executable, "-m", "study.analyze", str(results / "k"), "--no-report"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    assert analyzed.returncode == 0 and "warning: the data changed during the study and python -m study.run --resume went on" in analyzed.stdout


@pytest.mark.slow
def test_a_study_without_a_test_split_runs_and_its_rerun_says_what_to_pass(tmp_path):
    import subprocess
    import sys

    data = make_images(tmp_path / "d", per_class=6)
    shutil.rmtree(data / "test")
    out = run_study(study_args(data, tmp_path / "r", "n", 2, 1, "--no-test-split"))
    assert out.returncode == 0, out.stdout + out.stderr
    rerun = subprocess.run([sys.executable, "-m", "study.rerun", str(tmp_path / "r" / "n"), "--seeds", "1"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    line = error_line(rerun)
    assert "has no test split to measure test accuracy on" in line and "started with --no-test-split" in line
    assert "--accept-data-change" in line and "python -m trainable --config FILE" in line


def test_rays_snapshot_errors_go_to_the_study_log_not_the_console(tmp_path, capfd):
    import logging

    from study.driver.session import RAY_QUIET_LOGGERS, keep_ray_tracebacks_in

    log = tmp_path / "logs" / "ray.log"
    keep_ray_tracebacks_in(log)
    try:
        raise FileNotFoundError("driver_artifacts/.x-tmp-search_gen_state.json")
    except FileNotFoundError:
        logging.getLogger(RAY_QUIET_LOGGERS[0]).error("Saving experiment state failed with exception: ", exc_info=True)
    out, err = capfd.readouterr()
    assert "FileNotFoundError" not in out + err
    assert "FileNotFoundError: driver_artifacts/.x-tmp-search_gen_state.json" in log.read_text()


def test_the_printed_next_commands_paste_back_whatever_the_path(tmp_path):
    import shlex

    from study.core.folder import StudyFolder, resume_command

    folder = StudyFolder(tmp_path / "my results" / "it's a study")
    argv = shlex.split(resume_command(folder))
    assert argv[-4:] == ["--name", "it's a study", "--results-dir", str(tmp_path / "my results")]
