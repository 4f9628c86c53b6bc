"""`franka-rl record-demos`: teleoperate until N successful episodes are on disk."""

from __future__ import annotations

import argparse
from pathlib import Path

from franka_rl.cli import UserError, add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "record-demos",
        help="record teleoperated demos until N successes (failures kept, labelled)",
        description=(
            "Drive the arm with a teleop device (teleop.device: spacemouse, keyboard, or scripted: "
            "the twin's expert) and write every episode to an episode directory until "
            "record.num_successes episodes succeeded. Success comes from the task in the twin; on "
            "hardware from the env (pose or reward classifier) or the operator's success mark "
            "(Enter / a SpaceMouse button with the 'success' role); a failure mark ends an episode."
        ),
        epilog=(
            "examples:\n"
            "  franka-rl record-demos --successes 20 --out runs/demos            # the twin, scripted expert\n"
            "  franka-rl record-demos --config configs/peg_insertion_real.yaml teleop.device=spacemouse"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--out", default=None, help="episode directory (default: record.demos_dir or <output_dir>/demos)")
    parser.add_argument("--successes", type=int, default=None, help="successful episodes to record (record.num_successes)")
    parser.add_argument("--device", default=None, help="teleop device (teleop.device)")
    parser.set_defaults(handler=run)


def load_recording_config(args: argparse.Namespace):
    from franka_rl.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "device", None):
        overrides.append(f"teleop.device={args.device}")
    cfg = load_config(args.config, overrides)
    from teleop.devices import DeviceError
    from teleop.registry import DEVICE_CHOICES

    if cfg.teleop.device not in DEVICE_CHOICES:  # before building an env or touching the robot
        raise DeviceError(f"teleop.device must be one of {DEVICE_CHOICES}, got '{cfg.teleop.device}'")
    if cfg.teleop.device == "scripted" and cfg.mode != "sim":
        raise DeviceError("teleop.device=scripted replays the twin's expert: use it with mode=sim, "
                          "or choose spacemouse or keyboard on hardware")
    return cfg


def recording_metadata(cfg, purpose: str) -> dict:
    from agent.data.episodes import make_metadata
    from franka_rl.assemble import config_hash

    return make_metadata(
        task=cfg.task.name, source="teleop", config_hash=config_hash(cfg), mode=cfg.mode,
        device=cfg.teleop.device, purpose=purpose, control_hz=cfg.env.control_hz,
        cameras=list(cfg.env.cameras),
    )


def run(args: argparse.Namespace) -> int:
    from agent.data.episodes import EpisodeStore
    from franka_rl.assemble import build_device, build_env
    from teleop.recording import StatusLine, record_demos

    cfg = load_recording_config(args)
    successes = args.successes if args.successes is not None else cfg.record.num_successes
    if successes < 1:
        raise UserError("the number of successes to record must be at least 1")
    out = Path(args.out or cfg.record.demos_dir or Path(cfg.output_dir) / "demos")
    store = EpisodeStore(out, create=True)
    already = len(store)
    env = build_env(cfg, "record-demos")
    try:
        device = build_device(cfg, env)
    except BaseException:
        env.close()
        raise
    try:
        stats = record_demos(
            env, device, store,
            num_successes=successes,
            max_episodes=cfg.record.max_episodes,
            metadata=recording_metadata(cfg, "demos"),
            hold_over_steps=cfg.teleop.hold_over_steps,
            success_from="task" if cfg.mode == "sim" else "operator",
            seed=cfg.seed + already,
            status=StatusLine(interval_s=cfg.record.status_interval_s),
        )
    finally:
        device.close()
        env.close()
    print(f"wrote {stats.episodes} episodes ({stats.successes} successful, {stats.failures} failed, "
          f"{stats.steps} steps) to {out}" + (" (interrupted)" if stats.interrupted else ""))
    if stats.successes < successes and not stats.interrupted:
        print(f"stopped at record.max_episodes={cfg.record.max_episodes} before {successes} successes")
        return 1
    return 0
