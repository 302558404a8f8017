"""The study: Ray Tune runs the trials, Optuna (TPE) proposes them, ASHA stops poor ones early."""

import trainable.tv_compat  # noqa: F401  (every process that imports study can import torchvision)
