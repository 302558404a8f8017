"""A study's model as one file (``python -m study.export``): exported with its preprocessing inside
(``trainable.export``), then checked on photos against the PyTorch model as evaluation runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainable import UserError

from study.findings.model import ModelFolder

TOLERANCE = 1e-4  # the exported file's probabilities against the PyTorch model's (float32 both)
CHECK_PHOTOS = 64  # enough to see any difference, quick on a CPU


def export_model(model: ModelFolder, fmt: str, out: Path, seed: int | None = None) -> Path:
    """``model`` (every seed's, or ``seed``'s) as ``fmt`` at ``out``."""
    from trainable.export import export

    return export(model.shipped(seed), model.stored_size, fmt, out)


@dataclass
class Checked:
    photos: int
    where: str
    difference: float | None  # the largest difference of a probability; None: the file could not be run here
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.difference is None or self.difference <= TOLERANCE

    def line(self) -> str:
        if self.difference is None:
            return f"checked: {self.note}"
        verdict = f"within {TOLERANCE:g}" if self.ok else f"MORE than {TOLERANCE:g}: do not ship this file"
        return (f"checked on {self.photos} photo(s) of {self.where}: the largest difference of a probability from the PyTorch "
                f"model's is {self.difference:.1e}, {verdict}" + (f" ({self.note})" if self.note else ""))


def check_photos(model: ModelFolder, folder: str | None) -> tuple[np.ndarray, str]:
    """Photos to check an export on: ``folder``'s, else the study's test split (the first ``CHECK_PHOTOS``), decoded as
    evaluation decodes them."""
    from trainable.predict import decode_files, find_images

    from study.core.datacheck import data_root

    if folder is None:
        where = data_root({"data_dir": model.config.data_dir}) / "test"
        if not where.is_dir():
            raise UserError(f"the study's test split {where} is not here to check the export on: pass --check DIR, a folder of photos")
    else:
        where = Path(folder).expanduser()
        if not where.exists():
            raise UserError(f"--check {folder}: no such folder: pass a folder of photos")
    files = find_images(where)[:CHECK_PHOTOS]
    decoded = decode_files(files, model.stored_size)
    if not len(decoded.paths):
        raise UserError(f"no photo in {where} could be decoded to check the export on: pass --check DIR, a folder of photos")
    return decoded.images, str(where)


def check_export(model: ModelFolder, fmt: str, out: Path, seed: int | None = None, folder: str | None = None) -> Checked:
    """The exported file's probabilities on the check photos against the PyTorch model's (evaluation's path, float32)."""
    import importlib.util

    import torch

    from trainable.predict import probabilities

    images, where = check_photos(model, folder)
    reference = probabilities(model.modules(seed), images, model.config, device="cpu", precision="fp32")
    if fmt == "torchscript":
        loaded = torch.jit.load(str(out))
        with torch.no_grad():
            got = loaded(torch.from_numpy(images)).double().numpy()
        return Checked(len(images), where, float(np.abs(got - reference).max()))
    import onnx

    onnx.checker.check_model(str(out))
    if importlib.util.find_spec("onnxruntime") is None:
        return Checked(len(images), where, None, "the ONNX graph is valid (onnx.checker); onnxruntime is not installed to run it on "
                                                 "the photos: pip install -e \".[onnxruntime]\"")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images})[0].astype(np.float64)
    return Checked(len(images), where, float(np.abs(got - reference).max()), "run by onnxruntime")
