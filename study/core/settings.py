"""A study's settings (``study.json``), in two parts with one rule each.

- **What the user asked for** (``StudyRequest``): frozen once parsed. A new study takes it as given; only
  ``--resume`` asks anew (``resume``: the options that may change are taken and said, the rest refused, by the one
  rule of ``study.core.comparability``) and ``--retry-timed-out`` grows ``samples`` (``grow``). Both live here: no
  other module assigns ``settings.asked``.
- **What the study resolved and recorded**: each field written by one module alone (``WRITERS``; the layering
  test checks it on the source).

``study.json`` keeps both flat, as earlier versions wrote it; ``from_dict`` reads those too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field, fields

from trainable import TrainConfig, UserError

from study.core.decision import CONFIRM_FOLDS, CONFIRM_TOP
from study.core.values import fmt

GPUS_PER_TRIAL = 0.25  # --gpus-per-trial's default: four trials share a GPU


class Frozen(dict):
    """A dict that refuses changes (what the user asked for); JSON and pickle see a plain dict."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("what the user asked for is frozen: change it with --resume (study.core.settings.resume)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _refuse

    def __reduce__(self):
        return Frozen, (dict(self),)

    def __deepcopy__(self, memo):
        return self  # immutable: a copy is itself


def freeze(value):
    """Dicts (at any depth) as ``Frozen``; anything else as it is."""
    if isinstance(value, dict):
        return Frozen({k: freeze(v) for k, v in value.items()})
    return value


