"""The model users ship: ``study.rerun`` writes it (every seed's weights and model.json), ``study.predict`` runs it on
photos with evaluation's preprocessing exactly (the test split's predictions are the rerun's, image for image),
``study.export`` writes it as ONNX or TorchScript with the preprocessing inside (checked within 1e-4 of PyTorch),
and ``load_study(...).model()`` / ``.predict()`` do the same in a notebook. Tiny generated photos, real training."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from study import predict as predict_mod
from study import rerun as rerun_mod
from study.core.folder import StudyFolder
from study.findings.model import open_model
from trainable import UserError

from test_analyze_rerun import exit_code_and_stderr, make_fake_study, make_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> StudyFolder:
    """A study's rerun (its winner and the book's recipe, 2 seeds of 1 epoch): its model folder written."""
    tmp = tmp_path_factory.mktemp("shipped")
    folder = make_fake_study(tmp, make_images(tmp / "images"))
    assert rerun_mod.main([str(folder.path), "--seeds", "2", "--epochs", "1"]) == 0
    return folder


def test_a_rerun_ships_its_model_with_everything_needed_to_use_it(shipped):
    info = json.loads((shipped.path / "model" / "model.json").read_text())
    assert info["classes"] == ["a", "b"] and info["image_size"] == 32
    assert info["preprocessing"]["resize"]["size"] == [37, 37] and info["preprocessing"]["center_crop"] == 32
    assert [s["seed"] for s in info["seeds"]] == [0, 1] and all((shipped.path / "model" / s["file"]).is_file() for s in info["seeds"])
    rerun = pd.read_parquet(shipped.rerun)
    winner = rerun[~rerun["baseline"]].set_index("seed")
    assert [s["test_acc"] for s in info["seeds"]] == list(winner.loc[[0, 1], "test_acc"])  # the rerun's own figures
    assert 0 <= info["ensemble"]["test_acc"] <= 1 and info["ensemble"]["seeds"] == 2 and info["test_images"] == 12
    assert sum(map(sum, info["confusion"]["counts"])) == 12
    assert info["command"].startswith("python -m study.rerun") and info["data_fingerprint"] is not None
    assert info["study"]["optuna_trial"] == int(winner["optuna_trial"].iloc[0])
    classes = pd.read_parquet(shipped.path / "rerun_classes.parquet")
    ensemble = classes[(classes["model"] == "ensemble") & (classes["optuna_trial"] == info["study"]["optuna_trial"])]
    assert ensemble["images"].sum() == 12 and set(classes["optuna_trial"]) == set(rerun["optuna_trial"])  # the book's recipe too


def test_predict_on_the_test_split_is_the_reruns_evaluation_to_the_image(shipped, tmp_path, capsys):
    data_dir = json.loads((shipped.path / "model" / "model.json").read_text())["config"]["data_dir"]
    out = tmp_path / "p.parquet"
    assert predict_mod.main([str(shipped.path), data_dir, "--out", str(out)]) == 0
    rows = pd.read_parquet(out)
    info = open_model(shipped.path).info
    assert len(rows) == 12 and rows["true"].notna().all()
    assert rows["correct"].mean() == pytest.approx(info["ensemble"]["test_acc"])
    assert list(rows.columns) == ["path", "predicted", "prob_a", "prob_b", "true", "correct"]
    assert np.allclose(rows[["prob_a", "prob_b"]].sum(axis=1), 1.0)
    printed = capsys.readouterr().out
    assert "the ensemble of 2 seeds" in printed and "per class a" in printed and "balanced" in printed
    one = tmp_path / "one.csv"
    assert predict_mod.main([str(shipped.path / "model"), str(Path(data_dir) / "test"), "--seed", "0", "--out", str(one)]) == 0
    assert pd.read_csv(one)["correct"].mean() == pytest.approx(info["seeds"][0]["test_acc"])


def test_predict_takes_photos_and_plain_folders_and_prints_a_table(shipped, tmp_path, capsys):
    data_dir = Path(open_model(shipped.path).info["config"]["data_dir"])
    loose = tmp_path / "loose" / "deeper"
    loose.mkdir(parents=True)
    for i, photo in enumerate(sorted((data_dir / "test" / "a").iterdir())[:2]):
        shutil.copy(photo, loose / f"{i}.png")
    (loose.parent / ".hidden.png").write_bytes(photo.read_bytes())  # hidden: left out
    capsys.readouterr()
    assert predict_mod.main([str(shipped.path), str(loose.parent), str(photo)]) == 0
    printed = capsys.readouterr().out
    assert "3 photo(s)" in printed and ".hidden.png" not in printed and "labelled photo" not in printed  # no true class: no accuracy


def _bomb(path: Path) -> None:
    """A PNG whose header claims 40,000 x 40,000 pixels: Pillow refuses it as a decompression bomb before reading on."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))


