"""``python -m bench --predict``: how fast a shipped model classifies photos, decoding included, beside its bare forward pass.

For each device (cpu, and cuda where there is one) and image size, on the same photos (``--predict-images`` of the
data folder, decoded once to find them):

- **forward**: ``trainable.predict.probabilities`` on images already decoded in memory (the model alone: the crop,
  normalisation, the forward pass at the evaluation's batch size and precision, the softmax);
- **predict**: what ``python -m study.predict`` does per chunk of photos: decode the files (PIL, threads) and then
  the forward pass, one chunk after the other.

Each figure is images per second, the best of ``--repeats`` windows; the share of the predict path's time spent
decoding says which limits it (on a GPU the decoding, not the model, should).
"""

from __future__ import annotations

import time
from pathlib import Path

from trainable import TrainConfig


def run_predict(data_dir: Path, sizes: list[int], devices: list[str], images: int, repeats: int, log=print) -> list[dict]:
    import torch

    from trainable.data import stored_size
    from trainable.model import build_model
    from trainable.predict import decode_files, find_images, probabilities

    files = (find_images(data_dir / "test") + find_images(data_dir / "train"))[:images] if (data_dir / "test").is_dir() else find_images(data_dir)[:images]
    out = []
    for device in devices:
        for size in sizes:
            cfg = TrainConfig(image_size=size, device=device)
            model = build_model("none", 2).eval()
            decoded = decode_files(files, stored_size(size))
            probabilities([model], decoded.images[:8], cfg)  # warm-up: the first call pays for set-up
            forward, full, decode = [], [], []
            for _ in range(repeats):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                probabilities([model], decoded.images, cfg)
                forward.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                again = decode_files(files, stored_size(size))
                t1 = time.perf_counter()
                probabilities([model], again.images, cfg)
                full.append(time.perf_counter() - t0)
                decode.append(t1 - t0)
            n = len(decoded.paths)
            best = min(range(repeats), key=lambda i: full[i])
            result = {"device": device, "image_size": size, "images": n, "forward_images_per_s": round(n / min(forward), 1),
                      "predict_images_per_s": round(n / full[best], 1), "decode_share": round(decode[best] / full[best], 3)}
            log(f"{device}, {size} px, {n} photos: forward {result['forward_images_per_s']:.0f} img/s; predict with decoding "
                f"{result['predict_images_per_s']:.0f} img/s, {100 * result['decode_share']:.0f}% of it decoding")
            out.append(result)
    return out
