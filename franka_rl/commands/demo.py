"""`franka-rl demo`: the README's main command. By default the whole recipe in the MuJoCo twin
(`franka-rl pipeline`, cpu profile, into runs/demo); `--expert-preview` only drives the twin with
the scripted expert and writes a video of both wrist cameras, a contact sheet and the success rate."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from franka_rl.cli import UserError
from franka_rl.commands import pipeline as pipeline_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole recipe in the simulated cell, no robot needed: demos, classifier, Cal-QL, "
             "WSRL actor + learner, evaluation, report (~15 min on 2 CPU cores)",
        description=(
            "Run the recipe end to end in the MuJoCo twin, as `franka-rl pipeline` with the cpu "
            "profile does: scripted demos and a mixed-quality offline dataset, reward frames and the "
            "reward classifier, Cal-QL pre-training, WSRL fine-tuning with a learner and an actor "
            "process, evaluation from 20 spread initial poses; then write <out>/report/ (results "
            "table, success and calibration plots, the commands of every stage). Completed stages "
            "are skipped on a rerun. --expert-preview instead drives the twin with the scripted "
            "expert for a few episodes and writes a video of both wrist cameras (seconds)."
        ),
        epilog=(
            "examples:\n"
            "  franka-rl demo                                   # the recipe, cpu profile, into runs/demo\n"
            "  franka-rl demo --compare --seeds 0 1 2           # + RLPD, Cal-QL fine-tuning, WSRL without warm-up\n"
            "  franka-rl demo --profile full --out runs/full    # the papers' sizes (GPU workstation)\n"
            "  franka-rl demo --expert-preview --episodes 20 --noise 0.2 sim.hole_clearance=0.0005"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pipeline_command.add_pipeline_arguments(parser, default_out="runs/demo")
    preview = parser.add_argument_group("expert preview (--expert-preview)")
    preview.add_argument("--expert-preview", action="store_true",
                         help="only run the scripted expert and write <out>/preview/: wrist-camera video, "
                              "contact sheet, summary.json")
    preview.add_argument("--episodes", type=int, default=None, help="preview episodes (default 10)")
    preview.add_argument("--video-episodes", type=int, default=None,
                         help="preview episodes recorded into the video (default 2)")
    preview.add_argument("--noise", type=float, default=None,
                         help="preview expert's action noise (std, in action units; default 0)")
    parser.set_defaults(handler=run)


PREVIEW_DEFAULTS = {"episodes": 10, "video_episodes": 2, "noise": 0.0}


def run(args: argparse.Namespace) -> int:
    given = [name for name in PREVIEW_DEFAULTS if getattr(args, name) is not None]
    if args.expert_preview:
        for name, default in PREVIEW_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
        return run_expert_preview(args)
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UserError(f"{options} set(s) the expert preview: add --expert-preview, or leave it out to run the recipe")
    return pipeline_command.run(args)


def run_expert_preview(args: argparse.Namespace) -> int:
    import numpy as np

    from franka_rl.config import load_config

    cfg = load_config(args.config, args.overrides)
    if cfg.mode != "sim":
        raise UserError("demo runs the MuJoCo twin: use a config with mode: sim")
    if args.episodes < 1:
        raise UserError("--episodes must be at least 1")

    import sim
    from franka_rl.assemble import build_env
    from robot_env.media import contact_sheet, save_png, side_by_side, write_video
    from robot_env.progress import progress as progress_bar

    output = Path(args.out) / "preview"
    output.mkdir(parents=True, exist_ok=True)
    cameras = list(cfg.env.cameras)
    env = build_env(cfg, "record-demos")
    expert = sim.PegInsertionExpert(env, noise=args.noise, seed=cfg.seed)

    video_frames: list[np.ndarray] = []
    sheet_source: list[dict[str, np.ndarray]] = []
    outcomes = []
    started = time.monotonic()
    progress = progress_bar(range(args.episodes), desc="expert episodes", unit="ep")
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
