"""One photo to the array a run stores: EXIF orientation, any mode to 8-bit RGB, PIL's bilinear resize to a square;
and which files are photos a run reads (hidden files and folders left out). ``trainable.data`` (a folder) and
``trainable.decoded`` (the cache) both decode with this, so every run stores a photo alike."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS tells it: a container's or Slurm's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is skipped, not half-decoded
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError)  # a file that cannot be decoded


def visible_files(folder: Path) -> list[os.DirEntry]:
    """Every file under ``folder`` a run reads from, sorted by path: a hidden file, and everything under a hidden
    folder (a thumbnail cache, ``.ipynb_checkpoints``), is left out. The loader and the data fingerprint
    (``trainable.fingerprint``) both walk with this, so they always see the same files."""
    found, stack = [], [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.is_file():
                    found.append(entry)
    return sorted(found, key=lambda e: e.path)


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16/32-bit greyscale rescaled, transparency composited on white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        # Pillow opens 16-bit PNG/TIFF as I;16 but 16-bit PGM/PPM as I: 16-bit data keeps its absolute scale
        sixteen_bit = img.mode.startswith("I;16") or (img.mode == "I" and arr.size and 0 <= arr.min() and arr.max() <= 65535)
        top = 65535.0 if sixteen_bit else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def decode_image(path: Path, size: int, modes: list[str] | None = None) -> np.ndarray:
    """One file to a ``3 x size x size`` uint8 array. Raises OSError/ValueError for unreadable files.
    A file in another mode than RGB has its mode appended to ``modes`` (when given)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns on odd metadata; broken files raise below
        with Image.open(path) as img:
            return image_array(img, size, modes)


def decode_each(paths: list[Path], size: int, workers: int, modes: list[str] | None = None) -> Iterator[np.ndarray | Exception]:
    """Each file of ``paths`` through ``decode_image`` on ``workers`` threads (PIL releases the GIL), in order: its array,
    or the ``DECODE_ERRORS`` exception that stopped it (never raised)."""
    from concurrent.futures import ThreadPoolExecutor

    def work(path: Path) -> np.ndarray | Exception:
        try:
            return decode_image(path, size, modes)
        except DECODE_ERRORS as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(work, paths)


def image_array(img: Image.Image, size: int, modes: list[str] | None = None) -> np.ndarray:
    """A PIL image as a run stores it: EXIF orientation applied, any mode to 8-bit RGB, PIL's bilinear resize to a
    ``size`` square; ``3 x size x size`` uint8."""
    if modes is not None and img.mode != "RGB":
        modes.append(img.mode)
    img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the image is much larger
    img = ImageOps.exif_transpose(img)
    img = _to_rgb(img).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
