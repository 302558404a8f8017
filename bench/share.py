"""``python -m bench --trials-per-gpu 1 2 4 8``: N training processes sharing one GPU, as a study's trials do.

For each N it starts N processes (``python -m bench --gpu-worker``, a hidden option), each capped at 1/N
of the GPU's memory (``torch.cuda.set_per_process_memory_fraction``, as a study trial with
``--gpus-per-trial 1/N``) and with CPUs/N torch threads. Each decodes the photos, draws its own
``--epoch-images`` training images (and a validation share), warms up on two batches, says it is ready and
waits; when all are, they start together and each runs real epochs of ``trainable.loop.train`` (validation
included) until ``--seconds`` have passed, finishing the epoch it is in.

Reported per N: the aggregate training images/s (the sum of each process's images over its own epochs'
span, validation included; the train-only rate beside it), its ratio to the bare step ``a`` of one process
measured just before in the same run, and the GPU's utilisation sampled every 0.5 s with ``nvidia-smi``
(mean and 10th percentile over the samples taken while every process was in its epochs; None where
nvidia-smi is absent). With ``--device cpu`` the same runs on the CPU (utilisation None): a debug mode
that tests the plumbing where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from trainable import TrainConfig, UserError
from trainable.data import PreparedData, check_layout
from trainable.files import write_atomic
from trainable.data import available_cpus
from trainable.loop import data_for, resolve_device

from bench.cells import ROOT, Limit, _free_device, bench_subset

READY_TIMEOUT_S = 600  # imports, decoding and a warm-up epoch, N processes at once
GO_TIMEOUT_S = 900


class WindowOver(Exception):
    """Raised from ``on_epoch`` to end a worker's ``train`` when its time is up."""


def check_share_device(args: argparse.Namespace) -> None:
    import torch

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--trials-per-gpu measures processes sharing a CUDA GPU and torch {torch.__version__} sees none here "
                        "(--device cpu runs its plumbing on the CPU, for tests)")
    resolve_device(args.device)


def share_config(args: argparse.Namespace, data_dir: Path | str, threads: int = 0, seed: int = 0) -> TrainConfig:
    return TrainConfig(
        data_dir=str(data_dir), image_size=args.sizes[0], weights="none", freeze_depth=args.freeze[0], batch_size=args.batch_size,
        augment="d2l", device=args.device, precision=args.precision, threads=threads, val_fraction=0.1, seed=seed, epochs=1,
    ).validate()


