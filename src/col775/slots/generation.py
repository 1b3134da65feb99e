"""Compositional generation: new scenes assembled from slots of the training set.

The slots of every training image form a library; K-means (scikit-learn) groups them into
K clusters, K being the model's number of slots, so that each cluster holds one kind of
part (a background, objects in one region or of one look, ...). A new scene takes one slot
drawn uniformly from each cluster, and the decoder renders the K slots as one image. The
model is seen through two functions, `encode(images) -> slots [B, K, D]` and
`decode(slots) -> images [B, 3, H, W] in [-1, 1]`, so any slot decoder can be used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import Tensor
from torch.utils.data import DataLoader

from col775.core.training import progress

Encode = Callable[[Tensor], Tensor]
Decode = Callable[[Tensor], Tensor]


@dataclass
class SlotLibrary:
    """Every training slot [M, D] with its K-means cluster [M] and the cluster centres [K, D]."""

    slots: np.ndarray
    labels: np.ndarray
    centres: np.ndarray

    @property
    def num_clusters(self) -> int:
        return len(self.centres)

    def cluster_sizes(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_clusters).tolist()


def to_uint8(images: Tensor) -> np.ndarray:
    """Images [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] (values outside the range are clipped)."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def collect_slots(encode: Encode, loader: DataLoader, device: torch.device, max_images: int = 0) -> np.ndarray:
    """The slots of the loader's images (the first `max_images`, 0 = all), flattened to [M, D]."""
    chunks, seen = [], 0
    for batch in progress(loader, "slot library"):
        images = batch["image"]
        if max_images:
            images = images[: max_images - seen]
        slots = encode(images.to(device))  # [B, K, D]
        chunks.append(slots.reshape(-1, slots.shape[-1]).float().cpu().numpy())
        seen += len(images)
        if max_images and seen >= max_images:
            break
    if not chunks:
        raise ValueError("the slot library is empty: the training loader gave no images")
    return np.concatenate(chunks)


def build_library(slots: np.ndarray, num_clusters: int, seed: int = 0) -> SlotLibrary:
    """K-means of the slots [M, D] into `num_clusters` clusters."""
    if len(slots) < num_clusters:
        raise ValueError(f"{len(slots)} slots cannot form {num_clusters} clusters; use more training images")
    kmeans = KMeans(n_clusters=num_clusters, n_init=4, random_state=seed).fit(slots)
    library = SlotLibrary(slots=slots, labels=kmeans.labels_.astype(np.int64), centres=kmeans.cluster_centers_)
    if min(library.cluster_sizes()) == 0:
        raise ValueError(f"K-means left a cluster empty (sizes {library.cluster_sizes()}); the slots are too few or identical")
    return library


def sample_compositions(library: SlotLibrary, count: int, seed: int = 0) -> np.ndarray:
    """`count` slot sets [count, K, D]: slot k of each set drawn uniformly from cluster k."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(library.labels == k) for k in range(library.num_clusters)]
    picks = np.stack([rng.choice(m, size=count) for m in members], axis=1)  # [count, K] slot indices
    return library.slots[picks]


@torch.no_grad()
def decode_compositions(decode: Decode, compositions: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Render slot sets [N, K, D] with `decode`; returns uint8 images [N, H, W, 3]."""
    images = []
    for start in progress(range(0, len(compositions), batch_size), "compositional generation"):
        slots = torch.from_numpy(compositions[start : start + batch_size]).float().to(device)
        images.append(to_uint8(decode(slots)))
    return np.concatenate(images)


def compositional_generation(
    encode: Encode,
    decode: Decode,
    train_loader: DataLoader,
    count: int,
    num_clusters: int,
    device: torch.device,
    seed: int = 0,
    batch_size: int = 64,
    max_library_images: int = 0,
) -> tuple[np.ndarray, SlotLibrary]:
    """Library from `train_loader`, K-means into `num_clusters`, `count` new images (uint8 [N, H, W, 3])."""
    library = build_library(collect_slots(encode, train_loader, device, max_library_images), num_clusters, seed)
    images = decode_compositions(decode, sample_compositions(library, count, seed), device, batch_size)
    return images, library
