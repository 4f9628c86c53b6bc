"""`franka-rl robot-check`: bring-up checklist of the real cell (robot_env.robot_check)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from franka_rl.cli import UserError, add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "robot-check",
        help="check the real cell item by item (connection, state, gripper, cameras, motion, timing)",
        description=(
            "Connect to the arm, print the franky/libfranka versions and what the arm reports, read its "
            "state, grasp with the hand (it never opens it, so a held peg stays), measure each camera "
            "and save a snapshot, move to task.reset_pose, time env steps at env.control_hz while holding "
            "still, and make a 1 cm compliant move inside the safety box and back. Prints PASS / FAIL / "
            "SKIP per item with what to fix; exits 1 when anything failed. Every wait is bounded."
        ),
        epilog=(
            "examples:\n"
            "  franka-rl robot-check --config configs/peg_insertion_real.yaml --no-motion   # read only\n"
            "  franka-rl robot-check --config configs/my_cell.yaml --snapshots runs/check\n"
            "  franka-rl robot-check --config configs/my_cell.yaml --no-cameras real.robot_ip=172.16.0.3"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--no-cameras", action="store_true", help="skip the cameras (the control loop runs without them)")
    parser.add_argument("--no-gripper", action="store_true", help="skip the Franka Hand (do not connect to it)")
    parser.add_argument("--no-motion", action="store_true", help="read only: no reset move, control loop or compliant move")
    parser.add_argument("--steps", type=int, default=50, help="env steps timed in the control-loop item (default 50)")
    parser.add_argument(
        "--snapshots", default=None, help="folder for one PNG per camera (default: <output_dir>/robot_check)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from franka_rl.config import load_config
    from robot_env.robot_check import CheckOptions, run_robot_check, summary

    cfg = load_config(args.config, args.overrides)
    if cfg.mode != "real":
        raise UserError(f"robot-check drives the real arm, but this config has mode: {cfg.mode}; "
                        "use configs/peg_insertion_real.yaml (or a copy of it)")
    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    options = CheckOptions(
        cameras=not args.no_cameras,
        gripper=not args.no_gripper,
        motion=not args.no_motion,
        steps=args.steps,
        snapshot_dir=Path(args.snapshots or Path(cfg.output_dir) / "robot_check"),
        seed=cfg.seed,
    )
    print(f"robot-check: arm at {cfg.real.robot_ip}" + ("" if args.no_motion else "; the arm will move: keep the stop button in reach"), flush=True)
    results = run_robot_check(cfg, options, report=lambda result: print(result.line(), flush=True))
    print(f"robot-check: {summary(results)}", file=sys.stdout)
    return 1 if any(result.status == "FAIL" for result in results) else 0
