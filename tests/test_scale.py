"""Data at the scale users have: decoded once for every command (``trainable.decoded``: a hit, a miss after a change,
two writers at once, a damaged entry, a full disk, a cache that cannot be written), one copy per machine, and batches
streamed from host memory where the decoded set is too large for the device, with the same numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainable import TrainConfig, prepare_data
from trainable.decoded import cache_root, clear, entries

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own."""
    root = tmp_path / "cache"
    monkeypatch.setenv("HOTDOG_TUNE_CACHE", str(root))
    return root


def test_a_folder_is_decoded_once_and_read_back_memory_mapped(tiny_image_folder, cache):
    first = prepare_data(tiny_image_folder, 32, 0.0, with_test=True)
    assert first.decode_s > 0 and set(first.entries) == {"train", "test"} and all(e.parent == cache for e in first.entries.values())
    second = prepare_data(tiny_image_folder, 32, 0.0, with_test=True)
    assert second.decode_s == 0 and second.entries == first.entries
    assert isinstance(second.train.base_images, np.memmap) and np.array_equal(second.train.images, first.train.images)
    assert np.array_equal(second.test.labels, first.test.labels) and second.classes == first.classes
    fresh = prepare_data(tiny_image_folder, 32, 0.0, with_test=True, cache=False)  # --no-cache: the same pixels, in memory
    assert fresh.entries == {"train": None, "test": None} and np.array_equal(fresh.train.images, first.train.images)
    other_size = prepare_data(tiny_image_folder, 48, 0.0)
    assert other_size.entries["train"] != first.entries["train"] and len(entries()) == 3  # each stored size its own entry


def test_a_changed_folder_makes_a_new_entry(tiny_image_folder, cache):
    before = prepare_data(tiny_image_folder, 32, 0.0)
    photo = tiny_image_folder / "train" / "a" / "000.png"
    os.utime(photo, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))  # touched: another file as far as anyone can tell
    after = prepare_data(tiny_image_folder, 32, 0.0)
    assert after.decode_s > 0 and after.entries["train"] != before.entries["train"]
    (tiny_image_folder / "train" / "b" / "extra.png").write_bytes(photo.read_bytes())
    grown = prepare_data(tiny_image_folder, 32, 0.0)
    assert len(grown.train) == len(before.train) + 1 and grown.entries["train"] not in (before.entries["train"], after.entries["train"])


DECODE = """
import sys, numpy as np
from trainable import prepare_data
data = prepare_data(sys.argv[1], 32, 0.0)
print(data.decode_s > 0, int(data.train.images.sum()))
"""