# --- the GPU's utilisation -----------------------------------------------------------------------------
class GpuSampler(threading.Thread):
    """``nvidia-smi``'s utilisation.gpu (%) and memory.used (MiB) every ``interval`` s: (time, util, MiB) samples."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval = interval
        self.command = shutil.which("nvidia-smi")
        self.samples: list[tuple[float, float, float]] = []
        self._stop_event = threading.Event()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        self.select = ["-i", visible] if visible else ["-i", "0"]  # the GPU torch calls cuda:0

    @property
    def available(self) -> bool:
        return self.command is not None

    def run(self) -> None:
        if not self.available:
            return
        cmd = [self.command, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", *self.select]
        while not self._stop_event.is_set():
            t = time.time()
            try:
                line = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()[0]
                util, mem = (float(v) for v in line.split(",")[:2])
                self.samples.append((t, util, mem))
            except (OSError, subprocess.SubprocessError, IndexError, ValueError):
                pass
            self._stop_event.wait(max(0.0, self.interval - (time.time() - t)))

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=10)

    def summary(self, start: float, end: float) -> dict:
        """Mean and 10th percentile of the utilisation, most memory used, over the samples in [start, end]."""
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not self.available or not inside:
            return {"gpu_util_mean": None, "gpu_util_p10": None, "gpu_mem_used_max_mib": None, "gpu_samples": len(inside)}
        util = np.array([u for u, _ in inside])
        return {"gpu_util_mean": round(float(util.mean()), 1), "gpu_util_p10": round(float(np.percentile(util, 10)), 1),
                "gpu_mem_used_max_mib": round(max(m for _, m in inside)), "gpu_samples": len(inside)}


# --- one worker process ----------------------------------------------------------------------------------
def _write_json(path: Path, value: dict) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(value)))


def _wait_for(path: Path, timeout: float) -> bool:
    end = time.time() + timeout
    while not path.exists():
        if time.time() > end:
            return False
        time.sleep(0.02)
    return True


def gpu_worker(args: argparse.Namespace) -> int:
    """One of N processes: decode, warm up, wait for the others, train epochs for ``--seconds``, write figures."""
    import torch

    from trainable.loop import train

    folder, index = Path(args.worker_dir), args.worker_index
    device = resolve_device(args.device)
    if device.type == "cuda":  # (it wants the device's index: torch.device("cuda") alone is refused)
        gpu = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(1.0 / args.worker_count, gpu)
    cfg = share_config(args, args.data_dir, threads=args.threads, seed=index)
    data = data_for(cfg)
    subset = bench_subset(data, args.epoch_images, cfg.val_fraction, seed=index)
    # warm-up on every batch shape an epoch meets (a full batch, the epoch's short last one, the validation batch):
    # kernels, cuDNN's choice per shape, the allocator
    n_warm = min(len(subset.train), cfg.batch_size + len(subset.train) % cfg.batch_size)
    train(cfg, PreparedData(data.classes, data.stored_size, subset.train.subset(np.arange(n_warm)), subset.val, None, [], data.root))
    (folder / f"ready-{index}").write_text("")
    if not _wait_for(folder / "go", GO_TIMEOUT_S):
        print(f"worker {index}: no start signal in {GO_TIMEOUT_S}s", file=sys.stderr)
        return 3
    go = float((folder / "go").read_text())
    time.sleep(max(0.0, go - time.time()))
    deadline = go + args.seconds
    epochs: list[dict] = []

    def on_epoch(metrics, _save) -> None:
        now = time.time()
        epochs.append({"start": now - metrics.seconds, "end": now, "seconds": metrics.seconds, "train_images_per_s": metrics.images_per_s})
        if now >= deadline:
            raise WindowOver

    try:
        train(cfg.replace(epochs=1_000_000), subset, on_epoch=on_epoch)
    except WindowOver:
        pass
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    _write_json(folder / f"result-{index}.json", {
        "index": index, "go": go, "epochs": epochs, "train_images": len(subset.train), "val_images": len(subset.val) if subset.val is not None else 0,
        "threads": cfg.threads, "peak_memory_mib": round(peak / 2**20) if peak is not None else None,
    })
    return 0


# --- the parent: N workers at once -------------------------------------------------------------------------
def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-600:]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_processes(args: argparse.Namespace, data_dir: Path, n: int, log) -> dict:
    """N workers at once; their figures and the GPU's utilisation, or ``{"n": n, "error": ...}``."""
    threads = args.threads or max(1, available_cpus() // n)
    with tempfile.TemporaryDirectory(prefix="bench-share-") as tmp:
        folder = Path(tmp)
        base = [sys.executable, "-m", "bench", "--gpu-worker", "--worker-dir", str(folder), "--worker-count", str(n),
                "--device", args.device, "--precision", args.precision, "--sizes", str(args.sizes[0]), "--freeze", str(args.freeze[0]),
                "--batch-size", str(args.batch_size), "--seconds", str(args.seconds), "--epoch-images", str(args.epoch_images),
                "--threads", str(threads), "--data-dir", str(data_dir)]
        procs, logs = [], []
        sampler = GpuSampler() if args.device.startswith("cuda") else None
        try:
            for i in range(n):
                logs.append(folder / f"worker-{i}.log")
                with open(logs[-1], "w") as out:
                    procs.append(subprocess.Popen([*base, "--worker-index", str(i)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
            end = time.time() + READY_TIMEOUT_S
            while not all((folder / f"ready-{i}").exists() for i in range(n)):
                failed = [(i, p.returncode) for i, p in enumerate(procs) if p.poll() is not None]
                if failed:
                    i, code = failed[0]
                    return {"n": n, "error": f"worker {i} exited with code {code} before it was ready: {_tail(logs[i])}"}
                if time.time() > end:
                    return {"n": n, "error": f"the workers were not all ready after {READY_TIMEOUT_S}s"}
                time.sleep(0.05)
            if sampler is not None:
                sampler.start()
            go = time.time() + 0.5
            write_atomic(folder / "go", lambda tmp: tmp.write_text(repr(go)))  # a worker never reads half a start time
            for i, proc in enumerate(procs):
                try:
                    code = proc.wait(timeout=max(1.0, go + args.seconds + 600 - time.time()))
                except subprocess.TimeoutExpired:
                    return {"n": n, "error": f"worker {i} was still running {args.seconds + 600:g}s after the start"}
                if code != 0:
                    return {"n": n, "error": f"worker {i} exited with code {code}: {_tail(logs[i])}"}
        finally:
            if sampler is not None:
                sampler.stop()
            _stop(procs)
        results = [json.loads((folder / f"result-{i}.json").read_text()) for i in range(n)]
    per_worker, train_only = [], []
    for r in results:
        images = r["train_images"] * len(r["epochs"])
        span = r["epochs"][-1]["end"] - r["epochs"][0]["start"]
        per_worker.append(images / span)
        train_only.append(float(np.median([e["train_images_per_s"] for e in r["epochs"]])))
    all_running = (max(r["epochs"][0]["start"] for r in results), min(r["epochs"][-1]["end"] for r in results))
    out = {
        "n": n, "processes": n, "threads_per_process": threads, "memory_fraction": round(1.0 / n, 4) if sampler is not None else None,
        "images_per_s": round(sum(per_worker), 1), "train_images_per_s": round(sum(train_only), 1),
        "per_process_images_per_s": [round(v, 1) for v in per_worker], "epochs_per_process": [len(r["epochs"]) for r in results],
        "all_running_s": round(max(0.0, all_running[1] - all_running[0]), 1),
        "peak_memory_mib_per_process": [r["peak_memory_mib"] for r in results],
    }
    out.update(sampler.summary(*all_running) if sampler is not None else
               {"gpu_util_mean": None, "gpu_util_p10": None, "gpu_mem_used_max_mib": None, "gpu_samples": 0})
    return out


def run_share(args: argparse.Namespace, data_dir: Path, log, on_progress=None) -> dict:
    from bench.cells import load_average

    _, classes = check_layout(data_dir)
    cfg = share_config(args, data_dir, threads=args.threads)
    limit = Limit(cfg, len(classes))
    limit.warm_up()
    a = max(limit.window(args.steps) for _ in range(args.repeats))
    bf16 = limit.bf16
    del limit
    _free_device(cfg)
    log(f"a, the bare step of one process: {a:.1f} images/s ({cfg.image_size}px, freeze {cfg.freeze_depth}, batch {cfg.batch_size}, "
        f"{'bf16' if bf16 else 'fp32'}, {args.device})")
    result = {"device": args.device, "size": cfg.image_size, "freeze": cfg.freeze_depth, "batch_size": cfg.batch_size, "bf16": bf16,
              "seconds": args.seconds, "epoch_images": args.epoch_images, "a_images_per_s": round(a, 1),
              "nvidia_smi": GpuSampler().available if args.device.startswith("cuda") else None, "runs": []}
    for n in args.trials_per_gpu:
        load_before = load_average()
        run = run_processes(args, data_dir, n, log)
        run.update(load_before=load_before, load_after=load_average())
        if "error" not in run:
            run["ratio_to_a"] = round(run["images_per_s"] / a, 3)
            log(f"{n} process(es): {run['images_per_s']:.1f} images/s in all ({run['images_per_s'] / a:.2f} x a), "
                f"GPU utilisation mean {run['gpu_util_mean']} p10 {run['gpu_util_p10']}")
        else:
            log(f"{n} process(es): failed: {run['error']}")
        result["runs"].append(run)
        if on_progress is not None:
            on_progress(result)
    return result


def print_share(result: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"processes training at once on one {'GPU' if result['device'].startswith('cuda') else 'CPU (debug mode)'}: "
                        f"{result['size']}px, freeze {result['freeze']}, batch {result['batch_size']}, {'bf16' if result['bf16'] else 'fp32'}, "
                        f"~{result['seconds']:g}s each; a (one process's bare step) = {result['a_images_per_s']:.1f} images/s",
                  title_justify="left")
    for col in ["processes", "images/s (all)", "per process", "train-only images/s", "x a", "GPU util mean %", "GPU util p10 %", "GPU MiB max", "epochs each"]:
        table.add_column(col, justify="right")

    def show(v, fmt="{:.0f}"):
        return "None" if v is None else fmt.format(v)

    for r in result["runs"]:
        if "error" in r:
            table.add_row(str(r["n"]), "failed", r["error"][:80], "", "", "", "", "", "")
            continue
        table.add_row(str(r["n"]), f"{r['images_per_s']:.1f}", f"{r['images_per_s'] / r['n']:.1f}", f"{r['train_images_per_s']:.1f}",
                      f"{r['ratio_to_a']:.2f}", show(r["gpu_util_mean"]), show(r["gpu_util_p10"]), show(r["gpu_mem_used_max_mib"]),
                      ",".join(map(str, r["epochs_per_process"])))
    console.print(table)
