"""``python -m bench --scale N [N ...]``: a study on a folder of N photos, twice, as a user would run two studies.

For each N it makes a synthetic folder in the book's layout from the real photos (each training photo a random crop of
one of them, re-encoded as JPEG: no two files alike, so nothing is decoded twice by accident; the test split copied),
then runs ``python -m study.run`` on it twice (``--scale-samples`` one-epoch trials, four at a time, no confirmation
stage) with a decoded-image cache of its own, and reports:

- the first study's **decoding rate** (photos per second, every CPU) and the second's **decoding time**, which the
  cache should make a small share of the first's (inside the study, where it overlaps Ray's start, and alone);
- the second study's **time to its first trial** (from its process's start);
- the **peak host memory** of the driver and of all Ray's processes (their proportional set sizes, PSS, summed: a page
  the processes share, such as the memory-mapped images, counts once), and how much it grows with N against the
  decoded images' own growth (one copy per machine: about 1x);
- the trials' **training images/s** (median over trials), and on a GPU its **utilisation** and each worker's device
  memory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.cells import ROOT

SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}, "freeze_depth": {"type": "int", "low": 3, "high": 5},
         "augment": {"type": "categorical", "choices": ["flip", "d2l"]}}  # quick trials: the data's path is what is measured


def make_folder(source: Path, target: Path, n: int, test_per_class: int = 100, seed: int = 0, log=print) -> Path:
    """``target``: ``train/<class>/`` with n photos in all (half a class each), each a random crop of a real photo
    resized to at most 256 px and saved as JPEG; ``test/<class>/`` copies of the real test photos. Made once per n."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from trainable.data import available_cpus, check_layout
    from trainable.predict import find_images

    marker = target / ".made.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"n": n, "seed": seed, "source": str(source)}:
        return target
    shutil.rmtree(target, ignore_errors=True)
    _, classes = check_layout(source, need_test=True)
    rng = np.random.default_rng(seed)
    jobs = []
    for label, name in enumerate(classes):
        photos = find_images(source / "train" / name)
        count = n // len(classes) + (1 if label < n % len(classes) else 0)
        for i in range(count):
            jobs.append((photos[i % len(photos)], target / "train" / name / f"{i:06d}.jpg", rng.uniform(0.4, 1.0), rng.uniform(0.75, 1.33),
                         rng.uniform(0, 1), rng.uniform(0, 1)))
        (target / "train" / name).mkdir(parents=True, exist_ok=True)
        (target / "test" / name).mkdir(parents=True, exist_ok=True)
        for photo in find_images(source / "test" / name)[:test_per_class]:
            shutil.copy(photo, target / "test" / name / photo.name)

    def crop(job) -> None:
        photo, out, area, aspect, fx, fy = job
        with Image.open(photo) as img:
            img = img.convert("RGB")
            w, h = img.size
            cw = min(w, max(8, int(round(math.sqrt(area * w * h * aspect)))))
            ch = min(h, max(8, int(round(math.sqrt(area * w * h / aspect)))))
            left, top = int(fx * (w - cw)), int(fy * (h - ch))
            piece = img.crop((left, top, left + cw, top + ch))
            piece.thumbnail((256, 256))
            piece.save(out, "JPEG", quality=90)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=available_cpus()) as pool:
        list(pool.map(crop, jobs))
    marker.write_text(json.dumps({"n": n, "seed": seed, "source": str(source)}))
    log(f"made {n:,} training photos (random crops of {source}, re-encoded as JPEG) in {time.perf_counter() - started:.0f}s: {target}")
    return target


