"""The study's model, which every layer above may use: its vocabulary, values, settings (what was asked, what was
resolved), comparability, folder, tables, search space, decision rule, timing, data check and Optuna store. No Ray here,
and Optuna only where a module needs it (docs/design.md)."""
