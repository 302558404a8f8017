"""trainable.batch_augment against torchvision.transforms.v2: distributions, per-image draws, exact operations."""

from __future__ import annotations

import trainable.tv_compat  # noqa: F401  (before torchvision)

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from trainable import batch_augment as ba
from trainable.config import AUGMENT_POLICIES

TV_POLICY = {
    "trivialaugment": v2.TrivialAugmentWide(),
    "randaugment": v2.RandAugment(),
    "autoaugment": v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
}
GEOMETRIC = set(ba.GEOMETRIC_OPS)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 images with some spatial structure (blurred noise), so crops and operations show."""
    noise = torch.randint(0, 256, (n, 3, height, width), generator=gen(seed)).float()
    return torch.nn.functional.avg_pool2d(noise, 5, 1, 2, count_include_pad=False).round().to(torch.uint8)


def tv_apply(image: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """One operation exactly as torchvision's auto-augment policies apply it (NEAREST, fill None)."""
    policy = TV_POLICY["trivialaugment"]
    return policy._apply_image_or_video_transform(
        image, name, magnitude, interpolation=InterpolationMode.NEAREST, fill=policy._fill
    )


# ---------------------------------------------------------------------------------------------------------
# RandomResizedCrop's parameters
# ---------------------------------------------------------------------------------------------------------


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D = sup |F_a - F_b| (ties handled: both ECDFs at every observed value)."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    values = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, values, side="right") / len(a)
    cdf_b = np.searchsorted(b, values, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def ks_critical(n: int, m: int, alpha: float = 1e-3) -> float:
    """Asymptotic two-sample critical value: c(alpha) * sqrt((n + m) / (n m)), c = sqrt(-ln(alpha / 2) / 2)."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def torchvision_crops(height: int, width: int, draws: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``draws`` boxes from torchvision's own RandomResizedCrop (make_params in 0.28, get_params before)."""
    crop = v2.RandomResizedCrop(8)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    torch.manual_seed(seed)
    if hasattr(crop, "make_params"):
        boxes = [crop.make_params([image]) for _ in range(draws)]
    else:  # older torchvision
        boxes = [crop._get_params([image]) for _ in range(draws)]
    return {key: np.array([box[key] for box in boxes]) for key in ("top", "left", "height", "width")}


def our_crops(height: int, width: int, draws: int, seed: int = 0, **kwargs) -> dict[str, np.ndarray]:
    top, left, h, w = ba.sample_crops(draws, height, width, gen(seed), "cpu", **kwargs)
    return {"top": top.numpy(), "left": left.numpy(), "height": h.numpy(), "width": w.numpy()}


def crop_statistics(boxes: dict[str, np.ndarray], height: int, width: int) -> dict[str, np.ndarray]:
    h, w = boxes["height"], boxes["width"]
    return {
        "area fraction": h * w / (height * width),
        "log ratio": np.log(w / h),
        "relative top": boxes["top"] / (height - h + 1),
        "relative left": boxes["left"] / (width - w + 1),
    }


def fallback_box(height: int, width: int) -> tuple[int, int, int, int]:
    """torchvision's box when 10 attempts fail: the central crop, the ratio clamped to [3/4, 4/3]."""
    in_ratio = width / height
    if in_ratio < 3 / 4:
        w, h = width, int(round(width / (3 / 4)))
    elif in_ratio > 4 / 3:
        h, w = height, int(round(height * 4 / 3))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def is_fallback(boxes: dict[str, np.ndarray], height: int, width: int) -> np.ndarray:
    top, left, h, w = fallback_box(height, width)
    return (boxes["top"] == top) & (boxes["left"] == left) & (boxes["height"] == h) & (boxes["width"] == w)


def check_crop_bounds(boxes: dict[str, np.ndarray], height: int, width: int) -> None:
    top, left, h, w = boxes["top"], boxes["left"], boxes["height"], boxes["width"]
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    drawn = ~is_fallback(boxes, height, width)
    h, w = h[drawn].astype(np.float64), w[drawn].astype(np.float64)
    area = height * width
    # A drawn box is w = round(sqrt(A r)), h = round(sqrt(A / r)) with A / area in [0.08, 1] and r in [3/4, 4/3],
    # so torchvision's own boxes stray slightly outside those bounds (72 x 72 of 256 x 256 is 0.079): allow what
    # the rounding to whole pixels allows, no more.
    assert ((w + 0.5) * (h + 0.5) >= 0.08 * area).all() and ((w - 0.5) * (h - 0.5) <= area).all()
    assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    assert (w * h <= area).all()


CROP_SHAPES = [(256, 256), (146, 146), (24, 300), (300, 24), (9, 7)]


@pytest.mark.parametrize("height,width", CROP_SHAPES)
def test_crops_follow_torchvision_distribution(height: int, width: int) -> None:
    draws = 4000
    theirs = torchvision_crops(height, width, draws, seed=1)
    ours = our_crops(height, width, draws, seed=2)
    check_crop_bounds(theirs, height, width)  # the bounds check holds for torchvision itself
    check_crop_bounds(ours, height, width)
    critical = ks_critical(draws, draws)
    for key, our_values in crop_statistics(ours, height, width).items():
        their_values = crop_statistics(theirs, height, width)[key]
        d = ks_statistic(our_values, their_values)
        assert d < critical, f"{key}: KS D = {d:.4f} >= {critical:.4f} against torchvision"
    if width / height > 4 or height / width > 4:  # elongated: the central fallback fires often
        assert is_fallback(theirs, height, width).mean() > 0.2
        assert abs(is_fallback(ours, height, width).mean() - is_fallback(theirs, height, width).mean()) < 0.05


def test_ks_rejects_a_wrong_crop_distribution() -> None:
    """The KS check has the power to fail: a sampler with another scale or ratio range is caught."""
    draws = 4000
    theirs = crop_statistics(torchvision_crops(256, 256, draws), 256, 256)
    critical = ks_critical(draws, draws)
    wrong_scale = crop_statistics(our_crops(256, 256, draws, scale=(0.12, 1.0)), 256, 256)
    assert ks_statistic(wrong_scale["area fraction"], theirs["area fraction"]) > critical
    wrong_ratio = crop_statistics(our_crops(256, 256, draws, ratio=(2 / 3, 3 / 2)), 256, 256)
    assert ks_statistic(wrong_ratio["log ratio"], theirs["log ratio"]) > critical


def test_fallback_box_is_torchvisions() -> None:
    for height, width in [(24, 300), (300, 24), (10, 1000)]:
        theirs = torchvision_crops(height, width, 300)
        ours = our_crops(height, width, 300)
        expected = fallback_box(height, width)
        for boxes in (theirs, ours):
            all_boxes = np.stack([boxes[k] for k in ("top", "left", "height", "width")], 1)
            fell_back = all_boxes[is_fallback(boxes, height, width)]
            assert len(fell_back) > 0 and (fell_back == np.array(expected)).all()


# ---------------------------------------------------------------------------------------------------------
# Flips and per-image draws
# ---------------------------------------------------------------------------------------------------------


def test_flip_rate_is_one_half() -> None:
    n = 4000
    # every centre crop (columns 1-6) differs from its mirror image
    images = torch.randint(0, 256, (n, 3, 6, 8), generator=gen(3), dtype=torch.uint8)
    images[..., 1] = 0
    images[..., 6] = 255
    out = ba.batch_augment(images, "flip", 6, gen(4))
    crop = F.center_crop(images, [6, 6])
    same = (out == crop).flatten(1).all(1)
    flipped = (out == crop.flip(-1)).flatten(1).all(1)
    assert bool((same ^ flipped).all())  # each image is its centre crop or that crop mirrored
    assert abs(flipped.float().mean().item() - 0.5) < 0.05

    # d2l folds the flip into the resize grid: a horizontal ramp comes out rising or falling
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).expand(n, 3, 32, 32).contiguous()
    out = ba.batch_augment(ramp, "d2l", 16, gen(5))
    rising = out[:, 0, 8, -1].int() > out[:, 0, 8, 0].int()
    falling = out[:, 0, 8, -1].int() < out[:, 0, 8, 0].int()
    assert bool((rising ^ falling).all())
    assert abs(falling.float().mean().item() - 0.5) < 0.05


