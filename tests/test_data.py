"""The data side of ``trainable``: folder checks, decoding of every image mode, unreadable files, tiny images,
the bad-data paths of the real CLI (one ``error:`` line, exit 2), and the archive download/extraction."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainable import UserError, prepare_data
from trainable.cli import run_main
from trainable.data import cache_dir, decode_image, fetch_hotdog, kfold_split, safe_extract, stored_size, stratified_split

REPO = Path(__file__).resolve().parents[1]
FAST = ["--weights", "none", "--epochs", 1, "--batch-size", 8, "--threads", 1, "--device", "cpu", "--precision", "fp32"]


def run_cli(args, capsys) -> tuple[int, str, str]:
    """``python -m trainable ARGS`` in-process through run_main: (exit code, stdout, stderr)."""
    from trainable.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_error_line(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]


def save_images(folder: Path, images: dict[str, Image.Image]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / name)


# --- folder layout errors through the CLI ------------------------------------------------------------------
def _missing(tmp, factory):
    return tmp / "nope"


def _a_file(tmp, factory):
    (tmp / "data.zip").write_bytes(b"PK")
    return tmp / "data.zip"


def _no_train(tmp, factory):
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _one_class(tmp, factory):
    return factory(classes=("only",))


def _empty_class(tmp, factory):
    root = factory()
    (root / "train" / "c").mkdir()
    return root


def _class_of_non_images(tmp, factory):
    root = factory()
    (root / "train" / "c").mkdir()
    (root / "train" / "c" / "README.txt").write_text("no images here")
    (root / "train" / "c" / ".hidden.png").write_bytes(b"")
    return root


def _class_of_unreadable_images(tmp, factory):
    root = factory()
    (root / "train" / "c").mkdir()
    for i in range(3):
        (root / "train" / "c" / f"{i}.jpg").write_text("not a jpeg")
    return root


ERROR_CASES = {
    "missing folder": (_missing, "does not exist"),
    "a file, not a folder": (_a_file, "is a file, not a folder"),
    "no train folder": (_no_train, "has no train/ folder"),
    "one class only": (_one_class, "holds 1 class folder(s) ['only']: at least two are needed"),
    "empty class folder": (_empty_class, "class folder"),
    "class of non-image files": (_class_of_non_images, "holds no image files"),
    "class of unreadable images": (_class_of_unreadable_images, "class 'c' has 0 readable image(s)"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_data_folder_is_one_error_line_and_exit_2(case, tmp_path, image_folder_factory, capsys):
    make, fragment = ERROR_CASES[case]
    data_dir = make(tmp_path, image_folder_factory)
    code, out, err = run_cli(["--data-dir", data_dir, *FAST, "--image-size", 32], capsys)
    assert_one_error_line(code, err, fragment)
    assert "epoch" not in out


def test_bad_weights_file_via_cli(tiny_image_folder, tmp_path, capsys):
    (tmp_path / "w.pth").write_text("garbage")
    code, _, err = run_cli(["--data-dir", tiny_image_folder, *FAST, "--image-size", 32, "--weights", tmp_path / "w.pth"], capsys)
    assert_one_error_line(code, err, "is not a PyTorch state dict")


def test_bad_options_are_user_errors(tiny_image_folder, capsys):
    code, _, err = run_cli(["--data-dir", tiny_image_folder, *FAST, "--image-size", 16], capsys)
    assert_one_error_line(code, err, "--image-size 16 is too small")
    code, _, err = run_cli(["--data-dir", tiny_image_folder, *FAST, "--freeze-depth", 6], capsys)
    assert_one_error_line(code, err, "--freeze-depth 6 must be 0-5")


def test_real_cli_process_reports_missing_folder_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainable", "--data-dir", str(tmp_path / "nope"), "--weights", "none", "--epochs", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: data folder {tmp_path / 'nope'} does not exist: pass --data-dir a folder "
                                        "holding train/<class>/ and test/<class>/ image folders"]
    assert proc.stdout == ""


def test_missing_test_folder_is_reported_when_the_test_split_is_needed(image_folder_factory):
    root = image_folder_factory()
    for f in (root / "test" / "b").iterdir():
        f.unlink()
    (root / "test" / "b").rmdir()
    with pytest.raises(UserError, match=r"has classes \['a'\] but train has \['a', 'b'\]"):
        prepare_data(root, 32, with_test=True)


# --- unreadable files are skipped, the run continues -------------------------------------------------------
def _add_broken_files(root: Path) -> list[str]:
    """Junk and truncated images plus non-image files in train/a; returns the names that must be skipped."""
    folder = root / "train" / "a"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "whole.jpg")
    jpeg = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = (folder / "000.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "text.jpg").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not even named like one")
    (folder / ".DS_Store").write_bytes(b"\0\1\2")
    (folder / "sub").mkdir()
    (folder / "sub" / "more.csv").write_text("a,b\n")
    return ["empty.png", "text.jpg", "truncated.jpg", "truncated.png"]


def test_unreadable_files_are_skipped_and_listed(image_folder_factory):
    root = image_folder_factory()
    bad = _add_broken_files(root)
    data = prepare_data(root, 32, val_fraction=0.2)
    assert sorted(Path(s.split(": ")[0]).name for s in data.skipped) == bad
    assert len(data.train) + len(data.val) == 20  # every readable image, nothing else
    assert np.bincount(np.concatenate([data.train.labels, data.val.labels])).tolist() == [10, 10]


def test_cli_run_continues_past_unreadable_files(image_folder_factory, capsys):
    root = image_folder_factory()
    _add_broken_files(root)
    code, out, err = run_cli(["--data-dir", root, *FAST, "--image-size", 32], capsys)
    assert code == 0, err
    assert "epoch 1/1" in out and "Traceback" not in err
    assert "skipped 4 unreadable file(s)" in err


# --- every image mode to RGB uint8 -------------------------------------------------------------------------
def _palette_with_transparency() -> Image.Image:
    index = np.zeros((20, 20), np.uint8)
    index[:, 10:] = 1  # left: index 0 (transparent), right: index 1 (blue)
    image = Image.fromarray(index, "P")
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.info["transparency"] = 0
    return image


def _sixteen_bit() -> Image.Image:
    values = np.zeros((20, 20), np.uint16)
    values[:, 10:] = 65535
    values[:5, :10] = 32896  # 128 * 257: mid grey
    return Image.fromarray(values)


@pytest.mark.parametrize(
    "name, make, probes",
    [
        ("grey.png", lambda: Image.new("L", (20, 20), 77), {(4, 4): (77, 77, 77)}),
        ("bilevel.png", lambda: Image.new("1", (20, 20), 1), {(4, 4): (255, 255, 255)}),
        ("opaque.png", lambda: Image.new("RGBA", (20, 20), (200, 10, 30, 255)), {(4, 4): (200, 10, 30)}),
        ("clear.png", lambda: Image.new("RGBA", (20, 20), (200, 10, 30, 0)), {(4, 4): (255, 255, 255)}),
        ("half.png", lambda: Image.new("RGBA", (20, 20), (0, 0, 0, 128)), {(4, 4): (127, 127, 127)}),
        ("grey-alpha.png", lambda: Image.new("LA", (20, 20), (100, 0)), {(4, 4): (255, 255, 255)}),
        ("palette.png", _palette_with_transparency, {(10, 2): (255, 255, 255), (10, 17): (0, 0, 255)}),
        ("sixteen.png", _sixteen_bit, {(15, 2): (0, 0, 0), (15, 17): (255, 255, 255), (1, 2): (128, 128, 128)}),
        ("sixteen.tif", _sixteen_bit, {(15, 2): (0, 0, 0), (15, 17): (255, 255, 255), (1, 2): (128, 128, 128)}),
        ("cmyk.jpg", lambda: Image.new("CMYK", (20, 20), (0, 255, 255, 0)), {(4, 4): (255, 0, 0)}),
    ],
)
def test_image_modes_decode_to_rgb_uint8(tmp_path, name, make, probes):
    image = make()
    image.save(tmp_path / name)
    with Image.open(tmp_path / name) as reopened:
        assert reopened.mode == image.mode  # the file really holds that mode
    array = decode_image(tmp_path / name, 20)
    assert array.dtype == np.uint8 and array.shape == (3, 20, 20)
    for (row, col), rgb in probes.items():
        assert np.abs(array[:, row, col].astype(int) - rgb).max() <= 2, (name, (row, col), array[:, row, col])


def test_sixteen_bit_pgm_keeps_its_scale(tmp_path):
    """Pillow opens 16-bit PGM as mode I (not I;16): a dark 16-bit image must stay dark, not be stretched."""
    path = tmp_path / "dark.pgm"
    path.write_bytes(b"P5\n4 4\n65535\n" + np.full(16, 1000, ">u2").tobytes())
    with Image.open(path) as image:
        assert image.mode == "I"
    assert (decode_image(path, 8) == 3).all()  # 1000 / 65535 * 255 = 3.9
    path.write_bytes(b"P5\n4 4\n65535\n" + np.full(16, 65535, ">u2").tobytes())
    assert (decode_image(path, 8) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left (red) half becomes the top
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    array = decode_image(tmp_path / "rotated.jpg", 16)
    assert array[0, 2, 8] > 200 and array[2, 2, 8] < 50
    assert array[2, 13, 8] > 200 and array[0, 13, 8] < 50


def test_folder_of_mixed_modes_trains_through_the_cli(tmp_path, capsys):
    save_images(tmp_path / "modes" / "train" / "a", {
        "grey.png": Image.new("L", (30, 20), 60), "rgba.png": Image.new("RGBA", (30, 20), (250, 0, 0, 200)),
        "palette.png": _palette_with_transparency(), "sixteen.png": _sixteen_bit(),
    })
    save_images(tmp_path / "modes" / "train" / "b", {
        "grey-alpha.png": Image.new("LA", (30, 20), (20, 255)), "cmyk.jpg": Image.new("CMYK", (30, 20), (255, 0, 0, 0)),
        "bilevel.png": Image.new("1", (30, 20), 0), "sixteen.tif": _sixteen_bit(),
    })
    data = prepare_data(tmp_path / "modes", 32, val_fraction=0.25)
    assert data.skipped == [] and len(data.train) + len(data.val) == 8
    assert data.train.images.dtype == np.uint8 and data.train.images.shape[1:] == (3, stored_size(32), stored_size(32))
    code, out, err = run_cli(["--data-dir", tmp_path / "modes", *FAST, "--image-size", 32, "--batch-size", 4], capsys)
    assert code == 0, err
    assert "epoch 1/1" in out


# --- images smaller than the crop --------------------------------------------------------------------------
def test_tiny_generated_images_train(image_folder_factory, capsys):
    root = image_folder_factory(size=(10, 10), n_train=6)
    data = prepare_data(root, 32, val_fraction=0.2)
    assert data.train.images.shape[1:] == (3, 37, 37)
    assert abs(float(data.train.images[0, 0].mean()) - 220) < 15  # class a is red: upscaled, not padded
    code, out, err = run_cli(["--data-dir", root, *FAST, "--image-size", 32], capsys)
    assert code == 0, err
    assert "epoch 1/1" in out


def test_d2l_pngs_smaller_than_224_train(asset, tmp_path, capsys):
    pngs = sorted(asset("d2l_png_sample").glob("*.png"))
    assert len(pngs) == 15
    root = tmp_path / "d2l"
    for i, png in enumerate(pngs):  # two classes of links to the read-only files (all are not-hotdog in the book)
        folder = root / "train" / ("x" if i % 2 else "y")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / png.name).symlink_to(png)
    with Image.open(pngs[0]) as first:
        assert min(first.size) < 224
    data = prepare_data(root, 224, val_fraction=0.2)
    assert data.skipped == []
    assert data.train.images.shape[1:] == (3, 256, 256) and len(data.train) + len(data.val) == 15
    assert all(image.std() > 5 for image in data.train.images)  # real pictures, not blank canvases
    code, out, err = run_cli(["--data-dir", root, *FAST, "--image-size", 224, "--freeze-depth", 4], capsys)
    assert code == 0, err
    assert "epoch 1/1" in out and '"best_epoch": 1' in out


def test_stratified_split_is_per_class_seeded_and_disjoint():
    labels = np.array([0] * 10 + [1] * 30)
    train_idx, val_idx = stratified_split(labels, 0.2, seed=3)
    assert not set(train_idx) & set(val_idx) and len(train_idx) + len(val_idx) == 40
    assert np.bincount(labels[val_idx]).tolist() == [2, 6]
    again = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(again[1], val_idx)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], val_idx)
    # a class of two still keeps one image for training
    assert np.bincount(np.array([0, 0, 1, 1])[stratified_split(np.array([0, 0, 1, 1]), 0.9, 0)[0]]).tolist() == [1, 1]


def test_kfold_split_validates_every_image_once_per_class_and_refuses_folds_that_do_not_fit():
    labels = np.array([0] * 7 + [1] * 20)
    vals = [kfold_split(labels, 3, seed=5, fold=k) for k in range(3)]
    for train_idx, val_idx in vals:
        assert not set(train_idx) & set(val_idx) and len(train_idx) + len(val_idx) == 27
        assert np.bincount(labels[val_idx]).tolist() in ([2, 6], [2, 7], [3, 6], [3, 7])  # each class cut in near-equal thirds
    assert sorted(np.concatenate([v for _, v in vals]).tolist()) == list(range(27))  # every image validates exactly once
    assert np.array_equal(kfold_split(labels, 3, seed=5, fold=1)[1], vals[1][1])
    assert not np.array_equal(kfold_split(labels, 3, seed=6, fold=1)[1], vals[1][1])
    halves = [kfold_split(labels, 2, seed=5, fold=k)[1] for k in range(2)]
    assert not set(halves[0]) & set(halves[1]) and len(halves[0]) + len(halves[1]) == 27
    with pytest.raises(UserError, match="8 cross-validation folds do not fit: .* the smallest class has 7; ask for 2 to 7"):
        kfold_split(labels, 8, seed=0, fold=0)
    with pytest.raises(UserError, match="validation fold 3 does not exist in 3-fold cross-validation: use 0 to 2"):
        kfold_split(labels, 3, seed=0, fold=3)


def test_the_trainable_cross_validates_with_cv_folds(tiny_image_folder):
    from trainable.config import TrainConfig

    halves = [prepare_data(tiny_image_folder, 32, cv_folds=2, val_fold=k) for k in range(2)]
    assert [len(d.val) for d in halves] == [10, 10] and [len(d.train) for d in halves] == [10, 10]  # 2 classes x 10 images
    assert not np.array_equal(halves[0].val.images, halves[1].val.images)
    with pytest.raises(UserError, match="--cv-folds 1 must be 0"):
        TrainConfig(cv_folds=1).validate()
    with pytest.raises(UserError, match="--val-fold 2 does not exist in 2-fold cross-validation"):
        TrainConfig(cv_folds=2, val_fold=2).validate()


# --- the archive: zip slip and the verified download -------------------------------------------------------
def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    return path


@pytest.mark.parametrize("entry", ["../evil", "hotdog/../../evil", "/tmp/evil-absolute"])
def test_safe_extract_refuses_entries_outside_the_target(tmp_path, entry):
    archive = _zip(tmp_path / "bad.zip", {"hotdog/train/a/1.txt": b"ok", entry: b"pwned"})
    target = tmp_path / "out" / "inner"
    target.mkdir(parents=True)
    with pytest.raises(UserError, match="outside its folder"):
        safe_extract(archive, target)
    assert list(target.iterdir()) == [], "nothing may be extracted from a refused archive"
    assert not (tmp_path / "out" / "evil").exists() and not (tmp_path / "evil").exists()


def test_safe_extract_refuses_symlinks_and_extracts_good_archives(tmp_path):
    link = zipfile.ZipInfo("hotdog/link")
    link.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(UserError, match="symbolic link"):
        safe_extract(tmp_path / "link.zip", tmp_path / "t1")
    archive = _zip(tmp_path / "good.zip", {"hotdog/train/a/1.txt": b"one", "hotdog/test/a/2.txt": b"two"})
    safe_extract(archive, tmp_path / "t2")
    assert (tmp_path / "t2" / "hotdog" / "train" / "a" / "1.txt").read_bytes() == b"one"


def _hotdog_zip(tmp_path: Path) -> tuple[Path, str]:
    """A small hotdog.zip in the book's layout (hotdog/{train,test}/<class>/*.png)."""
    entries = {}
    for split, count in (("train", 3), ("test", 2)):
        for c, cls in enumerate(("hotdog", "not-hotdog")):
            for i in range(count):
                png = tmp_path / "img.png"
                Image.new("RGB", (40, 48), (200 * (1 - c), 40, 200 * c)).save(png)
                entries[f"hotdog/{split}/{cls}/{i}.png"] = png.read_bytes()
    archive = _zip(tmp_path / "source-hotdog.zip", entries)
    return archive, hashlib.sha1(archive.read_bytes()).hexdigest()


