"""Batched per-image augmentation (augment.py) against independent references."""

import pytest
import torch
import torch.nn.functional as F

from col775.resnet.augment import BatchAugment

pytestmark = pytest.mark.usefixtures("one_thread")


def images(batch=4, size=16):
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def whole(batch, size):
    return torch.tensor([[0.0, 0.0, size, size]] * batch)


def test_the_whole_image_at_its_own_size_is_unchanged_and_flips_mirror_it():
    x = images()
    keep, flip = torch.zeros(4, dtype=torch.bool), torch.tensor([True, False, True, False])
    out = BatchAugment(16).apply(x, whole(4, 16), keep)
    assert out.dtype == torch.float32 and torch.equal(out, x.float())
    out = BatchAugment(16).apply(x, whole(4, 16), flip)
    assert torch.equal(out[flip], x[flip].float().flip(-1)) and torch.equal(out[~flip], x[~flip].float())


def test_halving_averages_each_two_by_two_block():
    x = images()
    torch.testing.assert_close(BatchAugment(8).apply(x, whole(4, 16), torch.zeros(4, dtype=torch.bool)),
                               F.avg_pool2d(x.float(), 2))


def test_an_enlarged_crop_is_bilinear_interpolation_of_that_crop():
    x = images()
    box = torch.tensor([[2.0, 3.0, 10.0, 11.0], [0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0], [4.0, 1.0, 12.0, 9.0]])
    out = BatchAugment(16).apply(x, box, torch.zeros(4, dtype=torch.bool))
    for i, (x1, y1, x2, y2) in enumerate(box.long().tolist()):
        crop = x[i : i + 1, :, y1:y2, x1:x2].float()
        reference = F.interpolate(crop, size=16, mode="bilinear", align_corners=False)[0]
        # inside the border row and column; at them roi_align samples the pixels just outside the
        # crop where the image has them, while interpolate on the cut-out crop repeats its edge
        torch.testing.assert_close(out[i, :, 1:-1, 1:-1], reference[:, 1:-1, 1:-1])


def test_random_boxes_fit_the_image_with_the_asked_area_and_differ_per_image():
    torch.manual_seed(0)
    augment = BatchAugment(32, scale=(0.3, 0.9))
    boxes = augment.boxes(2000, 40, 60, torch.device("cpu"))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 60 + 1e-4).all() and (boxes[:, 3] <= 40 + 1e-4).all()
    area = w * h / (40 * 60)
    assert area.max() <= 0.9 + 1e-4 and area.min() >= 0.3 * 3 / 4 - 1e-4  # shrunk to fit at most by the ratio
    ratio = w / h
    fits = (w < 60 - 1e-3) & (h < 40 - 1e-3)
    assert ratio[fits].min() >= 3 / 4 - 1e-4 and ratio[fits].max() <= 4 / 3 + 1e-4
    assert boxes.unique(dim=0).shape[0] == 2000
    out = augment(images(6, 40))
    assert out.shape == (6, 3, 32, 32)
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) == 6


def test_bad_scale_is_refused():
    with pytest.raises(ValueError, match="crop scale"):
        BatchAugment(8, scale=(0.0, 1.0))
