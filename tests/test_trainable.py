"""The training side of ``trainable``: freezing, optimiser groups, augmentation, weights files, checkpoints,
evaluation, the CLI end to end and the torchvision import fix.

Everything runs on tiny generated images (32 px crops, batch 8, 1-2 epochs) and random-init ResNet18
weights saved to tmp_path: no network, no ImageNet weights.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trainable import AUGMENT_POLICIES, Checkpoint, TrainConfig, UserError, prepare_data, train
from trainable.augment import IMAGENET_MEAN, IMAGENET_STD, augment_batch, eval_transform, normalize, train_transform
from trainable.cli import run_main
from trainable.data import Split, stored_size
from trainable.loop import evaluate
from trainable.model import STAGES, build_model, freeze, param_groups

from torchvision.models import resnet18

REPO = Path(__file__).resolve().parents[1]
# State-dict key prefixes of each freezable stage, in STAGES order, then the head.
STAGE_PREFIXES = {"stem": ("conv1.", "bn1."), "layer1": ("layer1.",), "layer2": ("layer2.",), "layer3": ("layer3.",), "layer4": ("layer4.",)}
SIZE = 32


def stage_of(key: str) -> str:
    if key.startswith("fc."):
        return "head"
    return next(stage for stage, prefixes in STAGE_PREFIXES.items() if key.startswith(prefixes))


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(
        weights="none", image_size=SIZE, batch_size=8, epochs=1, lr=0.05, head_lr_mult=10.0, weight_decay=1e-3,
        augment="d2l", seed=0, device="cpu", precision="fp32", threads=1,  # 1 thread: faster than 2 on small CPUs
    )
    return base.replace(**changes)


@pytest.fixture
def tiny_data(tiny_image_folder):
    return prepare_data(tiny_image_folder, SIZE, val_fraction=0.2, split_seed=0)


@pytest.fixture
def random_weights(tmp_path) -> Path:
    """A random-init torchvision resnet18 state dict (ImageNet-shaped: 1000-class head) in a file."""
    torch.manual_seed(1234)
    path = tmp_path / "resnet18-random.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def run_cli(args, capsys) -> tuple[int, str, str]:
    """``python -m trainable ARGS`` in-process (run_main turns UserError into exit 2): (code, stdout, stderr)."""
    from trainable.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# --- 1. freezing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", range(6))
def test_freeze_depth_keeps_exactly_the_first_k_stages(depth, tiny_data, random_weights):
    cfg = tiny_config(weights=str(random_weights), freeze_depth=depth, augment="none")
    initial = build_model(str(random_weights), len(tiny_data.classes), seed=cfg.seed).state_dict()
    result = train(cfg, data=tiny_data)
    assert result.status == "completed"
    after = result.model.state_dict()
    assert after.keys() == initial.keys()
    frozen = set(STAGES[:depth])
    for key, before in initial.items():
        stage = stage_of(key)
        same = torch.equal(after[key], before)
        if stage in frozen:  # parameters and BatchNorm running_mean/var/num_batches_tracked alike
            assert same, f"freeze depth {depth}: {key} ({stage}, frozen) changed"
        else:
            assert not same, f"freeze depth {depth}: {key} ({stage}, trainable) did not change"
    # the frozen modules stay frozen in the returned model
    for name, p in result.model.named_parameters():
        assert p.requires_grad == (stage_of(name) not in frozen), name


# --- 2. optimiser parameter groups ----------------------------------------------------------------------
@pytest.mark.parametrize("depth", [0, 2, 5])
def test_param_groups_lrs_weight_decay_and_frozen_params(depth):
    model = build_model("none", 3, seed=0)
    freeze(model, depth)
    groups = param_groups(model, lr=0.02, head_lr_mult=7.0, weight_decay=3e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == ({"head"} if depth == 5 else {"backbone", "head"})
    head = by_name["head"]
    assert head["lr"] == pytest.approx(0.02 * 7.0) and head["weight_decay"] == 3e-4
    assert {id(p) for p in head["params"]} == {id(p) for p in model.fc.parameters()}

    named = dict(model.named_parameters())
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    trainable_ids = {id(p) for n, p in named.items() if stage_of(n) not in STAGES[:depth]}
    assert set(grouped) == trainable_ids, "groups must hold exactly the parameters of unfrozen stages and the head"
    frozen_ids = {id(p) for n, p in named.items() if stage_of(n) in STAGES[:depth]}
    assert not frozen_ids & set(grouped)
    if depth < 5:
        backbone = by_name["backbone"]
        assert backbone["lr"] == 0.02 and backbone["weight_decay"] == 3e-4
        assert len(backbone["params"]) == len(trainable_ids) - 2
    # torch accepts the groups as they are
    torch.optim.SGD(groups, lr=0.02)


def test_train_builds_its_optimizer_from_the_groups(tiny_data, tmp_path):
    cfg = tiny_config(lr=0.01, head_lr_mult=10.0, weight_decay=1e-3, freeze_depth=3, momentum=0.5)
    train(cfg, data=tiny_data, on_epoch=lambda m, save: save(tmp_path / "ckpt"))
    groups = Checkpoint.load(tmp_path / "ckpt")["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == pytest.approx(0.01) and groups[1]["lr"] == pytest.approx(0.1)
    assert all(g["weight_decay"] == pytest.approx(1e-3) and g["momentum"] == 0.5 for g in groups)
    model = build_model("none", 2)
    freeze(model, 3)
    n_unfrozen = sum(1 for n, _ in model.named_parameters() if n.startswith(("layer3.", "layer4.")))
    assert len(groups[0]["params"]) == n_unfrozen and len(groups[1]["params"]) == 2


# --- 3. augmentation and normalisation -----------------------------------------------------------------
@pytest.mark.parametrize("policy", AUGMENT_POLICIES)
def test_every_policy_gives_uint8_crops(policy, tiny_data):
    stored = torch.from_numpy(tiny_data.train.images[:4])
    assert stored.shape[-1] == stored_size(SIZE) > SIZE
    transform = train_transform(policy, SIZE)
    torch.manual_seed(0)
    one = transform(stored[0])
    assert one.dtype == torch.uint8 and one.shape == (3, SIZE, SIZE)
    batch = augment_batch(stored, transform)
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, SIZE, SIZE)
    if policy == "none":  # the plain policy is the evaluation crop
        assert torch.equal(batch, eval_transform(SIZE)(stored))


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        train_transform("mixup", SIZE)
    with pytest.raises(UserError, match="--augment"):
        tiny_config(augment="mixup").validate()


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_gives_float32_imagenet_normalised_batches(channels_last):
    batch = torch.zeros(5, 3, SIZE, SIZE, dtype=torch.uint8)
    batch[1] = 255
    out = normalize(batch, torch.device("cpu"), channels_last)
    assert out.dtype == torch.float32 and out.shape == (5, 3, SIZE, SIZE)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(out[1, :, 3, 7], (1 - mean) / std)
    assert batch.dtype == torch.uint8 and int(batch[1].min()) == 255, "the input batch must not be modified"


# --- 4. weights files ----------------------------------------------------------------------------------
def backbone_of(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_imagenet_shaped_file_loads_its_backbone_and_gets_a_new_head(random_weights):
    saved = torch.load(random_weights, weights_only=True)
    assert saved["fc.weight"].shape == (1000, 512)
    model = build_model(str(random_weights), 2, seed=0)
    state = model.state_dict()
    for key, tensor in backbone_of(saved).items():
        assert torch.equal(state[key], tensor), key
    assert model.fc.weight.shape == (2, 512) and model.fc.bias.shape == (2,)
    assert not torch.equal(model.fc.weight, saved["fc.weight"][:2])
    # the new head is the seeded one, whatever the backbone
    assert torch.equal(model.fc.weight, build_model("none", 2, seed=0).fc.weight)


def test_fine_tuned_file_for_the_same_classes_keeps_its_head(tmp_path):
    torch.manual_seed(5)
    net = resnet18(weights=None, num_classes=2)
    path = tmp_path / "finetuned.pt"
    torch.save(net.state_dict(), path)
    loaded = build_model(str(path), 2, seed=0).state_dict()
    for key, tensor in net.state_dict().items():
        assert torch.equal(loaded[key], tensor), key
    # a different class count: the file's head does not fit, a new one is made
    assert build_model(str(path), 3).fc.weight.shape == (3, 512)


def test_wrapped_and_data_parallel_state_dicts_load(tmp_path, random_weights):
    saved = torch.load(random_weights, weights_only=True)
    path = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in saved.items()}}, path)
    state = build_model(str(path), 2).state_dict()
    assert all(torch.equal(state[k], v) for k, v in backbone_of(saved).items())


def test_weights_that_are_not_a_state_dict_give_user_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(UserError, match=r"is not a PyTorch state dict.*torch\.save\(model\.state_dict\(\)"):
        build_model(str(text), 2)
    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], a_list)
    with pytest.raises(UserError, match="does not hold a state dict"):
        build_model(str(a_list), 2)
    a_module = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), a_module)  # a pickled module: refused by weights_only, not executed
    with pytest.raises(UserError, match="is not a PyTorch state dict"):
        build_model(str(a_module), 2)
    with pytest.raises(UserError, match="does not exist"):
        build_model(str(tmp_path / "missing.pth"), 2)


def test_weights_with_wrong_shapes_or_keys_give_user_error(tmp_path, random_weights):
    saved = torch.load(random_weights, weights_only=True)
    wrong = dict(saved, **{"layer1.0.conv1.weight": torch.zeros(32, 64, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match=r"does not fit ResNet18 \(wrong shapes for \['layer1\.0\.conv1\.weight'\]\)"):
        build_model(str(tmp_path / "wrong.pt"), 2)
    missing = {k: v for k, v in saved.items() if not k.startswith("layer4.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(UserError, match=r"does not fit ResNet18 \(missing \['layer4\."):
        build_model(str(tmp_path / "missing.pt"), 2)
    # a deeper ResNet's state dict (resnet34 has resnet18's keys plus more blocks) must not load half of itself
    extra = dict(saved, **{"layer1.2.conv1.weight": torch.zeros(64, 64, 3, 3)})
    torch.save(extra, tmp_path / "deeper.pt")
    with pytest.raises(UserError, match=r"does not fit ResNet18 \(unexpected \['layer1\.2\.conv1\.weight'\]\)"):
        build_model(str(tmp_path / "deeper.pt"), 2)


def test_file_without_num_batches_tracked_loads(tmp_path, random_weights):
    """Pre-PyTorch-0.4 state dicts (torchvision's ImageNet ResNet18 is one) have no BatchNorm counters."""
    saved = {k: v for k, v in torch.load(random_weights, weights_only=True).items() if not k.endswith("num_batches_tracked")}
    assert len(saved) == 102
    torch.save(saved, tmp_path / "old.pth")
    state = build_model(str(tmp_path / "old.pth"), 2).state_dict()
    assert all(torch.equal(state[k], v) for k, v in backbone_of(saved).items())


def test_from_scratch_model_is_reproducible_from_its_seed():
    a, b, c = (build_model("none", 2, seed=s).state_dict() for s in (7, 7, 8))
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between two builds with the same seed"
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"]) and not torch.equal(a["fc.bias"], c["fc.bias"])


# --- 5. checkpoint and resume ---------------------------------------------------------------------------
def test_resume_continues_at_epoch_2_and_matches_an_uninterrupted_run(tiny_data, random_weights, tmp_path):
    # momentum, so the optimiser's state (momentum buffers) must be restored too
    cfg = tiny_config(weights=str(random_weights), momentum=0.9, freeze_depth=1)
    first_calls = []

    def save_each(m, save):
        first_calls.append(m.epoch)
        save(tmp_path / "ckpt")

    first = train(cfg.replace(epochs=1), data=tiny_data, on_epoch=save_each)
    assert first_calls == [1] and Checkpoint.exists(tmp_path / "ckpt")

    resumed_calls = []
    resumed = train(cfg.replace(epochs=2), data=tiny_data, resume_from=tmp_path / "ckpt", on_epoch=lambda m, s: resumed_calls.append(m.epoch))
    assert resumed_calls == [2]
    assert [m.epoch for m in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]

    full = train(cfg.replace(epochs=2), data=tiny_data)
    assert [m.epoch for m in full.history] == [1, 2]
    # seeded per epoch on the CPU: the resumed run is bit-identical to the uninterrupted one
    got, want = resumed.model.state_dict(), full.model.state_dict()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs after resume"
    assert resumed.history[1].train_loss == full.history[1].train_loss
    assert resumed.history[1].val_acc == full.history[1].val_acc


def test_cli_checkpoint_dir_and_resume(tiny_image_folder, tmp_path, capsys):
    common = ["--data-dir", tiny_image_folder, "--weights", "none", "--image-size", SIZE, "--batch-size", 8, "--lr", 0.05,
              "--momentum", 0.9, "--seed", 3, "--threads", 1, "--precision", "fp32", "--device", "cpu"]
    code, out, _ = run_cli(common + ["--epochs", 1, "--checkpoint-dir", tmp_path / "ck"], capsys)
    assert code == 0 and "epoch 1/1" in out
    code, out, _ = run_cli(common + ["--epochs", 2, "--checkpoint-dir", tmp_path / "ck", "--resume", "--save-weights", tmp_path / "resumed.pt"], capsys)
    assert code == 0
    assert "epoch 2/2" in out and "epoch 1/" not in out
    code, out, _ = run_cli(common + ["--epochs", 2, "--save-weights", tmp_path / "full.pt"], capsys)
    assert code == 0
    got, want = torch.load(tmp_path / "resumed.pt", weights_only=True), torch.load(tmp_path / "full.pt", weights_only=True)
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key}: resumed CLI run differs from the uninterrupted one"
    # the saved weights load back through the weights-file path, head included
    rebuilt = build_model(str(tmp_path / "full.pt"), 2).state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in want.items())


