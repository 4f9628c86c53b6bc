"""`franka-rl teach-pose`: hand-guide the arm to the hole and to the start pose, press Enter at
each, and get them written as task.target_pose / task.reset_pose into a config file."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from franka_rl.cli import UserError, add_config_arguments

_GUIDING_HELP = (
    "Hold the two guiding buttons at the flange (the pilot grip) to move the arm by hand; it "
    "holds still when you let go."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "teach-pose",
        help="record task.target_pose and task.reset_pose by hand-guiding the arm",
        description=(
            "Connect to the arm (it is never commanded to move), free the guiding axes, show the live "
            "TCP pose, and read it when you press Enter: first the target (peg fully inserted), then "
            "the reset pose (where episodes start, a few cm above). The poses (xyz + rotation vector, "
            "the config's convention) are written into --out: an existing file is updated in place, "
            "a new one starts as a copy of --config; comments and every other value are kept. Set "
            "real.tcp_offset_m (the peg tip) before teaching: the poses are poses of that TCP. "
            "Type q and Enter to abort without writing anything."
        ),
        epilog=(
            "examples:\n"
            "  franka-rl teach-pose --config configs/peg_insertion_real.yaml --out configs/my_cell.yaml --set-bounds\n"
            "  franka-rl teach-pose --config configs/my_cell.yaml --out configs/my_cell.yaml --only reset\n"
            "  franka-rl teach-pose --config configs/my_cell.yaml --out configs/my_cell.yaml --reset-above 0.06"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, help="YAML file to write the poses into (created from --config if missing)")
    parser.add_argument(
        "--only", choices=("target", "reset"), default=None, help="teach one pose; the other keeps its value"
    )
    parser.add_argument(
        "--reset-above", type=float, default=None, metavar="METRES",
        help="instead of teaching the reset pose, put it this far straight above the target",
    )
    parser.add_argument(
        "--set-bounds", action="store_true",
        help="also write the suggested safety box (task.position_low/high) around the taught poses",
    )
    parser.add_argument(
        "--free-axes", choices=("all", "translation", "keep"), default="all",
        help="axes free while guiding: all six (default), translation only, or keep Desk's setting",
    )
    parser.set_defaults(handler=run)


def _connect(cfg):
    from robot_env.franky_backend import FrankyRobot
    from robot_env.interfaces import RobotError

    try:
        # Reading poses needs neither the hand nor a safety box: this command never moves the arm.
        return FrankyRobot(replace(cfg.real, gripper=False))
    except (RobotError, ValueError) as exc:
        raise UserError(str(exc)) from None


def _free_guiding_axes(robot, free_axes: str) -> None:
    """Set the axes that move freely while the guiding buttons are held. A refused setting may
    have cost the link, so it ends the command."""
    from robot_env.interfaces import RobotError

    if free_axes == "keep":
        print(f"guiding: the axes Desk has set are free. {_GUIDING_HELP}")
        return
    try:
        robot.set_guiding_axes(translation=True, rotation=free_axes == "all")
    except RobotError as exc:
        robot.close()
        raise UserError(
            f"{exc}. Choose the guiding axes in Desk (the pilot's guiding-mode setting) and run again "
            "with --free-axes keep; nothing was written"
        ) from None
    print(f"guiding: {'all six axes' if free_axes == 'all' else 'translation only'} free. {_GUIDING_HELP}")


def run(args: argparse.Namespace) -> int:
    from franka_rl.config import ConfigError, load_config
    from robot_env.interfaces import RobotError
    from robot_env.robot_check import config_problems
    from robot_env.teach_pose import (
        LineReader,
        TeachAborted,
        format_pose6,
        pose_list,
        suggest_bounds,
        wait_and_read_pose,
        write_task_values,
    )
    from teleop.recording import StatusLine

    if args.config is None:
        raise UserError("give --config (e.g. configs/peg_insertion_real.yaml): the arm's address comes from it")
    cfg = load_config(args.config, args.overrides)
    if cfg.mode != "real":
        raise UserError(f"teach-pose reads the real arm, but {args.config} has mode: {cfg.mode}")
    if args.reset_above is not None and (args.only == "target" or args.reset_above <= 0):
        raise UserError("--reset-above takes a positive height and sets the reset pose (not with --only target)")
    out = Path(args.out)
    source = out if out.is_file() else Path(args.config)

    teach_target = args.only != "reset"
    teach_reset = args.only != "target" and args.reset_above is None
    # The pose not taught now keeps its value in the file being updated.
    current = load_config(source, args.overrides).task if source != Path(args.config) else cfg.task
    target, reset = list(current.target_pose), list(current.reset_pose)
    lines = LineReader(sys.stdin)
    status = StatusLine(stream=sys.stderr, interval_s=0.1)
    robot = _connect(cfg)
    _free_guiding_axes(robot, args.free_axes)
    try:
        if teach_target:
            print("1. Guide the peg fully into the hole, let go, then press Enter (q + Enter aborts).", flush=True)
            target = pose_list(wait_and_read_pose(robot, lines, "target", status.update))
            status.close()
            print(f"   target_pose: {format_pose6(target)}", flush=True)
        if teach_reset:
            step = 2 if teach_target else 1
            print(f"{step}. Lift the peg straight out to where episodes should start (3-8 cm above the hole), "
                  "let go, then press Enter.", flush=True)
            reset = pose_list(wait_and_read_pose(robot, lines, "reset", status.update))
            status.close()
            print(f"   reset_pose:  {format_pose6(reset)}", flush=True)
    except TeachAborted as exc:
        status.close()
        raise UserError(str(exc)) from None
    except RobotError as exc:
        status.close()
        raise UserError(f"{exc}; nothing was written") from None
    finally:
        robot.close()
    if args.reset_above is not None:
        reset = pose_list([*target[:2], target[2] + args.reset_above, *target[3:]])
        print(f"   reset_pose:  {format_pose6(reset)} ({args.reset_above * 100:.1f} cm above the target)")

    low, high = suggest_bounds(target, reset, current.reset_position_noise)
    values = {}
    if teach_target:
        values["target_pose"] = target
    if args.only != "target":
        values["reset_pose"] = reset
    if args.set_bounds:
        values.update(position_low=low, position_high=high)
    print(f"suggested safety box: position_low {low}, position_high {high}" + ("" if args.set_bounds else " (write it with --set-bounds)"))
    try:
        write_task_values(source, out, values)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not write {out}: {exc}") from None
    print(f"wrote task.{', task.'.join(values)} to {out}")
    try:
        problems = config_problems(load_config(out, args.overrides))
    except ConfigError as exc:
        raise UserError(f"{out} no longer loads ({exc}); fix it by hand") from None
    for problem in problems:
        print(f"warning: {problem}")
    print(f"next: franka-rl robot-check --config {out}")
    return 0
