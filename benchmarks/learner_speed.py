"""Learner and actor speed on this machine's CPU (or whatever JAX device is default).

    .venv/bin/python benchmarks/learner_speed.py [--reps 10] [--reencode-reps 1] [--latency-reps 500]

Prints one table:
- learner step (UTD 4: 3 critic-only updates + 1 full update, one compiled function) at batch
  256 with the default agent (10 critics, [256, 256]), for the 19-D state only;
- the same with two 128x128 wrist cameras and a frozen ResNet-10, (a) re-encoding every sampled
  frame inside the step (s and s' of every UTD batch: 2 cameras x 2 x 4 x 256 = 4096 backbone
  passes per step) and (b) reading per-frame features the replay buffer computed once when the
  frames entered it (DESIGN.md §6, `ReplayBuffer.set_feature_fn`); their ratio (target >= 20x).
  Steps run on batches sampled from a real ReplayBuffer (the cached one also timed with its
  sampling included);
- actor inference latency at batch 1 (p50 / p99), state-only and with the two raw frames.

Compilation is excluded (one untimed call first). Timings are medians over repetitions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import AgentConfig  # noqa: E402
from agent.core import act, agent_encode_frames, create_agent, uses_feature_cache  # noqa: E402
from agent.data.replay_buffer import ReplayBuffer  # noqa: E402
from agent.sac import learner_step  # noqa: E402
from agent.sampling import sample_batches  # noqa: E402
from franka_rl.assemble import build_buffer  # noqa: E402

STATE_DIM, ACTION_DIM, SIZE, CAMERAS = 19, 6, 128, ("wrist_1", "wrist_2")


def example_observation(cameras: bool) -> dict[str, np.ndarray]:
    obs = {"state": np.zeros(STATE_DIM, np.float32)}
    if cameras:
        obs.update({cam: np.zeros((SIZE, SIZE, 3), np.uint8) for cam in CAMERAS})
    return obs


def filled_buffer(cameras: bool, episodes: int, steps: int, rng: np.random.Generator) -> ReplayBuffer:
    spec = {k: (v.shape, v.dtype) for k, v in example_observation(cameras).items()}
    buffer = build_buffer(AgentConfig(), spec, ACTION_DIM, episodes * (steps + 1))
    for _ in range(episodes):
        obs = {"state": rng.normal(size=(steps + 1, STATE_DIM)).astype(np.float32)}
        if cameras:
            obs.update({cam: rng.integers(0, 256, (steps + 1, SIZE, SIZE, 3), dtype=np.uint8) for cam in CAMERAS})
        rewards = np.zeros(steps, np.float32)
        rewards[-1] = 1.0
        buffer.add_episode(obs, rng.uniform(-1, 1, (steps, ACTION_DIM)), rewards,
                           np.eye(1, steps, steps - 1, dtype=bool)[0], np.zeros(steps, bool))
    return buffer


def timed(fn, reps: int) -> float:
    """Median seconds of fn() over reps calls, after one untimed call (compilation)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def learner_timings(agent, buffer: ReplayBuffer, rng, reps: int, *, frames: bool,
                    with_sampling: bool = True) -> tuple[float | None, float]:
    """(sample + step or None, step alone): median seconds of one UTD learner step."""
    batch_size, utd = 256, agent.spec.sac.utd

    def sample():
        return sample_batches(buffer, None, rng, batch_size, utd, 0.0, frames=frames)

    state = {"agent": agent}

    def sample_and_step():
        state["agent"], metrics = learner_step(state["agent"], sample())
        return metrics

    fixed = sample()

    def step_only():
        state["agent"], metrics = learner_step(state["agent"], fixed)
        return metrics

    step = timed(step_only, reps)
    return (timed(sample_and_step, reps) if with_sampling else None), step