def test_two_commands_decoding_one_folder_at_once_decode_it_once(image_folder_factory, cache):
    folder = image_folder_factory("many", n_train=150, n_test=2, size=(200, 160))
    env = {**os.environ, "HOTDOG_TUNE_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", DECODE, str(folder)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    decoded, sums = zip(*(out.split() for out, _ in outs))
    assert sorted(decoded) == ["False", "True"] and len(set(sums)) == 1  # one decoded, the other waited and read it
    assert len(entries()) == 1 and not list(cache.glob(".*tmp*"))


@pytest.mark.parametrize("damage", ["truncated", "meta"])
def test_a_damaged_entry_is_decoded_again_and_said(tiny_image_folder, cache, damage):
    import gc

    first = prepare_data(tiny_image_folder, 32, 0.0)
    entry, expected = first.entries["train"], np.array(first.train.images)
    del first  # its memory map closed: a file cut short under a live map is a bus error, not a damaged entry
    gc.collect()
    if damage == "truncated":
        with open(entry / "images.npy", "r+b") as fh:
            fh.truncate(200)
    else:
        (entry / "meta.json").write_text("{not json")
    lines: list[str] = []
    again = prepare_data(tiny_image_folder, 32, 0.0, log=lines.append)
    assert again.decode_s > 0 and np.array_equal(again.train.images, expected)
    assert any("were damaged" in line and "decoded again" in line for line in lines), lines
    assert prepare_data(tiny_image_folder, 32, 0.0).decode_s == 0  # written anew


def test_a_cache_that_cannot_be_written_falls_back_to_memory_in_one_line(tiny_image_folder, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("HOTDOG_TUNE_CACHE", str(blocker / "cache"))
    lines: list[str] = []
    data = prepare_data(tiny_image_folder, 32, 0.0, log=lines.append)
    assert data.entries == {"train": None} and len(data.train) == 20
    assert [line for line in lines if "cache" in line] == [
        f"the decoded-image cache {blocker / 'cache'} cannot be used (Not a directory): decoded in memory this time"]


def test_a_full_disk_while_an_entry_is_written_falls_back_to_memory(image_folder_factory, tmp_path, monkeypatch):
    from tests.test_resume import _tmpfs

    disk = _tmpfs(tmp_path / "small", 1)  # 1 MB: the entry (2 x 40 x 3 x 219 x 219 bytes) does not fit
    monkeypatch.setenv("HOTDOG_TUNE_CACHE", str(disk / "cache"))
    folder = image_folder_factory("big", n_train=40, n_test=2, size=(300, 300))
    lines: list[str] = []
    try:
        data = prepare_data(folder, 192, 0.0, log=lines.append)
        assert data.entries == {"train": None} and len(data.train) == 80
        assert any("could not be kept in the cache" in line and "decoded in memory this time" in line for line in lines), lines
        assert not [p for p in (disk / "cache").iterdir() if p.is_dir()]  # no half entry left behind
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_the_cache_is_listed_and_cleared(tiny_image_folder, cache, capsys):
    from trainable.decoded import main

    prepare_data(tiny_image_folder, 32, 0.0)
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out  # each entry named by the folder it was decoded from, and the cache's total
    assert f"images of {Path(tiny_image_folder) / 'train'} at" in listed and "1 entry, " in listed
    assert main(["--clear"]) == 0 and entries() == [] and cache_root() == cache
    assert clear() == 0


@pytest.mark.parametrize("path", ["per-image", "batched"])
def test_streamed_batches_give_the_losses_the_device_gives(tiny_image_folder, path):
    """The streaming path (host memory, each batch gathered and copied ahead) against the images held on the device:
    the same seeded run, the same numbers."""
    from trainable.loop import train
    from trainable.worker_cache import WorkerCache

    data = prepare_data(tiny_image_folder, 32, 0.25)
    cfg = TrainConfig(data_dir=str(tiny_image_folder), weights="none", epochs=2, image_size=32, batch_size=4, augment="d2l",
                      augment_path=path, threads=1, val_fraction=0.25)
    held = train(cfg, data, cache=WorkerCache())
    streamed_cache = WorkerCache(device_share=0.0)
    streamed = train(cfg, data, cache=streamed_cache)
    assert [(m.train_loss, m.val_loss, m.val_acc) for m in held.history] == [(m.train_loss, m.val_loss, m.val_acc) for m in streamed.history]


def test_the_study_reads_its_images_from_the_cache_it_shares_with_the_rerun(tiny_image_folder, cache):
    """What a study decodes, its rerun finds (the train split), and predicting the test split reads the rerun's entry."""
    from study.driver.adapter import SharedData

    data = prepare_data(tiny_image_folder, 32, 0.0, min_per_class=2)
    shared = SharedData.__new__(SharedData)
    shared.entry, shared.meta, shared.ref = str(data.entries["train"]), (data.classes, data.stored_size, data.root), None
    read = shared.get()
    assert isinstance(read.train.base_images, np.memmap) and np.array_equal(read.train.images, data.train.images)
    assert "memory-mapped by every trial" in shared.how
    rerun = prepare_data(tiny_image_folder, 32, 0.0, with_test=True)
    assert rerun.entries["train"] == data.entries["train"] and rerun.decode_s > 0  # the test split was not decoded yet
    meta = json.loads((rerun.entries["test"] / "meta.json").read_text())
    assert meta["count"] == len(rerun.test)


def test_the_images_stay_on_a_gpu_only_where_they_fit_its_share(monkeypatch):
    """The placement rule on a card of stated size: the images stay where they take at most half of what this process
    may use there (its memory fraction of the card), else they stream; on the CPU they are read in place."""
    from types import SimpleNamespace

    import torch

    from trainable.worker_cache import placement

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80e9))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 0.25, raising=False)  # 4 trials a GPU
    gpu = torch.device("cuda", 0)
    fits, why = placement(int(9e9), gpu)
    assert fits and why == "the decoded images (9.00 GB) stay on cuda:0: at most 50% of the 20.0 GB this process may use there"
    fits, why = placement(int(11e9), gpu)
    assert not fits and why.startswith("the decoded images (11.00 GB) stream from host memory, each batch copied ahead")
    assert placement(int(11e9), torch.device("cpu")) == (True, "the decoded images (11.00 GB) are read in place in host memory")
    assert placement(10, gpu, share=0.0) == (False, "the decoded images (0.00 GB) stream from host memory (asked for)")


def test_the_study_says_once_where_its_trials_read_the_images(tmp_path, capsys):
    """A trial's first report carries its data mode: the study prints it once (not for every trial, not for the CPU's
    read in place)."""
    from study.core.tables import StudyTables
    from study.driver.progress import Progress
    from study.stages.trials import TrialsRecorder

    params = ["lr", "freeze_depth"]
    tables = StudyTables(tmp_path, params, max_epochs=1, seed=0, load=False)
    recorder = TrialsRecorder(tables, params, Progress(samples=3, max_epochs=1, concurrent=2))
    streamed = "the decoded images (11.00 GB) stream from host memory, each batch copied ahead"
    modes = [streamed, streamed, "the decoded images (0.01 GB) are read in place in host memory"]
    for n, mode in enumerate(modes):
        config = {"optuna_trial": n, "lr": 0.1, "freeze_depth": 0}
        recorder.on_start(config, str(n), None)
        recorder.on_result(config, str(n), {"epoch": 1, "val_acc": 0.5, "val_loss": 0.7, "seconds": 1.0, "data_mode": mode}, None)
    out = capsys.readouterr().out
    assert out.count("stream from host memory") == 1 and f"trial 0: {streamed}" in out and "in place" not in out
