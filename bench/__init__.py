"""Measurements of the product, run from a checkout: ``python -m bench`` (speed, scaling, the input pipeline, GPU
sharing, the selection Monte Carlo, the whole used-by flow), ``python -m bench.seed_noise`` (how noisy one run's
validation accuracy is) and ``bench/gpu_check.sh`` (every GPU figure in one script).

Not installed with the product: it may import ``study`` and ``trainable``; they never import it.
"""