def test_odd_files_are_predicted_where_they_can_be_and_listed_where_not(shipped, tmp_path, capsys):
    odd = tmp_path / "odd"
    odd.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 20), dtype=np.uint8), "L").save(odd / "grey.png")
    Image.fromarray(rng.integers(0, 255, (30, 20, 4), dtype=np.uint8), "RGBA").save(odd / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8), "RGB").convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (30, 20), dtype=np.uint16)).save(odd / "sixteen.png")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(odd / "one-pixel.png")
    good = odd / "good.jpg"
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(good)
    (odd / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    (odd / "not-an-image.jpg").write_text("hello")
    _bomb(odd / "bomb.png")
    (odd / "notes.txt").write_text("not a photo")
    out = tmp_path / "odd.parquet"
    assert predict_mod.main([str(shipped.path), str(odd), "--out", str(out)]) == 0
    predicted = {Path(p).name for p in pd.read_parquet(out)["path"]}
    assert predicted == {"grey.png", "rgba.png", "cmyk.jpg", "sixteen.png", "one-pixel.png", "good.jpg"}
    printed = capsys.readouterr().out
    (left_out,) = [line for line in printed.splitlines() if "left out" in line]
    assert "3 file(s) left out" in left_out and "truncated.jpg" in left_out and "not-an-image.jpg" in left_out
    assert "bomb.png (DecompressionBombError" in left_out


@pytest.mark.parametrize("argv, words", [
    (["{missing}", "{photos}"], "no such folder"),
    (["{study_without_rerun}", "{photos}"], "has no model yet: python -m study.rerun"),
    (["{partial}", "{photos}"], "holds no model.json (a partial model folder"),
    (["{model}", "{empty}"], "no image file in"),
    (["{model}", "{other_classes}"], "are not the model's"),
    (["{model}", "{photos}", "--out", "{photos}"], "is a folder: name a .parquet or .csv file"),
    (["{model}", "{photos}", "--out", "p.json"], "name a .parquet or .csv file"),
    (["{model}", "{photos}", "--out", "{under_a_file}/p.csv"], "cannot write the predictions to"),
    (["{model}", "{photos}", "--seed", "7"], "--seed 7: the model in"),
])
def test_bad_input_to_predict_is_one_line(shipped, tmp_path, capsys, argv, words):
    data_dir = Path(open_model(shipped.path).info["config"]["data_dir"])
    partial = tmp_path / "partial"
    shutil.copytree(shipped.path / "model", partial)
    (partial / "model.json").unlink()
    other = make_images(tmp_path / "other", n_train=2, n_test=2)
    for split in ("train", "test"):
        for old, new in (("a", "x"), ("b", "y")):
            (other / split / old).rename(other / split / new)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("")
    bare = make_fake_study(tmp_path, data_dir, n=4, name="bare")
    names = {"missing": tmp_path / "nope", "photos": data_dir / "test", "study_without_rerun": bare.path, "partial": partial,
             "model": shipped.path, "empty": tmp_path / "empty", "other_classes": other, "under_a_file": tmp_path / "a-file"}
    code, err, out = exit_code_and_stderr(capsys, predict_mod.main, [a.format(**names) for a in argv])
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and words in err[0], err


@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".pt"), ("onnx", ".onnx")])
def test_an_export_agrees_with_pytorch_on_the_test_photos(shipped, tmp_path, fmt, suffix):
    if fmt == "onnx" and importlib.util.find_spec("onnxscript") is None:
        pytest.skip('ONNX export needs the [export] extra: pip install -e ".[export]"')
    from study import export as export_mod
    from study.findings.shipping import TOLERANCE, check_photos
    from trainable.predict import probabilities

    out = tmp_path / f"model{suffix}"
    assert export_mod.main([str(shipped.path), "--format", fmt, "--out", str(out)]) == 0
    model = open_model(shipped.path)
    images, _ = check_photos(model, None)
    reference = probabilities(model.modules(), images, model.config, device="cpu", precision="fp32")
    if fmt == "torchscript":
        import torch

        got = torch.jit.load(str(out))(torch.from_numpy(images)).detach().numpy()
    else:
        if importlib.util.find_spec("onnxruntime") is None:
            pytest.skip('running the ONNX file needs onnxruntime: pip install -e ".[onnxruntime]"')
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": images})[0]
    assert got.shape == (len(images), 2) and np.abs(got - reference).max() <= TOLERANCE


