"""Does `learner.prefetch` hide host sampling and the host->device copy behind the compiled step?

    .venv/bin/python benchmarks/learner_prefetch.py [--steps 30] [--image-size 64] [--transitions 5000]

For the state-only agent and for two wrist cameras at `--image-size` (the learner's feature cache
on, as `franka-rl learner` runs it), a real `Learner` is built by the composition root with the
default agent (10 critics, [256, 256], batch 256, UTD 4) and its buffer filled with `--transitions`
stored transitions. Three timings per learner step, medians over `--steps` steps:

- compiled step alone: `learner_step` on batches already on the device, nothing else;
- `Learner.update()` with learner.prefetch=false: sample, copy, step, one after the other;
- `Learner.update()` with learner.prefetch=true: the next step's batches are sampled and placed
  while the current one computes.

The last two alternate in blocks of 5 steps on the same learner, so a change in the machine's load
falls on both alike.

The target is prefetch <= 1.1 x the compiled step alone. Compilation happens before timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.data.synthetic import synthetic_episode  # noqa: E402
from franka_rl.assemble import build_learner  # noqa: E402
from franka_rl.config import load_config  # noqa: E402


def make_learner(run_dir: str, cameras: bool, image_size: int, prefetch: bool, capacity: int):
    overrides = [f"output_dir={run_dir}", "learner.tensorboard=false", "agent.online.warmup_steps=0",
                 f"learner.buffer_capacity={capacity}", f"learner.prefetch={str(prefetch).lower()}",
                 f"env.cameras={'[wrist_1,wrist_2]' if cameras else '[]'}",
                 f"env.image_height={image_size}", f"env.image_width={image_size}"]
    return build_learner(load_config(None, overrides), report=lambda message: None)


def fill(learner, transitions: int, image_size: int) -> None:
    rng = np.random.default_rng(0)
    length = 100
    template = synthetic_episode(rng, length, image_size=image_size, success=True)
    keep = set(learner.spec)
    observations = {k: v for k, v in template.observations.items() if k in keep}
    for i in range(max(1, transitions // length)):
        observations["state"][:, 0] = i
        learner.buffer.add_episode(observations, template.actions, template.rewards, template.terminated,
                                   template.truncated)


def timed(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compiled_step_alone(learner, steps: int) -> float:
    """The learner's compiled step on batches already on the device, and nothing else."""
    batches = learner._sample_batches()
    state = {"agent": learner.agent}

    def step():
        state["agent"], metrics = learner.learner_step(state["agent"], batches)
        jax.block_until_ready(metrics)
    step()
    return timed(step, steps)


def measure(cameras: bool, image_size: int, steps: int, transitions: int) -> dict[str, float]:
    """One learner, its prefetch switched on and off in alternating blocks of steps (so drift in
    the machine's load falls on both alike), and its compiled step timed alone."""
    times: dict[str, list[float]] = {"prefetch": [], "sequential": []}
    with tempfile.TemporaryDirectory() as tmp:
        learner = make_learner(tmp, cameras, image_size, True, transitions + 200)
        try:
            fill(learner, transitions, image_size)
            learner.compile_update()
            for _ in range(3):  # the first real steps, untimed (any remaining compile)
                learner.update()
            block = 5
            for round_ in range(2 * max(1, steps // block)):
                prefetch = round_ % 2 == 0
                learner.lcfg.prefetch = prefetch
                learner._prefetched = None
                learner.update()  # untimed: the first step of a prefetch block has nothing fetched yet
                for _ in range(block):
                    started = time.perf_counter()
                    learner.update()
                    times["prefetch" if prefetch else "sequential"].append(time.perf_counter() - started)
            compiled = compiled_step_alone(learner, steps)
        finally:
            learner.server.close()
    return {"compiled": compiled, **{k: statistics.median(v) for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--transitions", type=int, default=5000)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].platform} x{jax.device_count()}; default agent, batch 256, UTD 4; "
          f"medians of {args.steps} learner steps")
    print(f"{'observations':<22} | {'compiled alone':>14} | {'sequential':>10} | {'prefetch':>10} | "
          f"{'seq/compiled':>12} | {'prefetch/compiled':>17} | target <= 1.1")
    print("-" * 112)
    for cameras in (False, True):
        name = f"state + 2 x {args.image_size}² cams" if cameras else "state only"
        t = measure(cameras, args.image_size, args.steps, args.transitions)
        ratio = t["prefetch"] / t["compiled"]
        print(f"{name:<22} | {t['compiled'] * 1e3:>11.1f} ms | {t['sequential'] * 1e3:>7.1f} ms | "
              f"{t['prefetch'] * 1e3:>7.1f} ms | {t['sequential'] / t['compiled']:>11.2f}x | {ratio:>16.2f}x | "
              f"{'ok' if ratio <= 1.1 else 'OVER'}")


if __name__ == "__main__":
    main()
