"""A study that survives kills, races, full disks and damaged files exactly.

Every kill happens at a named moment of the driver (``study.driver.faults``: HOTDOG_TUNE_FAULT), never after a sleep,
so each test hits the moment it names. After each fault the study is resumed as a user would, and must end
with every sample exactly once in trials.parquet and optuna.db, no configuration twice, nothing running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pytest

from study.core.folder import StudyFolder
from study.core.tables import read_tables

from tests.test_study import ROOT, assert_exact, make_images, optuna_trials, run_study, study_args

pytestmark = pytest.mark.slow


def resume(results: Path, name: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_study(["--resume", "--name", name, "--results-dir", str(results)], env=env)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stdout + proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("images") / "data", per_class=8)


def killed_study(images: Path, results: Path, name: str, fault: str, samples: int = 3, epochs: int = 2, *extra: str) -> Path:
    out = run_study(study_args(images, results, name, samples, epochs, "--max-concurrent", "1", *extra), env={"HOTDOG_TUNE_FAULT": fault})
    assert out.returncode == -signal.SIGKILL, f"the fault {fault} was never reached:\n{out.stdout}{out.stderr}"
    return results / name


def test_ten_kills_at_every_moment_then_one_resume_end_exact(images, tmp_path):
    """Killed while a configuration is proposed, while a trial starts, mid-epoch and between trials, ten times in
    a row, each time resumed: the study ends with exactly --samples trials, each once, none repeated or running."""
    results, name, samples = tmp_path / "r", "k", 6
    kills = ["asked:1", "trial_started:1", "result:1", "trial_ended:1", "result:2", "asked:2", "trial_started:2",
             "result:3", "trial_ended:1", "result:1"]
    left_behind: dict[int, psutil.Process] = {}
    for i, fault in enumerate(kills):
        argv = (study_args(images, results, name, samples, 2, "--max-concurrent", "2") if i == 0
                else ["--resume", "--name", name, "--results-dir", str(results)])
        proc = subprocess.Popen([sys.executable, "-m", "study.run", *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "HOTDOG_TUNE_FAULT": fault})
        if i == 0:  # the Ray processes of a killed driver must not outlive it (the watchdog ends them)
            while proc.poll() is None:
                try:
                    left_behind.update({p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)})
                except psutil.Error:
                    pass
                time.sleep(0.2)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL, f"kill {i} at {fault} never came:\n{out}"
        trials = pd.read_parquet(results / name / "trials.parquet") if (results / name / "trials.parquet").exists() else None
        assert trials is None or trials["optuna_trial"].is_unique
        assert len(optuna_trials(results / name, name)) <= samples
    _, alive = psutil.wait_procs(list(left_behind.values()), timeout=40)
    assert not alive, [p.cmdline() for p in alive if p.is_running()]
    final = resume(results, name)
    assert final.returncode == 0, final.stdout + final.stderr
    assert_exact(results / name, name, samples)
    again = resume(results, name)  # a finished study resumed: nothing to do, exit 0
    assert again.returncode == 0 and "every trial of the study has finished" in again.stdout, again.stdout + again.stderr
    assert_exact(results / name, name, samples)


def test_two_drivers_on_one_name_one_refused(images, tmp_path):
    results = tmp_path / "r"
    argv = [sys.executable, "-m", "study.run", *study_args(images, results, "race", 2, 1)]
    procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = outs[[p.returncode for p in procs].index(2)][1].strip().splitlines()
    assert len(refused) == 1 and ("is in use by another python -m study.run (pid" in refused[0] or "already exists" in refused[0]), refused
    assert_exact(results / "race", "race", 2)


def test_drivers_probing_one_results_folder_at_once_do_not_fail_each_other(tmp_path):
    # The race behind the test above, made frequent: each probe of a writable folder must be its own file, or
    # one driver deletes the other's probe and is refused with "cannot write results" (seen in CI).
    from concurrent.futures import ThreadPoolExecutor

    from trainable.cli import check_output_folder

    def probe():
        for _ in range(300):
            check_output_folder(tmp_path, "--results-dir", holds="results", kind="folder")

    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(probe) for _ in range(4)]
    errors = [str(run.exception()) for run in runs if run.exception()]
    assert errors == [] and list(tmp_path.iterdir()) == [], (errors[:1], list(tmp_path.iterdir()))


def test_the_refusal_names_the_live_holder_not_an_earlier_driver(tmp_path):
    # The window behind the test above: the holder has the lock but has not yet written .driver.json, and the
    # file there is an earlier driver's, whose process has ended. The refusal waits for the live holder's.
    import json
    import socket
    import threading

    from filelock import FileLock

    from study.core.folder import DRIVER_FILE, LOCK_FILE, StudyFolder
    from trainable.errors import UserError

    folder = tmp_path / "s"
    folder.mkdir()
    held = FileLock(str(folder / LOCK_FILE))
    held.acquire()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (folder / DRIVER_FILE).write_text(json.dumps({"pid": ended.pid, "host": socket.gethostname(), "since": "earlier"}))
    late = threading.Timer(0.3, lambda: (folder / DRIVER_FILE).write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"})))
    late.start()
    try:
        with pytest.raises(UserError, match=rf"in use by another python -m study.run \(pid {os.getpid()} on .*, since now\)"):
            StudyFolder(folder).lock()
    finally:
        late.join()
        held.release()


def test_a_driver_clears_what_a_killed_driver_half_wrote_and_nothing_else(tmp_path):
    from study.core.folder import StudyFolder
    from trainable.files import temp_beside

    folder = StudyFolder(tmp_path / "s")
    folder.path.mkdir()
    half = [temp_beside(folder.path / name) for name in ("trials.parquet", "epochs.parquet", "study.json", "confirm.parquet")]
    kept = [temp_beside(folder.path / "rerun.parquet"), folder.path / "trials.parquet"]  # a rerun's, running now; a table
    for path in half + kept:
        path.write_bytes(b"half")
    lock = folder.lock()
    lock.release()
    assert not any(p.exists() for p in half) and all(p.exists() for p in kept)


def test_a_second_driver_while_the_first_runs_is_refused(images, tmp_path):
    results = tmp_path / "r"
    first = subprocess.Popen([sys.executable, "-m", "study.run", *study_args(images, results, "busy", 2, 3)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (results / "busy" / "study.json").exists():
        assert first.poll() is None, first.communicate()
        time.sleep(0.2)
    second = resume(results, "busy")
    line = one_error_line(second)
    assert "study 'busy'" in line and "is in use by another python -m study.run (pid" in line and str(first.pid) in line
    first.communicate(timeout=600)
    assert first.returncode == 0
    assert_exact(results / "busy", "busy", 2)


def test_damaged_ray_experiment_files_do_not_stop_a_resume(images, tmp_path):
    """Ray's own experiment state (searcher state, experiment snapshot, tuner.pkl) zeroed, as a full disk leaves
    them: the study's truth is its tables and optuna.db, so the resume goes on."""
    folder = killed_study(images, tmp_path / "r", "z", "result:2")
    zeroed = [p for p in (folder / "ray").glob("run-*/*") if p.is_file()]
    assert zeroed
    for path in zeroed:
        path.write_bytes(b"")
    out = resume(tmp_path / "r", "z")
    assert out.returncode == 0, out.stdout + out.stderr
    assert_exact(folder, "z", 3)


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_damaged_or_missing_optuna_db_is_rebuilt_from_the_tables(images, tmp_path, damage):
    folder = killed_study(images, tmp_path / "r", "o", "trial_ended:2")
    before = pd.read_parquet(folder / "trials.parquet")
    db = folder / "optuna.db"
    if damage == "truncated":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    else:
        db.unlink()
    out = resume(tmp_path / "r", "o")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"optuna.db was {'damaged' if damage == 'truncated' else 'missing'}" in out.stdout and "rebuilt it from trials.parquet" in out.stdout
    trials = assert_exact(folder, "o", 3)
    for _, row in before[before["status"] != "running"].iterrows():  # what finished before is kept as it was
        after = trials[trials["optuna_trial"] == row["optuna_trial"]].iloc[0]
        assert after["best_val_acc"] == row["best_val_acc"] and after["status"] == row["status"]
    stored = {t.number: t for t in optuna_trials(folder, "o")}
    for _, row in before[before["status"] == "completed"].iterrows():
        assert stored[row["optuna_trial"]].value == pytest.approx(row["best_val_acc"])


