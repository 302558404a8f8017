"""What the user asks for: ``study.options`` parses ``study.run``'s command line once into a frozen ``StudyRequest``
(``study.core.settings``), whose bounds are checked in one table; ``--resume`` asks anew through
``study.core.settings.resume``, which takes where and how many trials run and refuses, by the one rule of
``study.core.comparability``, anything that would make the study another (fast: no Ray, no training)."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from study.core.comparability import FIXED_BASE, FIXED_STUDY, differences, request_differences
from study.core.settings import ASKED, ASKED_ANEW, StudyRequest, StudySettings, grow, resume
from study.options import BASE_OPTIONS, REQUEST_FIELDS, StudyOptions, build_parser
from trainable import TrainConfig, UserError

SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}


def test_the_parser_and_the_dataclass_are_one_set_of_options_and_defaults():
    parser = build_parser()
    parsed = vars(parser.parse_args([]))
    names = {f.name for f in fields(StudyOptions)} - {"given"}
    assert set(parsed) == names
    assert StudyOptions(**parsed) == StudyOptions()  # every default is the dataclass's
    assert set(BASE_OPTIONS) <= set(TrainConfig.__dataclass_fields__) and set(REQUEST_FIELDS.values()) <= set(ASKED)
    assert set(ASKED_ANEW) <= set(ASKED)


def test_parse_keeps_what_was_spelled_out_and_checks_every_bound():
    opts = StudyOptions.parse(["--samples", "4", "--epochs=2", "--no-confirm"])
    assert (opts.samples, opts.epochs, opts.no_confirm) == (4, 2, True)
    assert opts.given == {"samples", "epochs", "no_confirm"}
    for argv, message in [(["--samples", "0"], "--samples 0 must be 1 or more"),
                          (["--confirm-folds", "1"], "--confirm-folds 1 must be 2 or more"),
                          (["--name", "a/b"], "--name 'a/b' must be a plain folder name"),
                          (["--time-budget", "0"], "--time-budget 0 must be above 0")]:
        with pytest.raises(UserError, match=message):
            StudyOptions.parse(argv)


def test_a_request_holds_what_the_study_runs_with(tmp_path):
    opts = StudyOptions.parse(["--samples", "3", "--confirm-top", "2", "--weights", "none", "--epochs", "1",
                               "--storage", str(tmp_path / "ckpt")])
    request = opts.request("s")
    assert request.samples == 3 and request.confirm == {"top": 2, "folds": 2}
    assert request.base == TrainConfig(weights="none", epochs=1).to_dict()
    assert request.storage == str((tmp_path / "ckpt").resolve())
    settings = StudySettings.create(request.replace(space=SPACE), str(tmp_path / "ray"))
    assert settings.baseline == {"lr": TrainConfig().lr} and settings.baseline_note == ""  # the book's lr is inside the range


def test_what_the_user_asked_for_is_frozen_once_parsed(tmp_path):
    request = StudyOptions.parse(["--weights", "none"]).request("s")
    with pytest.raises(AttributeError):
        request.samples = 5
    with pytest.raises(TypeError, match="frozen"):
        request.base["epochs"] = 9
    with pytest.raises(TypeError, match="frozen"):
        request.space["lr"]["high"] = 1.0
    settings = StudySettings.create(request, str(tmp_path / "ray"))
    with pytest.raises(AttributeError):
        settings.samples = 40  # read as settings.samples, written only by --resume (study.core.settings.resume)
    assert settings.samples == 32 and settings.base["weights"] == "none"
    # study.json keeps both halves flat, as earlier versions wrote it, and reads back the same
    stored = json.loads(json.dumps(settings.to_dict()))
    assert stored["samples"] == 32 and stored["base"]["weights"] == "none" and "asked" not in stored
    assert StudySettings.from_dict(stored) == settings


def test_a_study_json_of_an_earlier_version_is_read():
    old = {"name": "old", "base": TrainConfig(weights="none").to_dict(), "space": SPACE, "samples": 4, "seed": 0,
           "experiment_path": "/x/ray", "gpus_per_trial": 0.0, "cpus_per_trial": 1.0, "confirm": {"top": 2, "folds": 2, "candidates": [3, 0]},
           "baseline": {"lr": 0.0064}, "runs": [{"outcome": "finished"}], "summary": {"confirmation": {"winner": 3}}, "unknown": 1}
    settings = StudySettings.from_dict(old)
    assert settings.asked.confirm == {"top": 2, "folds": 2} and settings.confirm_candidates == [3, 0]
    assert settings.gpus_granted == 0.0 and settings.cpus_granted == 1.0 and settings.finished()


def _stored(tmp_path) -> StudySettings:
    return StudySettings.create(StudyOptions.parse(["--weights", "none"]).request("s").replace(space=SPACE), str(tmp_path / "ray"))


def test_resume_takes_where_trials_run_and_refuses_what_they_compute(tmp_path):
    settings = _stored(tmp_path)
    said = resume(settings, StudyOptions.parse(["--resume", "--name", "s", "--max-concurrent", "3", "--samples", "40"]).ask_anew(settings.asked))
    assert settings.max_concurrent == 3 and settings.samples == 40
    assert "--max-concurrent 3 from now on (the study was started with None)" in said and "--samples 40: the study grows from 32 trial(s)" in said
    with pytest.raises(UserError, match="--epochs cannot change when resuming: study 's' runs with 5"):
        resume(settings, StudyOptions.parse(["--resume", "--name", "s", "--epochs", "9"]).ask_anew(settings.asked))
    assert resume(settings, StudyOptions.parse(["--resume", "--name", "s", "--epochs", "5"]).ask_anew(settings.asked)) == []  # the same value
    with pytest.raises(UserError, match="--no-test-split cannot change when resuming"):
        resume(settings, StudyOptions.parse(["--resume", "--name", "s", "--no-test-split"]).ask_anew(settings.asked))
    with pytest.raises(UserError, match="--space cannot change when resuming"):
        resume(settings, StudyOptions.parse(["--resume", "--name", "s"]).ask_anew(settings.asked).replace(space={"lr": dict(SPACE["lr"], high=1.0)}))
    said = resume(settings, StudyOptions.parse(["--resume", "--name", "s", "--tensorboard", "--confirm-top", "3"]).ask_anew(settings.asked))
    assert settings.trackers == {"tensorboard": True, "mlflow": None} and settings.confirm == {"top": 3, "folds": 2}
    assert "confirmation stage from now on: top 3, 2 folds" in said
    grow(settings, 2)
    assert settings.samples == 42


def test_one_rule_says_how_two_studies_differ(tmp_path):
    """Resume refuses every difference; a warm start and a comparison ask which change what an accuracy means."""
    a = _stored(tmp_path)
    assert set(FIXED_BASE) <= set(TrainConfig.__dataclass_fields__) and set(FIXED_STUDY) <= set(ASKED)
    assert request_differences(a.asked, a.asked) == []
    other = a.asked.replace(base={**a.base, "image_size": 64, "seed": 3, "momentum": 0.9})
    found = {d.setting: d for d in request_differences(a.asked, other)}
    assert set(found) == {"image_size", "seed", "momentum"}
    assert found["image_size"].changes_the_problem and found["momentum"].changes_the_problem and not found["seed"].changes_the_problem
    assert found["image_size"].text() == "image size 32 there, 64 here".replace("32", str(a.base["image_size"]))
    b = StudySettings(asked=other)
    a.data_fingerprint = b.data_fingerprint = {"train": {"x": {"files": 1, "digest": "d"}}}
    assert [d.setting for d in differences(a, b) if d.changes_the_problem] == ["image_size", "momentum"]
    b.data_fingerprint = {"train": {"x": {"files": 2, "digest": "e"}}}
    assert differences(a, b)[0].text() == "its data changed since"  # the same folder, other images
    searched = StudySettings(asked=other.replace(space={**SPACE, "momentum": {"type": "float", "low": 0.0, "high": 0.9}}))
    searched.data_fingerprint = a.data_fingerprint
    assert "momentum" not in [d.setting for d in differences(a, searched)]  # compared trial by trial, not here


def test_a_request_is_checked_before_anything_is_made():
    with pytest.raises(UserError, match="--confirm-top 0 must be 1 or more"):
        StudyRequest(name="s", base=TrainConfig().to_dict(), space=SPACE, confirm={"top": 0, "folds": 2}).check()
    with pytest.raises(UserError, match="--reduction-factor 1 must be above 1"):
        StudyRequest(name="s", base=TrainConfig().to_dict(), space=SPACE, reduction_factor=1.0).check()
