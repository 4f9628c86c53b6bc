"""`franka-rl`: one entry point, one subcommand per job.

Each module in `franka_rl.commands` registers its subcommands with `register(subparsers)` and
imports its heavy dependencies (JAX, MuJoCo) only inside its handler, so `franka-rl --help` is fast.
Errors a user can cause subclass `robot_env.errors.UserError` (the ground floor every package may
import); `main` prints them as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from franka_rl import commands
from robot_env.errors import UserError

__all__ = ["UserError", "add_config_arguments", "build_parser", "main"]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--config FILE`, `--preset NAME` and trailing `key=value` overrides every run command
    takes. `main` folds `--preset NAME` into the overrides as `agent_preset=NAME` (first, so an
    explicit override still wins), so `load_config(args.config, args.overrides)` applies it."""
    parser.add_argument(
        "--config",
        default=None,
        help="YAML config (default: configs/peg_insertion_sim.yaml, the MuJoCo twin)",
    )
    parser.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="agent preset from configs/agents/ (wsrl, rlpd, calql_finetune, wsrl_nowarmup, cql, wsrl_iql, off2on), "
        "applied over the config file and under the KEY=VALUE overrides",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides in dotted form, e.g. env.control_hz=20 task.max_episode_steps=50",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="franka-rl",
        description="Reinforcement learning on a Franka arm with wrist cameras, and its MuJoCo twin.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        args.overrides = [f"agent_preset={args.preset}", *args.overrides]
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"franka-rl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    # Run through the imported module, not this `__main__` copy: commands raise the imported
    # module's `UserError`, which a copy's `except` would not recognise.
    from franka_rl.cli import main as imported_main

    sys.exit(imported_main())