def test_a_truncated_trials_table_is_rebuilt_from_optuna_and_the_epochs(images, tmp_path):
    folder = killed_study(images, tmp_path / "r", "t", "trial_ended:2")
    table = folder / "trials.parquet"
    table.write_bytes(table.read_bytes()[:100])
    out = resume(tmp_path / "r", "t")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trials.parquet was damaged" in out.stdout and "rebuilt it from optuna.db and epochs.parquet" in out.stdout
    assert_exact(folder, "t", 3)
    assert list(folder.glob("trials.parquet.damaged-*"))  # kept beside, for whoever wants to look


def test_both_stores_lost_is_one_line_naming_them(images, tmp_path):
    folder = killed_study(images, tmp_path / "r", "b", "trial_ended:1")
    (folder / "optuna.db").unlink()
    (folder / "trials.parquet").write_bytes(b"PAR1 nothing")
    line = one_error_line(resume(tmp_path / "r", "b"))
    assert "optuna.db (missing) and trials.parquet" in line and "start it again under a new --name" in line


def test_a_damaged_checkpoint_is_passed_over_not_retried(images, tmp_path):
    # killed as the second epoch result is recorded (one trial at a time: the first trial's), whose report carried its
    # first epoch's checkpoint (a checkpoint goes with the report after its epoch: study.driver.checkpoints)
    folder = killed_study(images, tmp_path / "r", "c", "result:2", 2, 3)
    trials, _ = read_tables(StudyFolder(folder), StudyFolder(folder).read_settings())
    running = trials.query("status == 'running'")
    states = [s for d in running["trial_dir"] for s in Path(d).glob("checkpoint_*/state.pt")]
    assert 1 <= len(states) <= 2  # one or both running trials, as the order of their reports fell
    for state in states:
        state.write_bytes(b"\0" * state.stat().st_size)  # the same size: only loading it can tell
    out = resume(tmp_path / "r", "c")
    assert out.returncode == 0, out.stdout + out.stderr
    notes = [line for line in out.stdout.splitlines() if "could not be read" in line]
    assert len(notes) == len(states) and all("started again from epoch 1" in n for n in notes), out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    assert_exact(folder, "c", 2)