def latency(agent, obs: dict, reps: int) -> tuple[float, float]:
    key = jax.random.PRNGKey(0)
    act(agent, obs, key)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        act(agent, obs, key)  # returns a NumPy array: the wait for the device is included
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="timed learner steps (state-only and cached)")
    parser.add_argument("--reencode-reps", type=int, default=1,
                        help="timed learner steps that re-encode frames (each takes tens of seconds on a CPU)")
    parser.add_argument("--latency-reps", type=int, default=500, help="timed actor calls per setting")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cfg = AgentConfig()  # repo defaults: 10 critics, [256, 256], batch 256, UTD 4, frozen ResNet-10
    assert cfg.sac.batch_size == 256 and cfg.sac.utd == 4
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), {os.cpu_count()} CPU cores; "
          f"batch {cfg.sac.batch_size}, UTD {cfg.sac.utd}, {cfg.network.num_critics} critics "
          f"{list(cfg.network.critic_hidden_dims)}, {SIZE}x{SIZE} cameras, {cfg.encoder.backbone} frozen", flush=True)

    rows: list[tuple[str, str]] = []
    state_agent = create_agent(cfg, example_observation(False), ACTION_DIM)
    state_buffer = filled_buffer(False, episodes=20, steps=100, rng=rng)
    with_sampling, step = learner_timings(state_agent, state_buffer, rng, args.reps, frames=True)
    rows += [("learner step, state only", f"{step * 1e3:.1f} ms"),
             ("  + sampling from the buffer", f"{with_sampling * 1e3:.1f} ms")]
    print(f"state only: {step * 1e3:.1f} ms", flush=True)

    image_agent = create_agent(cfg, example_observation(True), ACTION_DIM)
    assert uses_feature_cache(image_agent)
    image_buffer = filled_buffer(True, episodes=4, steps=100, rng=rng)
    start = time.perf_counter()
    image_buffer.set_feature_fn(lambda frames: np.asarray(agent_encode_frames(image_agent, frames)))
    encode_s = time.perf_counter() - start
    frames_encoded = image_buffer.size * len(CAMERAS)
    cached_sampled, cached_step = learner_timings(image_agent, image_buffer, rng, args.reps, frames=False)
    print(f"cameras, feature cache: {cached_step * 1e3:.1f} ms", flush=True)
    # Without the encoder the buffer hands out frames only, so the step runs the backbone itself.
    image_buffer.set_feature_fn(None)
    _, reencode_step = learner_timings(image_agent, image_buffer, rng, args.reencode_reps, frames=True,
                                       with_sampling=False)
    print(f"cameras, re-encoding: {reencode_step:.2f} s", flush=True)
    rows += [
        ("learner step, 2 cameras, re-encoding frames", f"{reencode_step:.2f} s"),
        ("learner step, 2 cameras, feature cache", f"{cached_step * 1e3:.0f} ms"),
        ("  + sampling from the buffer", f"{cached_sampled * 1e3:.0f} ms"),
        ("speed-up of the cache (re-encoding / cache)", f"{reencode_step / cached_step:.0f}x"),
        ("one-time feature encoding when frames enter the buffer",
         f"{encode_s / frames_encoded * 1e3:.1f} ms/frame ({frames_encoded} frames)"),
    ]

    p50, p99 = latency(state_agent, example_observation(False), args.latency_reps)
    rows.append(("actor latency, batch 1, state only (p50 / p99)", f"{p50 * 1e3:.2f} / {p99 * 1e3:.2f} ms"))
    image_obs = {k: (rng.integers(0, 256, v.shape, dtype=np.uint8) if v.dtype == np.uint8 else v)
                 for k, v in example_observation(True).items()}
    p50, p99 = latency(image_agent, image_obs, max(20, args.latency_reps // 5))
    rows.append(("actor latency, batch 1, 2 raw frames (p50 / p99)", f"{p50 * 1e3:.1f} / {p99 * 1e3:.1f} ms"))

    width = max(len(name) for name, _ in rows)
    print()
    print(f"{'measurement':<{width}} | value")
    print(f"{'-' * width}-+-{'-' * 24}")
    for name, value in rows:
        print(f"{name:<{width}} | {value}")


if __name__ == "__main__":
    main()