def test_the_exported_file_needs_nothing_of_this_project(shipped, tmp_path):
    """A fresh interpreter with only torch: the TorchScript file alone classifies a decoded batch."""
    from study import export as export_mod

    out = tmp_path / "alone.pt"
    assert export_mod.main([str(shipped.path), "--format", "torchscript", "--out", str(out), "--seed", "1"]) == 0
    script = ("import sys, torch; m = torch.jit.load(sys.argv[1]); "
              "x = torch.randint(0, 255, (5, 3, 37, 37), dtype=torch.uint8); p = m(x); "
              "assert p.shape == (5, 2) and torch.allclose(p.sum(1), torch.ones(5)); print('ok', [k for k in sys.modules if k.startswith(('study', 'trainable'))])")
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok []", done.stdout + done.stderr


def test_a_notebook_gets_the_module_its_transform_and_predictions(shipped):
    import torch

    from study import load_study

    study = load_study(shipped.path)
    module, transform = study.model()
    data_dir = Path(open_model(shipped.path).info["config"]["data_dir"])
    photo = sorted((data_dir / "test" / "b").iterdir())[0]
    from_path, from_image = transform(photo), transform(Image.open(photo))
    assert from_path.dtype == torch.uint8 and from_path.shape == (3, 37, 37) and torch.equal(from_path, from_image)
    probs = module(from_path[None])
    rows = study.predict(photo)
    assert len(rows) == 1 and float(rows["prob_b"].iloc[0]) == pytest.approx(float(probs[0, 1]), abs=1e-2)  # fp32 here, the study's precision there
    with pytest.raises(UserError, match="--seed 5: the model in"):
        study.model(seed=5)


def test_a_rerun_with_more_seeds_extends_the_model_and_another_configuration_replaces_it(tmp_path, capsys):
    folder = make_fake_study(tmp_path, make_images(tmp_path / "images"))
    assert rerun_mod.main([str(folder.path), "--seeds", "1", "--epochs", "1", "--no-baseline"]) == 0
    first = open_model(folder.path)
    assert first.seeds == [0]
    assert rerun_mod.main([str(folder.path), "--seeds", "2", "--epochs", "1", "--no-baseline", "--model-dir", str(tmp_path / "elsewhere")]) == 0
    assert open_model(tmp_path / "elsewhere").seeds == [0, 1] and open_model(folder.path).seeds == [0]  # --model-dir: written there only
    assert rerun_mod.main([str(folder.path), "--seeds", "2", "--epochs", "1", "--no-baseline"]) == 0
    again = open_model(folder.path)
    assert again.seeds == [0, 1] and again.info["ensemble"]["seeds"] == 2
    assert rerun_mod.main([str(folder.path), "--rank", "3", "--seeds", "1", "--epochs", "1", "--no-baseline"]) == 0
    assert "was another configuration's: replaced" in capsys.readouterr().out
    replaced = open_model(folder.path)
    assert replaced.seeds == [0] and replaced.info["study"]["rank"] == 3
    assert sorted(p.name for p in (folder.path / "model").iterdir()) == ["model.json", "seed-0.pt"]
