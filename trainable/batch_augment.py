"""Batched training augmentation: whole uint8 batches on any device, each image with its own random draws.

``trainable.augment`` applies ``torchvision.transforms.v2`` image by image on the CPU, which feeds a GPU only
~500-1,900 images/s. Here the same policies run on a whole ``B x 3 x S x S`` uint8 batch where it lies (CPU or
CUDA), in pure PyTorch:

* the crop: every image's ``RandomResizedCrop`` box (drawn as torchvision draws it, vectorised) and its
  horizontal flip become one sampling grid, and one bilinear ``grid_sample`` resizes the whole batch;
* the auto-augment policies: each image draws its own operation(s), magnitude and sign. All geometric
  operations of a step (shears, translations, rotations) run as one ``affine_grid``-style grid and one
  nearest ``grid_sample`` over the images that drew one; each colour operation runs once over the images
  that drew it (a loop over the ~15 operation kinds, never over images). Equalize builds every image's
  per-channel histogram at once (``bincount`` on offset indices) and maps pixels through a per-image LUT.

Why not kornia: it is not installed here; its auto-augment policies (``kornia.augmentation.auto``) draw one
operation per call and apply it to the whole batch, whereas torchvision (and this module) draw the operation
per image; and it has open bugs in some of the operations. Matching torchvision exactly is simpler in our own
few hundred lines.

Semantics follow ``torchvision.transforms.v2`` 0.28 (``_auto_augment.py``, ``_geometry.py``, ``functional``):
the magnitude bins and ranges of each policy, signed operations negated with probability 1/2, NEAREST
interpolation and fill 0 for the geometric operations, the affine centre / translate / shear conventions of
``F.affine`` and ``F.rotate`` as ``_AutoAugmentBase._apply_image_or_video_transform`` calls them, and the
uint8 arithmetic of the colour kernels (same float32 operations in the same order, so the results agree to
the bit on the CPU; see tests/test_batch_augment.py). Differences that remain:

* RandomResizedCrop's resize is plain bilinear (``grid_sample``), not torchvision's ``antialias=True`` and
  not its fixed-point uint8 CPU kernel: on 256 -> 224 crops the pixels differ by 0.2 levels on average, at
  most 3 (see ``_resized_crop``).
* The random stream differs (one vectorised draw per parameter instead of torchvision's scalar draws), so a
  seed gives other, equally distributed, crops and operations than the per-image path.
* Inputs are uint8 RGB batches only. Magnitudes no policy draws (factors below 0, Solarize above 1), which
  torchvision refuses, are computed here (clamped) rather than raising.
* Bit-exactness is tested on the CPU; CUDA kernels may round the last bit of a float differently (fused
  multiply-adds), which can move a NEAREST sample or a truncation by one, on either side.

On the CPU the batch goes through in chunks of a few images (``CPU_CHUNK_BYTES``): same result, twice as fast.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as nnf

from .config import AUGMENT_POLICIES as POLICIES

AUTO_POLICIES = ("trivialaugment", "randaugment", "autoaugment")

OP_NAMES = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
OP_INDEX = {name: i for i, name in enumerate(OP_NAMES)}
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")  # contiguous in OP_NAMES: 1..5
_GEOMETRIC = range(OP_INDEX["ShearX"], OP_INDEX["Rotate"] + 1)
assert tuple(OP_NAMES[i] for i in _GEOMETRIC) == GEOMETRIC_OPS

# RandomResizedCrop's defaults (v2.RandomResizedCrop(size) as trainable.augment builds it)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10


# --------------------------------------------------------------------------------------------------------
# The policies' operation spaces, as torchvision.transforms.v2._auto_augment defines them
# --------------------------------------------------------------------------------------------------------


def _linspace(start: float, end: float, bins: int) -> torch.Tensor:
    return torch.linspace(start, end, bins)  # float32 on the CPU, as torchvision builds its bins


def _posterize_bins(bins: int, span: int) -> torch.Tensor:
    return (8 - (torch.arange(bins) / ((bins - 1) / span))).round().int()


def _space(policy: str, bins: int, height: int, width: int) -> dict[str, tuple[torch.Tensor | None, bool]]:
    """name -> (magnitude per bin or None, signed), in torchvision's order for ``policy``."""
    if policy == "trivialaugment":  # TrivialAugmentWide._AUGMENTATION_SPACE
        return {
            "Identity": (None, False),
            "ShearX": (_linspace(0.0, 0.99, bins), True),
            "ShearY": (_linspace(0.0, 0.99, bins), True),
            "TranslateX": (_linspace(0.0, 32.0, bins), True),
            "TranslateY": (_linspace(0.0, 32.0, bins), True),
            "Rotate": (_linspace(0.0, 135.0, bins), True),
            "Brightness": (_linspace(0.0, 0.99, bins), True),
            "Color": (_linspace(0.0, 0.99, bins), True),
            "Contrast": (_linspace(0.0, 0.99, bins), True),
            "Sharpness": (_linspace(0.0, 0.99, bins), True),
            "Posterize": (_posterize_bins(bins, 6), False),
            "Solarize": (_linspace(1.0, 0.0, bins), False),
            "AutoContrast": (None, False),
            "Equalize": (None, False),
        }
    # RandAugment._AUGMENTATION_SPACE (with Identity) and AutoAugment._AUGMENTATION_SPACE (with Invert)
    space: dict[str, tuple[torch.Tensor | None, bool]] = {
        "ShearX": (_linspace(0.0, 0.3, bins), True),
        "ShearY": (_linspace(0.0, 0.3, bins), True),
        "TranslateX": (_linspace(0.0, 150.0 / 331.0 * width, bins), True),
        "TranslateY": (_linspace(0.0, 150.0 / 331.0 * height, bins), True),
        "Rotate": (_linspace(0.0, 30.0, bins), True),
        "Brightness": (_linspace(0.0, 0.9, bins), True),
        "Color": (_linspace(0.0, 0.9, bins), True),
        "Contrast": (_linspace(0.0, 0.9, bins), True),
        "Sharpness": (_linspace(0.0, 0.9, bins), True),
        "Posterize": (_posterize_bins(bins, 4), False),
        "Solarize": (_linspace(1.0, 0.0, bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }
    if policy == "randaugment":
        return {"Identity": (None, False), **space}
    if policy == "autoaugment":
        return {**space, "Invert": (None, False)}
    raise ValueError(f"{policy!r} is not an auto-augment policy (one of {AUTO_POLICIES})")


TRIVIAL_BINS = 31  # TrivialAugmentWide(num_magnitude_bins=31)
RAND_NUM_OPS, RAND_MAGNITUDE, RAND_BINS = 2, 9, 31  # RandAugment() defaults
AUTO_BINS = 10  # AutoAugment evaluates magnitudes_fn(10, height, width)

# AutoAugment(AutoAugmentPolicy.IMAGENET)._policies: ((op, probability, magnitude bin), (op, probability, bin))
AUTOAUGMENT_IMAGENET = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)


def policy_op_names(policy: str) -> tuple[str, ...]:
    """The operations ``policy`` can apply (its augmentation space; AutoAugment's as its sub-policies use it)."""
    if policy == "autoaugment":
        return tuple(dict.fromkeys(name for pair in AUTOAUGMENT_IMAGENET for name, _, _ in pair))
    return tuple(_space(policy, 2, 2, 2))


class _Tables(NamedTuple):
    op: torch.Tensor  # (k,) index into OP_NAMES of the policy's k choices
    values: torch.Tensor  # (k, bins) float64: magnitude of each bin (0 for operations without one)
    signed: torch.Tensor  # (k,) bool
    has_magnitude: torch.Tensor  # (k,) bool: False where torchvision's magnitudes_fn returns None


@lru_cache(maxsize=64)
def _tables(policy: str, height: int, width: int) -> _Tables:
    bins = {"trivialaugment": TRIVIAL_BINS, "randaugment": RAND_BINS, "autoaugment": AUTO_BINS}[policy]
    space = _space(policy, bins, height, width)
    values = torch.zeros(len(space), bins, dtype=torch.float64)
    for row, (magnitudes, _) in enumerate(space.values()):
        if magnitudes is not None:
            values[row] = magnitudes.to(torch.float64)  # float(magnitudes[i]) of the float32 bins
    op = torch.tensor([OP_INDEX[name] for name in space])
    signed = torch.tensor([signed for _, signed in space.values()])
    has_magnitude = torch.tensor([magnitudes is not None for magnitudes, _ in space.values()])
    return _Tables(op, values, signed, has_magnitude)


# --------------------------------------------------------------------------------------------------------
# Random parameters
# --------------------------------------------------------------------------------------------------------


def sample_crops(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``top, left, crop_h, crop_w`` (int64, shape ``(n,)``) as ``v2.RandomResizedCrop.make_params`` draws them.

    torchvision tries up to 10 times: area ``U(scale) * H * W``, aspect ratio ``exp(U(log ratio))``,
    ``w = round(sqrt(area * ratio))``, ``h = round(sqrt(area / ratio))``; the first that fits the image wins
    and its corner is uniform over the positions. Here all 10 attempts of all images are drawn at once and the
    first fitting one is picked per image (the same distribution). When none fits: the central crop of the
    whole image, its ratio clamped to ``ratio``.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    area = float(height * width)
    u_area = torch.rand((n, CROP_ATTEMPTS), generator=generator, device=device, dtype=torch.float64)
    u_ratio = torch.rand((n, CROP_ATTEMPTS), generator=generator, device=device, dtype=torch.float64)
    u_top = torch.rand((n,), generator=generator, device=device, dtype=torch.float64)
    u_left = torch.rand((n,), generator=generator, device=device, dtype=torch.float64)

    target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = torch.sqrt(target * aspect).round().long()  # round half to even, as Python's round
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first attempt that fits (0 if none)
    any_fit = fits.any(dim=1)
    crop_w = w.gather(1, first).squeeze(1)
    crop_h = h.gather(1, first).squeeze(1)
    # uniform corner: randint(0, H - h + 1); float64 uniforms times <= 2^31 positions floor to a valid index
    top = (u_top * (height - crop_h + 1)).floor().long().clamp_(max=height - crop_h)
    left = (u_left * (width - crop_w + 1)).floor().long().clamp_(max=width - crop_w)

    # torchvision's fallback: the central crop, the whole image with its ratio clamped to [min, max]
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        fb_w, fb_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fb_h, fb_w = height, int(round(height * max(ratio)))
    else:
        fb_w, fb_h = width, height
    fb_top, fb_left = (height - fb_h) // 2, (width - fb_w) // 2
    top = torch.where(any_fit, top, fb_top)
    left = torch.where(any_fit, left, fb_left)
    crop_h = torch.where(any_fit, crop_h, fb_h)
    crop_w = torch.where(any_fit, crop_w, fb_w)
    return top, left, crop_h, crop_w


def sample_flips(n: int, generator: torch.Generator, device: torch.device | str | None = None) -> torch.Tensor:
    """RandomHorizontalFlip(p=0.5): flip where ``rand < 0.5``; bool ``(n,)``."""
    return torch.rand((n,), generator=generator, device=device) < 0.5


class OpSample(NamedTuple):
    """Per-image operation draws of an auto-augment policy; every field is ``n x slots``.

    Slots run in order (RandAugment: 2, AutoAugment: its sub-policy's 2, TrivialAugmentWide: 1).
    """

    op: torch.Tensor  # int64 index into OP_NAMES
    magnitude: torch.Tensor  # float64, signed: the value torchvision passes to _apply_image_or_video_transform
    sign: torch.Tensor  # int64 -1 / +1 (always +1 for unsigned operations)
    applied: torch.Tensor  # bool: AutoAugment's per-operation probability (all True for the other policies)
    level: torch.Tensor  # int64 magnitude bin (-1 for operations without a magnitude)

    def effective_op(self) -> torch.Tensor:
        """``op``, with Identity where the slot was not applied."""
        return torch.where(self.applied, self.op, torch.zeros_like(self.op))


def sample_ops(
    policy: str,
    n: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    size: int | tuple[int, int] | None = None,
) -> OpSample:
    """Each image's operation(s), magnitude bin, sign and apply flag for ``policy``; see ``OpSample``.

    TrivialAugmentWide: one operation of 14 and one bin of 31, uniform. RandAugment: two operations of 14,
    bin 9 of 31. AutoAugment (IMAGENET): one of 25 sub-policies; each of its two operations is applied with its
    probability at its fixed bin. A signed operation is negated with probability 1/2.

    ``size`` (``s`` or ``(h, w)``: the image the operations act on) matters only for RandAugment, whose
    translations scale with the image (150/331 of its side); it is required there.
    """
    if policy not in AUTO_POLICIES:
        raise ValueError(f"{policy!r} is not an auto-augment policy (one of {AUTO_POLICIES})")
    device = torch.device("cpu") if device is None else torch.device(device)
    if size is None:
        if policy == "randaugment":
            raise ValueError("sample_ops('randaugment', ...) needs size=: its translations scale with the image")
        height = width = 1  # not used by the other two policies' magnitudes
    else:
        height, width = (size, size) if isinstance(size, int) else size
    tables = _tables(policy, height, width)
    values = tables.values.to(device)
    bins = values.shape[1]

    if policy == "autoaugment":
        k = len(AUTOAUGMENT_IMAGENET)
        names = [OP_INDEX[name] for pair in AUTOAUGMENT_IMAGENET for name, _, _ in pair]
        row_of = {int(op): row for row, op in enumerate(tables.op.tolist())}
        rows = torch.tensor([row_of[i] for i in names], device=device).view(k, 2)
        probs = torch.tensor([p for pair in AUTOAUGMENT_IMAGENET for _, p, _ in pair], device=device).view(k, 2)
        levels = torch.tensor(
            [-1 if b is None else b for pair in AUTOAUGMENT_IMAGENET for _, _, b in pair], device=device
        ).view(k, 2)
        sub = torch.randint(0, k, (n,), generator=generator, device=device)
        row = rows[sub]
        level = levels[sub]
        # torchvision: `if not torch.rand(()) <= probability: continue`, a float32 comparison as here
        applied = torch.rand((n, 2), generator=generator, device=device) <= probs[sub]
    else:
        slots = 1 if policy == "trivialaugment" else RAND_NUM_OPS
        row = torch.randint(0, len(tables.op), (n, slots), generator=generator, device=device)
        if policy == "trivialaugment":
            level = torch.randint(0, bins, (n, slots), generator=generator, device=device)
        else:
            level = torch.full((n, slots), RAND_MAGNITUDE, device=device)
        applied = torch.ones((n, slots), dtype=torch.bool, device=device)

    op = tables.op.to(device)[row]
    has_magnitude = tables.has_magnitude.to(device)[row]
    level = torch.where(has_magnitude, level, -1)
    magnitude = values[row, level.clamp(min=0)] * has_magnitude
    negate = torch.rand(row.shape, generator=generator, device=device) <= 0.5  # `torch.rand(()) <= 0.5`
    sign = torch.where(tables.signed.to(device)[row] & negate, -1, 1)
    return OpSample(op=op, magnitude=magnitude * sign, sign=sign, applied=applied, level=level)


# --------------------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------------------


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 255] -> uint8, truncating as ``.to(torch.uint8)`` does (via int32: 3x faster on the CPU)."""
    return values.to(torch.int32).to(torch.uint8)


def _center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """v2.functional.center_crop on a batch: zero padding if the image is smaller, then the centred slice."""
    height, width = images.shape[-2:]
    if size > height or size > width:
        pad_w, pad_h = max(size - width, 0), max(size - height, 0)
        images = nnf.pad(images, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
        height, width = images.shape[-2:]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def _flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Each image mirrored left-right where ``flip``: one gather over [images, mirrored] (torch.where and
    index_copy_ on uint8 are several times slower on the CPU)."""
    n = images.shape[0]
    both = torch.cat((images, images.flip(-1)))
    return both.index_select(0, torch.arange(n, device=images.device) + flip.long() * n)


def _resized_crop(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    crop_h: torch.Tensor,
    crop_w: torch.Tensor,
    size: int,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each image's box resized (bilinear) to ``size x size``, flipped horizontally where ``flip``: one grid_sample.

    The grid reproduces ``F.interpolate(crop, mode="bilinear", align_corners=False, antialias=False)`` of each
    crop: source coordinate ``(dst + 0.5) * crop / size - 0.5`` clamped to the crop (interpolate clamps at the
    crop's edges, so no pixel outside the box leaks in when upscaling). torchvision's RandomResizedCrop uses
    ``antialias=True``, which only differs from this when downscaling, i.e. when the crop is larger than
    ``size``: here by at most S/size (the stored 256 px for 224, 146 for 128: 1.14x), where the antialias
    filter is only 1.14x wider than the bilinear one: 0.2 levels on average, at most 3, on 256 -> 224.
    """
    n = images.shape[0]
    height, width = images.shape[-2:]
    device = images.device
    dst = torch.arange(size, device=device, dtype=torch.float32).add_(0.5)

    def axis(start: torch.Tensor, length: torch.Tensor, extent: int) -> torch.Tensor:
        length_f = length.to(torch.float32).unsqueeze(1)
        src = (dst * (length_f / size)).sub_(0.5).clamp_(min=0.0)
        src = torch.minimum(src, length_f - 1)
        # absolute pixel coordinate -> grid_sample's normalised one (align_corners=False)
        return (src + start.to(torch.float32).unsqueeze(1)).mul_(2.0).add_(1.0).div_(extent).sub_(1.0)

    gx = axis(left, crop_w, width)  # n x size
    gy = axis(top, crop_h, height)
    if flip is not None:
        gx = torch.where(flip.unsqueeze(1), gx.flip(1), gx)
    grid = torch.stack(
        (gx.unsqueeze(1).expand(n, size, size), gy.unsqueeze(2).expand(n, size, size)), dim=-1
    )
    out = nnf.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    # a convex combination of values in [0, 255] rounds into [0, 255]: no clamp needed
    return _to_uint8(out.round_())


# --------------------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------------------


def _affine_thetas(op: torch.Tensor, magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per image, the float32 2x3 inverse matrix torchvision's affine/rotate kernels build for the operation.

    As ``_apply_image_or_video_transform`` calls them: ShearX/ShearY ``F.affine(shear=degrees(atan(m)),
    center=[0, 0])`` (the top-left corner), TranslateX/Y ``F.affine(translate=int(m))`` about the centre,
    Rotate ``F.rotate(angle=m)`` about the centre; then ``_get_inverse_affine_matrix`` in float64 (centre
    given relative to the image centre, rotate's angle negated). Any other operation gets the identity.
    (``rotate_image`` takes ``rot90`` for 90/180/270 degrees on square images; the grid maps pixel centres to
    pixel centres within ~1e-16 there, which NEAREST rounds to the same pixels: tested.)
    """
    m = magnitude.to(torch.float64)
    zero = torch.zeros_like(m)
    is_rot = op == OP_INDEX["Rotate"]
    is_shx, is_shy = op == OP_INDEX["ShearX"], op == OP_INDEX["ShearY"]
    is_shear = is_shx | is_shy
    angle = torch.where(is_rot, -torch.remainder(m, 360.0), zero)  # rotate_image: angle % 360, matrix of -angle
    shear_deg = torch.rad2deg(torch.atan(m))
    sx = torch.deg2rad(torch.where(is_shx, shear_deg, zero))
    sy = torch.deg2rad(torch.where(is_shy, shear_deg, zero))
    tx = torch.where(op == OP_INDEX["TranslateX"], torch.trunc(m), zero)  # int(magnitude)
    ty = torch.where(op == OP_INDEX["TranslateY"], torch.trunc(m), zero)
    cx = torch.where(is_shear, zero - 0.5 * width, zero)  # center=[0, 0] -> relative to the image centre
    cy = torch.where(is_shear, zero - 0.5 * height, zero)

    rot = torch.deg2rad(angle)
    rot_minus_sy = rot - sy
    cos_rot, sin_rot = torch.cos(rot), torch.sin(rot)
    cos_rms, sin_rms = torch.cos(rot_minus_sy), torch.sin(rot_minus_sy)
    cos_sy, tan_sx = torch.cos(sy), torch.tan(sx)

    a = cos_rms / cos_sy
    b = -(a * tan_sx + sin_rot)
    c = sin_rms / cos_sy
    d = cos_rot - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a  # scale 1
    cx_tx, cy_ty = cx + tx, cy + ty
    m2 = cx - m0 * cx_tx - m1 * cy_ty
    m5 = cy - m3 * cx_tx - m4 * cy_ty
    return torch.stack((m0, m1, m2, m3, m4, m5), dim=-1).view(-1, 2, 3).to(torch.float32)


def _affine_nearest(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_affine_grid`` + ``_apply_grid_transform`` (nearest, fill None = 0), one theta per image."""
    n, _, height, width = images.shape
    device = images.device
    # _affine_grid: pixel centres relative to the image centre, times theta / (w/2, h/2). torchvision takes
    # base_grid.bmm(rescaled_theta) per image; ``x * a + y * b + c`` is the same arithmetic to the bit (checked
    # against bmm) without a batched k=3 matmul (20x slower on the CPU). A shear's sample can fall exactly
    # half-way between two pixels, so the last bit matters to which one NEAREST picks.
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device).view(1, 1, width, 1)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device).view(1, height, 1, 1)
    scale = torch.tensor([0.5 * width, 0.5 * height], device=device)
    rescaled = theta.to(device).transpose(1, 2).div(scale)  # n x 3 x 2: rows for x, y and 1
    a, b, c = (rescaled[:, k].view(n, 1, 1, 2) for k in range(3))
    grid = (xs * a + ys * b).add_(c)  # n x H x W x 2
    out = nnf.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return _to_uint8(out)  # nearest samples of uint8 values (or the 0 fill): already integers


def _factors(magnitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``factor = 1.0 + magnitude`` (a Python float there): float32 ``factor`` and ``1.0 - factor`` per image.

    ``_blend`` multiplies by ``ratio`` and adds with ``alpha=1.0 - ratio``, both computed in double and cast
    to float32 by the kernel; the fused ``addcmul`` below matches ``add_(other, alpha=...)`` to the bit.
    """
    factor = 1.0 + magnitude.to(torch.float64)
    return factor.to(torch.float32).view(-1, 1, 1, 1), (1.0 - factor).to(torch.float32).view(-1, 1, 1, 1)


# The colour kernels convert the batch to float32 first (exact for uint8) and then run torchvision's float32
# operations: a uint8 tensor times a broadcast float tensor takes a slow mixed-dtype path on the CPU.


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    """``_rgb_to_grayscale_image(preserve_dtype=False).floor_()`` of a float32 RGB batch: ``B x 1 x H x W``."""
    r, g, b = image.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def _blend(image: torch.Tensor, other: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``_blend(image, other, 1 + magnitude)`` of a float32 batch, per-image ratio; modifies ``image``."""
    ratio, alpha = _factors(magnitude)
    return _to_uint8(torch.addcmul(image.mul_(ratio), other, alpha).clamp_(0, 255))


def _brightness(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    ratio, _ = _factors(magnitude)
    return _to_uint8(images.to(torch.float32).mul_(ratio).clamp_(0, 255))


def _color(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    image = images.to(torch.float32)
    return _blend(image, _grayscale(image), magnitude)


def _contrast(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    image = images.to(torch.float32)
    mean = torch.mean(_grayscale(image), dim=(-3, -2, -1), keepdim=True)
    return _blend(image, mean, magnitude)


def _sharpness(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``adjust_sharpness_image``: blend with the 3x3 [1 1 1; 1 5 1; 1 1 1]/13 blur inside a 1-pixel border.

    torchvision convolves in float32 and rounds. On integers the blur is ``k / 13`` for an integer ``k`` (the
    3x3 sum plus 4x the centre, exact in float32), never within 1/26 of a rounding tie, so ``round(k / 13)``
    here is the same number, without a depthwise convolution (slow on the CPU).
    """
    height, width = images.shape[-2:]
    if height <= 2 or width <= 2:
        return images.clone()
    output = images.to(torch.float32)
    rows = output[..., :, :-2] + output[..., :, 1:-1] + output[..., :, 2:]  # horizontal 3-sums
    view = output[..., 1:-1, 1:-1]  # the border keeps its pixels
    blurred = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    blurred.add_(view, alpha=4.0).div_(13.0).round_()
    _, alpha = _factors(magnitude)
    # torchvision: view.add_(blurred - view, alpha=1 - factor), which the fused addcmul matches to the bit
    view.copy_(torch.addcmul(view, blurred.sub_(view), alpha))
    return _to_uint8(output.clamp_(0, 255))


def _posterize(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    bits = magnitude.to(torch.int64).clamp(0, 8)  # int(magnitude); 8 bits keep the image
    mask = (255 << (8 - bits)) & 255  # ((1 << bits) - 1) << (8 - bits)
    return images & mask.to(torch.uint8).view(-1, 1, 1, 1)


def _solarize(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    # torchvision: threshold = 255.0 * magnitude (double), and uint8 >= a float scalar compares in float32.
    # For integer pixels x >= t exactly when x >= ceil(t): compare uint8 with uint8 (t <= 255 as magnitude <= 1).
    # (torchvision refuses thresholds above 255, i.e. magnitudes above 1; here they leave the image as it is.)
    threshold = (255.0 * magnitude.to(torch.float64)).to(torch.float32).ceil().view(-1, 1, 1, 1)
    above = (images >= threshold.clamp(0, 255).to(torch.uint8)) & (threshold <= 255)
    return images ^ above.view(torch.uint8).neg()  # x ^ 0xFF = 255 - x where above (torch.where on uint8 is slow)


def _autocontrast(images: torch.Tensor) -> torch.Tensor:
    float_image = images.to(torch.float32)
    minimum = float_image.amin(dim=(-2, -1), keepdim=True)
    maximum = float_image.amax(dim=(-2, -1), keepdim=True)
    eq = maximum == minimum
    inv_scale = maximum.sub_(minimum).mul_(1.0 / 255)
    minimum = minimum.masked_fill(eq, 0.0)
    inv_scale = inv_scale.masked_fill(eq, 1.0)
    return _to_uint8(float_image.sub_(minimum).div_(inv_scale).clamp_(0, 255))


def _histograms(images: torch.Tensor) -> torch.Tensor:
    """Per image and channel, the 256-bin histogram of a uint8 batch: ``B x C x 256`` int64, one bincount."""
    n, channels = images.shape[:2]
    rows = n * channels
    offsets = torch.arange(rows, device=images.device).mul_(256).view(rows, 1)
    index = images.reshape(rows, -1).to(torch.int64).add_(offsets)
    return torch.bincount(index.view(-1), minlength=rows * 256).view(n, channels, 256)


def _equalize(images: torch.Tensor) -> torch.Tensor:
    """``equalize_image`` (PIL's scheme) per image and channel: batched histogram, then a per-row LUT gather."""
    n, channels, height, width = images.shape
    pixels = height * width
    hist = _histograms(images)
    cum_hist = hist.cumsum(dim=-1)
    index = cum_hist.argmax(dim=-1, keepdim=True)  # the last non-empty bin: the image's maximum
    num_non_max_pixels = pixels - hist.gather(dim=-1, index=index)
    step = num_non_max_pixels.div(255, rounding_mode="floor")
    lut = cum_hist[..., :-1].add(step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([lut.new_zeros(n, channels, 1), lut], dim=-1)  # lut[0] = 0
    # torchvision keeps a channel with step == 0 (one value, nearly) as it is: the identity LUT does that
    # here, on the 256 entries rather than with a torch.where over the pixels
    identity = torch.arange(256, device=images.device).expand_as(lut)
    lut = torch.where(step.ne(0), lut, identity).to(torch.uint8)
    flat = images.reshape(n, channels, pixels).to(torch.int64)
    return lut.gather(dim=-1, index=flat).view_as(images)


_COLOUR_OPS = {
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": lambda images, magnitude: _autocontrast(images),
    "Equalize": lambda images, magnitude: _equalize(images),
    "Invert": lambda images, magnitude: images.bitwise_not(),
}


def apply_op(images: torch.Tensor, name: str, magnitude: torch.Tensor | float) -> torch.Tensor:
    """Operation ``name`` on every image of a uint8 ``B x C x H x W`` batch, image ``i`` at ``magnitude[i]``.

    ``magnitude`` is what torchvision passes to ``_apply_image_or_video_transform``: signed where the
    operation is, in pixels for translations (truncated as ``int()`` does), degrees for Rotate, bits for
    Posterize, a fraction of 255 for Solarize, ``factor - 1`` for Brightness/Color/Contrast/Sharpness, ignored
    by Identity/AutoContrast/Equalize/Invert. A scalar applies to every image. Returns a new tensor.
    """
    if name not in OP_INDEX:
        raise ValueError(f"unknown operation {name!r} (one of {OP_NAMES})")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"apply_op wants a uint8 B x C x H x W batch, got {images.dtype} {tuple(images.shape)}")
    n, _, height, width = images.shape
    magnitude = torch.as_tensor(magnitude, dtype=torch.float64, device=images.device)
    magnitude = magnitude.expand(n) if magnitude.dim() == 0 else magnitude.to(images.device)
    if name == "Identity" or n == 0:
        return images.clone()
    if name in GEOMETRIC_OPS:
        op = torch.full((n,), OP_INDEX[name], device=images.device)
        return _affine_nearest(images, _affine_thetas(op, magnitude, height, width))
    return _COLOUR_OPS[name](images, magnitude)


def _apply_step(images: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """One slot: image ``i`` gets ``OP_NAMES[op[i]]`` at ``magnitude[i]``. Returns a new tensor (or ``images``).

    The batch is sorted by operation (one stable sort, one read of the counts: the only host sync), so each
    operation's images are one contiguous slice: all geometric operations (adjacent in OP_NAMES) go through a
    single nearest grid_sample, each colour operation runs once on its slice, Identity is not touched; one
    gather puts the images back in order. (index_copy_ on uint8 is slow on the CPU; index_select is not.)
    """
    counts = torch.bincount(op, minlength=len(OP_NAMES)).tolist()
    if counts[OP_INDEX["Identity"]] == len(op):
        return images
    order = torch.argsort(op, stable=True)
    grouped = images.index_select(0, order)
    op, magnitude = op[order], magnitude[order]
    starts = [0]
    for count in counts:
        starts.append(starts[-1] + count)
    height, width = images.shape[-2:]

    lo, hi = starts[_GEOMETRIC.start], starts[_GEOMETRIC.stop]
    if hi > lo:
        theta = _affine_thetas(op[lo:hi], magnitude[lo:hi], height, width)
        grouped[lo:hi] = _affine_nearest(grouped[lo:hi], theta)
    for name, kernel in _COLOUR_OPS.items():
        lo, hi = starts[OP_INDEX[name]], starts[OP_INDEX[name] + 1]
        if hi > lo:
            grouped[lo:hi] = kernel(grouped[lo:hi], magnitude[lo:hi])
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=order.device))
    return grouped.index_select(0, inverse)


def apply_ops(images: torch.Tensor, ops: OpSample) -> torch.Tensor:
    """The drawn operations of ``sample_ops``, slot after slot, on a uint8 batch (a new tensor)."""
    out = images
    op = ops.effective_op()
    for slot in range(op.shape[1]):
        out = _apply_step(out, op[:, slot], ops.magnitude[:, slot])
    return out.clone() if out is images else out


# --------------------------------------------------------------------------------------------------------
# The policies
# --------------------------------------------------------------------------------------------------------


# On the CPU the batch is worked through in chunks of about this many bytes of float32 image: a whole batch
# (64 x 3 x 256 x 256 floats = 50 MB) leaves the caches, and blocks that large are mmap'ed and page-faulted
# afresh by every operation; chunks of ~8 images at 256 px ran twice as fast on 2 cores. The draws are made
# for the whole batch first, and every step is per image, so the result does not depend on the chunking.
CPU_CHUNK_BYTES = 6 << 20


def _chunk(n: int, height: int, width: int, device: torch.device) -> int:
    if device.type != "cpu":
        return max(n, 1)
    return max(1, CPU_CHUNK_BYTES // (4 * 3 * height * width))


def batch_augment(images: torch.Tensor, policy: str, size: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 ``B x 3 x S x S`` (on any device) -> uint8 ``B x 3 x size x size`` on the same device.

    Same steps as ``trainable.augment.train_transform(policy, size)``:
      none: CenterCrop(size); flip: CenterCrop + RandomHorizontalFlip;
      d2l: RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) + RandomHorizontalFlip;
      trivialaugment / randaugment / autoaugment: d2l's crop + flip, then the policy (TrivialAugmentWide();
      RandAugment(): num_ops=2, magnitude=9, num_magnitude_bins=31; AutoAugment(IMAGENET)), with the
      operation(s) and magnitude drawn per image.
    Every random draw comes from ``generator`` (on ``images.device``): the same generator state gives the same
    batch. The input is not modified.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown augmentation policy {policy!r} (one of {POLICIES})")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise TypeError(f"batch_augment wants a uint8 B x 3 x H x W batch, got {images.dtype} {tuple(images.shape)}")
    n, _, height, width = images.shape
    device = images.device
    if policy == "none":
        return _center_crop(images, size).clone(memory_format=torch.contiguous_format)  # never a view

    # every draw first, for the whole batch
    if policy == "flip":
        crop = _center_crop(images, size)
        flip = sample_flips(n, generator, device)
    else:
        top, left, crop_h, crop_w = sample_crops(n, height, width, generator, device)
        flip = sample_flips(n, generator, device)
    if policy in AUTO_POLICIES:
        ops = sample_ops(policy, n, generator, device, size=size)
        op, magnitude = ops.effective_op(), ops.magnitude
    out = torch.empty((n, 3, size, size), dtype=torch.uint8, device=device)
    step = _chunk(n, height, width, device)
    for lo in range(0, n, step):
        part = slice(lo, lo + step)
        if policy == "flip":
            out[part] = _flip_where(crop[part], flip[part])
            continue
        piece = _resized_crop(images[part], top[part], left[part], crop_h[part], crop_w[part], size, flip[part])
        if policy in AUTO_POLICIES:
            for slot in range(op.shape[1]):
                piece = _apply_step(piece, op[part, slot], magnitude[part, slot])
        out[part] = piece
    return out
