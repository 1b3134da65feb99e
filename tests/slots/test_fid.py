"""FID through clean-fid with the packaged Inception network: no network access, clean-fid's own
input scaling, clean-fid's Fréchet distance as the reference, and sane values on real images."""

import socket
import urllib.request

import numpy as np
import pytest
import torch
from cleanfid import downloads_helper, features
from cleanfid.fid import frechet_distance as cleanfid_frechet
from cleanfid.inception_torchscript import InceptionV3W
from torch import nn

from col775.slots.fid import FEATURE_DIM, InceptionFeatures, fid_folders, folder_features, frechet_distance, write_png_folder
from col775.slots.scenes import render_scene


def _refuse(*args, **kwargs):
    raise AssertionError("the FID code tried to reach the network")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download or socket connection fails the test."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(urllib.request, "urlopen", _refuse)
    for module in (downloads_helper, features):
        for name in ("check_download_inception", "check_download_url"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _refuse)


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatures("cpu")


def _reference_features(extractor: InceptionFeatures, images: torch.Tensor) -> torch.Tensor:
    """clean-fid's own InceptionV3W.forward (its (x - 128) / 128 scaling) around the same network."""
    wrapper = InceptionV3W.__new__(InceptionV3W)
    nn.Module.__init__(wrapper)
    wrapper.base = extractor.net.net
    wrapper.layers = extractor.net.net.layers
    wrapper.resize_inside = False
    with torch.no_grad():
        return wrapper(images)


def test_extractor_gives_2048_features_scaled_as_clean_fid_does(extractor):
    images = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 255
    ours = extractor(images)
    assert ours.shape == (2, FEATURE_DIM)
    torch.testing.assert_close(ours, _reference_features(extractor, images), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="299"):
        extractor(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("n1, n2", [(7, 5), (60, 45)])  # small sets (SVD route) and large ones (eigh route)
def test_frechet_distance_matches_clean_fid(n1, n2):
    rng = np.random.default_rng(n1)
    dim = 12
    mixing = rng.normal(size=(dim, dim))
    f1 = rng.normal(size=(n1, dim)) @ mixing
    f2 = rng.normal(size=(n2, dim)) @ mixing * 1.3 + 0.7
    expected = cleanfid_frechet(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert frechet_distance(f1, f2) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert frechet_distance(f1, f1) == pytest.approx(0.0, abs=1e-8 * float((f1**2).sum()))


def test_frechet_distance_rejects_bad_sets():
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="same d"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(extractor, tmp_path):
    scenes = np.stack([render_scene(seed, size=32, max_objects=3)[0] for seed in range(3)])
    rng = np.random.default_rng(0)
    noisy = np.clip(scenes.astype(np.float64) * 0.6 + 60 + rng.normal(0, 40, scenes.shape), 0, 255).astype(np.uint8)
    clean_dir = write_png_folder(scenes, tmp_path / "clean")
    noisy_dir = write_png_folder(noisy, tmp_path / "noisy")

    clean = folder_features(clean_dir, extractor)
    noised = folder_features(noisy_dir, extractor)
    assert clean.shape == (3, FEATURE_DIM) and np.isfinite(clean).all()
    distance = frechet_distance(clean, noised)
    assert abs(frechet_distance(clean, clean)) < 1e-6 * distance
    assert distance > 10.0
    # The folder-to-folder entry point agrees with the two steps above.
    assert fid_folders(clean_dir, noisy_dir, extractor=extractor) == pytest.approx(distance, rel=1e-6)


def test_fid_folders_explains_bad_folders(tmp_path, extractor):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fid_folders(tmp_path / "missing", tmp_path / "missing", extractor=extractor)
    write_png_folder(np.zeros((1, 8, 8, 3), np.uint8), tmp_path / "one")
    with pytest.raises(ValueError, match="at least 2"):
        fid_folders(tmp_path / "one", tmp_path / "one", extractor=extractor)
    with pytest.raises(ValueError, match="method"):
        fid_folders(tmp_path / "one", tmp_path / "one", method="nope", extractor=extractor)
