"""What runs while Ray Tune runs a study's trials: the Ray session, the trials' resources, the Tuner, the trial
adapter, the searcher and scheduler, the callbacks, the confirmation stage and the time limits. Nothing here is
an entry point; ``study.run`` drives it (docs/design.md)."""
