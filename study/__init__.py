"""The study: Ray Tune runs the trials, Optuna (TPE) proposes them, ASHA stops poor ones early."""
