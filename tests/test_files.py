"""Atomic writes (trainable.files): what a failed or killed write leaves behind."""

from __future__ import annotations

import errno

import pytest
import torch
from torch import nn

from trainable.files import temp_beside, temps_beside, write_atomic
from trainable.loop import CHECKPOINT_FILE, META_FILE, Checkpoint


def disk_full(tmp):
    tmp.write_bytes(b"half a file")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.parquet"
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        write_atomic(target, disk_full)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["table.parquet"]
    write_atomic(target, lambda tmp: tmp.write_bytes(b"new"))
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_each_writer_has_a_temporary_of_its_own_and_the_sweep_finds_them(tmp_path):
    target = tmp_path / "trials.parquet"
    names = {temp_beside(target) for _ in range(100)}
    assert len(names) == 100 and all(n.parent == tmp_path and n.name.startswith(".trials.parquet.") for n in names)
    left = [temp_beside(target), temp_beside(target)]
    for p in left:
        p.write_bytes(b"killed mid-write")
    (tmp_path / ".confirm.parquet.1-abc.tmp").write_bytes(b"another file's")
    assert sorted(temps_beside(target)) == sorted(left)


def test_a_checkpoint_that_fails_to_save_leaves_the_last_one_whole(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    Checkpoint.save(tmp_path, model, optimizer, 1, [])
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: disk_full(f))
    with pytest.raises(OSError):
        Checkpoint.save(tmp_path, model, optimizer, 2, [])
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_FILE, META_FILE])
    monkeypatch.undo()
    assert Checkpoint.load(tmp_path)["epoch"] == 1 and Checkpoint.epoch(tmp_path) == 1