def test_cli_writes_where_it_checked_home_included(tiny_image_folder, tmp_path, capsys, monkeypatch):
    # --save-weights=~/w.pt reaches the program unexpanded (no shell expands ~ after "="): write under $HOME, not ./~
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    common = ["--data-dir", tiny_image_folder, "--weights", "none", "--image-size", SIZE, "--batch-size", 8, "--threads", 1,
              "--checkpoint-dir=~/ck", "--save-weights=~/models/w.pt"]
    assert run_cli([*common, "--epochs", 1], capsys)[0] == 0
    assert (home / "models" / "w.pt").is_file() and (home / "ck" / "state.pt").is_file() and not (tmp_path / "~").exists()
    code, out, _ = run_cli([*common, "--epochs", 2, "--resume"], capsys)
    assert code == 0 and "epoch 2/2" in out and "epoch 1/" not in out  # resumed from ~/ck


def test_cli_weights_a_full_disk_cannot_write_leave_the_old_file_whole(tiny_image_folder, tmp_path, capsys, monkeypatch):
    from tests.test_files import disk_full

    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "w.pt"
    target.write_bytes(b"the weights of an earlier run")
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: disk_full(Path(f)))
    code, _, err = run_cli(["--data-dir", tiny_image_folder, "--weights", "none", "--image-size", SIZE, "--batch-size", 8, "--epochs", 1,
                            "--threads", 1, "--save-weights", target], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot write the weights to {target} (No space left on device)") and "--save-weights another path" in err
    assert target.read_bytes() == b"the weights of an earlier run" and sorted(p.name for p in target.parent.iterdir()) == ["w.pt"]


def test_cli_resume_without_a_checkpoint_is_a_user_error(tiny_image_folder, tmp_path, capsys):
    code, out, err = run_cli(["--data-dir", tiny_image_folder, "--weights", "none", "--resume", "--checkpoint-dir", tmp_path / "none"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --resume needs a checkpoint")


# --- evaluation ------------------------------------------------------------------------------------------
def test_evaluate_scores_every_image(tiny_data):
    """257 images = one batch of 256 + one of 1: the single last image must be scored, not dropped."""
    rng = np.random.default_rng(0)
    s = stored_size(SIZE)
    split = Split(rng.integers(0, 256, size=(257, 3, s, s), dtype=np.uint8), rng.integers(0, 2, size=257))
    cfg = tiny_config(batch_size=2)
    torch.manual_seed(0)
    model = build_model("none", 2).eval()
    loss, acc = evaluate(model, split, cfg, torch.device("cpu"), False, False)
    with torch.inference_mode():
        x = normalize(eval_transform(SIZE)(torch.from_numpy(split.images)), torch.device("cpu"), False)
        logits = model(x)
    y = torch.from_numpy(split.labels)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-4)


# --- 7. the CLI end to end ------------------------------------------------------------------------------
def test_cli_end_to_end_on_hotdog_mini(asset, tmp_path):
    data = asset("hotdog_mini")
    proc = subprocess.run(
        [sys.executable, "-m", "trainable", "--data-dir", str(data), "--weights", "none", "--epochs", "1",
         "--image-size", "64", "--batch-size", "16", "--lr", "0.01", "--head-lr-mult", "10", "--weight-decay", "1e-3",
         "--freeze-depth", "2", "--augment", "d2l", "--seed", "0", "--threads", "1",
         "--save-weights", str(tmp_path / "w.pt")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    assert lines[0].startswith("epoch 1/1  train loss ") and " val loss " in lines[0] and "img/s" in lines[0]
    final = json.loads(lines[-1])
    assert set(final) == {"status", "final_val_acc", "best_val_acc", "best_epoch"} and final["status"] == "completed"
    assert final["best_epoch"] == 1 and 0 <= final["final_val_acc"] <= 1 and final["best_val_acc"] == final["final_val_acc"]
    assert "Traceback" not in proc.stderr
    assert build_model(str(tmp_path / "w.pt"), 2).fc.weight.shape == (2, 512)


def test_cli_final_line_is_strict_json_without_validation(tiny_image_folder, capsys):
    code, out, _ = run_cli(["--data-dir", tiny_image_folder, "--weights", "none", "--epochs", 1, "--image-size", SIZE,
                            "--batch-size", 8, "--val-fraction", 0, "--threads", 1], capsys)
    assert code == 0

    def no_nan(constant):
        raise AssertionError(f"final line is not strict JSON: {constant}")

    final = json.loads(out.strip().splitlines()[-1], parse_constant=no_nan)
    assert final == {"status": "completed", "final_val_acc": None, "best_val_acc": None, "best_epoch": None}


def test_cli_config_file_and_flag_override(tiny_image_folder, tmp_path, capsys):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"data_dir": str(tiny_image_folder), "weights": "none", "epochs": 3, "image_size": SIZE,
                                    "batch_size": 8, "threads": 1}))
    code, out, _ = run_cli(["--config", cfg_file, "--epochs", 1], capsys)
    assert code == 0 and "epoch 1/1" in out
    cfg_file.write_text(json.dumps({"epochs": 1, "learning_rate": 0.1}))
    code, _, err = run_cli(["--config", cfg_file], capsys)
    assert code == 2 and err.startswith("error: unknown config keys ['learning_rate']") and err.count("\n") == 1


def test_a_config_file_flag_must_be_true_or_false(tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"val_last_only": True, "epochs": 2}))
    assert TrainConfig.from_json(cfg_file).val_last_only is True
    for wrong in ("yes", 1):
        cfg_file.write_text(json.dumps({"val_last_only": wrong}))
        with pytest.raises(UserError, match="val_last_only is .* but must be true or false"):
            TrainConfig.from_json(cfg_file)
    cfg_file.write_text(json.dumps({"epochs": True}))  # and a number is no flag
    with pytest.raises(UserError, match="epochs is true but must be a whole number"):
        TrainConfig.from_json(cfg_file)


