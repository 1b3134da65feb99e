"""Training augmentation of a whole batch where it lives (the GPU, when there is one).

``BatchAugment`` gives every image its own random resized crop and horizontal flip, like
``train_transform`` applied image by image, but as two batched operations on the batch's
device: all crops are resampled to the output size by one ``torchvision.ops.roi_align`` call
(one box per image), and the flips are one ``torch.where``. With ``augment: device`` the
loader hands out the cached uint8 pixels untouched, so reading a batch is a memory copy (see
benchmarks/bench_image_cache.py) and the augmentation costs the GPU microseconds instead of
costing loader processes most of their time.

How it differs from torchvision's ``RandomResizedCrop``: the crop's area fraction and aspect
ratio are drawn from the same ranges (uniform area, log-uniform ratio), but a crop that would
not fit is shrunk to fit instead of being drawn again, and boxes have sub-pixel corners.
Resampling is bilinear; when a crop is shrunk, ``roi_align`` averages
``ceil(crop / output)`` bilinear samples per output pixel along each side, so downscaling is
smoothed much as an antialiased resize would be.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

from col775.resnet.data import CROP_SCALE


class BatchAugment:
    """(B, 3, H, W) images (uint8 or float, 0-255) -> float (B, 3, size, size), each image cropped and flipped on its own."""

    def __init__(self, size: int, scale: tuple[float, float] = CROP_SCALE,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: float = 0.5):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
        self.size, self.scale, self.ratio, self.flip = size, scale, ratio, flip

    def boxes(self, batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Crop boxes (x1, y1, x2, y2) [B, 4] in pixel coordinates (pixel i spans [i, i + 1])."""
        area = torch.empty(batch, device=device).uniform_(*self.scale) * (height * width)
        log_ratio = torch.empty(batch, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        w = torch.sqrt(area * log_ratio.exp()).clamp(max=width)
        h = torch.sqrt(area / log_ratio.exp()).clamp(max=height)
        x1 = torch.rand(batch, device=device) * (width - w)
        y1 = torch.rand(batch, device=device) * (height - h)
        return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        boxes = self.boxes(batch, height, width, images.device)
        return self.apply(images, boxes, torch.rand(batch, device=images.device) < self.flip)

    def apply(self, images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop ``boxes`` [B, 4] out of ``images``, resample to size x size, flip where ``flips`` [B]."""
        index = torch.arange(len(images), device=images.device, dtype=boxes.dtype).unsqueeze(1)
        crops = roi_align(images.float(), torch.cat([index, boxes], dim=1), (self.size, self.size),
                          spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        return torch.where(flips.view(-1, 1, 1, 1), crops.flip(-1), crops)