def test_fetch_hotdog_downloads_verifies_and_extracts(tmp_path):
    archive, sha1 = _hotdog_zip(tmp_path)
    root = tmp_path / "cache"
    data = fetch_hotdog(root, url=archive.as_uri(), sha1=sha1)
    assert data == root / "hotdog"
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))[:2] == ["test/hotdog/0.png", "test/hotdog/1.png"]
    assert len(list(data.rglob("*.png"))) == 10
    assert (root / "hotdog.zip").read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in root.iterdir()) == [".hotdog.lock", "hotdog", "hotdog.zip"], "no staging or partial files left"
    loaded = prepare_data(data, 32, with_test=True)
    assert loaded.classes == ["hotdog", "not-hotdog"] and len(loaded.test) == 4
    # the second call uses what is there: no download (the URL is gone now)
    archive.unlink()
    assert fetch_hotdog(root, url=archive.as_uri(), sha1=sha1) == data


def test_fetch_hotdog_with_wrong_sha1_leaves_nothing(tmp_path):
    archive, sha1 = _hotdog_zip(tmp_path)
    root = tmp_path / "cache"
    with pytest.raises(UserError, match=rf"has sha1 {sha1}, expected 0+: the file is corrupt"):
        fetch_hotdog(root, url=archive.as_uri(), sha1="0" * 40)
    assert [p.name for p in root.iterdir()] == [".hotdog.lock"]  # no archive, no partial download


