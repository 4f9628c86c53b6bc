"""`franka-rl demo`: the README's main command. Runs the MuJoCo twin with the scripted expert and
writes a video of both wrist cameras, a contact sheet and the success rate."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from franka_rl.cli import UserError, add_config_arguments
from franka_rl.config import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the simulated peg-insertion cell with the scripted expert (no robot needed)",
        description=(
            "Drive the MuJoCo twin with the scripted expert from randomised resets, print the "
            "success rate, and write a video of both wrist cameras and a contact sheet."
        ),
        epilog="example: franka-rl demo --episodes 20 --output runs/demo sim.hole_clearance=0.0005",
    )
    add_config_arguments(parser)
    parser.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    parser.add_argument(
        "--video-episodes", type=int, default=2, help="episodes recorded into the video (default 2)"
    )
    parser.add_argument(
        "--noise", type=float, default=0.0, help="expert action noise (std, in action units)"
    )
    parser.add_argument("--output", default=None, help="output folder (default: <output_dir>/demo)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.mode != "sim":
        raise UserError("demo runs the MuJoCo twin: use a config with mode: sim")
    if args.episodes < 1:
        raise UserError("--episodes must be at least 1")

    from tqdm import tqdm

    import sim
    from robot_env.media import contact_sheet, save_png, side_by_side, write_video

    output = Path(args.output) if args.output else Path(cfg.output_dir) / "demo"
    output.mkdir(parents=True, exist_ok=True)
    cameras = list(cfg.env.cameras)
    env = sim.make_env(cfg)
    expert = sim.PegInsertionExpert(env, noise=args.noise, seed=cfg.seed)

    video_frames: list[np.ndarray] = []
    sheet_source: list[dict[str, np.ndarray]] = []
    outcomes = []
    started = time.monotonic()
    progress = tqdm(range(args.episodes), desc="expert episodes", unit="ep")
    for episode in progress:
        observation, info = env.reset(seed=cfg.seed + episode)
        expert.reset()
        record = episode < args.video_episodes and bool(cameras)
        done = False
        while not done:
            if record:
                video_frames.append(side_by_side([observation[name] for name in cameras]))
                if episode == 0:
                    sheet_source.append({name: observation[name] for name in cameras})
            observation, _, terminated, truncated, info = env.step(expert.act(observation))
            done = terminated or truncated
        outcomes.append(info["episode"])
        successes = sum(o["success"] for o in outcomes)
        progress.set_postfix(success=f"{successes}/{len(outcomes)}")
    env.close()
    elapsed = time.monotonic() - started

    successes = sum(o["success"] for o in outcomes)
    steps = sum(o["length"] for o in outcomes)
    summary = {
        "episodes": len(outcomes),
        "successes": successes,
        "success_rate": successes / len(outcomes),
        "mean_length": steps / len(outcomes),
        "steps_per_second": steps / elapsed,
        "config": args.config or "configs/peg_insertion_sim.yaml",
        "overrides": list(args.overrides),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\nexpert success rate: {successes}/{len(outcomes)} = {summary['success_rate']:.0%}")
    print(f"mean episode length: {summary['mean_length']:.1f} steps, {summary['steps_per_second']:.0f} env steps/s")
    if video_frames:
        video = write_video(output / "wrist_cameras.mp4", video_frames, fps=cfg.env.control_hz)
        picks = np.linspace(0, len(sheet_source) - 1, num=min(8, len(sheet_source))).round().astype(int)
        sheet = contact_sheet(
            [[sheet_source[i][name] for i in picks] for name in cameras],
            row_labels=[f"{name}: steps {', '.join(str(i) for i in picks)}" for name in cameras],
            scale=2,
        )
        print(f"video: {video}")
        print(f"contact sheet: {save_png(output / 'contact_sheet.png', sheet)}")
    else:
        print("no cameras configured (env.cameras is empty): no video written")
    print(f"summary: {output / 'summary.json'}")
    return 0
