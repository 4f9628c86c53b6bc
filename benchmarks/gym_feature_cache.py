"""train-gym's per-update cost on an image env with the frozen-feature cache vs a state-only env,
at the same network sizes, on this machine's default JAX device.

    .venv/bin/python benchmarks/gym_feature_cache.py [--size 32] [--batch 256] [--utd 2] [--reps 20]
        [--head-dim 256] [--spatial-features 8] [--image-dropout 0.1]

Both agents have the same critic/actor MLPs; the image one adds one camera (size x size x 3,
frozen ResNet-10) whose features the replay buffer computed once per frame, as train-gym does
(`agent.core.frozen_feature_fn`, `sample_batches(..., frames=False)`). Timed: one learner step
(utd critic updates + one actor update), sampling included, compilation excluded; medians.
Also timed: the same image step re-encoding the frames inside the update (the old behaviour).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import AgentConfig  # noqa: E402
from agent.core import create_agent, frozen_feature_fn, uses_feature_cache  # noqa: E402
from agent.data.replay_buffer import ReplayBuffer  # noqa: E402
from agent.returns import RewardShaping  # noqa: E402
from agent.sac import learner_step  # noqa: E402
from agent.sampling import sample_batches  # noqa: E402

STATE_DIM, ACTION_DIM, STEPS = 4, 2, 400


def _config(args) -> AgentConfig:
    cfg = AgentConfig()
    cfg.network.critic_hidden_dims = [args.hidden, args.hidden]
    cfg.network.actor_hidden_dims = [args.hidden, args.hidden]
    cfg.network.num_critics = 2
    cfg.sac.batch_size, cfg.sac.utd = args.batch, args.utd
    cfg.encoder.image_keys = ["camera"]
    cfg.encoder.proprio_dim = 0
    cfg.encoder.image_head_dim, cfg.encoder.spatial_features = args.head_dim, args.spatial_features
    cfg.encoder.image_dropout = args.image_dropout
    return cfg


def _filled(spec, feature_fn, rng) -> ReplayBuffer:
    buffer = ReplayBuffer(spec, ACTION_DIM, STEPS + 2, shaping=RewardShaping(1.0, 0.0, 0.99, False),
                          feature_fn=feature_fn)
    obs = {k: (rng.integers(0, 256, (STEPS + 1, *s), dtype=np.uint8) if np.dtype(d) == np.uint8
               else rng.normal(size=(STEPS + 1, *s)).astype(np.float32)) for k, (s, d) in spec.items()}
    buffer.add_episode(obs, rng.uniform(-1, 1, (STEPS, ACTION_DIM)), rng.normal(size=STEPS), np.zeros(STEPS),
                       np.eye(1, STEPS, STEPS - 1)[0])
    return buffer


def _time(agent, buffer, cfg, frames, reps) -> float:
    rng = np.random.default_rng(0)

    def step(agent):
        batches = sample_batches(buffer, None, rng, cfg.sac.batch_size, cfg.sac.utd, 0.0, frames=frames)
        agent, metrics = learner_step(agent, batches)
        jax.block_until_ready(metrics)
        return agent

    agent = step(agent)  # compile
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        agent = step(agent)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--utd", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--head-dim", type=int, default=256, help="agent.encoder.image_head_dim (default 256)")
    parser.add_argument("--spatial-features", type=int, default=8, help="agent.encoder.spatial_features (default 8)")
    parser.add_argument("--image-dropout", type=float, default=0.1, help="agent.encoder.image_dropout (default 0.1)")
    args = parser.parse_args()
    cfg, rng = _config(args), np.random.default_rng(0)
    state_spec = {"state": ((STATE_DIM,), np.float32)}
    image_spec = {**state_spec, "camera": ((args.size, args.size, 3), np.uint8)}
    example = {k: np.zeros(s, d) for k, (s, d) in image_spec.items()}

    state_agent = create_agent(cfg, {"state": example["state"]}, ACTION_DIM, seed=0)
    state_s = _time(state_agent, _filled(state_spec, None, rng), cfg, True, args.reps)

    image_agent = create_agent(cfg, example, ACTION_DIM, seed=0)
    assert uses_feature_cache(image_agent)
    cached = _filled(image_spec, frozen_feature_fn(lambda: image_agent), rng)
    cached_s = _time(image_agent, cached, cfg, False, args.reps)
    reencode_s = _time(image_agent, _filled(image_spec, None, rng), cfg, True, max(2, args.reps // 4))

    print(f"device {jax.devices()[0].platform}, batch {args.batch}, utd {args.utd}, MLPs [{args.hidden}, "
          f"{args.hidden}], one {args.size}x{args.size} camera (frozen ResNet-10, image head "
          f"{args.spatial_features}x512 -> {args.head_dim}, dropout {args.image_dropout})")
    print(f"state-only update          {1e3 * state_s:8.2f} ms")
    print(f"image update, cached feats {1e3 * cached_s:8.2f} ms  ({cached_s / state_s:.2f}x state-only; target <= 2x)")
    print(f"image update, re-encoding  {1e3 * reencode_s:8.2f} ms  ({reencode_s / state_s:.2f}x state-only)")


if __name__ == "__main__":
    main()
