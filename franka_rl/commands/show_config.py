"""`franka-rl show-config`: print the resolved config and its hash."""

from __future__ import annotations

import argparse

from franka_rl.cli import add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show-config",
        help="print the resolved config (file + overrides) and its hash",
        description="Print the config a run would use, after the file and the overrides.",
        epilog="example: franka-rl show-config --config configs/peg_insertion_real.yaml env.control_hz=20",
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from franka_rl.assemble import config_hash
    from franka_rl.config import load_config, to_yaml

    cfg = load_config(args.config, args.overrides)
    print(to_yaml(cfg), end="")
    print(f"# config hash: {config_hash(cfg)}")
    return 0
