"""study.options: the options of ``python -m study.run`` as one dataclass, parsed once, checked in one table,
turned into study.json's settings and merged into them on --resume (fast: no Ray, no training)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from study.options import FIXED_ON_RESUME, RUN_OPTIONS, StudyOptions, build_parser
from trainable import TrainConfig, UserError


def test_the_parser_and_the_dataclass_are_one_set_of_options_and_defaults():
    parser = build_parser()
    parsed = vars(parser.parse_args([]))
    names = {f.name for f in fields(StudyOptions)} - {"given"}
    assert set(parsed) == names
    assert StudyOptions(**parsed) == StudyOptions()  # every default is the dataclass's
    assert set(FIXED_ON_RESUME) <= names and set(RUN_OPTIONS) <= names


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


def test_new_settings_hold_what_the_study_runs_with(tmp_path):
    opts = StudyOptions.parse(["--samples", "3", "--confirm-top", "2", "--weights", "none", "--epochs", "1",
                               "--storage", str(tmp_path / "ckpt")])
    settings = opts.new_settings("s", opts.base_config(), {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
                                 str(tmp_path / "ray"))
    assert settings.samples == 3 and settings.confirm == {"top": 2, "folds": 2}
    assert settings.base == TrainConfig(weights="none", epochs=1).to_dict()
    assert settings.storage == str((tmp_path / "ckpt").resolve())
    assert settings.baseline == {"lr": TrainConfig().lr} and settings.baseline_note == ""  # the book's lr is inside the range


def test_merge_on_resume_takes_where_trials_run_and_refuses_what_they_compute(capsys):
    settings = StudyOptions.parse(["--weights", "none"]).new_settings("s", TrainConfig(weights="none"), {"lr": {
        "type": "float", "low": 1e-4, "high": 1e-1, "log": True}}, "/tmp/ray")
    StudyOptions.parse(["--resume", "--name", "s", "--max-concurrent", "3", "--samples", "40"]).merge_into(settings)
    assert settings.max_concurrent == 3 and settings.samples == 40
    out = capsys.readouterr().out
    assert "--max-concurrent 3 from now on" in out and "the study grows from 32 trial(s)" in out
    with pytest.raises(UserError, match="--epochs cannot change when resuming"):
        StudyOptions.parse(["--resume", "--name", "s", "--epochs", "9"]).merge_into(settings)
    StudyOptions.parse(["--resume", "--name", "s", "--epochs", "5"]).merge_into(settings)  # the same value: no change
