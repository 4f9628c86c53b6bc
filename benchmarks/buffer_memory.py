"""Replay-buffer memory per stored transition and sampling throughput.

    .venv/bin/python benchmarks/buffer_memory.py [--capacity 5050] [--batch 256]

Fills a buffer with two 128x128 uint8 cameras plus the 19-D state, for several episode lengths,
and prints bytes per transition against the target of 1.05 x (one uint8 frame per camera per
step), then the sampling rate of batch-256 batches (with frames, and features-only when a frozen
encoder's features are cached).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from agent.config import AgentConfig
from agent.data import ReplayBuffer
from agent.data.synthetic import synthetic_episode
from franka_rl.assemble import reward_shaping

FRAME_BYTES = 128 * 128 * 3
CAMERAS = ("wrist_1", "wrist_2")


def fill(buffer: ReplayBuffer, length: int, rng: np.random.Generator) -> None:
    template = synthetic_episode(rng, length, image_size=128, success=True)
    for i in range(buffer.capacity // (length + 1)):
        template.observations["state"][:, 0] = i
        buffer.add_episode_record(template)


def rate(buffer: ReplayBuffer, batch: int, frames: bool, seconds: float = 2.0) -> float:
    rng = np.random.default_rng(0)
    buffer.sample(batch, rng, frames=frames)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        buffer.sample(batch, rng, frames=frames)
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=5050, help="slots (observations) in the ring")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    spec = {"state": ((19,), np.float32), **{c: ((128, 128, 3), np.uint8) for c in CAMERAS}}
    target = 1.05 * FRAME_BYTES * len(CAMERAS)

    print(f"{'episode length':>14} | {'transitions':>11} | {'bytes/transition':>16} | {'x frames/step':>13} | target <= 1.05")
    print("-" * 78)
    buffer = None
    for length in (25, 50, 100):
        buffer = ReplayBuffer(spec, 6, args.capacity, shaping=reward_shaping(AgentConfig()))
        fill(buffer, length, rng)
        per = buffer.nbytes / buffer.num_transitions
        ratio = per / (FRAME_BYTES * len(CAMERAS))
        print(f"{length:>14} | {buffer.num_transitions:>11} | {per:>16.0f} | {ratio:>13.4f} | "
              f"{'ok' if per <= target else 'OVER'}")

    assert buffer is not None
    print()
    print(f"{'sampling (batch ' + str(args.batch) + ')':>28} | {'batches/s':>9} | {'transitions/s':>13}")
    print("-" * 58)
    with_frames = rate(buffer, args.batch, frames=True)
    print(f"{'frames (uint8, s and next s)':>28} | {with_frames:>9.1f} | {with_frames * args.batch:>13.0f}")
    buffer.set_feature_fn(lambda frames: frames.reshape(len(frames), -1)[:, :512].astype(np.float32))
    features = rate(buffer, args.batch, frames=False)
    print(f"{'cached features (512/camera)':>28} | {features:>9.1f} | {features * args.batch:>13.0f}")


if __name__ == "__main__":
    main()
