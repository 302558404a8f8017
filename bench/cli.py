"""``python -m bench``: how fast the trainable is, measured side by side in one process.

For each image size and freeze depth it measures, on the same machine, one after the other:

a  limit      the bare ResNet18 training step on tensors already in memory, at the trainable's settings
              (precision, channels_last, threads, SGD parameter groups, frozen stages);
b  trainable  real epochs of ``trainable.loop.train`` on the decoded data: augmentation, the step and
              the epoch's validation; b = training images / epoch seconds (validation included), b_train =
              the epoch's own training images/s (validation excluded). Decoding (once per run) is timed
              apart;
c  naive      the trainable a user copies from Ray Tune's tutorial: ImageFolder + PIL + DataLoader
              (``--workers``) + RandomResizedCrop/flip/ToTensor/Normalize, fp32, contiguous, decoding
              every image every epoch (training only: its validation is not counted, which favours c).

Every figure covers the same number of images (``--steps`` x ``--batch-size``) after a warm-up; a, b and
c are measured in turn ``--repeats`` times (a, b, c, a, b, c, ...), so a change in the machine's load hits
all three alike, and each keeps its best window (other work on the machine only ever slows one down).

a, b and c run on ``--device`` (cpu, the default, or cuda) at the trainable's ``--precision`` (auto: bf16
where the device has it natively); a and b channels_last, c fp32 and contiguous (on a GPU its DataLoader
decodes on the CPU into pinned memory and the batch moves with ``non_blocking``, as the tutorial does).
On a GPU the clock is read after ``torch.cuda.synchronize()``; cuDNN's benchmark mode is off for all three
(the trainable turns it off, process-wide: docs/speed.md says why).

``--scaling`` instead times whole studies (``python -m study.run``) of ``--scaling-samples`` trials on a
stratified ``--scaling-images`` subset of the data (symlinks in a temporary folder), splits each wall time
into start-up, data preparation, training, evaluation and Ray overhead (the phases ``study.run`` records in
``study.json``), and projects the time of the same study on the full data from the rates it measured.

``--scale N ...`` runs a study twice on a synthetic folder of N photos: the decoding rate, the cache's second study,
peak host memory, training images/s (``bench.scale``).

``--predict`` times a shipped model on photos, decoding included, beside its bare forward pass (``bench.predict``).

``--feed`` measures the input pipeline alone (no model step): per-image (torchvision on the CPU) against
batched (``trainable.batch_augment`` on the device), every augmentation policy, per device
(``bench.feed``). ``--trials-per-gpu 1 2 4 8`` runs N training processes sharing one GPU at once
(``bench.share``). ``--make-gpu-data`` copies a stratified subset of the photos under 40 MB into
``.gpu-data/hotdog`` for ``bench/gpu_check.sh`` (``bench.data``).

Nothing here imports Ray or Optuna (the GPU check runs where neither is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import trainable.tv_compat  # noqa: F401  (first: makes torchvision importable)
from trainable import UserError
from trainable.cli import run_main
from trainable.data import check_layout
from trainable.data import available_cpus

from bench.cells import busy_processes, load_average, machine, make_tiny_folder, print_cells, run_cells
from bench.scaling import print_scaling, run_scaling

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "assets" / "hotdog"
ROOT = Path(__file__).resolve().parents[1]


CUDA_DEFAULTS = {"sizes": [224], "batch_size": 64, "steps": 40, "repeats": 3}  # a GPU step is ~10 ms: 40 steps a window
CPU_DEFAULTS = {"sizes": [224, 128], "batch_size": 64, "steps": 4, "repeats": 2}
TINY_DEFAULTS = {"sizes": [32], "batch_size": 8, "steps": 1, "repeats": 1}
GPU_DATA = ROOT / ".gpu-data" / "hotdog"  # git-ignored: the photos bench/gpu_check.sh reads where ../shared is absent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="train/<class>/, test/<class>/ image folders (default: $HOTDOG_ASSETS/hotdog, else "
                                      "../shared/assets/hotdog beside the repository)")
    p.add_argument("--device", help="cpu or cuda[:N]: where a, b and c run (default: cpu); --feed: that device only (default: cpu, "
                                    "and cuda where there is one); --trials-per-gpu: cuda, or cpu for a debug run of the plumbing")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="a and b, as the trainable's --precision: auto = bf16 where the device has it natively (default: %(default)s); c is always fp32")
    p.add_argument("--sizes", type=int, nargs="+", help="image sizes in px (default: 224 128; on cuda: 224; --feed: 224 128; --tiny: 32)")
    p.add_argument("--freeze", type=int, nargs="+", default=[0, 5], help="freeze depths (default: 0 5)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: 64; --feed and --trials-per-gpu: 128; --tiny: 8)")
    p.add_argument("--steps", type=int, default=None, help="training steps per measured window (default: 4; on cuda: 40; --tiny: 1)")
    p.add_argument("--repeats", type=int, default=None, help="measured windows per figure, best taken (default: 2; on cuda: 3; --feed: 5; --tiny: 1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for a, b and c (default: 0 = the CPUs given, as the trainable)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers of the naive trainable c (default: 2; on cuda: 8 or the CPUs if fewer)")
    p.add_argument("--tiny", action="store_true", help="generated images and a step or two: seconds, for tests")
    p.add_argument("--json", help="also write the figures to this JSON file")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--scaling", action="store_true", help="time whole studies instead (see --scaling-*)")
    mode.add_argument("--feed", action="store_true",
                      help="the input pipeline's images/s without the model step: per-image against batched augmentation, every policy, per device")
    mode.add_argument("--trials-per-gpu", type=int, nargs="+", metavar="N",
                      help="N training processes sharing one GPU at once (e.g. 1 2 4 8), each capped at 1/N of its memory: "
                           "aggregate images/s, against one process's bare step a, and the GPU's utilisation")
    mode.add_argument("--make-gpu-data", nargs="?", const=str(GPU_DATA), metavar="DIR",
                      help="copy a stratified subset of the photos (--data-dir) under --gpu-data-mb into DIR "
                           "(default: .gpu-data/hotdog in the repository, git-ignored) and exit")
    mode.add_argument("--gpu-worker", action="store_true", help=argparse.SUPPRESS)  # one process of --trials-per-gpu
    mode.add_argument("--selection", action="store_true",
                      help="simulate whole studies (no training) with known true accuracies: the expected regret of picking by one "
                           "validation accuracy against the confirmation stage, and the stage's extra compute (study.core.decision)")
    mode.add_argument("--flow", action="store_true",
                      help="the whole used-by flow as a user runs it (study.run, study.rerun of the winner and the book's recipe, "
                           "study.analyze) per --flow-seeds: wall time per phase, the confirmation's gain over the book's recipe "
                           "with its interval, the rerun's paired gain on the test split, and whether the interval held it")
    mode.add_argument("--overhead", action="store_true",
                      help="a whole study (python -m study.run; by default 32 one-epoch trials on the mini photo set at 32 px) "
                           "as one JSON: slot-seconds per trial and what of them its epochs did not use, the parts of the slot time, "
                           "each phase's median, the first epoch against later ones, the GPU's utilisation where there is one")
    mode.add_argument("--fingerprint", action="store_true",
                      help="what checking a study's data and weights costs on every resume and rerun (--fingerprint-images files)")
    mode.add_argument("--scale", type=int, nargs="+", metavar="N",
                      help="a study twice on a synthetic folder of N photos (random crops of the real ones, re-encoded), for each "
                           "N: the decoding rate, the second study's decoding (the cache) and time to its first trial, peak host "
                           "memory of the driver and of Ray's processes, training images/s, device memory and GPU utilisation")
    mode.add_argument("--predict", action="store_true",
                      help="a shipped model on photos (python -m study.predict's path): images/s with decoding, beside the bare "
                           "forward pass, per device (cpu, and cuda where there is one) and --sizes (default: 224 64)")
    p.add_argument("--scale-size", type=int, default=64, help="--scale: image size (default: %(default)s)")
    p.add_argument("--scale-samples", type=int, default=4, help="--scale: one-epoch trials per study, four at a time (default: %(default)s)")
    p.add_argument("--scale-dir", help="--scale: where the synthetic folders are made, and kept for the next run (default: a temporary folder)")
    p.add_argument("--predict-images", type=int, default=400, help="--predict: photos of the data folder, test split first (default: %(default)s)")
    p.add_argument("--fingerprint-images", type=int, default=100_000, help="--fingerprint: images (default: %(default)s)")
    p.add_argument("--overhead-samples", type=int, default=32, help="--overhead: trials (default: %(default)s)")
    p.add_argument("--overhead-epochs", type=int, default=1, help="--overhead: epochs per trial (default: %(default)s)")
    p.add_argument("--overhead-size", type=int, default=32, help="--overhead: image size (default: %(default)s)")
    p.add_argument("--overhead-confirm", action="store_true", help="--overhead: with the confirmation stage (default: without)")
    p.add_argument("--overhead-args", default="", help="--overhead: more study.run options, one string (e.g. '--gpus-per-trial 0.25')")
    p.add_argument("--flow-seeds", type=int, nargs="+", default=[0], help="--flow: study seeds, one whole flow each (default: 0)")
    p.add_argument("--flow-samples", type=int, default=32, help="--flow: trials per study (default: %(default)s)")
    p.add_argument("--flow-epochs", type=int, default=3, help="--flow: epochs per trial (default: %(default)s)")
    p.add_argument("--flow-size", type=int, default=64, help="--flow: image size (default: %(default)s)")
    p.add_argument("--flow-batch-size", type=int, default=32, help="--flow: batch size (default: %(default)s)")
    p.add_argument("--flow-rerun-seeds", type=int, default=3, help="--flow: study.rerun --seeds (default: %(default)s)")
    p.add_argument("--weights", default=None,
                   help="--flow: the backbone (default: $HOTDOG_ASSETS/weights/resnet18-caltech101-64.pt beside the data, else imagenet)")
    p.add_argument("--results-dir", default=None, help="--flow: where the studies go (default: a new folder under results/)")
    p.add_argument("--selection-repeats", type=int, default=10000, help="--selection: simulated studies (default: %(default)s)")
    p.add_argument("--feed-window", type=float, default=None, help="--feed: seconds per measured window (default: 0.3; --tiny: 0.02)")
    p.add_argument("--seconds", type=float, default=None, help="--trials-per-gpu: seconds each process trains, all together (default: 30; --tiny: 2)")
    p.add_argument("--epoch-images", type=int, default=None,
                   help="--trials-per-gpu: training images per epoch of each process (default: 1800, the hotdog set's; --tiny: 16)")
    p.add_argument("--gpu-data-mb", type=float, default=38.0, help="--make-gpu-data: size budget in MB, at most 40 (default: %(default)s)")
    p.add_argument("--worker-dir", help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker-count", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--scaling-samples", type=int, nargs="+", default=[8, 16, 32], help="study sizes (default: 8 16 32)")
    p.add_argument("--scaling-images", type=int, default=200, help="training images of the subset the studies run on (default: %(default)s)")
    p.add_argument("--scaling-size", type=int, default=128, help="--scaling: image size (default: %(default)s)")
    p.add_argument("--scaling-epochs", type=int, default=3, help="--scaling: epochs per trial (default: %(default)s)")
    p.add_argument("--scaling-actors", choices=["reused", "fresh", "both"], default="reused",
                   help="reused: study.run's default (a trial's worker process runs the next trial); fresh: --fresh-actors; "
                        "both: each study size twice, fresh then reused, side by side (default: %(default)s)")
    p.add_argument("--scaling-batch-size", type=int, default=64, help="--scaling: batch size (default: %(default)s)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    tiny = args.tiny
    share = bool(args.trials_per_gpu) or args.gpu_worker
    args.device_given = args.device is not None
    args.sizes_given = args.sizes is not None
    if args.device is None:
        args.device = "cuda" if share else "cpu"
    on_cuda = args.device.startswith("cuda")
    defaults = TINY_DEFAULTS if tiny else CUDA_DEFAULTS if on_cuda else CPU_DEFAULTS
    if args.feed:
        defaults = {"sizes": [224, 128], "batch_size": 16 if tiny else 128, "steps": 1, "repeats": 1 if tiny else 5}
    elif share and not tiny:
        defaults = {**defaults, "batch_size": 128}  # a study trial's batch (TrainConfig's default)
    args.sizes = args.sizes or list(defaults["sizes"])
    args.batch_size = args.batch_size or defaults["batch_size"]
    args.steps = args.steps or defaults["steps"]
    args.repeats = args.repeats or defaults["repeats"]
    args.workers = args.workers if args.workers is not None else (min(8, available_cpus()) if on_cuda else 2)
    args.feed_window = args.feed_window or (0.02 if tiny else 0.3)
    args.seconds = args.seconds or (2.0 if tiny else 30.0)
    args.epoch_images = args.epoch_images or (16 if tiny else 1800)
    checks = [
        (args.device == "cpu" or args.device == "cuda" or (args.device.startswith("cuda:") and args.device[5:].isdigit()),
         f"--device {args.device!r}: use cpu, cuda or cuda:N"),
        (all(s >= 32 for s in args.sizes), "--sizes must be 32 or more"),
        (all(0 <= f <= 5 for f in args.freeze), "--freeze depths must be 0-5"),
        (args.batch_size >= 2 and args.steps >= 1 and args.repeats >= 1, "--batch-size must be 2 or more, --steps and --repeats 1 or more"),
        (args.threads >= 0 and args.workers >= 0, "--threads and --workers must be 0 or more"),
        (all(n >= 1 for n in args.scaling_samples) and args.scaling_images >= 20, "--scaling-samples must be 1 or more, --scaling-images 20 or more"),
        (args.feed_window > 0 and args.seconds > 0 and args.epoch_images >= 2, "--feed-window and --seconds must be positive, --epoch-images 2 or more"),
        (not args.trials_per_gpu or all(1 <= n <= 64 for n in args.trials_per_gpu), "--trials-per-gpu counts must be 1-64"),
        (0 < args.gpu_data_mb <= 40, f"--gpu-data-mb {args.gpu_data_mb:g} must be above 0 and at most 40"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return args


def default_data_dir() -> Path:
    env = os.environ.get("HOTDOG_ASSETS")
    return Path(env) / "hotdog" if env else DEFAULT_DATA


def data_dir_of(args: argparse.Namespace, default: Path | None = None) -> Path:
    """``--data-dir``, else ``default`` (default: ``default_data_dir()``)."""
    if args.data_dir:
        return Path(args.data_dir).expanduser()
    return default_data_dir() if default is None else default


# --- main --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = parse_args(argv)
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)

    def log(message: str) -> None:
        console.print(message, markup=False)
        sys.stdout.flush()

    if args.gpu_worker:  # one process of --trials-per-gpu: says nothing, writes its figures to --worker-dir
        from bench.share import gpu_worker

        return gpu_worker(args)
    if args.make_gpu_data:
        from bench.data import make_gpu_data

        source = data_dir_of(args)
        made = make_gpu_data(source, Path(args.make_gpu_data).expanduser(), budget_bytes=int(args.gpu_data_mb * 1e6))
        log(f"copied {made['files']} photos ({made['bytes'] / 1e6:.1f} MB; train {made['counts']['train']}, test {made['counts']['test']}) "
            f"from {made['source']} to {made['target']}")
        return 0
    if args.selection:
        from bench.selection import draw, print_selection, run_selection

        if args.selection_repeats < 1:
            raise UserError(f"--selection-repeats {args.selection_repeats} must be 1 or more")
        from bench.correction import print_corrections, run_corrections

        drawn = draw(repeats=args.selection_repeats, seed=0)  # the default scenario: drawn once, for both
        result = run_selection(args.selection_repeats, 0, None, drawn=drawn)
        print_selection(result, console)
        result["corrections"] = run_corrections(args.selection_repeats, drawn=drawn)
        print_corrections(result["corrections"], console)
        if args.json:
            from bench.flow import write_json

            write_json(args.json, result)
        return 0
    if args.flow:
        return flow(args, log)
    if args.overhead:
        return overhead(args, log)
    if args.fingerprint:
        from bench.fingerprint import run_fingerprint

        result = run_fingerprint(args.fingerprint_images, log)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "fingerprint": result}, indent=2))
        return 0
    if args.predict:
        return predict(args, log)
    if args.scale:
        return scale(args, log)
    if args.trials_per_gpu:
        from bench.share import check_share_device

        check_share_device(args)  # one line and exit 2 where there is no GPU, before any work
    report = {"machine": machine(), "load_start": load_average(), "busy_processes_start": busy_processes()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-tiny-") as tmp:
        if args.tiny and not args.data_dir:
            per_class = max(8, args.batch_size * (args.steps * args.repeats + 2) // 2 + 4)
            data_dir = make_tiny_folder(Path(tmp), per_class=24 if args.feed else per_class)
        else:
            data_dir = data_dir_of(args)
            check_layout(data_dir)
        data_dir = data_dir.resolve()
        log(f"bench on {data_dir}: {report['machine']['cpu']}, {report['machine']['cpus']} CPUs, load {report['load_start']}"
            + (f", GPU {report['machine']['gpu']}" if report["machine"].get("gpu") else ""))
        for line in report["busy_processes_start"]:
            log(f"  busy: {line}")

        def save_partial(key: str | None, part: dict) -> None:
            """The figures so far, in --json as each is measured: a run cut short (a lent GPU's time) still leaves them."""
            if args.json:
                Path(args.json).write_text(json.dumps({**report, **({key: part} if key else part), "partial": True}, indent=2))

        report["settings"] = {
            "data_dir": str(data_dir), "sizes": args.sizes, "freeze": args.freeze, "batch_size": args.batch_size,
            "steps": args.steps, "repeats": args.repeats, "images_per_window": args.steps * args.batch_size,
            "threads": args.threads or available_cpus(), "workers": args.workers, "tiny": args.tiny,
            "device": args.device, "precision": args.precision,
        }
        if args.scaling:
            report["scaling"] = run_scaling(args, data_dir, log)
            print_scaling(report["scaling"], console)
        elif args.feed:
            from bench.feed import feed_devices, print_feed, run_feed

            devices = feed_devices(args)
            report["settings"].update(devices=devices, window_s=args.feed_window, steps=None, images_per_window=None)
            report.update(run_feed(args, data_dir, devices, log, on_progress=lambda part: save_partial(None, part)))
            print_feed(report, console)
        elif args.trials_per_gpu:
            from bench.share import print_share, run_share

            report["settings"].update(seconds=args.seconds, epoch_images=args.epoch_images, size=args.sizes[0], freeze_depth=args.freeze[0])
            report["trials_per_gpu"] = run_share(args, data_dir, log, on_progress=lambda part: save_partial("trials_per_gpu", part))
            print_share(report["trials_per_gpu"], console)
        else:
            cells = run_cells(args, data_dir, log, on_progress=lambda part: save_partial(None, part))
            report["settings"].update(cells.pop("cell_facts"))
            report.update(cells)
            print_cells(report, console)
    report["load_end"] = load_average()
    report["seconds"] = round(time.perf_counter() - started, 1)
    log(f"load average (1, 5, 15 min) at start {report['load_start']}, at end {report['load_end']}; {report['seconds']:.0f}s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def overhead(args: argparse.Namespace, log) -> int:
    """``--overhead``: one whole study, what its trials cost besides their epochs, printed and in ``--json``."""
    import shlex

    from bench.flow import write_json
    from bench.overhead import print_overhead, run_overhead

    if args.overhead_samples < 1 or args.overhead_epochs < 1 or args.overhead_size < 32:
        raise UserError("--overhead-samples and --overhead-epochs must be 1 or more, --overhead-size 32 or more")
    data_dir = data_dir_of(args, default_data_dir().parent / "hotdog_mini")
    check_layout(data_dir, need_test=True)
    report = {"machine": machine(), "load_start": load_average(), "busy_processes_start": busy_processes()}
    report["overhead"] = run_overhead(data_dir.resolve(), args.overhead_samples, args.overhead_epochs, args.overhead_size,
                                      args.overhead_confirm, shlex.split(args.overhead_args), log)
    report["load_end"] = load_average()
    print_overhead(report["overhead"], log)
    if args.json:
        write_json(args.json, report)
    return 0


def scale(args: argparse.Namespace, log) -> int:
    """``--scale``: two studies per folder size, their data figures printed and in ``--json``."""
    from bench.flow import write_json
    from bench.scale import run_scale

    if min(args.scale) < 20 or args.scale_samples < 1 or args.scale_size < 32:
        raise UserError("--scale sizes must be 20 photos or more, --scale-samples 1 or more, --scale-size 32 or more")
    with tempfile.TemporaryDirectory(prefix="bench-scale-source-") as tmp:
        source = make_tiny_folder(Path(tmp), per_class=12) if args.tiny and not args.data_dir else data_dir_of(args)
        check_layout(source, need_test=True)
        report = {"machine": machine(), "load_start": load_average(), "source": str(source)}
        report["scale"] = run_scale(source, args.scale, args.scale_size, args.scale_samples,
                                    Path(args.scale_dir).expanduser() if args.scale_dir else None, log)
    report["load_end"] = load_average()
    if args.json:
        write_json(args.json, report)
    return 0


def predict(args: argparse.Namespace, log) -> int:
    """``--predict``: the predict path's images/s per device and size, printed and in ``--json``."""
    import torch

    from bench.flow import write_json
    from bench.predict import run_predict

    if args.predict_images < 1:
        raise UserError(f"--predict-images {args.predict_images} must be 1 or more")
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        data_dir = make_tiny_folder(Path(tmp), per_class=8) if args.tiny and not args.data_dir else data_dir_of(args)
        check_layout(data_dir)
        devices = [args.device] if args.device_given else ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
        sizes = args.sizes if args.sizes_given else [224, 64]
        report = {"machine": machine(), "load_start": load_average(), "data_dir": str(data_dir)}
        report["predict"] = run_predict(data_dir, [32] if args.tiny else sizes, devices, args.predict_images, args.repeats, log)
    report["load_end"] = load_average()
    if args.json:
        write_json(args.json, report)
    return 0


def flow(args: argparse.Namespace, log) -> int:
    """``--flow``: one whole flow per study seed, its figures printed and in ``--json``."""
    from bench.flow import print_flow, run_flow, write_json

    data_dir = data_dir_of(args)
    check_layout(data_dir, need_test=True)
    weights = args.weights or str(data_dir.parent / "weights" / "resnet18-caltech101-64.pt")
    if not args.weights and not Path(weights).is_file():
        weights = "imagenet"
    if Path(weights).expanduser().is_file():  # the commands run from the checkout: an absolute path
        weights = str(Path(weights).expanduser().resolve())
    results = Path(args.results_dir or ROOT / "results" / f"flow-{time.strftime('%Y%m%d-%H%M%S')}").expanduser().resolve()
    report = {"machine": machine(), "load_start": load_average(), "data_dir": str(data_dir.resolve()), "weights": weights,
              "samples": args.flow_samples, "epochs": args.flow_epochs, "image_size": args.flow_size,
              "batch_size": args.flow_batch_size, "rerun_seeds": args.flow_rerun_seeds, "flows": []}
    for seed in args.flow_seeds:
        result = run_flow(str(data_dir.resolve()), weights, results, seed, args.flow_samples, args.flow_epochs, args.flow_size,
                          args.flow_batch_size, args.flow_rerun_seeds, log)
        report["flows"].append(result)
        print_flow(result, log)
        if args.json:
            write_json(args.json, {**report, "partial": seed != args.flow_seeds[-1]})
    report["load_end"] = load_average()
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    run_main(main)
