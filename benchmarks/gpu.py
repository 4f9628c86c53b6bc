"""Learner and Cal-QL pre-training throughput at the full profile's sizes, on JAX's default device.

    .venv/bin/python benchmarks/gpu.py [--reps 20] [--episodes 10]

Run it on a GPU machine (it takes a few minutes there; well under 8): it prints one markdown table
for docs/processes.md. The sizes are `configs/pipeline/full.yaml`'s: two 128x128 wrist cameras, a
frozen ResNet-10 with the feature cache (float16 features, as the learner stores them), 10 critics
of [256, 256], batch 256.

- online learner step: UTD 4 (3 critic-only updates + 1 full update, one compiled function), as
  `franka-rl learner` runs it; timed with the host's sampling from a real replay buffer and alone;
- Cal-QL pre-training step: the WSRL preset's Cal-QL (alpha 5, the bound on), UTD 1 as
  `pretrain.utd` defaults, 10 sampled actions per state (`agent.cql.n_actions`), with the time
  for the full profile's 200k steps.

The buffer is filled with random frames encoded by the real feature function (compilation and
encoding are reported, not timed with the steps). Timings are medians after one untimed call.
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
from agent.core import agent_encode_frames, create_agent, replace_spec  # noqa: E402
from agent.data.replay_buffer import ReplayBuffer  # noqa: E402
from agent.sac import learner_step  # noqa: E402
from agent.sampling import sample_batches  # noqa: E402
from franka_rl.assemble import build_buffer  # noqa: E402
from robot_env.progress import format_duration  # noqa: E402

STATE_DIM, ACTION_DIM, SIZE, CAMERAS, STEPS = 19, 6, 128, ("wrist_1", "wrist_2"), 50
PRETRAIN_STEPS = 200_000  # configs/pipeline/full.yaml
ACTOR_HZ = 10.0


def example_observation() -> dict[str, np.ndarray]:
    return {"state": np.zeros(STATE_DIM, np.float32),
            **{cam: np.zeros((SIZE, SIZE, 3), np.uint8) for cam in CAMERAS}}


def filled_buffer(cfg: AgentConfig, agent, episodes: int, rng: np.random.Generator) -> ReplayBuffer:
    spec = {k: (v.shape, v.dtype) for k, v in example_observation().items()}
    buffer = build_buffer(cfg, spec, ACTION_DIM, episodes * (STEPS + 1),
                          feature_fn=lambda frames: np.asarray(agent_encode_frames(agent, frames)))
    for _ in range(episodes):
        obs = {"state": rng.normal(size=(STEPS + 1, STATE_DIM)).astype(np.float32),
               **{cam: rng.integers(0, 256, (STEPS + 1, SIZE, SIZE, 3), dtype=np.uint8) for cam in CAMERAS}}
        rewards = np.zeros(STEPS, np.float32)
        rewards[-1] = 1.0
        buffer.add_episode(obs, rng.uniform(-1, 1, (STEPS, ACTION_DIM)), rewards,
                           np.eye(1, STEPS, STEPS - 1, dtype=bool)[0], np.zeros(STEPS, bool))
    return buffer


def step_timings(agent, buffer: ReplayBuffer, rng, utd: int, reps: int) -> tuple[float, float, float]:
    """(compile s, median s of sample + step, median s of the step alone)."""
    state = {"agent": agent}

    def sample():
        return sample_batches(buffer, None, rng, 256, utd, 0.0, frames=False)

    def run(batches):
        state["agent"], metrics = learner_step(state["agent"], batches)
        return jax.block_until_ready(metrics)

    started = time.perf_counter()
    run(sample())
    compile_s = time.perf_counter() - started
    fixed = sample()

    def median(fn) -> float:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    return compile_s, median(lambda: run(sample())), median(lambda: run(fixed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--episodes", type=int, default=10, help=f"episodes of {STEPS} steps in the buffer")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}); {len(jax.devices())} device(s); "
          f"{os.cpu_count()} CPU cores", flush=True)

    online_cfg = AgentConfig()  # the defaults are the full profile's: 10 critics, [256, 256], batch 256, UTD 4
    assert online_cfg.sac.batch_size == 256 and online_cfg.sac.utd == 4
    agent = create_agent(online_cfg, example_observation(), ACTION_DIM)
    started = time.perf_counter()
    buffer = filled_buffer(online_cfg, agent, args.episodes, rng)
    print(f"buffer: {buffer.num_transitions} transitions, {buffer.frames_to_encode} frames encoded in "
          f"{format_duration(time.perf_counter() - started)} (first call compiles the encoder)", flush=True)
    online = step_timings(agent, buffer, rng, online_cfg.sac.utd, args.reps)

    calql_cfg = AgentConfig()
    calql_cfg.cql.enabled, calql_cfg.cql.calql_bound, calql_cfg.cql.alpha = True, True, 5.0  # the WSRL preset
    calql = replace_spec(create_agent(calql_cfg, example_observation(), ACTION_DIM), "sac", utd=1)
    pretrain = step_timings(calql, buffer, rng, 1, args.reps)

    rows = [("online learner step (UTD 4)", online), ("Cal-QL pre-training step (UTD 1)", pretrain)]
    print()
    print(f"| {device.platform} ({device.device_kind}) | compile | sample + step | step alone | steps/s |")
    print("|---|---:|---:|---:|---:|")
    for name, (compile_s, with_sampling, alone) in rows:
        print(f"| {name} | {compile_s:.1f} s | {with_sampling * 1e3:.1f} ms | {alone * 1e3:.1f} ms | "
              f"{1.0 / with_sampling:.2f} |")
    print()
    online_rate, pretrain_rate = 1.0 / online[1], 1.0 / pretrain[1]
    print(f"A {ACTOR_HZ:g} Hz actor at one learner step per transition needs {ACTOR_HZ:g} steps/s: this device runs "
          f"{online_rate:.2f} ({'keeps up' if online_rate >= ACTOR_HZ else 'cannot keep up'}).")
    print(f"Cal-QL pre-training, {PRETRAIN_STEPS} steps (full profile): {format_duration(PRETRAIN_STEPS / pretrain_rate)}.")


if __name__ == "__main__":
    main()
