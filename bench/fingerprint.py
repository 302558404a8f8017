"""``python -m bench --fingerprint``: what checking a study's data and weights costs on every resume and rerun.

Makes ``--fingerprint-images`` small files in the book's layout (train/test x two classes) in a temporary
folder, times ``trainable.fingerprint.data_fingerprint`` on them (a first pass and a repeat), and times the
weights file's content digest on a file of ResNet18's size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from trainable.fingerprint import data_fingerprint, weights_fingerprint

RESNET18_BYTES = 44_995_275  # the size of a ResNet18 state dict


def run_fingerprint(images: int, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-fingerprint-") as tmp:
        root = Path(tmp)
        per_folder = images // 4
        t0 = time.perf_counter()
        for split in ("train", "test"):
            for name in ("a", "b"):
                folder = root / split / name
                folder.mkdir(parents=True)
                for i in range(per_folder):
                    (folder / f"{i:06d}.jpg").write_bytes(b"x" * (i % 97))
        made = time.perf_counter() - t0
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            data_fingerprint(root)
            times.append(time.perf_counter() - t0)
        weights = root / "w.pt"
        weights.write_bytes(b"\0" * RESNET18_BYTES)
        t0 = time.perf_counter()
        weights_fingerprint(weights)
        digest = time.perf_counter() - t0
    result = {"images": per_folder * 4, "make_s": round(made, 2), "data_first_s": round(times[0], 3),
              "data_repeat_s": round(times[1], 3), "weights_bytes": RESNET18_BYTES, "weights_s": round(digest, 3)}
    log(f"fingerprint of {result['images']:,} images: {result['data_first_s']:.2f}s (repeat {result['data_repeat_s']:.2f}s); "
        f"weights digest of {RESNET18_BYTES / 1e6:.0f} MB: {result['weights_s']:.2f}s")
    return result
