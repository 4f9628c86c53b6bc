"""What the image head's dropout mask costs inside train-gym's cached image update.

    .venv/bin/python benchmarks/dropout_mask.py [--reps 30]

The update of `benchmarks/gym_feature_cache.py` (batch 256, UTD 2, MLPs [256, 256], one 32x32
camera, frozen ResNet-10, image head 8x512 -> 256, dropout 0.1) compiled four times, the head's
mask drawn four ways: the project's (`agent.vision.dropout`: two 16-bit uniforms per random word),
`jax.random.bernoulli` (one threefry evaluation per element, as `flax.linen.Dropout` draws it), a
fixed mask (no random numbers) and none at all; plus the state-only update. The compiled steps are
timed interleaved, one call each per round, so a busy neighbour slows all of them alike; medians.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gym_feature_cache import ACTION_DIM, STATE_DIM, _config, _filled  # noqa: E402

import agent.vision as vision  # noqa: E402
from agent.core import create_agent, frozen_feature_fn  # noqa: E402
from agent.sac import learner_step  # noqa: E402
from agent.sampling import sample_batches  # noqa: E402


def bernoulli_dropout(key, x, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def fixed_dropout(key, x, rate):
    keep = jnp.arange(x.shape[-1]) % round(1 / rate) != 0
    return jnp.where(keep, x / (1.0 - rate), 0.0)


MASKS = {"project (16-bit uniforms)": vision.dropout, "jax.random.bernoulli": bernoulli_dropout,
         "fixed mask, no random numbers": fixed_dropout, "no mask": lambda key, x, rate: x}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    options = argparse.Namespace(size=32, batch=256, utd=2, hidden=256, head_dim=256, spatial_features=8,
                                 image_dropout=0.1)
    cfg, rng = _config(options), np.random.default_rng(0)
    state_spec = {"state": ((STATE_DIM,), np.float32)}
    image_spec = {**state_spec, "camera": ((32, 32, 3), np.uint8)}
    example = {k: np.zeros(s, d) for k, (s, d) in image_spec.items()}
    image_agent = create_agent(cfg, example, ACTION_DIM, seed=0)
    state_agent = create_agent(cfg, {"state": example["state"]}, ACTION_DIM, seed=0)
    image_buffer = _filled(image_spec, frozen_feature_fn(lambda: image_agent), rng)
    state_buffer = _filled(state_spec, None, rng)

    def batches(buffer, frames):
        return sample_batches(buffer, None, rng, cfg.sac.batch_size, cfg.sac.utd, 0.0, frames=frames)

    steps, project_dropout = {}, vision.dropout
    try:
        for name, mask in MASKS.items():
            vision.dropout = mask
            jax.clear_caches()  # trace the head again with this mask
            compiled = jax.jit(learner_step.__wrapped__).lower(image_agent, batches(image_buffer, False)).compile()
            steps[f"image, {name}"] = (compiled, image_agent, image_buffer, False)
    finally:
        vision.dropout = project_dropout
    compiled = jax.jit(learner_step.__wrapped__).lower(state_agent, batches(state_buffer, True)).compile()
    steps["state-only"] = (compiled, state_agent, state_buffer, True)

    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, (compiled, agent, buffer, frames) in steps.items():
            batch = batches(buffer, frames)
            start = time.perf_counter()
            jax.block_until_ready(compiled(agent, batch))
            times[name].append(time.perf_counter() - start)
    state = float(np.median(times["state-only"]))
    print(f"device {jax.devices()[0].platform}; one learner step (batch 256, UTD 2), median of {args.reps}")
    for name, values in times.items():
        median = float(np.median(values))
        print(f"{name:40s} {1e3 * median:7.1f} ms  ({median / state:.2f}x state-only)")


if __name__ == "__main__":
    main()