def test_fetch_hotdog_unreachable_url_is_a_user_error(tmp_path):
    root = tmp_path / "cache"
    with pytest.raises(UserError, match="cannot download the hotdog data.*--data-dir"):
        fetch_hotdog(root, url=(tmp_path / "absent.zip").as_uri(), sha1="0" * 40)
    assert [p.name for p in root.iterdir()] == [".hotdog.lock"]


def test_the_data_cache_is_where_the_readme_says(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "hotdog-tune"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "hotdog-tune"


def test_first_runs_at_once_download_the_data_once(tmp_path):
    # Four first runs on one cache at the same time (two studies, a study and a rerun...). Without the lock, all
    # wrote one hotdog.zip.part and all but one ended in a bare FileNotFoundError.
    from concurrent.futures import ThreadPoolExecutor

    archive, sha1 = _hotdog_zip(tmp_path)
    with zipfile.ZipFile(archive, "a") as zf:  # large enough that the downloads overlap
        for i in range(300):
            zf.writestr(f"hotdog/extra/{i}.bin", os.urandom(20000))
    sha1 = hashlib.sha1(archive.read_bytes()).hexdigest()
    root = tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(fetch_hotdog, root, url=archive.as_uri(), sha1=sha1) for _ in range(4)]
    errors = [repr(run.exception()) for run in runs if run.exception()]
    assert errors == [] and [run.result() for run in runs] == [root / "hotdog"] * 4, errors
    assert sorted(p.name for p in root.iterdir()) == [".hotdog.lock", "hotdog", "hotdog.zip"]
    assert len(list((root / "hotdog").rglob("*.png"))) == 10
