"""Training augmentation on the training device (``data.augment_on=device``), batched.

The random part of the training augmentation (horizontal flip and AutoAugment with the ImageNet policy) is split in
two:

* **drawing** (:class:`AugmentPlan`, in a data-loader worker): each image's parameters -- flip or not, and which of
  the policy's (operation, signed magnitude) *actions* its two sub-policy steps apply -- are drawn from a private
  generator seeded by the image's seed, itself a function of (seed, epoch, index). They travel with the crop as three
  small integers. The draw consumes random numbers in the order torchvision's ``AutoAugment`` does, so an image gets
  exactly the augmentation the per-image implementation (:func:`augment_per_image`) gives it.
* **applying** (:class:`DeviceAugment`, in the training process): the images of a batch that drew the same action
  are augmented together, one batched call per action, so a batch costs a few dozen kernel launches whatever its size,
  instead of a Python loop with about a dozen per image. Which images drew what is known on the host before the batch
  reaches the device (the parameters never leave the CPU), so nothing in it waits for the device: the index lists go
  over in one asynchronous copy, and the constants the geometric ops and sharpness need (sampling grids, the blur
  kernel, mean and std) are made once per device and shape and kept there. torchvision's own rotate, affine and
  sharpness build such constants with a blocking copy on every call.

The colour operations are torchvision's, called on the group; rotate, shear and sharpness are computed here with
cached constants, equal to torchvision's per-image result bit for bit on the CPU (tests/test_augment.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

FLIP, FIRST, SECOND = 0, 1, 2  # columns of a parameter row; an action column holds -1 for "nothing"
NONE = -1
_GEOMETRIC = ("Rotate", "ShearX", "ShearY")


def _autoaugment():
    from torchvision.transforms import v2

    return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)


class AugmentPlan:
    """What each image draws: ``draw(seed)`` gives its parameter row ``[flip, action, action]`` (int64).

    Actions are the policy's distinct (operation name, signed magnitude) pairs, numbered in :attr:`actions`.
    Picklable (it runs in data-loader workers)."""

    def __init__(self, hflip: bool, auto_augment: bool):
        self.hflip, self.auto_augment = hflip, auto_augment
        self.policies: list = []
        self.actions: list[tuple[str, float]] = []
        if auto_augment:
            policy = _autoaugment()
            self.policies = [tuple(step) for step in policy._policies]
            self._space = {name: policy._AUGMENTATION_SPACE[name] for sub in self.policies for name, _, _ in sub}
            for sub in self.policies:
                for name, _, index in sub:
                    for magnitude in self._magnitudes(name, index):
                        if (name, magnitude) not in self.actions:
                            self.actions.append((name, magnitude))
        self._numbers = {action: i for i, action in enumerate(self.actions)}

    def _magnitudes(self, name: str, index) -> list[float]:
        """The magnitudes an operation can be applied with: ``[m, -m]`` when it is signed."""
        make, signed = self._space[name]
        values = make(10, 1, 1)  # 10 bins, as AutoAugment uses; no operation of the ImageNet policy needs the size
        if values is None:
            return [0.0]
        magnitude = float(values[index])
        return [magnitude, -magnitude] if signed else [magnitude]

    def draw(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        row = [0, NONE, NONE]
        if self.hflip and torch.rand((), generator=g) < 0.5:
            row[FLIP] = 1
        if self.policies:
            sub = self.policies[int(torch.randint(len(self.policies), (), generator=g))]
            for column, (name, probability, index) in zip((FIRST, SECOND), sub):
                if not torch.rand((), generator=g) <= probability:
                    continue
                make, signed = self._space[name]
                magnitude = self._magnitudes(name, index)[0]
                if signed and torch.rand((), generator=g) <= 0.5:
                    magnitude = -magnitude
                row[column] = self._numbers[(name, magnitude)]
        return torch.tensor(row, dtype=torch.long)

    def draw_many(self, seeds) -> torch.Tensor:
        return torch.stack([self.draw(int(s)) for s in seeds]) if len(seeds) else torch.empty(0, 3, dtype=torch.long)


def augment_per_image(images: torch.Tensor, seeds, hflip: bool = True, auto_augment: bool = True) -> torch.Tensor:
    """The reference: each uint8 image flipped and augmented on its own by torchvision's ``AutoAugment`` under its
    seed (stitchkit 0.5's device augmentation). :class:`DeviceAugment` gives the same images, batched."""
    policy = _autoaugment() if auto_augment else None
    out = []
    for image, seed in zip(images, [int(s) for s in seeds]):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if hflip and torch.rand(()) < 0.5:
                image = image.flip(-1)
            if policy is not None:
                image = policy(image)
        out.append(image)
    return torch.stack(out) if out else images


def _affine_inverse(angle: float, shear: tuple[float, float], center: tuple[float, float]) -> list[float]:
    """The 2x3 matrix mapping output pixel coordinates to input ones for a rotation by ``angle`` degrees and a shear
    (degrees) about ``center`` (pixels from the image centre), no translation or scaling: PIL's and torchvision's
    convention for tensors."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    # The forward map is R(rot) * SHy(sy) * SHx(sx); its inverse has determinant 1.
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    m = [d, -b, 0.0, -c, a, 0.0]
    cx, cy = center
    m[2] += cx - m[0] * cx - m[1] * cy
    m[5] += cy - m[3] * cx - m[4] * cy
    return m


def _sampling_grid(matrix: list[float], height: int, width: int) -> torch.Tensor:
    """``grid_sample``'s grid (1, H, W, 2) for an inverse matrix on pixel coordinates centred on the image."""
    theta = torch.tensor(matrix, dtype=torch.float32).reshape(1, 2, 3)
    base = torch.empty(1, height, width, 3)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2).div_(torch.tensor([0.5 * width, 0.5 * height]))
    return base.view(1, height * width, 3).bmm(scaled).view(1, height, width, 2)