def _tmpfs(path: Path, megabytes: int) -> Path:
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {megabytes} MB tmpfs here ({done.stderr.strip() or 'mount failed'}): needs root")
    return path


@pytest.fixture
def small_disk(tmp_path):
    mounted = []

    def make(megabytes: int) -> Path:
        mounted.append(_tmpfs(tmp_path / f"disk-{uuid.uuid4().hex[:6]}", megabytes))
        return mounted[-1]

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_disk_too_small_for_the_checkpoints_is_refused_at_start(images, small_disk):
    disk = small_disk(60)
    line = one_error_line(run_study(study_args(images, disk / "results", "s", 2, 1)))
    assert f"not enough free space in {disk}/results" in line and "a 42 MB checkpoint each" in line
    assert not (disk / "results" / "s").exists()


def test_a_disk_that_fills_up_stops_the_study_and_it_resumes_once_freed(images, small_disk):
    disk = small_disk(200)
    filler = disk / "filler"
    out = run_study(study_args(images, disk / "results", "f", 2, 3, "--max-concurrent", "1"),
                    env={"HOTDOG_TUNE_FAULT": "result:1:fill", "HOTDOG_TUNE_FILL": str(filler)})
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    stop = [line for line in out.stdout.splitlines() if line.startswith("the study stopped")]
    assert len(stop) == 1 and f"no space left on the disk holding {disk}/results" in stop[0], out.stdout
    filler.unlink()
    again = resume(disk / "results", "f")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_exact(disk / "results" / "f", "f", 2)
    left = sum(p.stat().st_size for p in (disk / "results").rglob("*") if p.is_file())
    assert left < 10 << 20, "finished trials keep no checkpoints"
    shutil.rmtree(disk / "results")
