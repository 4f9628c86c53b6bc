"""Steps per second of the MuJoCo twin: state-only, and two wrist cameras at 64² and 128².

    .venv/bin/python benchmarks/sim_speed.py [--steps 500]

Random actions from the fixed-gripper 6-D space; resets (blocking reset moves included) happen
when episodes end, as in training. The real-time factor is simulated time over wall time, with
one control period (0.1 s at 10 Hz) per step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import sim


def measure(steps: int, cameras: bool, size: int, seed: int = 0) -> tuple[float, float]:
    env = sim.make_env(state_only=not cameras, image_height=size, image_width=size)
    period = 1.0 / env.unwrapped.env_cfg.control_hz
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    env.step(np.zeros(6, dtype=np.float32))  # warm up caches and the GL context
    started = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 6).astype(np.float32))
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - started
    env.close()
    rate = steps / elapsed
    return rate, rate * period


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="env steps per configuration")
    args = parser.parse_args()
    print(
        f"MuJoCo twin speed ({args.steps} steps each, physics {sim.SimConfig().physics_dt * 1e3:.0f} ms, "
        f"render backend {sim.rendering.BACKEND})"
    )
    print(f"{'configuration':<28} {'steps/s':>9} {'real-time factor':>17} {'target':>8}")
    rows = [
        ("state only", False, 0, 100.0),
        ("2 cameras 64x64", True, 64, None),
        ("2 cameras 128x128", True, 128, 30.0),
    ]
    for label, cameras, size, target in rows:
        rate, factor = measure(args.steps, cameras, size or 64)
        verdict = "" if target is None else ("ok" if rate >= target else "MISSED")
        print(f"{label:<28} {rate:>9.1f} {factor:>16.1f}x {verdict:>8}")


if __name__ == "__main__":
    main()
