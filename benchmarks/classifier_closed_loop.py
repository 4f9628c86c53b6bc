"""The reward classifier in closed loop in the twin: a noisy expert drives, the classifier's
wrapper decides success and ends the episode, and each decision is checked against ground truth.

    .venv/bin/python benchmarks/classifier_closed_loop.py --model runs/classifier
        [--episodes 100] [--noise 0.1] [--perturbation-prob 0.05] [--debounce 1] [--seed 10000]

The env uses the model's cameras and image size. Seeds start at --seed (keep them away from the
seeds the training data was recorded with). Per episode the outcome is one of:
    true success    the classifier ended the episode while the peg was inserted (ground truth)
    false success   the classifier ended the episode while it was not
    missed          the peg was inserted at some step but the classifier never fired
    no success      neither (time limit, never inserted)
Prints that table, the per-frame false-positive rate, detection delay and inference latency.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import sim
from reward_classifier import ClassifierConfig, wrap_with_classifier
from reward_classifier.saved_model import load_classifier, read_metadata


class TimedClassifier:
    """Passes calls through to the classifier and records how long each one took."""

    def __init__(self, classifier):
        self.classifier = classifier
        self.threshold = classifier.threshold
        self.milliseconds: list[float] = []

    def check_observation_space(self, space) -> None:
        self.classifier.check_observation_space(space)

    def probability(self, observation) -> float:
        start = time.perf_counter()
        p = self.classifier.probability(observation)
        self.milliseconds.append((time.perf_counter() - start) * 1e3)
        return p


def run_episode(env, expert, seed: int, threshold: float) -> dict:
    _, info = env.reset(seed=seed)
    expert.reset()
    first_truth, fired, steps = None, None, 0
    negative_frames = false_positive_frames = 0
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step(expert.act())
        steps += 1
        if info["success"] and first_truth is None:
            first_truth = steps
        if not info["success"]:
            negative_frames += 1
            false_positive_frames += info["classifier_probability"] > threshold
        if terminated:
            fired = steps
    depth_at_fire = None
    if fired is not None:
        outcome = "true success" if info["success"] else "false success"
        depth_at_fire = info.get("insertion_depth")
    else:
        outcome = "missed" if first_truth is not None else "no success"
    return {"outcome": outcome, "steps": steps, "first_truth": first_truth, "fired": fired,
            "negative_frames": negative_frames, "false_positive_frames": false_positive_frames,
            "depth_at_fire": depth_at_fire}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="train-classifier's output directory")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.1, help="expert's Gaussian action noise (std)")
    parser.add_argument("--perturbation-prob", type=float, default=0.05,
                        help="expert's per-step chance of a 5-step random burst")
    parser.add_argument("--debounce", type=int, default=1, help="classifier.debounce_steps")
    parser.add_argument("--threshold", type=float, default=None, help="instead of the model's threshold")
    parser.add_argument("--seed", type=int, default=10_000)
    args = parser.parse_args()

    meta = read_metadata(args.model)
    height, width = meta["image_shape"]
    env = sim.make_env(**{"env.image_height": height, "env.image_width": width, "env.cameras": meta["image_keys"]})
    timed = TimedClassifier(load_classifier(args.model))
    env = wrap_with_classifier(env, ClassifierConfig(debounce_steps=args.debounce, threshold=args.threshold),
                               classifier=timed)
    threshold = env.get_wrapper_attr("threshold")
    expert = sim.PegInsertionExpert(env, noise=args.noise, perturbation_prob=args.perturbation_prob, seed=args.seed)

    started = time.time()
    results = []
    for i in range(args.episodes):
        results.append(run_episode(env, expert, args.seed + i, threshold))
        counts = {k: sum(r["outcome"] == k for r in results) for k in ("true success", "false success", "missed")}
        print(f"\repisode {i + 1}/{args.episodes} | {counts}", end="", flush=True)
    print()
    success_depth = sim.sim_world(env).sim.success_depth
    env.close()

    n = len(results)
    outcomes = ["true success", "false success", "missed", "no success"]
    counts = {k: sum(r["outcome"] == k for r in results) for k in outcomes}
    fired = counts["true success"] + counts["false success"]
    inserted = sum(r["first_truth"] is not None for r in results)
    delays = [r["fired"] - r["first_truth"] for r in results if r["outcome"] == "true success"]
    negatives = sum(r["negative_frames"] for r in results)
    frame_fp = sum(r["false_positive_frames"] for r in results)
    ms = np.asarray(timed.milliseconds[3:])  # the first calls include compilation
    print(f"\nclassifier {args.model}: {meta['backbone']}, {meta['pooling']} pooling, cameras "
          f"{meta['image_keys']} at {height}x{width}, threshold {threshold:.4f}, debounce {args.debounce}")
    print(f"expert noise {args.noise}, perturbation prob {args.perturbation_prob}; seeds {args.seed}.."
          f"{args.seed + n - 1}; {time.time() - started:.0f} s\n")
    print(f"{'outcome':28} {'episodes':>9} {'rate':>8}")
    for k in outcomes:
        print(f"{k:28} {counts[k]:9d} {counts[k] / n:8.1%}")
    print(f"{'false success / episodes':28} {counts['false success']:9d} {counts['false success'] / n:8.1%}")
    print(f"{'false success / fired':28} {counts['false success']:9d} "
          f"{counts['false success'] / max(fired, 1):8.1%}")
    print(f"{'missed / inserted':28} {counts['missed']:9d} {counts['missed'] / max(inserted, 1):8.1%}")
    print(f"{'per-frame FPR (not inserted)':28} {frame_fp:9d} {frame_fp / max(negatives, 1):8.2%}  of {negatives} frames")
    false_depths = [r["depth_at_fire"] for r in results if r["outcome"] == "false success"]
    if false_depths and all(d is not None for d in false_depths):
        print(f"{'false successes at depth mm':28} {', '.join(f'{d * 1e3:.1f}' for d in false_depths)} "
              f"(success: inside, >= {success_depth * 1e3:.0f} mm)")
    if delays:
        print(f"{'detection delay (steps)':28} mean {np.mean(delays):.2f}, max {max(delays)}")
    print(f"{'inference ms (batch 1)':28} p50 {np.percentile(ms, 50):.2f}, p99 {np.percentile(ms, 99):.2f} "
          f"over {ms.size} calls")


if __name__ == "__main__":
    main()
