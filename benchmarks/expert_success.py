"""Success rate of the scripted expert in the MuJoCo twin from seeded, randomised resets.

    .venv/bin/python benchmarks/expert_success.py [--episodes 100] [--noise 0.0]
        [--perturbation-prob 0.0] [--cameras] [--contact-sheet sheet.png]

Episodes use seeds 0..N-1 and end on success (terminated) or after the task's 100 steps.
`--contact-sheet` also saves both wrist cameras at a few moments of the first episode.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import sim


def run_episode(
    env, expert: sim.PegInsertionExpert, seed: int, frames: list | None = None
) -> tuple[bool, int, dict]:
    observation, info = env.reset(seed=seed)
    expert.reset()
    steps = 0
    terminated = truncated = False
    while not (terminated or truncated):
        if frames is not None and "wrist_1" in observation:
            frames.append(
                (
                    f"seed {seed} step {steps} {expert.phase}",
                    observation["wrist_1"],
                    observation["wrist_2"],
                )
            )
        observation, _, terminated, truncated, info = env.step(expert.act(observation))
        steps += 1
    if frames is not None and "wrist_1" in observation:
        frames.append(
            (f"seed {seed} step {steps} end", observation["wrist_1"], observation["wrist_2"])
        )
    return bool(terminated), steps, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian action noise (std)")
    parser.add_argument(
        "--perturbation-prob", type=float, default=0.0, help="per-step chance of a random burst"
    )
    parser.add_argument(
        "--cameras", action="store_true", help="use the camera env (default: state only)"
    )
    parser.add_argument(
        "--contact-sheet", default=None, help="PNG of both wrist cameras in the first episode"
    )
    args = parser.parse_args()

    cameras = args.cameras or args.contact_sheet is not None
    env = sim.make_env(state_only=not cameras)
    expert = sim.PegInsertionExpert(
        env, noise=args.noise, perturbation_prob=args.perturbation_prob, seed=0
    )
    successes, lengths, depths = 0, [], []
    frames: list | None = [] if args.contact_sheet else None
    started = time.perf_counter()
    for seed in range(args.episodes):
        success, steps, info = run_episode(env, expert, seed, frames if seed == 0 else None)
        successes += success
        lengths.append(steps)
        depths.append(info["insertion_depth"])
    elapsed = time.perf_counter() - started
    max_steps = env.unwrapped.task.max_episode_steps
    print(
        f"scripted expert, noise {args.noise}, perturbation prob {args.perturbation_prob}, "
        f"{'cameras' if cameras else 'state only'}"
    )
    print(f"{'episodes':<22} {args.episodes}")
    print(
        f"{'successes':<22} {successes} ({successes / args.episodes:.0%}) within {max_steps} steps"
    )
    print(f"{'steps: mean / max':<22} {np.mean(lengths):.1f} / {max(lengths)}")
    print(f"{'final depth: mean':<22} {np.mean(depths) * 1000:.1f} mm")
    print(f"{'wall time':<22} {elapsed:.1f} s")
    if frames:
        from robot_env.media import contact_sheet, save_png

        picks = np.unique(np.linspace(0, len(frames) - 1, 6).round().astype(int))
        sheet = contact_sheet(
            [[frames[i][1], frames[i][2]] for i in picks], [frames[i][0] for i in picks], scale=2
        )
        print(f"contact sheet: {save_png(args.contact_sheet, sheet)}")


if __name__ == "__main__":
    main()
