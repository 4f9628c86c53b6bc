"""Per-step latency of the reward classifier: one observation (batch 1), both wrist cameras,
backbone + head jitted together, as the reward wrapper calls it at 10 Hz.

    .venv/bin/python benchmarks/classifier_latency.py [--sizes 128 64] [--backbones resnet10]
        [--calls 200] [--model DIR]

Without --model the classifier has random weights (latency does not depend on the values).
Prints a table of p50 / p99 / mean milliseconds and the share of a 100 ms control period.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np

from agent.vision import make_backbone
from reward_classifier.model import init_backbone, init_head, make_head
from reward_classifier.saved_model import load_classifier, read_metadata, save_classifier

CAMERAS = ("wrist_1", "wrist_2")


def random_classifier(directory: str, backbone: str, size: int):
    head = make_head(CAMERAS, "spatial", 8, 256, 0.1)
    key = jax.random.PRNGKey(0)
    backbone_params = init_backbone(backbone, (size, size), key)
    frame = np.zeros((1, size, size, 3), np.uint8)
    feature_shape = jax.eval_shape(lambda: make_backbone(backbone).apply({"params": backbone_params}, frame)).shape[1:]
    meta = {"image_keys": list(CAMERAS), "image_shape": [size, size], "feature_shape": list(feature_shape),
            "backbone": backbone, "pretrained_path": "", "pooling": "spatial", "spatial_features": 8,
            "hidden_dim": 256, "dropout": 0.1, "threshold": 0.5}
    save_classifier(directory, backbone_params, init_head(head, feature_shape, key), meta)
    return load_classifier(directory)


def time_calls(classifier, size: int, calls: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    observations = [{k: rng.integers(0, 256, (size, size, 3), np.uint8) for k in classifier.image_keys}
                    for _ in range(8)]
    for observation in observations[:3]:  # compile and warm up
        classifier.probability(observation)
    times = []
    for i in range(calls):
        start = time.perf_counter()
        classifier.probability(observations[i % len(observations)])
        times.append(time.perf_counter() - start)
    return np.asarray(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--backbones", nargs="+", default=["resnet10"])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--model", default=None, help="a trained classifier instead of random weights")
    args = parser.parse_args()

    rows = []
    if args.model:
        meta = read_metadata(args.model)
        times = time_calls(load_classifier(args.model), meta["image_shape"][0], args.calls)
        rows.append((meta["backbone"], f"{meta['image_shape'][0]}x{meta['image_shape'][1]}", times))
    else:
        for backbone in args.backbones:
            for size in args.sizes:
                with tempfile.TemporaryDirectory() as directory:
                    rows.append((backbone, f"{size}x{size}", time_calls(random_classifier(directory, backbone, size),
                                                                        size, args.calls)))
    print(f"device: {jax.devices()[0].platform} ({jax.devices()[0].device_kind}); {args.calls} calls, batch 1, "
          f"cameras {', '.join(CAMERAS)}")
    print(f"{'backbone':10} {'image':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'p99 share of 100 ms':>20}")
    for backbone, image, times in rows:
        p50, p99 = np.percentile(times, [50, 99])
        print(f"{backbone:10} {image:>8} {p50:8.2f} {p99:8.2f} {times.mean():8.2f} {p99 / 100 * 100:19.1f}%")


if __name__ == "__main__":
    main()
