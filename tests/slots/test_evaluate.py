"""The one evaluation of both decoders, against scikit-learn's ARI and a hand-computed MSE."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch.nn.functional import one_hot
from torch.utils.data import DataLoader

from col775.slots.evaluate import evaluate
from col775.slots.metrics import interior


class LookupModel:
    """A stand-in SlotModel whose masks and reconstructions are fixed per image (found by its pixel sum)."""

    def __init__(self, images, labels, recon, num_slots=4):
        self.lookup = {float(images[i].sum()): i for i in range(len(images))}
        self.masks_ = one_hot(labels, num_slots).permute(0, 3, 1, 2).float()
        self.recon = recon
        self.explained = 0

    def rows(self, images):
        return [self.lookup[float(image.sum())] for image in images]

    def masks(self, images):
        return self.masks_[self.rows(images)]

    def explain(self, images, generator=None):
        self.explained += len(images)
        return {"recon": self.recon[self.rows(images)], "masks": self.masks(images)}


def data_and_model():
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (5, 8, 8), generator=generator)
    noise = torch.randint(0, 4, (5, 8, 8), generator=generator)
    labels = torch.where(torch.rand(5, 8, 8, generator=generator) < 0.7, masks, noise)
    images = torch.rand(5, 3, 8, 8, generator=generator) * 2 - 1
    recon = images + 0.1
    recon[3:] = images[3:] + 0.3
    data = [{"image": images[i], "mask": masks[i], "index": i} for i in range(5)]
    return data, masks, labels, LookupModel(images, labels, recon)


def test_evaluation_scores_match_scikit_learn():
    data, masks, labels, model = data_and_model()
    scores = evaluate(model, DataLoader(data, batch_size=2), torch.device("cpu"))
    expected_ari = np.mean([adjusted_rand_score(masks[i].ravel(), labels[i].ravel()) for i in range(5)])
    fg = [masks[i].ravel() != 0 for i in range(5)]
    expected_fg = np.mean([adjusted_rand_score(masks[i].ravel()[fg[i]], labels[i].ravel()[fg[i]]) for i in range(5)])
    assert scores["ari"] == pytest.approx(expected_ari)
    assert scores["fg_ari"] == pytest.approx(expected_fg)
    assert scores["mse"] == pytest.approx((3 * 0.01 + 2 * 0.09) / 5, rel=1e-4)
    assert scores["images"] == 5
    inside = interior(masks).numpy()  # checked against loops in test_metrics
    keep = [(masks[i].numpy() != 0) & inside[i] for i in range(5)]
    expected_inner = [adjusted_rand_score(masks[i].numpy()[k], labels[i].numpy()[k]) for i, k in enumerate(keep) if k.any()]
    assert scores["fg_ari_interior"] == pytest.approx(np.mean(expected_inner))
    share = [((masks[i].numpy() != 0) & ~inside[i]).sum() / (masks[i].numpy() != 0).sum() for i in range(5)]
    assert scores["boundary_share"] == pytest.approx(np.mean(share))


def test_reconstructions_are_capped_or_left_out_but_every_image_is_segmented():
    data, _, _, model = data_and_model()
    loader = DataLoader(data, batch_size=2)
    full = evaluate(model, loader, torch.device("cpu"))
    capped = evaluate(model, loader, torch.device("cpu"), max_recon_images=3)
    assert model.explained == 5 + 3
    assert capped["mse"] == pytest.approx(0.01, rel=1e-4) and capped["ari"] == pytest.approx(full["ari"])
    none = evaluate(model, loader, torch.device("cpu"), max_recon_images=None)
    assert model.explained == 8 and none["mse"] is None and none["ari"] == pytest.approx(full["ari"])


def test_evaluation_without_masks_reports_none():
    images = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(3)])
    model = LookupModel(images, torch.zeros(3, 4, 4, dtype=torch.long), images.clone())
    data = [{"image": images[i], "index": i} for i in range(3)]
    scores = evaluate(model, DataLoader(data, batch_size=2), torch.device("cpu"))
    assert scores["ari"] is None and scores["fg_ari"] is None and scores["mse"] == 0.0 and scores["images"] == 3


def test_scores_by_object_count_group_images_by_their_true_objects():
    data, masks, labels, model = data_and_model()
    masks[0] = torch.where(masks[0] == 2, 1, masks[0])  # image 0: background and one object
    masks[4] = (masks[4] != 0).long()  # image 4 too
    rows = evaluate(model, DataLoader(data, batch_size=2), torch.device("cpu"))["by_objects"]
    groups = {1: [0, 4], 2: [1, 2, 3]}
    assert [row["objects"] for row in rows] == [1, 2] and [row["images"] for row in rows] == [2, 3]
    for row in rows:
        expected = np.mean([adjusted_rand_score(masks[i].ravel(), labels[i].ravel()) for i in groups[row["objects"]]])
        assert row["ari"] == pytest.approx(expected)
        fg = [masks[i].ravel() != 0 for i in groups[row["objects"]]]
        expected_fg = np.mean([adjusted_rand_score(masks[i].ravel()[f], labels[i].ravel()[f]) for i, f in zip(groups[row["objects"]], fg)])
        assert row["fg_ari"] == pytest.approx(expected_fg)
    images = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(2)])
    unmasked = LookupModel(images, torch.zeros(2, 4, 4, dtype=torch.long), images.clone())
    assert evaluate(unmasked, DataLoader([{"image": images[i], "index": i} for i in range(2)]), torch.device("cpu"))["by_objects"] == []
