"""`franka-rl record-rewards`: frames labelled success / failure for the reward classifier."""

from __future__ import annotations

import argparse
from pathlib import Path

from franka_rl.cli import UserError, add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "record-rewards",
        help="record frames labelled success/failure for the reward classifier",
        description=(
            "Record episodes whose every frame is labelled success or failure, until "
            "record.reward_positives and record.reward_negatives frames are on disk (counts shown "
            "live). In the twin the label is the ground truth and the scripted expert drives; on "
            "hardware the operator drives and holds the success key (Enter, or a SpaceMouse button "
            "with the 'success' role) while the task is achieved. Frames are stored once, as "
            "episodes with frame_info/success_label (docs/data.md)."
        ),
        epilog=(
            "examples:\n"
            "  franka-rl record-rewards --out runs/reward_frames\n"
            "  franka-rl record-rewards record.reward_positives=300 record.reward_negatives=800"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--out", default=None,
                        help="episode directory (default: record.rewards_dir or <output_dir>/reward_frames)")
    parser.add_argument("--device", default=None, help="teleop device (teleop.device)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agent.data.episodes import EpisodeStore
    from franka_rl.assemble import build_device, build_env
    from franka_rl.commands.record_demos import load_recording_config, recording_metadata
    from teleop.recording import StatusLine, record_reward_frames

    cfg = load_recording_config(args)
    if cfg.record.reward_positives < 0 or cfg.record.reward_negatives < 0:
        raise UserError("record.reward_positives and record.reward_negatives must be >= 0")
    out = Path(args.out or cfg.record.rewards_dir or Path(cfg.output_dir) / "reward_frames")
    store = EpisodeStore(out, create=True)
    already = len(store)
    env = build_env(cfg, "record-rewards")
    try:
        device = build_device(cfg, env)
    except BaseException:
        env.close()
        raise
    try:
        stats = record_reward_frames(
            env, device, store,
            positives=cfg.record.reward_positives,
            negatives=cfg.record.reward_negatives,
            metadata=recording_metadata(cfg, "reward-labels"),
            label_from="task" if cfg.mode == "sim" else "operator",
            steps_after_success=cfg.record.reward_steps_after_success,
            max_episodes=cfg.record.max_episodes,
            hold_over_steps=cfg.teleop.hold_over_steps,
            seed=cfg.seed + already,
            status=StatusLine(interval_s=cfg.record.status_interval_s),
        )
    finally:
        device.close()
        env.close()
    print(f"wrote {stats.episodes} episodes with {stats.positives} positive and {stats.negatives} "
          f"negative frames to {out}" + (" (interrupted)" if stats.interrupted else ""))
    if (stats.positives < cfg.record.reward_positives or stats.negatives < cfg.record.reward_negatives) \
            and not stats.interrupted:
        print(f"stopped at record.max_episodes={cfg.record.max_episodes} before reaching the targets")
        return 1
    return 0