def thaw(value):
    """A plain copy (dicts and lists at any depth), for JSON and for whoever builds a changed request."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class StudyRequest:
    """What the user asked for: every option that shapes the study, its trials and where they run."""

    name: str
    base: dict  # the TrainConfig fields every trial trains with (data, weights, epochs, image size, seed, ...)
    space: dict  # the search space (study.core.space)
    samples: int = 32  # trials
    seed: int = 0  # the TPE sampler's and every trial's training seed
    gpus_requested: float = GPUS_PER_TRIAL  # --gpus-per-trial
    cpus_requested: float | None = None  # --cpus-per-trial (None: the default for the machine)
    max_concurrent: int | None = None
    grace_epochs: int = 1  # ASHA
    reduction_factor: float = 3.0
    fresh_actors: bool = False
    address: str | None = None  # an existing Ray cluster
    storage: str | None = None  # where Ray keeps checkpoints (None: <study>/ray)
    trackers: dict = field(default_factory=dict)  # {"tensorboard": bool, "mlflow": uri}
    confirm: dict = field(default_factory=lambda: {"top": CONFIRM_TOP, "folds": CONFIRM_FOLDS})  # {} when off
    trial_timeout: float | None = None  # seconds per trial; None: the automatic stall limit; 0: none
    time_budget: float | None = None  # seconds of the study's wall time, all driver runs together
    test_split: bool = True  # False: --no-test-split (study.rerun cannot measure test accuracy)
    cache: bool = True  # keep the decoded images for every later run (trainable.decoded); False: --no-cache

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, freeze(getattr(self, f.name)))

    def replace(self, **changes) -> "StudyRequest":
        return dataclasses.replace(self, **{k: thaw(v) for k, v in changes.items()})

    def to_dict(self) -> dict:
        return {f.name: thaw(getattr(self, f.name)) for f in fields(self)}

    def check(self) -> "StudyRequest":
        """Every field's own bounds, in one table: the first one broken is one UserError line (named by its option)."""
        c = self.confirm
        checks = [
            (self.samples >= 1, f"--samples {self.samples} must be 1 or more"),
            (self.gpus_requested >= 0, f"--gpus-per-trial {fmt(self.gpus_requested)} must be 0 or more"),
            (self.gpus_requested <= 1 or float(self.gpus_requested).is_integer(),
             f"--gpus-per-trial {fmt(self.gpus_requested)}: above 1 it must be a whole number"),
            (self.cpus_requested is None or self.cpus_requested > 0, f"--cpus-per-trial {fmt(self.cpus_requested)} must be positive"),
            (self.max_concurrent is None or self.max_concurrent >= 1, f"--max-concurrent {self.max_concurrent} must be 1 or more"),
            (self.grace_epochs >= 1, f"--grace-epochs {self.grace_epochs} must be 1 or more"),
            (self.reduction_factor > 1, f"--reduction-factor {fmt(self.reduction_factor)} must be above 1"),
            (not c or c.get("top", 1) >= 1, f"--confirm-top {c.get('top')} must be 1 or more (--no-confirm skips the confirmation stage)"),
            (not c or c.get("folds", 2) >= 2, f"--confirm-folds {c.get('folds')} must be 2 or more: cross-validation needs a part to "
                                              "train on and a part to judge (--no-confirm skips the confirmation stage)"),
            (self.trial_timeout is None or self.trial_timeout >= 0, f"--trial-timeout {fmt(self.trial_timeout)} must be 0 (no limit) or more"),
            (self.time_budget is None or self.time_budget > 0, f"--time-budget {fmt(self.time_budget)} must be above 0"),
            (bool(self.name.strip()) and "/" not in self.name and self.name not in (".", ".."), f"--name {self.name!r} must be a plain folder name"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(dict(self.base))


ASKED = tuple(f.name for f in fields(StudyRequest))

# Each resolved field and the one module that writes it (tests/test_structure.py checks the source against this).
WRITERS = {
    "created": "study.core.settings", "experiment_path": "study.core.settings", "baseline": "study.core.settings",
    "baseline_note": "study.core.settings",
    "gpus_granted": "study.stages.study", "cpus_granted": "study.stages.study", "val_images": "study.stages.study",
    "runs": "study.stages.study",
    "data_fingerprint": "study.core.datacheck", "weights_fingerprint": "study.core.datacheck", "data_changes": "study.core.datacheck",
    "warm_start": "study.stages.warm_start",
    "confirm_candidates": "study.stages.confirmation",
    "summary": "study.stages.summary",
}


@dataclass
class StudySettings:
    """``study.json``: what the user asked for (``asked``, frozen) and what the study resolved (each field's writer in
    ``WRITERS``). What was asked reads as ``settings.<field>`` too (``settings.base``, ``settings.samples``), never
    written that way."""

    asked: StudyRequest
    # --- written once, when the study is created (``create``) ----------------------------------------------------
    created: str = ""
    experiment_path: str = ""  # where Ray Tune keeps the trials' folders and checkpoints; each driver run is run-<k> in it
    baseline: dict | None = None  # the book's recipe as searched (None: it lies outside the space)
    baseline_note: str = ""  # why there is no baseline
    # --- each driver run (study.stages.study) ---------------------------------------------------------------------
    gpus_granted: float = 0.0  # the GPU share each trial got (0 where the cluster had no GPU)
    cpus_granted: float = 1.0  # the CPUs each trial got
    val_images: int | None = None  # validation images each trial scores on (the same split for all)
    runs: list = field(default_factory=list)  # one entry per driver run: its timings and outcome
    # --- the data check (study.core.datacheck) ----------------------------------------------------------------------
    data_fingerprint: dict = field(default_factory=dict)  # trainable.fingerprint of the data as the study started (or last accepted)
    weights_fingerprint: dict | None = None  # of a weights file given by path
    data_changes: list = field(default_factory=list)  # changes gone on with (--accept-data-change): when, by whom, what
    # --- the stages -------------------------------------------------------------------------------------------------
    warm_start: dict = field(default_factory=dict)  # --warm-start: the study it began from and what it carried
    confirm_candidates: list = field(default_factory=list)  # the configurations the confirmation stage judges
    summary: dict = field(default_factory=dict)  # the closing summary, the confirmation's decision in it

    @classmethod
    def create(cls, request: StudyRequest, experiment_path: str) -> "StudySettings":
        """A new study's settings: what was asked, checked, and what follows from it (the book's recipe in its space)."""
        from study.core.space import baseline_params

        request.check()
        baseline, note = baseline_params(dict(request.space))
        return cls(asked=request, created=dt.datetime.now().isoformat(timespec="seconds"), experiment_path=experiment_path,
                   baseline=baseline, baseline_note=note)

    def training_images(self) -> int | None:
        """Every training image (its validation split included): what the confirmation stage judges each configuration on."""
        for run in reversed(self.runs):
            if run.get("train_images") is not None and run.get("val_images") is not None:
                return int(run["train_images"]) + int(run["val_images"])
        return None

    def finished(self) -> bool:
        """Whether its last driver run ended with every trial and the confirmation stage done."""
        return bool(self.runs) and self.runs[-1].get("outcome") == "finished"

    def to_dict(self) -> dict:
        resolved = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "asked"}
        return {**self.asked.to_dict(), **resolved}

    @classmethod
    def from_dict(cls, values: dict) -> "StudySettings":
        renamed = {"gpus_per_trial": "gpus_granted", "cpus_per_trial": "cpus_granted"}  # a study.json from before the names said which
        values = {renamed.get(k, k): v for k, v in values.items()}
        confirm = dict(values.get("confirm") or {})
        if "candidates" in confirm:  # earlier versions kept the stage's candidates inside what was asked
            values.setdefault("confirm_candidates", confirm.pop("candidates"))
            values["confirm"] = confirm
        asked = StudyRequest(**{k: values[k] for k in ASKED if k in values})
        known = {f.name for f in fields(cls)} - {"asked"}
        return cls(asked=asked, **{k: v for k, v in values.items() if k in known})


def _read_only(name: str) -> property:
    return property(lambda self: getattr(self.asked, name), doc=f"what the user asked for: ``asked.{name}``")


for _name in ASKED:
    setattr(StudySettings, _name, _read_only(_name))


# --- asking anew: --resume -------------------------------------------------------------------------------
# What --resume may ask for anew (said when it does); anything that makes the study another is refused.
ASKED_ANEW = {"gpus_requested": "--gpus-per-trial", "cpus_requested": "--cpus-per-trial", "max_concurrent": "--max-concurrent",
              "fresh_actors": "--fresh-actors", "address": "--address", "trial_timeout": "--trial-timeout",
              "time_budget": "--time-budget", "cache": "--no-cache"}


def resume(settings: StudySettings, anew: StudyRequest) -> list[str]:
    """``--resume``: the study goes on with what it was asked for, and with what ``anew`` (its request with the options
    given again) asks differently where that may change: where and how many trials run, ``--samples``, the trackers,
    the confirmation stage. A change that would make the study another (``study.core.comparability``) is refused in
    one line. Returns the lines that say what changed."""
    from study.core.comparability import request_differences

    asked = settings.asked
    for difference in request_differences(asked, anew):
        flag = difference.flag()
        raise UserError(f"{flag} cannot change when resuming: study {asked.name!r} runs with {difference.there!r}; "
                        f"leave {flag} out, or start a new study under another --name")
    said = []
    for key, flag in ASKED_ANEW.items():
        if getattr(anew, key) != getattr(asked, key):
            said.append(f"{flag}: the images are decoded in memory from now on" if key == "cache" else
                        f"{flag} {getattr(anew, key)} from now on (the study was started with {getattr(asked, key)})")
    if anew.trackers != asked.trackers:
        said.append(f"trackers from now on: {thaw(anew.trackers)}")
    if anew.confirm != asked.confirm:
        stage = f"top {anew.confirm['top']}, {anew.confirm['folds']} folds" if anew.confirm else "off"
        said.append(f"confirmation stage from now on: {stage}")
    if anew.samples != asked.samples:
        said.append(f"--samples {anew.samples}: the study grows from {asked.samples} trial(s)" if anew.samples > asked.samples
                    else f"--samples {anew.samples}: fewer than the study's {asked.samples}")
    settings.asked = anew.check()
    return said


def grow(settings: StudySettings, extra: int) -> None:
    """``--retry-timed-out``: the study grows by the trials run again (asked for by that option)."""
    settings.asked = settings.asked.replace(samples=settings.asked.samples + int(extra))
