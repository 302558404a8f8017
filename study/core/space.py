"""The search space, in one place: shown by ``--show-space``, replaceable with ``--space FILE`` (JSON).

Each entry names a TrainConfig field and its distribution::

    {"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": true},
     "freeze_depth": {"type": "int", "low": 0, "high": 5},
     "augment": {"type": "categorical", "choices": ["d2l", "trivialaugment"]}}
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna

from trainable import AUGMENT_POLICIES, TrainConfig, UserError
from trainable.config import FREEZE_DEPTHS, HYPERPARAMETERS

DEFAULT_SPACE: dict[str, dict] = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},  # backbone lr (mean loss)
    "head_lr_mult": {"type": "float", "low": 1.0, "high": 100.0, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "freeze_depth": {"type": "int", "low": FREEZE_DEPTHS[0], "high": FREEZE_DEPTHS[-1]},  # 0 = all trains, 5 = head only
    "augment": {"type": "categorical", "choices": list(AUGMENT_POLICIES)},
}

_BOOK = TrainConfig()
BASELINE = {p: getattr(_BOOK, p) for p in HYPERPARAMETERS}  # the book's recipe, evaluated first (trial 0) wherever it lies in the space
SEARCHABLE = set(HYPERPARAMETERS)


def to_distributions(space: dict[str, dict]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Validate a space and turn it into Optuna distributions; UserError on anything malformed."""
    if not isinstance(space, dict) or not space:
        raise UserError("the search space must be a non-empty JSON object of {parameter: distribution}")
    out = {}
    for name, spec in space.items():
        if name not in SEARCHABLE:
            raise UserError(f"search space parameter {name!r} is not searchable: use some of {sorted(SEARCHABLE)}")
        try:
            kind = spec["type"]
            if kind == "float":
                out[name] = optuna.distributions.FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
            elif kind == "int":
                low, high = _whole(spec["low"], "low"), _whole(spec["high"], "high")
                out[name] = optuna.distributions.IntDistribution(low, high, log=bool(spec.get("log", False)))
            elif kind == "categorical":
                out[name] = optuna.distributions.CategoricalDistribution(list(spec["choices"]))
            else:
                raise ValueError(f"unknown type {kind!r} (use float, int or categorical)")
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"search space entry {name!r} is malformed ({exc}): see --show-space for the format") from None
    if "augment" in out:
        unknown = set(out["augment"].choices) - set(AUGMENT_POLICIES)
        if unknown:
            raise UserError(f"search space: unknown augmentation policies {sorted(unknown)}: use {list(AUGMENT_POLICIES)}")
    _check_trainable(out)
    return out


def _whole(bound, which: str) -> int:
    """An int entry's bound: a whole number (0.5 would be truncated by Optuna to what study.json does not say)."""
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not float(bound).is_integer():
        raise ValueError(f"its {which} bound {bound!r} is not a whole number, as an int entry needs")
    return int(bound)


def _check_trainable(dists: dict[str, optuna.distributions.BaseDistribution]) -> None:
    """Every value a space can propose must be one a trial can train with (``TrainConfig.validate``, the one home of
    the bounds): checked before the first trial, not by failing trials one by one."""
    for name, dist in dists.items():
        whole = isinstance(getattr(_BOOK, name), int)
        if whole and isinstance(dist, optuna.distributions.FloatDistribution):
            raise UserError(f"search space entry {name!r} takes whole numbers: give it \"type\": \"int\" (see --show-space)")
        ends = list(dist.choices) if isinstance(dist, optuna.distributions.CategoricalDistribution) else [dist.low, dist.high]
        for value in ends:
            try:
                _BOOK.replace(**{name: value}).validate()
            except (UserError, TypeError) as exc:
                raise UserError(f"search space entry {name!r} reaches {value!r}, which no trial can train with ({exc}): "
                                "narrow it in the --space file") from None


def load_space(path: str | None) -> dict[str, dict]:
    if path is None:
        return DEFAULT_SPACE
    try:
        space = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read search space file {path}: {exc}") from None
    to_distributions(space)
    return space


def baseline_params(space: dict[str, dict]) -> tuple[dict | None, str]:
    """The book's recipe restricted to the searched parameters, and, where it lies outside the space, None
    and a line saying which of its values falls outside."""
    dists = to_distributions(space)
    params = {name: BASELINE[name] for name in dists}
    outside = [name for name, value in params.items() if not _contains(dists[name], value)]
    if outside:
        described = ", ".join(f"{name} {BASELINE[name]:g}" if isinstance(BASELINE[name], float) else f"{name} {BASELINE[name]!r}" for name in outside)
        return None, (f"the book's recipe is not in the search space ({described} outside it): "
                      "the study runs without a baseline; widen the space (--space) to compare with it")
    return params, ""


def outside(space: dict[str, dict], params: dict) -> list[str]:
    """The searched parameters whose value in ``params`` the space could not propose (or that ``params`` lacks)."""
    dists = to_distributions(space)
    return [name for name, dist in dists.items() if name not in params or not _contains(dist, params[name])]


def _contains(dist: optuna.distributions.BaseDistribution, value) -> bool:
    """Whether ``dist`` can propose ``value`` (Optuna 5.0 has no public test: ``_contains`` is its own)."""
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):  # e.g. a categorical without the value
        return False


def show_space(space: dict[str, dict]) -> str:
    return json.dumps(space, indent=2)
