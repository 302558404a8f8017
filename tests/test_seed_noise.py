"""python -m bench.seed_noise: the noise measurement docs/selection.md's simulation figures rest on."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.test_study import ROOT, make_images

COMMAND = [sys.executable, "-m", "bench.seed_noise"]


def test_figures_of_hand_made_answer_tables():
    from bench import seed_noise as noise

    rng = np.random.default_rng(0)
    steady = np.tile(rng.integers(0, 2, 400), (6, 1))  # every seed right on the same images
    f = noise.summarise(steady)
    assert f["seed_sd"] == pytest.approx(0, abs=1e-12) and f["per_image_var"] == 0
    assert f["image_sd"] == pytest.approx(f["binomial_sd"], rel=0.01)  # all the spread is which images were drawn
    coins = rng.integers(0, 2, (6, 4000))  # each answer a fresh coin flip: no image is hard or easy
    f = noise.summarise(coins)
    assert f["per_image_var"] == pytest.approx(0.25, abs=0.01) and f["image_sd"] < f["binomial_sd"] / 3
    sd, df = noise.pooled_sd([np.array([[1, 0], [0, 0]]), np.array([[1, 1], [1, 1], [0, 1]])])
    # per-seed accuracies 0.5, 0 (squares about their mean 0.125) and 1, 1, 0.5 (1/6): 3 df
    assert df == 3 and sd == pytest.approx(((0.125 + 1 / 6) / 3) ** 0.5)


@pytest.mark.slow
def test_the_script_measures_every_configuration_on_every_split(tmp_path):
    data = make_images(tmp_path / "data", per_class=10, size=(36, 36))
    exported = tmp_path / "other.json"
    exported.write_text(json.dumps({"lr": 0.02, "freeze_depth": 3, "augment": "flip"}))
    out = tmp_path / "noise.json"
    done = subprocess.run([*COMMAND, "--data-dir", str(data), "--config", str(exported), "--seeds", "2",
                           "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert sorted(result["figures"]) == sorted(f"{c} | {s}" for c in ("book's recipe", "other")
                                               for s in ("cv fold 0", "cv fold 1", "held out"))
    for key, f in result["figures"].items():
        assert f["seeds"] == 2 and 0 <= f["accuracy"] <= 1 and len(result["answers"][key][0]) == f["images"]
        assert f["images"] == (10 if "cv" in key else 2)  # 2-fold of 20 images; the study's 10% held out
    assert result["pooled"]["cross-validation"]["df"] == 4 and result["pooled"]["held out"]["df"] == 2
    assert "between-seed sd pooled, cross-validation runs" in done.stdout

    one = subprocess.run([*COMMAND, "--data-dir", str(data), "--seeds", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert one.returncode == 2 and one.stderr.strip() == "error: --seeds 1: a spread needs 2 or more"