class MemorySampler(threading.Thread):
    """Every ``interval`` s, the PSS of the process ``pid`` and the summed PSS of Ray's processes (``ray::*``, the raylet,
    the GCS, the object store's): the peaks of both."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.driver_peak = self.ray_peak = self.total_peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._stop_event.is_set():
            driver = ray_total = 0
            for proc in psutil.process_iter(["pid", "cmdline", "name"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    if proc.info["pid"] == self.pid:
                        driver = proc.memory_full_info().pss
                    elif cmd.startswith("ray::") or "raylet" in cmd or "gcs_server" in cmd or "/ray/" in cmd:
                        ray_total += proc.memory_full_info().pss
                except (psutil.Error, OSError):
                    continue
            self.driver_peak = max(self.driver_peak, driver)
            self.ray_peak = max(self.ray_peak, ray_total)
            self.total_peak = max(self.total_peak, driver + ray_total)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def _study(folder: Path, results: Path, name: str, image_size: int, samples: int, space: Path, env: dict, log) -> dict:
    """One ``python -m study.run`` (``space``: the search space's file): its wall time, its memory peaks, when its first
    trial started (from its launch)."""
    from bench.scaling import run_study_timed
    from bench.share import GpuSampler

    results.mkdir(parents=True, exist_ok=True)
    argv = ["--samples", str(samples), "--data-dir", str(folder), "--weights", "none", "--image-size", str(image_size), "--epochs", "1",
            "--batch-size", "64", "--results-dir", str(results), "--name", name, "--no-confirm", "--space", str(space),
            "--cpus-per-trial", "0.5", "--gpus-per-trial", "0.25"]
    log(f"python -m study.run {' '.join(argv)}")
    gpu = GpuSampler()
    gpu.start()
    memory = None

    def sample_memory(proc) -> None:  # the study's process, from its start
        nonlocal memory
        memory = MemorySampler(proc.pid)
        memory.start()

    lines: list[str] = []
    launched = time.time()
    try:
        run_study_timed(argv, log, env=env, on_start=sample_memory, lines=lines, what=f"on {folder}")
        ended = time.time()
    finally:
        if memory is not None:
            memory.stop()
        gpu.stop()
    from study.core.folder import StudyFolder
    from study.findings.reading import read_study

    study = read_study(StudyFolder(results / name))
    run = study.settings.runs[-1]
    return {"wall_s": round(ended - launched, 2), "timings": run["timings"], "first_trial_s": round(float(study.trials["started_at"].min()) - launched, 2),
            "driver_peak_mb": round(memory.driver_peak / 2**20), "ray_peak_mb": round(memory.ray_peak / 2**20),
            "total_peak_mb": round(memory.total_peak / 2**20),
            "train_images_per_s": round(float(study.trials["images_per_s"].median()), 1),
            "device_mb_per_worker": _device_mb(study.epochs), **gpu.summary(launched, ended),
            "decode_line": next((line for line in lines if line.startswith(("decoded ", "read "))), "")}


def _device_mb(epochs) -> float | None:
    if "device_mb" not in epochs or not epochs["device_mb"].notna().any():
        return None
    return round(float(epochs["device_mb"].max()), 1)


def run_scale(source: Path, ns: list[int], image_size: int, samples: int, work: Path | None, log=print) -> list[dict]:
    from trainable.data import stored_size

    base = Path(work) if work else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    out = []
    for n in sorted(ns):
        folder = make_folder(source, base / f"photos-{n}", n, log=log)
        with tempfile.TemporaryDirectory(prefix="bench-scale-run-") as tmp:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOTDOG_TUNE_CACHE": str(Path(tmp) / "cache")}
            space = Path(tmp) / "space.json"
            space.write_text(json.dumps(SPACE))
            first = _study(folder, Path(tmp) / "r", "first", image_size, samples, space, env, log)
            second = _study(folder, Path(tmp) / "r", "second", image_size, samples, space, env, log)
            alone = _read_alone(folder, image_size, env)
        size = stored_size(image_size)
        data_mb = n * 3 * size * size / 2**20
        decode_first, decode_second = float(first["timings"]["decode_s"]), float(second["timings"]["decode_s"])
        row = {"n": n, "image_size": image_size, "data_mb": round(data_mb, 1), "decode_s": decode_first,
               "decode_images_per_s": round(n / decode_first, 1) if decode_first else None, "second_decode_s": decode_second,
               "second_decode_share": round(decode_second / decode_first, 4) if decode_first else None,
               "read_alone_s": alone, "read_alone_share": round(alone / decode_first, 4) if decode_first else None,
               "second_first_trial_s": second["first_trial_s"], "first": first, "second": second}
        out.append(row)
        log(f"N={n:,}: decoded at {row['decode_images_per_s']} photos/s ({decode_first:.1f}s); the second study read them in "
            f"{decode_second:.2f}s while Ray started ({100 * (row['second_decode_share'] or 0):.1f}% of the first's; alone "
            f"{alone:.2f}s, {100 * (row['read_alone_share'] or 0):.1f}%) and started its first trial "
            f"{second['first_trial_s']:.1f}s after launch; peak memory: driver {first['driver_peak_mb']} MB, Ray's processes "
            f"{first['ray_peak_mb']} MB (the images: {data_mb:.0f} MB); {first['train_images_per_s']} training images/s a trial")
    if len(out) > 1:  # memory growth against the images' growth: copies of the data per machine
        small = out[0]
        for row in out[1:]:
            grown = row["first"]["total_peak_mb"] - small["first"]["total_peak_mb"]
            row["memory_growth_per_data_growth"] = round(grown / max(row["data_mb"] - small["data_mb"], 1e-9), 2)
            log(f"N={small['n']:,} -> {row['n']:,}: the first study's peak host memory (driver and Ray's processes at once) grew "
                f"{grown} MB for {row['data_mb'] - small['data_mb']:.0f} MB more decoded images: "
                f"{row['memory_growth_per_data_growth']:.2f}x, with {samples} trials at once")
    return out


def _read_alone(folder: Path, image_size: int, env: dict) -> float:
    """The cache hit by itself: a fresh process's ``prepare_data`` on the folder the studies used (the studies' own
    figure overlaps Ray's start, which shares the CPUs with it)."""
    code = ("import time; from trainable.data import prepare_data; t = time.perf_counter(); "
            f"prepare_data({str(folder)!r}, {image_size}, 0.0, min_per_class=2); print(time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return round(float(proc.stdout.strip().splitlines()[-1]), 3)
