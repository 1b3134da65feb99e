"""Compositional generation: the library's clusters, one slot per cluster per image, decoding."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch.utils.data import DataLoader

from col775.slots.sbd import SlotAutoencoder, SlotAutoencoderConfig
from col775.slots.generation import (
    build_library,
    collect_slots,
    compositional_generation,
    sample_compositions,
    to_uint8,
)

CENTRES = np.array([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]])  # three well-separated kinds of slot


def blob_slots(per_cluster: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), per_cluster)
    return (CENTRES[truth] + rng.normal(0, 0.5, (len(truth), 4))).astype(np.float32), truth


def test_library_clusters_recover_the_kinds_of_slot():
    slots, truth = blob_slots()
    library = build_library(slots, 3)
    assert adjusted_rand_score(truth, library.labels) == 1.0
    assert sorted(library.cluster_sizes()) == [30, 30, 30]


def test_every_composition_takes_one_library_slot_from_each_cluster():
    slots, _ = blob_slots()
    library = build_library(slots, 3)
    compositions = sample_compositions(library, 50, seed=1)
    assert compositions.shape == (50, 3, 4)
    index_of = {row.tobytes(): i for i, row in enumerate(library.slots)}
    picked = np.array([[index_of[s.tobytes()] for s in composition] for composition in compositions])  # each is a library slot
    np.testing.assert_array_equal(library.labels[picked], np.tile(np.arange(3), (50, 1)))
    assert len(np.unique(picked[:, 0])) > 10  # drawn from the cluster's members, not its centre
    np.testing.assert_array_equal(sample_compositions(library, 50, seed=1), compositions)


def test_too_few_slots_for_the_clusters_is_an_error():
    with pytest.raises(ValueError, match="cannot form 5 clusters"):
        build_library(np.zeros((3, 4), np.float32), 5)


def test_to_uint8_maps_the_image_range_and_clips():
    images = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    np.testing.assert_array_equal(to_uint8(images)[0, 0, :, 0], [0, 128, 255, 255])


def test_collect_slots_stops_at_max_images():
    data = [{"image": torch.full((3, 2, 2), float(i)), "index": i} for i in range(10)]
    encode = lambda images: images.mean(dim=(2, 3)).unsqueeze(1).repeat(1, 2, 1)  # noqa: E731  [B, 2 slots, 3]
    slots = collect_slots(encode, DataLoader(data, batch_size=4), torch.device("cpu"), max_images=6)
    assert slots.shape == (12, 3)
    np.testing.assert_array_equal(slots[::2, 0], np.arange(6))


def test_generation_with_a_slot_autoencoder_gives_decoded_images():
    torch.manual_seed(0)
    config = SlotAutoencoderConfig(
        image_size=16, num_slots=3, slot_dim=8, slot_hidden_dim=16, encoder_channels=(8, 8), encoder_strides=(2, 1),
        decoder_broadcast=4, decoder_channels=(8, 8), decoder_strides=(2, 2),
    )  # fmt: skip
    model = SlotAutoencoder(config).eval()
    data = [{"image": torch.rand(3, 16, 16) * 2 - 1, "index": i} for i in range(8)]
    encode = lambda images: model.encode(images)[0]  # noqa: E731
    decode = lambda slots: model.decode(slots)  # noqa: E731
    with torch.no_grad():
        images, library = compositional_generation(encode, decode, DataLoader(data, batch_size=4), count=5,
                                                   num_clusters=3, device=torch.device("cpu"), batch_size=2)  # fmt: skip
        compositions = sample_compositions(library, 5, seed=0)
        expected = to_uint8(decode(torch.from_numpy(compositions)))
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    assert len(library.slots) == 8 * 3
    np.testing.assert_array_equal(images, expected)
