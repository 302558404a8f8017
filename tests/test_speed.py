"""What keeps a trial's fixed cost down, and what records where the time went: a worker's warm state, splits as
views, checkpoints off the training path, the tables' journal, the time accounting and the ETA. Each checks
behaviour (the same numbers, the same rows), never a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from study.driver.checkpoints import SCRATCH_PREFIX, Checkpointer, sweep_scratch
from study.driver.progress import Progress
from study.core.tables import StudyTables, read_tables
from study.core.timing import time_use
from trainable import TrainConfig
from trainable.data import Split, prepare_data, split_fold
from trainable.loop import META_FILE, Checkpoint, RunPhases, SaveCheckpoint, data_for, train
from trainable.worker_cache import WorkerCache

PARAMS = ["lr", "freeze_depth"]


def tiny_cfg(folder: Path, **changes) -> TrainConfig:
    values = {"data_dir": str(folder), "weights": "none", "image_size": 32, "epochs": 2, "batch_size": 4, "threads": 1}
    return TrainConfig(**{**values, **changes})


def history(result) -> list[tuple]:
    return [(m.train_loss, m.train_acc, m.val_loss, m.val_acc) for m in result.history]


# --- the worker's warm state and the views --------------------------------------------------------------
def test_a_warm_worker_trains_each_run_as_a_new_process_would(tiny_image_folder):
    all_data = prepare_data(tiny_image_folder, 32, 0.0, 0, min_per_class=2)
    fold = split_fold(all_data, 0.1, 0, 0)  # views of the decoded set, as a study's worker gets them
    warm = WorkerCache()
    for freeze in (1, 0, 5):  # the same instance reset between runs, a stage frozen in one and trained in the next
        cfg = tiny_cfg(tiny_image_folder, freeze_depth=freeze, augment="flip", batch_size=8)  # a short last batch of 2
        cold = train(cfg, data_for(cfg))  # a copy of the split, a model built from scratch
        phases = RunPhases()
        again = train(cfg, fold, cache=warm, phases=phases)
        assert history(again) == history(cold)
        assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), cold.model.state_dict().values()))
    assert warm.runs == 3 and phases.warm_runs == 2 and phases.weights_s == 0.0  # the last run found everything made


def test_a_warm_worker_reads_a_weights_file_once_and_again_when_it_changes(tiny_image_folder, tmp_path):
    from trainable.model import build_model

    path = tmp_path / "w.pt"
    torch.save(build_model("none", 2, seed=7).state_dict(), path)
    cfg = tiny_cfg(tiny_image_folder, weights=str(path), epochs=1)
    data = data_for(cfg)
    warm = WorkerCache()
    first, second = RunPhases(), RunPhases()
    train(cfg, data, cache=warm, phases=first)
    train(cfg, data, cache=warm, phases=second)
    assert first.weights_s > 0 and second.weights_s == 0.0
    torch.save(build_model("none", 2, seed=8).state_dict(), path)  # replaced under the same name
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    model, weights_s = warm.model(str(path), 2, cfg.seed, torch.device("cpu"), torch.channels_last)
    assert weights_s > 0 and torch.equal(model.conv1.weight, build_model(str(path), 2, seed=cfg.seed).conv1.weight)


def test_a_split_is_a_view_whose_subsets_compose():
    images = np.arange(10 * 3 * 2 * 2, dtype=np.uint8).reshape(10, 3, 2, 2)
    split = Split(images, np.arange(10) % 2)
    part = split.subset(np.array([9, 2, 4, 6]))
    inner = part.subset(np.array([1, 3]))
    assert inner.base_images is images and list(inner.rows) == [2, 6] and len(inner) == 2
    assert np.array_equal(inner.images, images[[2, 6]]) and list(inner.labels) == [0, 0]


def test_a_run_records_where_its_time_went(tiny_image_folder):
    cfg = tiny_cfg(tiny_image_folder)
    phases = RunPhases()
    result = train(cfg, data_for(cfg), phases=phases)
    assert phases.build_s > 0 and phases.first_step_s > 0 and phases.warm_runs == 0
    for m in result.history:
        assert 0 < m.train_s and 0 < m.val_s and m.train_s + m.val_s <= m.seconds + 1e-6
    assert phases.first_step_s <= result.history[0].train_s


# --- checkpoints off the training path ----------------------------------------------------------------
def tiny_save(epoch: int) -> SaveCheckpoint:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return SaveCheckpoint(model, optimizer, epoch, [])


def test_checkpoints_are_written_only_where_a_later_report_carries_them():
    box = Checkpointer(last_epoch=4)
    assert box.take() == (None, None)  # epoch 1's report: nothing written yet
    save = tiny_save(1)
    box.after_report(save, 1, diverged=False)  # the run goes on past epoch 1: its state, written in the background
    save.model.weight.data.add_(1.0)  # epoch 2 trains on meanwhile: the checkpoint holds epoch 1's state
    folder, epoch = box.take()  # epoch 2's report carries it
    assert epoch == 1 and json.loads((Path(folder) / META_FILE).read_text())["epoch"] == 1
    state = Checkpoint.load(folder)
    assert not torch.equal(state["model"]["weight"], save.model.weight)
    box.after_report(tiny_save(2), 2, diverged=False)
    assert not Path(folder).exists()  # Tune copied it with the report: the scratch copy goes
    box.take()
    box.after_report(tiny_save(3), 3, diverged=False)  # the next report is the last: it carries none
    assert box.take() == (None, None)
    box.after_report(tiny_save(2), 2, diverged=True)  # nothing follows a diverged epoch
    assert box.take() == (None, None)
    box.close()


def test_a_checkpoint_that_fails_to_write_fails_the_next_report(monkeypatch):
    box = Checkpointer(last_epoch=5)

    def full(directory, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Checkpoint, "write", staticmethod(full))
    box.after_report(tiny_save(1), 1, diverged=False)
    with pytest.raises(OSError, match="No space left"):
        box.take()
    box.close()


def test_scratch_folders_of_gone_processes_are_swept(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{SCRATCH_PREFIX}{gone.stdout.strip()}-abc"
    mine = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def"
    alive = tmp_path / f"{SCRATCH_PREFIX}1-ghi"  # init: alive
    other = tmp_path / "something-else"
    for folder in (dead, mine, alive, other):
        folder.mkdir()
    assert sweep_scratch(tmp_path) == 1
    assert not dead.exists() and mine.exists() and alive.exists() and other.exists()


# --- the tables' journal ----------------------------------------------------------------------------
def result(epoch: int, acc: float, **more) -> dict:
    return {"epoch": epoch, "val_acc": acc, "val_loss": 0.5, "train_loss": 0.6, "train_acc": 0.7, "seconds": 1.0,
            "images_per_s": 10.0, **more}


def test_the_journal_holds_every_change_until_the_files_are_written(tmp_path):
    tables = StudyTables(tmp_path, PARAMS, max_epochs=3, seed=0)
    tables.on_start(0, "a", {"lr": 0.1, "freeze_depth": 1, "baseline": True})
    tables.write()  # the files as a driver run starts
    tables.on_result(0, "a", {}, result(1, 0.5, import_s=2.0, worker_pid=11, warm_runs=0))
    tables.on_result(0, "a", {}, result(2, 0.6, report_s_before=0.25))
    tables.on_start(1, "b", {"lr": 0.2, "freeze_depth": 0})
    tables.on_result(1, "b", {}, result(1, 0.4))
    tables.on_end(1, "b", {})
    tables.record()  # appended, not yet in the parquet files (a driver killed now)
    with open(tables.journal_path, "a") as journal:
        journal.write('{"trial": {"optuna_trial": 9, "sta')  # a line cut short by the kill
    again = StudyTables(tmp_path, PARAMS, max_epochs=3, seed=0)
    assert set(again.trials) == {0, 1} and set(again.epochs) == {(0, 1), (0, 2), (1, 1)}
    assert again.trials[1]["status"] == "stopped early" and again.trials[0]["import_s"] == 2.0
    assert again.epochs[(0, 1)]["report_s"] == 0.25  # the wait of epoch 1's report, sent with epoch 2
    from study.core.folder import StudyFolder
    from study.core.settings import StudySettings

    settings = StudySettings.from_dict({"name": "s", "base": {"epochs": 3}, "space": {p: {} for p in PARAMS}, "seed": 0})
    trials, epochs = read_tables(StudyFolder(tmp_path), settings)  # what study.analyze reads
    assert len(trials) == 2 and len(epochs) == 3 and trials["worker_pid"].iloc[list(trials["optuna_trial"]).index(0)] == 11
    again.forget(1)
    again.record()
    assert set(StudyTables(tmp_path, PARAMS, 3, 0).trials) == {0}  # forgetting is journaled too
    again.write()
    assert tables.journal_path.stat().st_size == 0 and set(pd.read_parquet(tmp_path / "trials.parquet")["optuna_trial"]) == {0}


def test_an_epoch_trained_again_after_a_restart_keeps_the_time_it_first_arrived(tmp_path):
    tables = StudyTables(tmp_path, PARAMS, max_epochs=3, seed=0, load=False)
    tables.on_start(0, "a", {"lr": 0.1, "freeze_depth": 1})
    tables.on_result(0, "a", {}, result(1, 0.5, ended_at=100.0))
    tables.on_result(0, "b", {}, result(1, 0.5, ended_at=200.0))
    assert tables.epochs[(0, 1)]["ended_at"] == 100.0 and tables.epochs[(0, 1)]["trial_id"] == "b"


# --- the accounting ------------------------------------------------------------------------------------
def accounting_tables():
    trials = pd.DataFrame({
        "optuna_trial": [0, 1, 2, 3], "seconds": [2.0, 2.0, 1.0, 1.0], "slot_s": [8.0, 7.0, 1.5, 1.5],
        "warm_runs": [0, 0, 1, 1], "started_at": [1002.0, 1003.0, 1010.5, 1010.5], "ended_at": [1010.0, 1010.0, 1012.0, 1012.0],
        "build_s": [0.3, 0.3, 0.02, 0.02]})
    epochs = pd.DataFrame({"optuna_trial": [0, 1, 2, 2, 3], "epoch": [1, 1, 1, 2, 1], "seconds": [2.0, 2.0, 0.6, 0.4, 1.0],
                           "train_s": [1.8, 1.8, 0.5, 0.3, 0.9]})
    runs = [{"timings": {"fit_s": 13.0}, "concurrent": 2, "fit_started_at": 1000.0}]
    return trials, epochs, runs


def test_the_slot_time_parts_add_up_to_the_whole():
    use = time_use(*accounting_tables())
    parts = use.parts
    assert use.slot_s == 26.0 and sum(parts.values()) == pytest.approx(26.0)
    assert parts["epochs"] == 6.0 and parts["first"] == 11.0 and parts["fixed"] == pytest.approx(1.0)
    assert parts["start"] == pytest.approx(5.0) and parts["end"] == pytest.approx(2.0) and parts["between"] == pytest.approx(1.0)
    assert use.lost_per_trial == pytest.approx(5.0) and use.fixed_per_trial == pytest.approx(0.5)
    assert use.first_epoch_s == pytest.approx(0.8) and use.later_epoch_s == pytest.approx(0.4)
    assert use.phases["build_s"] == pytest.approx(0.16) and "epochs (training, validation) 23%" in use.line()


def test_a_study_from_before_slot_times_has_no_accounting():
    trials, epochs, runs = accounting_tables()
    assert time_use(trials.drop(columns=["slot_s"]), epochs, runs) is None


def test_the_eta_counts_each_trials_fixed_cost_and_its_slow_first_epoch(tmp_path):
    tables = StudyTables(tmp_path, PARAMS, max_epochs=1, seed=0, load=False)
    for n in range(3):
        tables.on_start(n, str(n), {"lr": 0.1, "freeze_depth": 0})
        tables.on_result(n, str(n), {}, result(1, 0.5, seconds=0.2))
        tables.on_end(n, str(n), {})
        tables.held_slot(n, 0.0, 2.2)  # 2 s of each trial's hold went elsewhere than its epoch
    eta = Progress(samples=13, max_epochs=1, concurrent=2).eta(tables)
    assert eta == pytest.approx(10 * 2.2 / 2)  # ten trials to go, two at a time; epochs alone would say 1 s


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_gpu_pads_its_short_batches_and_scores_the_same(image_folder_factory):
    from trainable.loop import evaluate
    from trainable.model import build_model

    folder = image_folder_factory(n_train=150)  # 300 images: a full evaluation batch of 256 and a short one of 44
    cfg = TrainConfig(data_dir=str(folder), weights="none", image_size=32, batch_size=8, precision="fp32", threads=1)
    data = prepare_data(folder, 32, 0.0, 0)
    model = build_model("none", 2, seed=0).eval()
    cpu = evaluate(model.to(memory_format=torch.channels_last), data.train, cfg, torch.device("cpu"), False, True)
    gpu = evaluate(model.cuda().to(memory_format=torch.channels_last), data.train, cfg, torch.device("cuda"), False, True)
    assert gpu[1] == pytest.approx(cpu[1], abs=1 / 300) and gpu[0] == pytest.approx(cpu[0], rel=1e-3)
    result = train(cfg.replace(epochs=1, device="cuda", batch_size=64), data)  # 300 = 4 x 64 + 44: a short batch
    assert result.status == "completed" and not torch.backends.cudnn.benchmark  # heuristics: no tuning to pay for
