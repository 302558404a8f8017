"""The study's pipeline, run top to bottom by ``study.stages.study``: the data check, the warm start, the state
reconciled, the trials, the confirmation stage, the summary (docs/design.md)."""