def _geometric_matrix(name: str, magnitude: float, height: int, width: int) -> list[float] | None:
    """AutoAugment's inverse matrix for a rotate or shear action; None where torchvision takes an exact fast path
    (rotations by multiples of 90 degrees)."""
    if name == "Rotate":
        angle = magnitude % 360
        if angle in (0, 180) or (angle in (90, 270) and height == width):
            return None
        return _affine_inverse(-angle, (0.0, 0.0), (0.0, 0.0))
    shear = math.degrees(math.atan(magnitude))
    # AutoAugment shears about the top-left corner (torchvision's center=[0, 0]).
    return _affine_inverse(0.0, (shear, 0.0) if name == "ShearX" else (0.0, shear), (-width * 0.5, -height * 0.5))


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait (pinned memory, asynchronous copy)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class DeviceAugment:
    """The random rest of the training augmentation on a batch of uint8 crops already on the training device, then
    normalisation: ``augment(images, params)`` with the ``(B, 3)`` parameter rows :class:`AugmentPlan` drew (on the
    host). Returns float32 normalised images, or ``dtype`` / channels-last where given."""

    def __init__(self, plan: AugmentPlan, mean, std):
        self.plan = plan
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self._policy = _autoaugment() if plan.auto_augment else None
        self._constants: dict = {}  # (what, device, shape...) -> tensor kept on the device

    def _constant(self, key: tuple, make) -> torch.Tensor:
        if key not in self._constants:
            self._constants[key] = _to_device(make(), key[1])
        return self._constants[key]

    def __call__(self, images: torch.Tensor, params: torch.Tensor, dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> torch.Tensor:
        device = images.device
        images = self.augment(images, params)
        mean = self._constant(("mean", device), lambda: self.mean)
        std = self._constant(("std", device), lambda: self.std)
        out = images.to(torch.float32).div_(255).sub_(mean).div_(std)
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out if dtype is None else out.to(dtype)

    def augment(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The flipped and augmented uint8 images, before normalisation."""
        if images.dtype != torch.uint8:
            raise TypeError("DeviceAugment takes the uint8 crops of data.augment_on=device")
        params = params.cpu()
        groups = self._groups(params)
        if groups:
            images = images.clone()
            # Every group's image positions in one host tensor, copied once; each group is a slice of it.
            order = torch.cat([positions for _, positions in groups])
            on_device = _to_device(order, images.device)
            start = 0
            for action, positions in groups:
                index = on_device[start : start + len(positions)]
                start += len(positions)
                images.index_copy_(0, index, self._apply(action, images.index_select(0, index)))
        return images

    def _groups(self, params: torch.Tensor) -> list[tuple[object, torch.Tensor]]:
        """``(action, positions)`` in the order the steps apply: the flip, then each sub-policy step's actions."""
        groups = []
        flipped = torch.nonzero(params[:, FLIP] == 1).flatten()
        if len(flipped):
            groups.append(("flip", flipped))
        for column in (FIRST, SECOND):
            drawn = params[:, column]
            for action in torch.unique(drawn[drawn != NONE]).tolist():
                groups.append((action, torch.nonzero(drawn == action).flatten()))
        return groups

    def _apply(self, action, images: torch.Tensor) -> torch.Tensor:
        if action == "flip":
            return images.flip(-1)
        name, magnitude = self.plan.actions[action]
        height, width = images.shape[-2:]
        if name in _GEOMETRIC:
            matrix = _geometric_matrix(name, magnitude, height, width)
            if matrix is None:  # an exact rotation by a multiple of 90 degrees: no sampling, no constants
                return self._policy._apply_image_or_video_transform(images, name, magnitude, "nearest", None)
            grid = self._constant(("grid", images.device, name, magnitude, height, width),
                                  lambda: _sampling_grid(matrix, height, width))
            sampled = nnf.grid_sample(images.to(torch.float32), grid.expand(len(images), -1, -1, -1),
                                      mode="nearest", padding_mode="zeros", align_corners=False)
            return sampled.round_().to(torch.uint8)
        if name == "Sharpness":
            return self._sharpen(images, 1.0 + magnitude)
        return self._policy._apply_image_or_video_transform(images, name, magnitude, self._policy.interpolation,
                                                            self._policy._fill)

    def _sharpen(self, images: torch.Tensor, factor: float) -> torch.Tensor:
        """Blend with the 3x3 smoothing of the image (ones around a centre of 5, normalised), borders untouched;
        factor 1 leaves the image as it is."""
        if factor < 0:
            raise ValueError(f"sharpness factor {factor} is negative")
        if images.shape[-1] <= 2 or images.shape[-2] <= 2:
            return images
        edge, centre = 1.0 / 13.0, 5.0 / 13.0
        kernel = self._constant(("sharpen", images.device), lambda: torch.tensor(
            [[edge, edge, edge], [edge, centre, edge], [edge, edge, edge]]).expand(3, 1, 3, 3).contiguous())
        out = images.to(torch.float32, copy=True)
        smooth = nnf.conv2d(out, kernel, groups=3).round_()
        inner = out[..., 1:-1, 1:-1]
        inner.add_(smooth.sub_(inner), alpha=1.0 - factor)
        return out.clamp_(0, 255).to(torch.uint8)
