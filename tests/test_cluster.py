"""A real two-node Ray cluster on this machine (``ray start --head`` + ``ray start --address``, 1 CPU each) and
``python -m study.run --address`` on it: the trials must run on both nodes.

The cluster lives in its own temp dir with its own token (Ray 2.60's ``ray start --head`` turns token
authentication on where ~/.ray/auth_token exists, and a node or driver joining by address then needs
RAY_AUTH_MODE=token). It is stopped by ending the process sessions of the two ``ray start`` commands (never
``ray stop``, which would end every Ray cluster of this machine), and the test checks that none of its
processes is left. The worker node says it has 1 GPU (a logical resource only, nothing uses it), so that asking
for more GPUs than the cluster has can be tried for real.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from study.driver.reaper import terminate_then_kill
from test_study import make_images, study_args

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
DEFAULT_ADDRESS_FILE = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # what a plain ray.init() reads

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, temp: Path):
        self.temp = temp  # short: Ray's unix socket paths live under it
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        (temp / "token").write_text(secrets.token_hex(32))
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(temp / "token"),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.sessions: list[int] = []  # each ray start runs in its own session; its daemons stay in it

    def ray_start(self, name: str, *args: str) -> None:
        log = open(self.temp / f"{name}.log", "w")
        proc = subprocess.Popen([RAY, "start", "--temp-dir", str(self.temp / "ray"), "--disable-usage-stats",
                                 "--object-store-memory", str(100 * 2**20), "--dashboard-agent-listen-port", str(free_port()), *args],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.sessions.append(proc.pid)
        code = proc.wait(timeout=240)
        assert code == 0, f"ray start {name} failed:\n{(self.temp / f'{name}.log').read_text()[-3000:]}"

    def start(self) -> None:
        self.ray_start("head", "--head", "--port", str(self.port), "--num-cpus", "1", "--num-gpus", "0", "--include-dashboard=false")
        self.ray_start("worker", "--address", self.address, "--num-cpus", "1", "--num-gpus", "1")

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: in a ray start session, or naming the temp dir outside this session."""
        me, my_session, found = os.getpid(), os.getsid(0), []
        assert my_session not in self.sessions
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                session = os.getsid(proc.pid)
                named = any(str(self.temp) in arg for arg in proc.info["cmdline"] or [])
                if proc.pid != me and (session in self.sessions or (named and session != my_session)):
                    found.append(proc)
            except (psutil.Error, OSError):
                pass
        return found

    def node_ids(self) -> set[str]:
        """The node ids of the two raylets, from their command lines."""
        ids = set()
        for proc in self.processes():
            try:
                args = proc.cmdline()
            except psutil.Error:
                continue
            if args and Path(args[0]).name == "raylet":
                ids |= {a.split("=", 1)[1] for a in args if a.startswith("--node_id=")}
        return ids

    def stop(self) -> None:
        terminate_then_kill(self.processes(), grace=15)