# --- 8. the torchvision import fix ----------------------------------------------------------------------
def test_fresh_process_imports_trainable_then_torchvision_models():
    script = (
        "import json, sys\n"
        "import trainable.tv_compat as tc\n"
        "import torchvision.models, torchvision.transforms.v2\n"
        "net = torchvision.models.resnet18(weights=None, num_classes=2)\n"
        "registered = tc._LIBRARY is not None\n"
        "lib = tc._LIBRARY\n"
        "again = tc.ensure_torchvision_importable()\n"
        "print(json.dumps({'registered': registered, 'again': again, 'same_library': tc._LIBRARY is lib,\n"
        "                  'out': list(net(__import__('torch').zeros(2, 3, 32, 32)).shape)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["out"] == [2, 2]
    assert report["same_library"], "a second call must not register the schemas again"
    assert report["again"] is False  # registering twice would be an error


def test_tv_compat_is_a_no_op_when_torchvision_is_already_imported(monkeypatch):
    import trainable.tv_compat as tc

    assert "torchvision" in sys.modules
    monkeypatch.setattr(tc, "_LIBRARY", None)  # as in a process that imported a working torchvision first
    assert tc.ensure_torchvision_importable() is False
    assert tc._LIBRARY is None, "nothing may be registered once torchvision is imported"


def test_tv_compat_second_call_returns_false():
    import trainable.tv_compat as tc

    assert tc.ensure_torchvision_importable() is False


def test_a_diverging_run_stops_in_the_epoch_its_loss_turns_nan(tiny_data):
    result = train(tiny_config(lr=1e7, epochs=6), tiny_data)
    assert result.status == "diverged"
    *before, last = result.history
    assert len(result.history) <= 2 and last.diverged and math.isnan(last.val_acc)
    assert not any(m.diverged for m in before) and all(math.isfinite(m.train_loss) for m in before)


def test_a_diverging_cli_run_still_ends_with_a_json_line(tiny_image_folder, capsys):
    code, out, err = run_cli(["--data-dir", tiny_image_folder, "--weights", "none", "--epochs", 3, "--image-size", SIZE,
                              "--batch-size", 8, "--lr", 1e7, "--threads", 1], capsys)
    assert code == 1 and "lower --lr" in err
    final = json.loads(out.strip().splitlines()[-1])
    assert final["status"] == "diverged" and final["best_val_acc"] is None


# --- 9. the book's update, the run's own randomness, the checkpoint's epoch -----------------------------
def test_summed_loss_over_the_configured_batch_is_the_books_update_for_a_short_batch():
    """One SGD step on a short batch (3 images of a batch size of 8): the book's step (loss summed, lr 5e-5, weight
    decay 1e-3) and ours (the summed loss over the configured batch size, lr x 8, weight decay / 8) give the same
    weights. A mean over the 3 images would move them 8/3 times as far."""
    torch.manual_seed(0)
    net = nn.Linear(5, 2)
    x, y = torch.randn(3, 5), torch.tensor([0, 1, 1])
    book, ours, mean = (nn.Linear(5, 2) for _ in range(3))
    for copy in (book, ours, mean):
        copy.load_state_dict(net.state_dict())
    batch, lr, wd = 8, 5e-5, 1e-3

    def step(model, lr, wd, loss_of):
        opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
        opt.zero_grad()
        loss_of(nn.functional.cross_entropy(model(x), y, reduction="none")).backward()
        opt.step()

    step(book, lr, wd, lambda l: l.sum())
    step(ours, lr * batch, wd / batch, lambda l: l.sum() / batch)  # what trainable.loop does
    step(mean, lr * batch, wd / batch, lambda l: l.mean())
    for a, b, c in zip(book.parameters(), ours.parameters(), mean.parameters()):
        assert torch.allclose(a, b, atol=1e-9)
    moved_book = (book.weight - net.weight).abs().sum()
    moved_mean = (mean.weight - net.weight).abs().sum()
    assert float((moved_mean / moved_book).detach()) == pytest.approx(8 / 3, rel=0.01)
    assert TrainConfig().lr == pytest.approx(5e-5 * 128) and TrainConfig().weight_decay == pytest.approx(1e-3 / 128)


def test_the_loop_weights_a_short_last_batch_by_its_size(tiny_data, monkeypatch):
    """The loop's loss is the batch's sum over the configured batch size (seen through the gradient it steps on)."""
    import trainable.loop as loop

    sizes, scales = [], []
    real = nn.functional.cross_entropy

    def spy(logits, y, reduction="mean"):
        out = real(logits, y, reduction=reduction)
        if reduction == "sum" and logits.requires_grad:
            sizes.append(len(y))
            out.register_hook(lambda g: scales.append(float(g)))
        return out

    monkeypatch.setattr(loop.nn.functional, "cross_entropy", spy)
    train(tiny_config(batch_size=6, augment="none"), tiny_data)  # 16 training images: 6, 6 and a short 4
    assert sizes == [6, 6, 4]
    assert scales == pytest.approx([1 / 6] * 3)  # every batch's summed loss is divided by 6, the short one too


def test_a_run_leaves_the_callers_random_generator_alone(tiny_data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(tiny_config(epochs=2), tiny_data)
    assert torch.equal(torch.rand(3), expected)


def test_a_checkpoint_says_its_epoch_without_loading_the_model(tiny_data, tmp_path):
    def on_epoch(metrics, save):
        save(tmp_path / f"e{metrics.epoch}")

    train(tiny_config(epochs=2), tiny_data, on_epoch=on_epoch)
    assert Checkpoint.epoch(tmp_path / "e1") == 1 and Checkpoint.epoch(tmp_path / "e2") == 2
    meta = json.loads((tmp_path / "e2" / "meta.json").read_text())
    assert meta["bytes"] == (tmp_path / "e2" / "state.pt").stat().st_size
    assert Checkpoint.epoch(tmp_path / "missing") is None


def test_val_last_only_validates_once_and_scores_the_last_epoch_alike(tiny_data, monkeypatch):
    import trainable.loop as loop

    every = train(tiny_config(epochs=3), tiny_data)
    calls = []
    real = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    last = train(tiny_config(epochs=3, val_last_only=True), tiny_data)
    assert len(calls) == 1  # the confirmation's runs pay for one validation pass, not one per epoch
    assert [math.isnan(m.val_acc) for m in last.history] == [True, True, False]
    # validating consumes no randomness: the same weights, so the same last epoch
    assert last.history[-1].val_acc == every.history[-1].val_acc and last.history[-1].val_loss == every.history[-1].val_loss
    assert [m.train_loss for m in last.history] == [m.train_loss for m in every.history]
