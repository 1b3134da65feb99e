import numpy as np

from col775.resnet.gradcam import _pick, focus


def test_focus_of_flat_and_point_maps():
    assert focus(np.ones((20, 20))) == 0.1
    point = np.zeros((20, 20))
    point[3, 4] = 1.0
    assert focus(point) == 1.0
    assert focus(np.zeros((4, 4))) == 0.0


def test_pick_splits_a_class_into_correct_and_wrong_in_order():
    labels = np.array([2, 2, 1, 2, 2, 2])
    predictions = np.array([2, 0, 1, 2, 3, 2])
    assert _pick(labels, predictions, 2, per_kind=2) == ([0, 3], [1, 4])
    assert _pick(labels, predictions, 1, per_kind=5) == ([2], [])