@pytest.fixture(scope="module")
def cluster():
    temp = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
    address_file = DEFAULT_ADDRESS_FILE.stat().st_mtime_ns if DEFAULT_ADDRESS_FILE.exists() else None
    c = Cluster(temp)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        left = [(p.pid, p.name()) for p in c.processes() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        shutil.rmtree(temp, ignore_errors=True)
        assert left == [], f"Ray processes of the test cluster left running: {left}"
        now = DEFAULT_ADDRESS_FILE.stat().st_mtime_ns if DEFAULT_ADDRESS_FILE.exists() else None
        assert now == address_file, "the test cluster must not become the default cluster of this machine"


def run_study(cluster: Cluster, tmp_path: Path, name: str, *extra: str, env: dict | None = None, timeout: int = 500):
    data = tmp_path / "data"
    if not data.exists():
        make_images(data, per_class=8, size=(32, 32))
    args = study_args(data, tmp_path / "results", name, 2, 1, "--address", cluster.address, *extra)
    return subprocess.run([sys.executable, "-m", "study.run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env or cluster.env)


def test_a_study_on_a_two_node_cluster_runs_trials_on_both_nodes(cluster, tmp_path):
    nodes = cluster.node_ids()
    assert len(nodes) == 2, "the cluster should have two raylets"
    # Both trials get a placement group at once, one per node (1 CPU each). --fresh-actors: with actor reuse, a
    # loaded machine could start trial 1's process on the second node more slowly than trial 0 ran, and Tune then
    # hands trial 1 trial 0's idle process on the first node instead (seen once in CI).
    out = run_study(cluster, tmp_path, "two", "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--max-concurrent", "2", "--epochs", "4",
                    "--fresh-actors")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "2 trial(s) at a time, each with 1 CPU(s)" in out.stdout
    folder = tmp_path / "results" / "two"
    trials, epochs = pd.read_parquet(folder / "trials.parquet"), pd.read_parquet(folder / "epochs.parquet")
    assert len(trials) == 2 and (trials["status"] == "completed").all()
    # both hosts are this machine (same hostname and IP): the node id tells the two nodes apart
    assert set(trials["node_id"]) == nodes, trials[["trial_id", "node_id", "node_ip"]]
    assert set(epochs["node_id"]) == nodes


def test_more_gpus_than_the_cluster_has_is_refused_at_once(cluster, tmp_path):
    t0 = time.perf_counter()
    out = run_study(cluster, tmp_path, "greedy", "--gpus-per-trial", "2", timeout=180)
    assert out.returncode == 2, (out.stdout + out.stderr)[-3000:]
    last = [line for line in out.stderr.splitlines() if line.strip()][-1]
    assert last == "error: --gpus-per-trial 2 is more than the 1 GPU(s) of the cluster: ask for at most 1"
    assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "results" / "greedy").exists(), "a refused study leaves no folder"
    assert time.perf_counter() - t0 < 180


def test_joining_a_token_cluster_without_RAY_AUTH_MODE_says_what_to_set(cluster, tmp_path):
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    out = run_study(cluster, tmp_path, "noauth", "--gpus-per-trial", "0", env=env, timeout=240)
    assert out.returncode == 2, (out.stdout + out.stderr)[-3000:]
    last = [line for line in out.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"error: cannot start or reach the Ray cluster at {cluster.address}") and "RAY_AUTH_MODE=token" in last
    assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "results" / "noauth").exists()


def test_trials_given_a_gpu_torch_cannot_see_are_refused_before_the_first_trial(cluster, tmp_path):
    """The worker node declares a GPU (logical); this machine's torch is a CPU build. Ray would give each trial a
    quarter of that GPU: study.run must refuse at once, not train 100x slower on the CPU."""
    out = run_study(cluster, tmp_path, "nocuda", "--gpus-per-trial", "0.25", timeout=240)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    last = [line for line in out.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: Ray gave this trial GPU [") and "sees no CUDA device (a CPU build of torch)" in last, last
    assert "--gpus-per-trial 0" in last and "Traceback" not in text
    assert not (tmp_path / "results" / "nocuda").exists()


def test_a_trial_given_a_gpu_torch_cannot_see_errors_in_one_line(cluster, tmp_path):
    """The same check inside the trial itself (for a trial that reaches a node the driver's probe did not see)."""
    data = make_images(tmp_path / "data", per_class=4, size=(32, 32))
    script = f"""
import ray
from ray import tune
from study.driver.adapter import run_trial
from trainable import TrainConfig, prepare_data
ray.init(address={cluster.address!r}, logging_level="ERROR", log_to_driver=False)
base = TrainConfig(data_dir={str(data)!r}, weights="none", epochs=1, image_size=32, batch_size=4).to_dict()
data = prepare_data(base["data_dir"], 32, 0.25)
trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, base=base), {{"cpu": 1, "gpu": 0.5}})
tuner = tune.Tuner(trainable, param_space={{"optuna_trial": 0, "baseline": False}},
                   run_config=tune.RunConfig(storage_path={str(tmp_path / "ray")!r}, verbose=0))
result = tuner.fit()[0]
print("ERROR:", result.metrics["trial_error"])
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, env=cluster.env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    line = [line for line in out.stdout.splitlines() if line.startswith("ERROR:")][0]
    assert "Ray gave this trial GPU [" in line and "a CPU build of torch" in line, line
