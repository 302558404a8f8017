"""``python -m study.export MODEL --format onnx|torchscript --out FILE [--seed N]``: a study's model as one file that
needs nothing of this project.

MODEL is a study folder (its model, which ``python -m study.rerun`` writes) or a model folder. The exported model takes
a uint8 RGB batch at the model's stored size (N x 3 x S x S, any N: ``model.json``'s ``preprocessing`` says S and how
a photo is resized to it) and returns each class's probability (N x classes, in ``model.json``'s class order), the
centre crop and normalisation inside. By default it is the ensemble of the model's seeds (their probabilities
averaged); ``--seed N`` exports one. Before it says it is done, it checks the file on the study's test photos (or on
the photos of ``--check DIR``): its probabilities against the PyTorch model's, within 1e-4; an ONNX file is run by
onnxruntime where that is installed (``pip install -e ".[onnxruntime]"``). ONNX needs ``pip install -e ".[export]"``.

Exit codes: 0 exported and checked; 1 the check failed (the file is kept, and the line says by how much); 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainable import UserError
from trainable.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    from trainable.export import FORMATS

    parser = argparse.ArgumentParser(prog="python -m study.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="a study folder (after python -m study.rerun) or its model folder")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (any runtime; needs the [export] extra) or torchscript (torch.jit.load)")
    parser.add_argument("--out", required=True, help="the file to write (e.g. model.onnx or model.pt)")
    parser.add_argument("--seed", type=int, default=None, help="one seed's model (default: every seed's, their probabilities averaged)")
    parser.add_argument("--check", metavar="DIR", help="photos to check the exported file on (default: the study's test split)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise UserError(f"--out {args.out} is a folder: name the file to write (e.g. model.{'onnx' if args.format == 'onnx' else 'pt'})")
    from trainable.cli import check_output_folder

    check_output_folder(out.parent if str(out.parent) else Path("."), "--out", holds="the model", kind="file in a writable folder")
    if args.format == "onnx":
        _need("onnx", "onnxscript", extra="export")
    from study.findings.model import open_model
    from study.findings.shipping import check_export, export_model

    model = open_model(args.model)
    export_model(model, args.format, out, args.seed)
    which = f"seed {args.seed}" if args.seed is not None else f"the ensemble of {len(model.seeds)} seed(s)"
    print(f"exported {which} as {args.format}: {out} ({out.stat().st_size / 1e6:.1f} MB); the model: {model.describe()}")
    print(f"input: uint8 RGB, N x 3 x {model.stored_size} x {model.stored_size} (any N; resize a photo as model.json's preprocessing says); "
          f"output: probabilities of {', '.join(model.classes)}")
    checked = check_export(model, args.format, out, args.seed, args.check)  # on the weights read again, not the exported modules
    print(checked.line())
    return 0 if checked.ok else 1


def _need(*modules: str, extra: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: pip install -e \".[{extra}]\"")


if __name__ == "__main__":
    from study.export import main as _main

    run_main(_main)