def test_images_in_a_batch_get_their_own_parameters() -> None:
    n = 64
    top, left, h, w = ba.sample_crops(n, 256, 256, gen(0))
    assert len(set(zip(top.tolist(), left.tolist(), h.tolist(), w.tolist()))) >= n - 2
    ops = ba.sample_ops("trivialaugment", n, gen(0))
    assert len(set(ops.op[:, 0].tolist())) >= 8
    assert len(set(ops.magnitude[:, 0].tolist())) >= 20
    ops = ba.sample_ops("randaugment", n, gen(0), size=224)
    assert len(set(map(tuple, ops.op.tolist()))) >= 40

    # the same image 64 times: the outputs differ image by image
    image = smooth_images(1, 48, 48).expand(n, -1, -1, -1).contiguous()
    for policy in ("d2l", "trivialaugment", "randaugment", "autoaugment"):
        out = ba.batch_augment(image, policy, 32, gen(1))
        assert len({bytes(o.numpy().tobytes()) for o in out}) >= n - 2, policy
    # and the operations alone, on identical images, vary across the batch
    ops = ba.sample_ops("trivialaugment", n, gen(2))
    out = ba.apply_ops(image[:, :, :32, :32].contiguous(), ops)
    assert len({bytes(o.numpy().tobytes()) for o in out}) >= 30


