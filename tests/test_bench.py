"""``python -m study.bench``: the shape of its output (never its timings), and the scaling arithmetic."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd

from study.bench import project_full, scaling_breakdown, stratified_subset

ROOT = Path(__file__).resolve().parents[1]
CELL_KEYS = {"size", "freeze", "a", "b", "b_train", "b_first_epoch", "b_eval_share", "c", "b_over_a", "b_over_c", "load_before", "load_after"}


def test_tiny_bench_writes_every_cell(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "study.bench", "--tiny", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "b/a" in proc.stdout and "b/c" in proc.stdout  # the printed table
    report = json.loads(out.read_text())
    assert {"machine", "settings", "decode", "cells", "load_start", "load_end", "seconds"} <= set(report)
    assert report["machine"]["cpus"] >= 1
    assert report["settings"]["sizes"] == [32] and report["settings"]["freeze"] == [0, 5]
    assert [(c["size"], c["freeze"]) for c in report["cells"]] == [(32, 0), (32, 5)]
    for cell in report["cells"]:
        assert set(cell) == CELL_KEYS
        for key in ("a", "b", "b_train", "b_first_epoch", "c", "b_over_a", "b_over_c"):
            assert isinstance(cell[key], (int, float)) and cell[key] > 0 and math.isfinite(cell[key]), (key, cell)
        assert math.isclose(cell["b_over_a"], cell["b"] / cell["a"], rel_tol=0.02)
        assert math.isclose(cell["b_over_c"], cell["b"] / cell["c"], rel_tol=0.02)
        assert 0 <= cell["b_eval_share"] < 1
    assert [d["size"] for d in report["decode"]] == [32] and report["decode"][0]["images"] > 0


def test_bad_options_are_one_line_errors():
    proc = subprocess.run([sys.executable, "-m", "study.bench", "--tiny", "--freeze", "7"], cwd=ROOT, capture_output=True, text=True, timeout=120)
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
    # two trials on two slots: 3 and 1 epochs of 90 training images at 10 img/s and 10 val images at 20 img/s
    epochs = pd.DataFrame({"trial_id": ["t1", "t1", "t1", "t2"], "seconds": [9.5] * 4, "images_per_s": [10.0] * 4})
    marks = {"started": 4.0, "decoded": 6.0, "decode_s": 1.5, "ray_up": 9.0, "wall": 40.0}
    settings = {"concurrent": 2, "summary": {"wall_s": 28.0}}
    m = scaling_breakdown(marks, settings, epochs, n_train=90, n_val=10)
    assert m["phases_s"]["start-up"] == 7.0 and m["phases_s"]["data preparation"] == 1.5
    assert m["phases_s"]["training"] == 18.0 and m["phases_s"]["evaluation"] == 1.0
    assert math.isclose(sum(m["phases_s"].values()), 40.0, abs_tol=0.2)
    assert math.isclose(sum(m["shares"].values()), 1.0, abs_tol=0.01)
    assert m["eval_images_per_s_per_trial"] == 20.0 and m["ray_overhead_per_trial_s"] == 9.0  # (28*2 - 38) / 2
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
