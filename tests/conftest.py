"""Shared test fixtures: tiny generated image folders and the read-only real assets (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trainable.tv_compat  # noqa: F401  (before any test imports torchvision)

# With pytest-xdist (python -m pytest -m slow -n 3 --dist loadgroup: .ci/run), the tests of a module whose module-scoped
# fixture runs whole studies go to one worker together (the fixture once); every other test goes wherever a worker is free.
GROUPED_MODULES = {"test_analyze_rerun", "test_bad_input", "test_bench", "test_cluster", "test_data_changes", "test_model",
                   "test_study", "test_tools", "test_warm_start"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        if module in GROUPED_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))


@pytest.fixture(scope="session", autouse=True)
def decoded_cache(tmp_path_factory):
    """Every test (and every process it starts) keeps decoded images in a cache of the session's own
    (``trainable.decoded``), never in the user's."""
    root = tmp_path_factory.mktemp("decoded-cache")
    before = os.environ.get("HOTDOG_TUNE_CACHE")
    os.environ["HOTDOG_TUNE_CACHE"] = str(root)
    yield root
    if before is None:
        os.environ.pop("HOTDOG_TUNE_CACHE", None)
    else:
        os.environ["HOTDOG_TUNE_CACHE"] = before


# Distinct base colours per class (RGB): a model separates them after a step or two.
CLASS_COLOURS = [(220, 40, 40), (40, 70, 220), (40, 200, 60), (230, 200, 30)]


def assets_dir() -> Path:
    """The shared real assets: $HOTDOG_ASSETS, else ../shared/assets beside the repository."""
    env = os.environ.get("HOTDOG_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "assets"


@pytest.fixture
def asset():
    """``asset("hotdog_mini")``: the path of a real asset, or skip the test with the reason."""

    def get(name: str) -> Path:
        path = assets_dir() / name
        if not path.exists():
            pytest.skip(f"real asset {path} is absent (set HOTDOG_ASSETS to the folder holding {name}/)")
        return path

    return get


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("a", "b"),
    n_train: int = 10,
    n_test: int = 4,
    size: tuple[int, int] = (40, 48),
    suffix: str = ".png",
    seed: int = 0,
) -> Path:
    """Write ``root/{train,test}/<class>/NNN<suffix>``: RGB images of size (width, height), one base colour
    per class plus mild noise (so crops and flips differ). Returns ``root``."""
    rng = np.random.default_rng(seed)
    width, height = size
    for split, count in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array(CLASS_COLOURS[c % len(CLASS_COLOURS)], dtype=np.int16)
            for i in range(count):
                noise = rng.integers(-25, 26, size=(height, width, 3))
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(folder / f"{i:03d}{suffix}")
    return root


@pytest.fixture
def image_folder_factory(tmp_path):
    """``image_folder_factory(name="data", **kw)``: a fresh generated image folder under tmp_path
    (keywords as :func:`write_image_folder`)."""

    def make(name: str = "data", **kwargs) -> Path:
        return write_image_folder(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def tiny_image_folder(image_folder_factory) -> Path:
    """2 classes (a, b), 10 train + 4 test 40x48 PNGs each."""
    return image_folder_factory()