def policy_space(policy: str) -> set[str]:
    """The operation names torchvision's own policy object can apply."""
    tv = TV_POLICY[policy]
    if policy == "autoaugment":
        return {name for pair in tv._policies for name, _, _ in pair}
    return set(tv._AUGMENTATION_SPACE)


@pytest.mark.parametrize("policy", ba.AUTO_POLICIES)
def test_every_operation_of_a_policy_is_drawn(policy: str) -> None:
    n, size = 20000, 224
    ops = ba.sample_ops(policy, n, gen(7), size=size)
    slots = {"trivialaugment": 1, "randaugment": 2, "autoaugment": 2}[policy]
    for field in ops:
        assert field.shape == (n, slots)
    applied_names = [ba.OP_NAMES[i] for i in ops.op[ops.applied].tolist()]
    assert set(applied_names) == policy_space(policy) == set(ba.policy_op_names(policy))

    tv = TV_POLICY[policy]
    bins = {"trivialaugment": 31, "randaugment": 31, "autoaugment": 10}[policy]
    space = tv._AUGMENTATION_SPACE
    for slot in range(slots):
        for i in range(0, n, 37):  # every magnitude is one of torchvision's bins, signed where the op is
            name = ba.OP_NAMES[int(ops.op[i, slot])]
            magnitudes_fn, signed = space[name]
            values = magnitudes_fn(bins, size, size)
            level = int(ops.level[i, slot])
            if values is None:
                assert level == -1 and float(ops.magnitude[i, slot]) == 0.0
                continue
            expected = float(values[level])
            assert abs(float(ops.magnitude[i, slot])) == expected, (name, level)
            if not signed:
                assert int(ops.sign[i, slot]) == 1
    if policy == "randaugment":
        assert bool((ops.level[ops.level >= 0] == 9).all())
    if policy == "trivialaugment":
        assert set(ops.level[ops.level >= 0].tolist()) == set(range(31))
    signed_ops = [ba.OP_INDEX[name] for name, (_, signed) in space.items() if signed and name in policy_space(policy)]
    is_signed = torch.isin(ops.op, torch.tensor(signed_ops)) & (ops.level > 0)
    assert abs((ops.sign[is_signed] < 0).float().mean().item() - 0.5) < 0.03

    if policy in ("trivialaugment", "randaugment"):  # uniform over the 14 operations
        counts = torch.bincount(ops.op.flatten(), minlength=len(ba.OP_NAMES))
        expected = n * slots / len(space)
        drawn = counts[counts > 0].float()
        assert len(drawn) == 14 and bool(((drawn - expected).abs() < 0.1 * expected).all())
    else:  # each sub-policy's operation applied with its probability
        table = tv._policies
        first_ops = [ba.OP_INDEX[pair[0][0]] for pair in table]
        rate_first = ops.applied[:, 0].float().mean().item()
        assert abs(rate_first - np.mean([pair[0][1] for pair in table])) < 0.02
        rate_second = ops.applied[:, 1].float().mean().item()
        assert abs(rate_second - np.mean([pair[1][1] for pair in table])) < 0.02
        assert set(ops.op[:, 0].tolist()) == set(first_ops)


