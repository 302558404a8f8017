"""``python -m bench``: the shape of its output (never its timings), the scaling arithmetic, the GPU check's plumbing
(run tiny on the CPU) and the photos it carries."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.scaling import project_full, scaling_breakdown, stratified_subset
from trainable.config import AUGMENT_POLICIES

ROOT = Path(__file__).resolve().parents[1]
CELL_KEYS = {"size", "freeze", "a", "b", "b_train", "b_first_epoch", "b_eval_share", "c", "b_over_a", "b_over_c", "load_before", "load_after"}


def _table_rows(stdout: str, columns: int) -> list[list[str]]:
    """The body rows of the rich tables printed (cells between the box-drawing bars)."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("│") and line.rstrip().endswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            if len(cells) == columns:
                rows.append(cells)
    return rows


def test_tiny_bench_writes_every_cell(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert {"machine", "settings", "decode", "cells", "load_start", "load_end", "seconds"} <= set(report)
    assert "partial" not in report  # the run's last write is the whole report
    assert report["machine"]["cpus"] >= 1
    assert report["settings"]["sizes"] == [32] and report["settings"]["freeze"] == [0, 5] and report["settings"]["device"] == "cpu"
    assert [(c["size"], c["freeze"]) for c in report["cells"]] == [(32, 0), (32, 5)]
    for cell in report["cells"]:
        assert set(cell) == CELL_KEYS
        for key in ("a", "b", "b_train", "b_first_epoch", "c", "b_over_a", "b_over_c"):
            assert isinstance(cell[key], (int, float)) and cell[key] > 0 and math.isfinite(cell[key]), (key, cell)
        assert 0 <= cell["b_eval_share"] < 1
    assert [d["size"] for d in report["decode"]] == [32] and report["decode"][0]["images"] > 0
    # The printed table: one row per cell, showing that cell's a, b, c and the JSON's b/a and b/c; and within
    # each printed row the ratios are that row's b over its a and over its c (not another cell's).
    header = "size freeze a limit b trainable b train only b 1st epoch c naive b/a b/c load 1m".split()
    assert all(word in proc.stdout for word in header)
    rows = {(int(r[0]), int(r[1])): r for r in _table_rows(proc.stdout, 10) if r[0].isdigit()}
    assert sorted(rows) == [(32, 0), (32, 5)], proc.stdout
    for cell in report["cells"]:
        row = rows[(cell["size"], cell["freeze"])]
        a, b, c, b_over_a, b_over_c = float(row[2]), float(row[3]), float(row[6]), float(row[7]), float(row[8])
        assert (row[2], row[3], row[6]) == (f"{cell['a']:.1f}", f"{cell['b']:.1f}", f"{cell['c']:.1f}")
        assert (row[7], row[8]) == (f"{cell['b_over_a']:.2f}", f"{cell['b_over_c']:.2f}")
        assert math.isclose(b_over_a, b / a, rel_tol=0.02, abs_tol=0.011), row
        assert math.isclose(b_over_c, b / c, rel_tol=0.02, abs_tol=0.011), row


def _blocking_ray_and_optuna(folder: Path) -> dict:
    """An environment whose Python processes (workers included) cannot import ray or optuna, as on the GPU machine."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\nsys.modules['optuna'] = None\n")
    return {**os.environ, "PYTHONPATH": str(folder), "PYTHON": sys.executable}


@pytest.fixture(scope="module")
def gpu_check_tiny(tmp_path_factory):
    """bench/gpu_check.sh run once in its tiny CPU mode, where ray and optuna cannot be imported: its exit code, its
    output folder and each step's printed output. Its steps are the tiny commands the tests below check:
    ``--feed --tiny --json``, ``--tiny --device cpu ... --json`` and ``--trials-per-gpu 1 2 --device cpu --tiny``."""
    tmp = tmp_path_factory.mktemp("gpu-check")
    out = tmp / "gpu"
    env = {**_blocking_ray_and_optuna(tmp / "site"), "GPU_CHECK_TINY": "1"}
    proc = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), str(out)], cwd=tmp, env=env, capture_output=True, text=True, timeout=400)
    steps, name = {}, None
    for line in proc.stdout.splitlines():
        if line.startswith("== ") and " (at most " in line:
            name = line.split()[1]
            steps[name] = []
        elif line.startswith("== "):
            name = None
        elif name:
            steps[name].append(line)
    return proc, out, {k: "\n".join(v) for k, v in steps.items()}


@pytest.mark.slow  # the whole GPU check, tiny, in a subprocess
def test_gpu_check_script_tiny_writes_its_json_files(gpu_check_tiny):
    proc, out, steps = gpu_check_tiny
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert {p.name for p in out.iterdir()} == {"feed.json", "cells.json", "trials_per_gpu.json", "gpu_check.log"}
    feed, cells, share = (json.loads((out / f"{name}.json").read_text()) for name in ("feed", "cells", "trials_per_gpu"))
    assert all("partial" not in r for r in (feed, cells, share))  # each step's last write is its whole report
    assert set(feed["feed_224"]) == set(AUGMENT_POLICIES) and set(feed["feed_128"]) == set(AUGMENT_POLICIES)
    assert [(c["size"], c["freeze"]) for c in cells["cells"]] == [(32, 0), (32, 5)]
    assert [r["n"] for r in share["trials_per_gpu"]["runs"]] == [1, 2]
    log = (out / "gpu_check.log").read_text()
    assert sorted(steps) == ["cells", "feed", "trials_per_gpu"] and log.count(": exit 0 in ") == 3 and "all steps passed" in log


@pytest.mark.slow  # the whole GPU check, tiny, in a subprocess
def test_feed_tiny_writes_every_policy_device_and_path(gpu_check_tiny):
    import torch

    proc, out, steps = gpu_check_tiny
    assert "--feed --tiny --json" in proc.stdout, proc.stdout[-3000:] + proc.stderr
    report = json.loads((out / "feed.json").read_text())
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    assert report["settings"]["devices"] == devices and report["settings"]["tiny"] and "partial" not in report
    for size in (224, 128):
        table = report[f"feed_{size}"]
        assert set(table) == set(AUGMENT_POLICIES)
        for policy in AUGMENT_POLICIES:
            assert set(table[policy]) == set(devices)
            for device in devices:
                rates = table[policy][device]
                assert set(rates) == {"per-image", "batched"}
                assert all(isinstance(v, (int, float)) and v > 0 and math.isfinite(v) for v in rates.values()), (size, policy, rates)
    rows = [r for r in _table_rows(steps["feed"], 6) if r[0] in AUGMENT_POLICIES]
    assert sorted((r[0], int(r[1]), r[2]) for r in rows) == sorted((p, s, d) for p in AUGMENT_POLICIES for s in (224, 128) for d in devices)
    for policy, size, device, per_image, batched, ratio in rows:
        assert per_image == f"{report[f'feed_{size}'][policy][device]['per-image']:.0f}"
        assert math.isclose(float(ratio), float(batched) / float(per_image), rel_tol=0.05, abs_tol=0.011)


@pytest.mark.slow  # the whole GPU check, tiny, in a subprocess
def test_trials_per_gpu_plumbing_on_the_cpu(gpu_check_tiny):
    from trainable.loop import available_cpus

    proc, out, steps = gpu_check_tiny
    assert "--trials-per-gpu 1 2 --device cpu --tiny" in proc.stdout, proc.stdout[-3000:] + proc.stderr
    share = json.loads((out / "trials_per_gpu.json").read_text())["trials_per_gpu"]
    assert share["device"] == "cpu" and share["a_images_per_s"] > 0 and share["nvidia_smi"] is None
    assert [r["n"] for r in share["runs"]] == [1, 2]
    for run in share["runs"]:
        assert "error" not in run, run
        n = run["n"]
        assert len(run["per_process_images_per_s"]) == n and all(v > 0 for v in run["per_process_images_per_s"])
        assert len(run["epochs_per_process"]) == n and all(e >= 1 for e in run["epochs_per_process"])
        assert math.isclose(run["images_per_s"], sum(run["per_process_images_per_s"]), rel_tol=0.01)
        assert run["ratio_to_a"] > 0 and run["gpu_util_mean"] is None and run["gpu_util_p10"] is None and run["memory_fraction"] is None
        assert run["threads_per_process"] == max(1, available_cpus() // n)
    rows = {r[0]: r for r in _table_rows(steps["trials_per_gpu"], 9) if r[0].isdigit()}
    assert sorted(rows) == ["1", "2"] and all(rows[k][5] == "None" for k in rows)  # no GPU, no utilisation


def test_trials_per_gpu_without_a_gpu_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, "-m", "bench", "--trials-per-gpu", "1", "--tiny"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --trials-per-gpu"), proc.stderr


def test_bench_imports_without_ray_or_optuna():
    code = ("import sys; sys.modules['ray'] = None; sys.modules['optuna'] = None\n"
            "import bench.cli, bench.feed, bench.share, bench.data\n"
            "assert not {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None} & {'ray', 'optuna'}")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_script_fails_in_one_line(tmp_path, tiny_image_folder):
    import torch

    script = str(ROOT / "bench" / "gpu_check.sh")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DATA": str(tmp_path / "absent")}
    proc = subprocess.run([script, str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no photos in"), proc.stderr
    if not torch.cuda.is_available():
        env["GPU_CHECK_DATA"] = str(tiny_image_folder)
        proc = subprocess.run([script, str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: CUDA is not available"), proc.stderr
    proc = subprocess.run([script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("usage:")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir() and not p.name.startswith("."))


def test_make_gpu_data_copies_real_files_within_the_budget(tmp_path, image_folder_factory, capsys):
    from bench.cli import main
    from trainable import UserError

    source = image_folder_factory("src", n_train=30, n_test=6, size=(64, 64))
    total = sum(p.stat().st_size for p in _files(source))
    budget_mb = total / 2 / 1e6  # half the photos fit
    target = tmp_path / "checkout" / ".gpu-data" / "hotdog"
    argv = ["--make-gpu-data", str(target), "--data-dir", str(source), "--gpu-data-mb", f"{budget_mb:.6f}"]
    assert main(argv) == 0
    assert "copied" in capsys.readouterr().out
    copied = _files(target)
    assert copied and not any(p.is_symlink() for p in copied) and all(p.is_file() for p in copied)
    assert total / 2 - 2000 < sum(p.stat().st_size for p in copied) <= budget_mb * 1e6
    counts = {(p.parent.parent.name, p.parent.name): 0 for p in copied}
    for p in copied:
        counts[(p.parent.parent.name, p.parent.name)] += 1
        assert p.read_bytes() == (source / p.relative_to(target)).read_bytes()
    assert set(counts) == {("train", "a"), ("train", "b"), ("test", "a"), ("test", "b")}
    assert abs(counts[("train", "a")] - counts[("train", "b")]) <= 1  # stratified
    assert counts[("train", "a")] + counts[("train", "b")] > 4 * (counts[("test", "a")] + counts[("test", "b")])  # mostly training photos
    marker = json.loads((target / ".subset.json").read_text())
    assert marker["files"] == len(copied) and marker["source"] == str(source.resolve())
    # made again: replaced; a folder it did not make: refused; more than 40 MB: refused
    assert main(argv) == 0 and len(_files(target)) == len(copied)
    foreign = tmp_path / "foreign"
    (foreign / "x").mkdir(parents=True)
    with pytest.raises(UserError, match="was not made by --make-gpu-data"):
        main(["--make-gpu-data", str(foreign), "--data-dir", str(source)])
    with pytest.raises(UserError, match="--gpu-data-mb 41"):
        main(["--make-gpu-data", str(target), "--data-dir", str(source), "--gpu-data-mb", "41"])


def test_make_gpu_data_on_the_real_photos_stays_under_40_mb(tmp_path, asset):
    from bench.data import make_gpu_data

    made = make_gpu_data(asset("hotdog"), tmp_path / "hotdog")
    copied = _files(tmp_path / "hotdog")
    assert not any(p.is_symlink() for p in copied) and len(copied) == made["files"] > 500
    assert sum(p.stat().st_size for p in copied) == made["bytes"] <= 40_000_000
    assert {(p.parent.parent.name, p.parent.name) for p in copied} == {(s, c) for s in ("train", "test") for c in ("hotdog", "not-hotdog")}


def test_bad_options_are_one_line_errors():
    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--freeze", "7"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --freeze")


def test_stratified_subset_links_without_copying(tmp_path):
    from PIL import Image

    for split, n in (("train", 10), ("test", 3)):
        for name in ("a", "b"):
            (tmp_path / "src" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8)).save(tmp_path / "src" / split / name / f"{i}.png")
    target = stratified_subset(tmp_path / "src", tmp_path / "sub", n_train=7)
    train = sorted((target / "train").rglob("*.png"))
    assert len(train) == 7 and {p.parent.name for p in train} == {"a", "b"}
    assert all(p.is_symlink() and p.resolve().is_relative_to((tmp_path / "src").resolve()) for p in train)
    assert len(list((target / "test").rglob("*.png"))) == 2  # at least one per class


def test_scaling_breakdown_and_projection_add_up():
    # two trials on two slots: 3 and 1 epochs of 90 training images at 10 img/s and 10 val images at 20 img/s;
    # the driver run as study.run records it in study.json (runs[-1]); the process's wall time 40 s
    epochs = pd.DataFrame({"trial_id": ["t1", "t1", "t1", "t2"], "seconds": [9.5] * 4, "images_per_s": [10.0] * 4})
    run = {"concurrent": 2, "timings": {"startup_s": 4.0, "decode_s": 1.5, "ray_start_s": 2.5, "setup_s": 4.5, "fit_s": 28.0, "wall_s": 34.0}}
    m = scaling_breakdown(run, 40.0, epochs, n_train=90, n_val=10)
    assert m["phases_s"]["start-up"] == 7.0 and m["phases_s"]["data preparation"] == 1.5
    assert m["phases_s"]["training"] == 18.0 and m["phases_s"]["evaluation"] == 1.0
    assert math.isclose(sum(m["phases_s"].values()), 40.0, abs_tol=0.2)
    assert math.isclose(sum(m["shares"].values()), 1.0, abs_tol=0.01)
    assert m["eval_images_per_s_per_trial"] == 20.0 and m["ray_overhead_per_trial_s"] == 9.0  # (28*2 - 38) / 2
    assert m["fit_s"] == 28.0 and m["slots"] == 2 and m["wall_s"] == 40.0
    p = project_full(m, samples=4, full_train=900, full_val=100, full_decode_s=15.0)
    assert p["epochs_trained"] == 8.0  # 4 epochs per 2 trials, for 4 trials
    assert p["parts_s"]["training + evaluation"] == 8 * (900 / 10 + 100 / 20) / 2
    assert math.isclose(p["seconds"], 7.0 + 15.0 + 380.0 + 18.0, abs_tol=1)


def test_augmentation_runs_on_one_thread_and_restores_the_count():
    import torch

    import trainable  # noqa: F401
    from trainable.augment import augment_batch, train_transform

    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    transform = train_transform("d2l", 32)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (2, 1):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            outs.append(augment_batch(images, transform))
            assert torch.get_num_threads() == threads  # the caller's count is back
        assert torch.equal(outs[0], outs[1])  # the same crops whatever the caller's thread count
    finally:
        torch.set_num_threads(before)


def test_selection_simulation_writes_its_regrets(tmp_path):
    out = tmp_path / "selection.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--selection", "--selection-repeats", "200", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    for key in ("regret_single", "regret_confirmed", "extra_compute_fraction"):
        assert isinstance(result[key], float) and result[key] >= 0, (key, result[key])
    assert result["regret_confirmed"] < result["regret_single"]  # confirming helps, at the defaults, over 200 studies
    assert "regret, confirmation" in proc.stdout and "goal" in proc.stdout
    from bench.correction import CHOSEN, METHODS, REGIMES

    corrections = result["corrections"]  # the winner's gain corrected for the choice, each method in each regime
    assert list(corrections) == list(REGIMES) and all(list(r) == list(METHODS) for r in corrections.values())
    assert all(r["raw"]["error"] > 0 for r in corrections.values())  # the winner's curse, even over 200 studies
    assert f"{CHOSEN} (the product's)" in proc.stdout


def test_the_gpu_check_is_also_where_it_used_to_be():
    """scripts/gpu_check.sh forwards to bench/gpu_check.sh with its arguments (no argument: its usage line, exit 2)."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "usage: bench/gpu_check.sh OUT_DIR"


def test_predict_bench_times_the_predict_path_beside_the_forward_pass(tmp_path):
    from bench.cli import main

    out = tmp_path / "predict.json"
    assert main(["--predict", "--tiny", "--json", str(out)]) == 0
    (cell,) = json.loads(out.read_text())["predict"]
    assert cell["device"] == "cpu" and cell["image_size"] == 32 and cell["images"] > 0
    assert cell["forward_images_per_s"] > 0 and cell["predict_images_per_s"] > 0 and 0 < cell["decode_share"] < 1


@pytest.mark.slow  # four tiny studies (about a minute)
def test_the_scale_bench_decodes_once_and_reads_the_cache_after(tmp_path):
    """bench --scale on two tiny synthetic folders: the second study of each reads what the first decoded, and the
    figures docs/speed.md quotes are all in its JSON."""
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--scale", "24", "48", "--scale-samples", "1", "--scale-size", "32",
                           "--scale-dir", str(tmp_path / "photos"), "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["scale"]
    assert [r["n"] for r in rows] == [24, 48]
    for r in rows:
        assert r["first"]["decode_line"].startswith("decoded ") and r["second"]["decode_line"].startswith("read "), r
        assert r["decode_s"] > 0 and r["read_alone_s"] > 0 and r["second_first_trial_s"] > 0
        assert r["first"]["total_peak_mb"] >= r["first"]["driver_peak_mb"] > 0 and r["first"]["train_images_per_s"] > 0
        assert len(list((tmp_path / "photos" / f"photos-{r['n']}" / "train").rglob("*.jpg"))) == r["n"]
    assert "memory_growth_per_data_growth" in rows[1] and "grew" in proc.stdout
