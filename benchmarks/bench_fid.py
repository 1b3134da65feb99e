"""Time of our Fréchet distance (`col775.slots.fid.frechet_distance`) against clean-fid's own
(`cleanfid.fid.fid_from_feats`: scipy's sqrtm of the 2048x2048 covariance product), on the same
Inception features of real images, and how far apart their values are.

The features come once, through clean-fid's feature API with the packaged Inception network, for
N generated scenes and a noised copy of them; both distances then run on those features.

Run: .venv/bin/python benchmarks/bench_fid.py [--quick] [--images N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from cleanfid.fid import fid_from_feats

from col775.slots.fid import InceptionFeatures, folder_features, frechet_distance, write_png_folder
from col775.slots.scenes import render_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 images a set (the default is 64)")
    parser.add_argument("--images", type=int, default=None, help="images a set")
    args = parser.parse_args()
    count = args.images or (16 if args.quick else 64)

    scenes = np.stack([render_scene(seed, size=32, max_objects=4)[0] for seed in range(count)])
    noisy = np.clip(scenes * 0.8 + np.random.default_rng(0).normal(0, 25, scenes.shape), 0, 255).astype(np.uint8)
    extractor = InceptionFeatures("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        feats1 = folder_features(write_png_folder(scenes, Path(tmp) / "a"), extractor)
        feats2 = folder_features(write_png_folder(noisy, Path(tmp) / "b"), extractor)
        extraction = time.perf_counter() - began

    began = time.perf_counter()
    ours = frechet_distance(feats1, feats2)
    ours_time = time.perf_counter() - began
    began = time.perf_counter()
    theirs = float(fid_from_feats(feats1, feats2))
    theirs_time = time.perf_counter() - began

    print(f"{count} + {count} images, Inception features in {extraction:.1f} s (shared by both)")
    print(f"ours (eigen/SVD identity): FID {ours:.4f} in {ours_time:.3f} s")
    print(f"clean-fid (scipy sqrtm):   FID {theirs:.4f} in {theirs_time:.3f} s")
    print(f"speed-up {theirs_time / max(ours_time, 1e-9):.0f}x, relative difference {abs(ours - theirs) / abs(theirs):.2e}")


if __name__ == "__main__":
    main()
