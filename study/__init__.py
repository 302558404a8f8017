"""The hyperparameter study: ``python -m study.run``, ``study.analyze``, ``study.rerun``; and ``from study import
load_study`` for notebooks (``study.api``). docs/design.md maps its modules."""


def __getattr__(name: str):
    if name in ("load_study", "Study"):  # loaded on first use: the command lines do not need pandas for it
        from study import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
