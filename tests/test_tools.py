"""The tools users already run: TensorBoard and MLflow through Ray Tune's callbacks, optuna-dashboard, a live ETA,
the notebook API docs/usage.md shows, and a study's output free of warnings nobody asked for."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.test_study import ROOT, make_images, run_study, study_args

pytestmark = pytest.mark.slow
USAGE = ROOT / "docs" / "usage.md"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tiny study with both trackers on, one trial at a time (its output is a log: no terminal)."""
    tmp = tmp_path_factory.mktemp("tracked")
    data = make_images(tmp / "data", per_class=8)
    mlruns = tmp / "mlruns"
    out = run_study(study_args(data, tmp / "results", "t", 4, 2, "--max-concurrent", "1", "--tensorboard",
                               "--mlflow", f"file:{mlruns}", "--grace-epochs", "2"))
    return tmp / "results" / "t", mlruns, out


def test_a_study_prints_no_warnings_nobody_asked_for(tracked):
    _, _, out = tracked
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    noise = [line for line in text.splitlines() if re.search(r"warn|deprecat|INFO |Traceback", line, re.IGNORECASE)]
    assert noise == [], noise


def test_tensorboard_holds_every_trial_with_its_hyperparameters_and_epochs(tracked):
    from tbparse import SummaryReader

    folder, _, _ = tracked
    trials = pd.read_parquet(folder / "trials.parquet")
    reader = SummaryReader(str(folder / "ray"), extra_columns={"dir_name"})
    scalars, hparams = reader.scalars, reader.hparams
    for _, trial in trials.iterrows():
        run = Path(trial["trial_dir"]).relative_to(folder / "ray").as_posix()
        accs = scalars[(scalars["dir_name"] == run) & (scalars["tag"] == "ray/tune/val_acc")].sort_values("step")
        assert len(accs) == trial["epochs_run"], (run, accs)
        assert accs["value"].max() == pytest.approx(trial["best_val_acc"], abs=1e-6)
        mine = hparams[hparams["dir_name"] == run].set_index("tag")["value"]
        assert float(mine["lr"]) == pytest.approx(trial["lr"]) and mine["augment"] == trial["augment"]


def test_mlflow_holds_every_trial_with_its_params_and_epochs(tracked):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    folder, mlruns, _ = tracked
    client = MlflowClient(f"file:{mlruns}")
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(runs) == len(trials)
    by_number = {int(r.data.params["optuna_trial"]): r for r in runs}
    for _, trial in trials.iterrows():
        run = by_number[int(trial["optuna_trial"])]
        assert float(run.data.params["lr"]) == pytest.approx(trial["lr"]) and run.data.params["augment"] == trial["augment"]
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert len(history) == trial["epochs_run"] and max(m.value for m in history) == pytest.approx(trial["best_val_acc"])


def test_the_eta_in_a_log_falls_as_trials_finish(tracked):
    _, _, out = tracked
    etas = []
    for line in out.stdout.splitlines():
        if line.strip().startswith("progress: "):
            found = re.search(r"ETA ~(?:(\d+)m)?(\d+)s", line)
            etas.append(int(found.group(1) or 0) * 60 + int(found.group(2)) if found else 0)
            assert "an estimate" in line or not found
    assert len(etas) == 4, out.stdout
    assert etas[0] > 0 and etas[-1] == 0 and etas[0] > etas[2], etas


def test_a_missing_tracker_extra_is_one_line(tmp_path):
    code = ("import sys; sys.modules['mlflow'] = None  # as if the extra were not installed\n"
            "from trainable.cli import run_main\nfrom study.run import main\n"
            f"run_main(main, ['--samples', '1', '--results-dir', {str(tmp_path)!r}, '--mlflow', 'sqlite:///x.db'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and lines == ['error: --mlflow needs MLflow: pip install -e ".[mlflow]"'], done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_serves_the_study(tracked):
    folder, _, _ = tracked
    port = _free_port()
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    server = subprocess.Popen([str(dashboard), f"sqlite:///{folder / 'optuna.db'}", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, answer = time.time() + 60, None
        while time.time() < deadline and answer is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    answer = json.loads(response.read())
            except OSError:
                assert server.poll() is None, server.stderr.read()
                time.sleep(0.5)
        assert answer is not None, "optuna-dashboard did not answer"
        studies = {s["study_name"]: s for s in answer["study_summaries"]}
        assert "t" in studies
    finally:
        server.terminate()
        server.wait(timeout=30)


def notebook_session() -> str:
    """docs/usage.md's notebook session: the python block after ``<!-- notebook session -->``."""
    text = USAGE.read_text()
    block = text.split("<!-- notebook session -->", 1)[1]
    return block.split("```python", 1)[1].split("```", 1)[0]


def test_the_readmes_notebook_session_runs_as_written(tracked, tmp_path):
    folder, _, _ = tracked
    code = notebook_session().replace('"results/hotdog-20261126-101500"', repr(str(folder)))
    assert repr(str(folder)) in code, "the session must load the study by its folder"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rerun = pd.read_parquet(folder / "rerun.parquet")
    assert len(rerun) == 2 and rerun["test_acc"].between(0, 1).all()  # the winner and the book's recipe, one seed each
    assert rerun["baseline"].sum() == 1 and rerun["seed"].nunique() == 1
    assert (folder / "model" / "model.json").is_file() and "tensor([[" in done.stdout  # the model shipped, and run
