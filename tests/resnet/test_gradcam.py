"""Grad-CAM: the maps against a Grad-CAM written here with hooks, the rows shown, class-name matching."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from col775.resnet.gradcam import _pick, gradcam_grids, map_focus, match_classes
from col775.resnet.resnet import ResNet


def test_focus_of_flat_and_point_maps():
    assert map_focus(np.ones((20, 20))) == 0.1
    point = np.zeros((20, 20))
    point[3, 4] = 1.0
    assert map_focus(point) == 1.0
    assert map_focus(np.zeros((4, 4))) == 0.0


def test_pick_splits_a_class_into_correct_and_wrong_in_order():
    labels = np.array([2, 2, 1, 2, 2, 2])
    predictions = np.array([2, 0, 1, 2, 3, 2])
    assert _pick(labels, predictions, 2, per_kind=2) == ([0, 3], [1, 4])
    assert _pick(labels, predictions, 1, per_kind=5) == ([2], [])


def _rescale(cam: torch.Tensor) -> torch.Tensor:
    """The package's min-max rescaling (scale_cam_image): (x - min) / (1e-7 + max of the shifted map)."""
    cam = cam - cam.min()
    return cam / (1e-7 + cam.max())


def reference_gradcam(model: ResNet, image: torch.Tensor, class_id: int) -> np.ndarray:
    """Grad-CAM from its definition: at each of the last stage's 2n ReLU outputs, weights = the spatial mean
    of d(logit)/d(activation), map = ReLU of the weighted channel sum, rescaled to [0, 1] and resized
    (bilinear, pixel centres) to the image; then the mean over layers, rescaled to [0, 1]."""
    layers = [act for block in model.stages[-1] for act in (block.act1, block.act2)]
    activations, gradients = {}, {}

    def keep(layer):
        def hook(_module, _inputs, output):
            activations[layer] = output
            output.register_hook(lambda grad: gradients.__setitem__(layer, grad))
        return hook

    handles = [layer.register_forward_hook(keep(layer)) for layer in layers]
    model.eval()
    model.zero_grad()
    model(image[None])[0, class_id].backward()
    for handle in handles:
        handle.remove()
    maps = []
    for layer in layers:
        weights = gradients[layer].mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
        cam = F.relu((weights * activations[layer]).sum(dim=1, keepdim=True))  # (1, 1, h, w)
        cam = _rescale(cam.detach())
        maps.append(F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0])
    return _rescale(torch.stack(maps).mean(dim=0)).numpy()


def test_maps_equal_a_hand_written_gradcam_for_the_true_class_on_the_rows_the_model_got_right_and_wrong(tmp_path):
    torch.manual_seed(0)
    model = ResNet(2, num_classes=3, norm="bn").eval()
    images = torch.randn(18, 3, 16, 16)
    with torch.no_grad():  # centre each logit over the images, so the untrained model predicts every class
        model.fc.bias.sub_(model(images).mean(0))
        predictions = model(images).argmax(1).numpy()
    assert set(predictions) == {0, 1, 2}
    labels = np.where(np.arange(18) % 2 == 0, predictions, (predictions + 1) % 3)  # half right, half wrong
    dataset = list(zip(images, labels.tolist()))
    classes = ["a", "b", "c"]

    maps = gradcam_grids(model, dataset, predictions, labels, classes, classes, 2, tmp_path, torch.device("cpu"))

    assert [m.name for m in maps] == classes
    compared = {"correct": 0, "wrong": 0}
    for class_maps in maps:
        c = classes.index(class_maps.name)
        assert class_maps.rows["correct"] == [r for r in range(18) if labels[r] == c and predictions[r] == c][:2]
        assert class_maps.rows["wrong"] == [r for r in range(18) if labels[r] == c and predictions[r] != c][:2]
        assert class_maps.grid.is_file()
        for kind in ("correct", "wrong"):
            for row, heat in zip(class_maps.rows[kind], class_maps.maps[kind], strict=True):
                assert heat.shape == (16, 16)
                np.testing.assert_allclose(heat, reference_gradcam(model, images[row], c), atol=1e-5)
                if kind == "wrong":  # the predicted class's map is another map: the test tells them apart
                    assert np.abs(heat - reference_gradcam(model, images[row], int(predictions[row]))).max() > 1e-2
                compared[kind] += 1
    assert compared == {"correct": 6, "wrong": 6}


def test_assignment_names_match_folders_ignoring_case_spaces_and_hyphens():
    folders = ["Cattle-Egret", "Coppersmith-Barbet", "Indian-Peacock", "White-Breasted-Waterhen"]
    names = ["Cattle Egret", "Copper-smith Barbet", "indian peacock", "White Breasted Waterhen"]
    assert match_classes(names, folders, Path("data/train")) == ["Cattle-Egret", "Coppersmith-Barbet",
                                                                 "Indian-Peacock", "White-Breasted-Waterhen"]


def test_a_name_matching_no_folder_is_an_error_listing_the_closest_folders():
    folders = ["Cattle-Egret", "Coppersmith-Barbet", "Brown-Headed-Barbet", "Hoopoe"]
    with pytest.raises(ValueError, match=r"'Copper Barbet'.*data/train.*closest: Coppersmith-Barbet, Brown-Headed-Barbet"):
        match_classes(["Cattle Egret", "Copper Barbet"], folders, Path("data/train"))
