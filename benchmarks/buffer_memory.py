"""Replay-buffer memory per stored transition and sampling throughput, frames alone and with the
learner's frozen-feature cache attached.

    .venv/bin/python benchmarks/buffer_memory.py [--capacity 5050] [--cached-capacity 1020] [--batch 256]

Part 1 fills a buffer with two 128x128 uint8 cameras plus the 19-D state, for several episode
lengths, and prints bytes per transition against 1.05 x one uint8 frame per camera per step.
Part 2 is the learner's configuration: the default agent (ResNet-10 frozen backbone) on the same
observations, its real feature function attached before the buffer fills (as `franka-rl learner`
does), so every frame is encoded and cached as the learner caches it (4x4x512 per camera, stored
float16). It prints bytes per transition against 1.35 x one frame per camera, the resident memory
of 100k transitions at that rate, and the sampling rate with frames and features-only batches.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from agent.config import AgentConfig
from agent.core import agent_encode_frames, create_agent
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
    parser.add_argument("--cached-capacity", type=int, default=1020,
                        help="slots of the buffer with the feature cache (each frame is encoded once)")
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
    with_frames = rate(buffer, args.batch, frames=True)

    agent = create_agent(AgentConfig(), {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}, 6)
    print("with the learner's feature cache (default agent: real ResNet-10 features, encoded as the learner does)")
    for length in (50, 100):  # 100: the peg-insertion task's task.max_episode_steps
        slots = args.cached_capacity // (length + 1) * (length + 1)  # a full ring, as in a long run
        cached = ReplayBuffer(spec, 6, slots, shaping=reward_shaping(AgentConfig()),
                              feature_fn=lambda frames: np.asarray(agent_encode_frames(agent, frames)))
        started = time.perf_counter()
        fill(cached, length, rng)
        encode_s = time.perf_counter() - started
        features = cached.sample(1, rng, frames=False)["observations"][f"{CAMERAS[0]}_features"]
        per = cached.nbytes / cached.num_transitions
        ratio = per / (FRAME_BYTES * len(CAMERAS))
        print(f"  episodes of {length}: features {features.shape[1:]} {features.dtype}; {cached.num_transitions} "
              f"transitions encoded in {encode_s:.0f} s; bytes/transition {per:.0f} = {ratio:.3f} x one uint8 "
              f"frame per camera: {'ok' if ratio <= 1.35 else 'OVER'} (target <= 1.35)")
        print(f"  resident replay memory at 100k such transitions: {per * 100_000 / 2**30:.1f} GiB "
              f"(200k: {per * 200_000 / 2**30:.1f} GiB)")
    cached_frames = rate(cached, args.batch, frames=True)
    cached_features = rate(cached, args.batch, frames=False)
    print()
    print(f"{'sampling (batch ' + str(args.batch) + ')':>34} | {'batches/s':>9} | {'transitions/s':>13}")
    print("-" * 64)
    for name, value in (("frames only (no cache)", with_frames), ("cache attached, frames too", cached_frames),
                        ("cache attached, features only", cached_features)):
        print(f"{name:>34} | {value:>9.1f} | {value * args.batch:>13.0f}")


if __name__ == "__main__":
    main()