# ---------------------------------------------------------------------------------------------------------
# The whole batch
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", AUGMENT_POLICIES)
def test_shape_dtype_device_kept_and_input_untouched(policy: str) -> None:
    assert ba.POLICIES == AUGMENT_POLICIES
    images = smooth_images(5, 40, 40)
    before = images.clone()
    out = ba.batch_augment(images, policy, 32, gen(0))
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.uint8 and out.device == images.device
    assert out.is_contiguous()
    assert torch.equal(images, before)
    assert 0 <= int(out.min()) and int(out.max()) <= 255
    empty = ba.batch_augment(images[:0], policy, 32, gen(0))
    assert empty.shape == (0, 3, 32, 32) and empty.dtype == torch.uint8


@pytest.mark.parametrize("policy", AUGMENT_POLICIES)
def test_same_seed_same_batch(policy: str) -> None:
    images = smooth_images(12, 48, 48)
    first = ba.batch_augment(images, policy, 40, gen(11))
    assert torch.equal(first, ba.batch_augment(images, policy, 40, gen(11)))
    if policy != "none":  # the only policy without randomness
        assert not torch.equal(first, ba.batch_augment(images, policy, 40, gen(12)))


@pytest.mark.parametrize("policy", ["d2l", "trivialaugment", "randaugment", "autoaugment"])
def test_cpu_chunking_does_not_change_the_batch(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    images = smooth_images(24, 48, 48)
    monkeypatch.setattr(ba, "CPU_CHUNK_BYTES", 1)  # one image per chunk
    one = ba.batch_augment(images, policy, 40, gen(5))
    monkeypatch.setattr(ba, "CPU_CHUNK_BYTES", 1 << 30)  # the whole batch at once
    whole = ba.batch_augment(images, policy, 40, gen(5))
    assert torch.equal(one, whole)


@pytest.mark.parametrize("policy", AUGMENT_POLICIES)
def test_whole_policy_runs_and_changes_the_input(policy: str) -> None:
    images = smooth_images(16, 73, 73)
    out = ba.batch_augment(images, policy, 64, gen(21))
    assert out.shape == (16, 3, 64, 64) and out.dtype == torch.uint8
    crop = F.center_crop(images, [64, 64])
    unchanged = (out == crop).flatten(1).all(1)
    if policy == "none":
        assert bool(unchanged.all())
    elif policy == "flip":
        assert bool(((out == crop.flip(-1)).flatten(1).all(1) ^ unchanged).all()) and not bool(unchanged.all())
    else:
        assert not bool(unchanged.any())


def test_batch_is_crop_then_operations_in_draw_order() -> None:
    """batch_augment draws crops, flips, then operations from the generator, and composes the pieces so."""
    images = smooth_images(10, 60, 60)
    for policy in ba.AUTO_POLICIES:
        out = ba.batch_augment(images, policy, 48, gen(8))
        g = gen(8)
        top, left, h, w = ba.sample_crops(10, 60, 60, g)
        flip = ba.sample_flips(10, g)
        ops = ba.sample_ops(policy, 10, g, size=48)
        crops = ba._resized_crop(images, top, left, h, w, 48, flip)
        assert torch.equal(out, ba.apply_ops(crops, ops))


# ---------------------------------------------------------------------------------------------------------
# The resize and the operations against torchvision, image by image
# ---------------------------------------------------------------------------------------------------------


def test_resized_crop_matches_torchvision() -> None:
    n = 24
    images = smooth_images(n, 80, 80, seed=5)
    top, left, h, w = ba.sample_crops(n, 80, 80, gen(6))
    flip = ba.sample_flips(n, gen(7))
    for size in (70, 100):  # downscaling (by up to 80/70) and upscaling crops
        ours = ba._resized_crop(images, top, left, h, w, size, flip).int()
        for antialias in (False, True):
            box = [(int(top[i]), int(left[i]), int(h[i]), int(w[i])) for i in range(n)]
            theirs = torch.stack(
                [F.resized_crop(images[i], *box[i], [size, size], antialias=antialias) for i in range(n)]
            )
            theirs = torch.where(flip.view(n, 1, 1, 1), theirs.flip(-1), theirs).int()
            diff = (ours - theirs).abs()
            if not antialias:
                # the same bilinear sampling; torchvision's uint8 CPU kernel works in fixed point: off by one at most
                assert int(diff.max()) <= 1 and diff.float().mean().item() < 0.3
            else:
                # antialias=True widens the filter when downscaling (here at most S/size = 1.14x): small differences
                assert diff.float().mean().item() < 0.5 and (diff > 2).float().mean().item() < 0.01


# magnitudes per operation, torchvision's bins among them; signed operations with both signs
MAGNITUDES = {
    "Identity": [0.0] * 4,
    "ShearX": [0.0, 0.3, -0.3, 0.99, -0.99, 0.033, -0.2],
    "ShearY": [0.0, 0.3, -0.3, 0.99, -0.99, 0.033, -0.2],
    "TranslateX": [0.0, 1.0667, -1.0667, 32.0, -32.0, 6.8, -13.5],
    "TranslateY": [0.0, 1.0667, -1.0667, 32.0, -32.0, 6.8, -13.5],
    "Rotate": [0.0, 9.0, -9.0, 90.0, -90.0, 135.0, -180.0, 30.0, -4.5],
    "Brightness": [0.0, 0.27, -0.27, 0.99, -0.99, 0.033, -0.9],
    "Color": [0.0, 0.27, -0.27, 0.99, -0.99, 0.033, -0.9],
    "Contrast": [0.0, 0.27, -0.27, 0.99, -0.99, 0.033, -0.9],
    "Sharpness": [0.0, 0.27, -0.27, 0.99, -0.99, 0.033, -0.9],
    "Posterize": [8, 7, 6, 5, 4, 2, 1, 0],
    "Solarize": [1.0, 0.0, 0.5, 0.9667, 0.0333, 0.7, 0.2],
    "AutoContrast": [0.0] * 4,
    "Equalize": [0.0] * 4,
    "Invert": [0.0] * 4,
}


def special_images(n: int, height: int, width: int) -> torch.Tensor:
    """Smooth random images plus edge cases: a constant image, a constant channel, a two-valued image."""
    images = smooth_images(n, height, width, seed=n + height)
    images[0] = 77
    if n > 1:
        images[1, 0] = 5
    if n > 2:
        images[2] = torch.where(images[2] > 128, 200, 30).to(torch.uint8)
    if n > 3:
        images[3] = images[3].clamp(100, 140)
    return images


@pytest.mark.parametrize("name", ba.OP_NAMES)
@pytest.mark.parametrize("height,width", [(32, 32), (23, 29)])
def test_apply_op_matches_torchvision(name: str, height: int, width: int) -> None:
    magnitudes = torch.tensor(MAGNITUDES[name], dtype=torch.float32).double()  # float32 bins, as torchvision's
    n = len(magnitudes)
    images = special_images(n, height, width)
    ours = ba.apply_op(images, name, magnitudes)
    theirs = torch.stack([tv_apply(images[i], name, float(magnitudes[i])) for i in range(n)])
    assert ours.shape == theirs.shape and ours.dtype == torch.uint8
    if name in GEOMETRIC:
        # Nearest sampling of the same float32 grid: identical in practice (the thetas come from the same
        # float64 formula, cast to float32, and the same grid arithmetic); a last-bit difference in cos/tan
        # could move a sample that lies exactly half-way between two pixels, hence 99% rather than all.
        agreement = (ours == theirs).float().mean().item()
        assert agreement >= 0.99, agreement
        moved = [i for i in range(1, n) if abs(float(magnitudes[i])) >= 0.03]  # image 0 is constant
        assert all(not torch.equal(ours[i], images[i]) for i in moved)  # the operation did something
    else:
        assert torch.equal(ours, theirs), f"{name}: {(ours != theirs).sum().item()} pixels differ"


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_geometric_ops_are_exact_on_the_cpu_for_every_policy_bin(name: str) -> None:
    """Stricter than the 99% above: on the CPU the grid is torchvision's arithmetic to the bit, so every pixel
    agrees for every bin of every policy, both signs, at the sizes trained here (rotations by 90/180 included,
    shears whose samples fall exactly half-way between two pixels included). Should a future torch change its
    bmm or trigonometry in the last bit, the 99% test above is the requirement; this one guards the exactness."""
    for size in (64, 224):
        magnitudes = set()
        for policy in ba.AUTO_POLICIES:
            tv = TV_POLICY[policy]
            if name not in tv._AUGMENTATION_SPACE:
                continue
            bins = {"trivialaugment": 31, "randaugment": 31, "autoaugment": 10}[policy]
            values = tv._AUGMENTATION_SPACE[name][0](bins, size, size)
            magnitudes |= {float(v) for v in values} | {-float(v) for v in values}
        magnitudes = torch.tensor(sorted(magnitudes), dtype=torch.float64)
        if size == 224:
            magnitudes = magnitudes[:: max(1, len(magnitudes) // 12)]  # a dozen at 224 px, to stay fast
        images = smooth_images(len(magnitudes), size, size, seed=size)
        ours = ba.apply_op(images, name, magnitudes)
        theirs = torch.stack([tv_apply(images[i], name, float(m)) for i, m in enumerate(magnitudes)])
        assert torch.equal(ours, theirs), f"{name} at {size} px: {(ours != theirs).sum().item()} pixels differ"


@pytest.mark.parametrize("policy", ba.AUTO_POLICIES)
def test_apply_ops_matches_torchvision_image_by_image(policy: str) -> None:
    """Sampled operations applied batched equal torchvision applying each image's operations in turn."""
    n, size = 96, 40
    images = special_images(n, size, size)
    ops = ba.sample_ops(policy, n, gen(13), size=size)
    ours = ba.apply_ops(images, ops)
    op = ops.effective_op()
    theirs = []
    for i in range(n):
        image = images[i]
        for slot in range(op.shape[1]):
            image = tv_apply(image, ba.OP_NAMES[int(op[i, slot])], float(ops.magnitude[i, slot]))
        theirs.append(image)
    theirs = torch.stack(theirs)
    assert (ours == theirs).float().mean().item() >= 0.999


def test_apply_op_accepts_a_scalar_and_rejects_unknown_names() -> None:
    images = special_images(3, 16, 16)
    assert torch.equal(ba.apply_op(images, "Posterize", 4), images & 0xF0)
    with pytest.raises(ValueError):
        ba.apply_op(images, "Blur", 1.0)
    with pytest.raises(ValueError):
        ba.batch_augment(images, "mixup", 8, gen())
    with pytest.raises(ValueError):
        ba.sample_ops("randaugment", 4, gen())  # its translations need the image size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda_and_matches_the_cpu_operations() -> None:
    device = torch.device("cuda")
    images = smooth_images(32, 80, 80)
    for policy in AUGMENT_POLICIES:
        out = ba.batch_augment(images.to(device), policy, 64, torch.Generator(device=device).manual_seed(0))
        assert out.device.type == "cuda" and out.shape == (32, 3, 64, 64) and out.dtype == torch.uint8
    for name in ba.OP_NAMES:
        magnitudes = torch.tensor(MAGNITUDES[name], dtype=torch.float32).double()
        batch = special_images(len(magnitudes), 32, 32)
        on_cpu = ba.apply_op(batch, name, magnitudes)
        on_gpu = ba.apply_op(batch.to(device), name, magnitudes.to(device)).cpu()
        assert (on_cpu == on_gpu).float().mean().item() >= 0.99, name
