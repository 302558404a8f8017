"""What a study found, from its folder: reading it, the answer, importance, where the best trials lie, the report, the
comparison of studies, and retraining on the test split (docs/design.md)."""
